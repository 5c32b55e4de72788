"""The DreamBooth surrogate of ASPL and FSMG trains, in float32, on the right set at the right time:
spies record what each training phase sees and which weights each PGD phase attacks."""

from __future__ import annotations

import pytest
import torch

PROMPT = "a photo of sks person"
FAST = dict(device="cpu", dtype="float32", resolution=32, prior_loss_weight=0.0)


def _faces(count: int, size: int = 32) -> list[torch.Tensor]:
    from facedefense.testing.tiny_models import sample_faces

    return list(torch.round(sample_faces(count, size) * 255) / 255)


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def _spy_training(monkeypatch) -> list[dict]:
    """Record each surrogate training call: its images, batch size and the weights before and after."""
    from facedefense_iterative.surrogate import Surrogate

    calls: list[dict] = []
    original = Surrogate.train

    def spy(self, instances, **options):
        entry = self.snapshot()
        losses = original(self, instances, **options)
        calls.append({"surrogate": self, "images": instances.detach().clone(), "entry": entry,
                      "exit": self.snapshot(), "batch_size": options.get("batch_size", 1)})
        return losses

    monkeypatch.setattr(Surrogate, "train", spy)
    return calls


def _spy_pgd(monkeypatch, weights_of) -> tuple[list, list]:
    """Record the weights each PGD step attacks (``weights_of()``) and each PGD phase's result."""
    from facedefense.optim import LinfPGD

    seen, results = [], []
    step, run = LinfPGD.step, LinfPGD.run

    def step_spy(self, *args, **kwargs):
        seen.append(weights_of())
        return step(self, *args, **kwargs)

    def run_spy(self, *args, **kwargs):
        state = run(self, *args, **kwargs)
        results.append(state.adversarial.detach().clone())
        return state

    monkeypatch.setattr(LinfPGD, "step", step_spy)
    monkeypatch.setattr(LinfPGD, "run", run_spy)
    return seen, results


@pytest.fixture(scope="module")
def bf16_surrogate(trained_tiny_sd_path):
    from facedefense_iterative.surrogate import Surrogate

    return Surrogate(str(trained_tiny_sd_path), device=torch.device("cpu"), dtype=torch.bfloat16)


def test_bf16_surrogate_step_at_the_default_learning_rate_changes_the_weights(bf16_surrogate):
    """dtype=bfloat16 keeps float32 trainable weights under bf16 autocast: one default-config step
    (lr 5e-7, prior preservation) moves nearly every UNet weight. In bf16 weights it moved 1.2%."""
    from facedefense_iterative.aspl import ASPLConfig

    surrogate = bf16_surrogate
    assert {p.dtype for p in surrogate.trainable.values()} == {torch.float32}
    assert surrogate.vae.dtype == torch.bfloat16 and surrogate.autocast().fast_dtype == torch.bfloat16
    faces = _faces(3)
    before = surrogate.snapshot()
    surrogate.train(torch.stack(faces[:2]), instance_prompt=PROMPT, steps=1, learning_rate=ASPLConfig().learning_rate,
                    generator=torch.Generator().manual_seed(0), class_images=torch.stack(faces[2:]),
                    class_prompt="a photo of person")
    after = surrogate.snapshot()
    unet = [name for name in before if name.startswith("unet.")]
    changed = sum(int((before[n] != after[n]).sum()) for n in unet) / sum(before[n].numel() for n in unet)
    assert changed > 0.9, changed


def test_surrogate_draws_on_the_generator_device(bf16_surrogate, monkeypatch):
    """Every draw from a generator names the generator's device (a CUDA generator cannot draw CPU
    tensors): training steps with prior preservation and the PGD objective."""
    from facedefense_iterative.surrogate import PhotoBatch

    undeviced = []
    for name in ("randint", "randn", "rand", "randperm"):
        def checked(*args, _draw=getattr(torch, name), _name=name, **kwargs):
            if kwargs.get("generator") is not None and kwargs.get("device") is None:
                undeviced.append(_name)
            return _draw(*args, **kwargs)

        monkeypatch.setattr(torch, name, checked)
    faces = torch.stack(_faces(3))
    generator = torch.Generator().manual_seed(1)
    bf16_surrogate.train(faces[:2], instance_prompt=PROMPT, steps=1, learning_rate=0.0, generator=generator,
                         class_images=faces[2:], class_prompt="a photo of person", batch_size=2)
    photos = PhotoBatch.pack(list(faces), 32)
    states = bf16_surrogate.embed([PROMPT], grad=False)
    bf16_surrogate.photo_loss(photos, photos.padded, states, generator=generator)
    assert undeviced == []


def test_lora_surrogate_has_the_reference_defaults_and_its_adapters_move(trained_tiny_sd_path):
    """lora_rank > 0 takes aspl_lora.py's defaults for the options left unset; the float32 adapters
    (UNet and text encoder) leave zero while the bf16 base weights stay."""
    from facedefense_iterative.aspl import ASPLConfig
    from facedefense_iterative.fsmg import FSMGConfig
    from facedefense_iterative.surrogate import Surrogate

    def defaults(config):
        return config.learning_rate, config.steps, config.pgd_steps, config.surrogate_steps, config.step_size

    assert defaults(ASPLConfig()) == (5e-7, 50, 6, 3, 0.0025)
    assert defaults(ASPLConfig(lora_rank=4)) == (5e-6, 20, 10, 10, 1 / 510)
    assert defaults(ASPLConfig(lora_rank=4, learning_rate=1e-5, steps=7)) == (1e-5, 7, 10, 10, 1 / 510)
    assert (FSMGConfig(lora_rank=4).learning_rate, FSMGConfig(lora_rank=4).steps) == (5e-6, 100)

    surrogate = Surrogate(str(trained_tiny_sd_path), device=torch.device("cpu"), dtype=torch.bfloat16, lora_rank=4)
    assert {p.dtype for p in surrogate.trainable.values()} == {torch.float32}
    assert surrogate.unet.conv_in.weight.dtype == torch.bfloat16
    base = {n: p.detach().clone() for n, p in surrogate.unet.named_parameters() if "lora_" not in n}
    before = surrogate.snapshot()
    adapters = [name for name in before if "lora_B" in name]
    assert adapters and any(n.startswith("text_encoder.") for n in adapters)
    assert all(before[n].abs().max() == 0 for n in adapters)  # adapters start at zero
    surrogate.train(torch.stack(_faces(2)), instance_prompt=PROMPT, steps=1,
                    learning_rate=ASPLConfig(lora_rank=4).learning_rate, generator=torch.Generator().manual_seed(0))
    after = surrogate.snapshot()
    assert all(after[n].abs().max() > 0 for n in adapters)
    assert all(torch.equal(p, base[n]) for n, p in surrogate.unet.named_parameters() if "lora_" not in n)


def test_aspl_trains_f_prime_on_the_clean_set_and_f_on_the_perturbed_photos(trained_tiny_sd_path, monkeypatch):
    """Each round: f' = f trained on the CLEAN references, PGD against f', then f (not f') trained on
    this round's PERTURBED photos and carried to the next round."""
    from facedefense.interfaces import IdentitySet
    from facedefense_iterative.aspl import ASPL

    aspl = ASPL(model=str(trained_tiny_sd_path), steps=2, pgd_steps=2, surrogate_steps=1, learning_rate=1e-4,
                step_size=2 / 255, **FAST)
    calls = _spy_training(monkeypatch)
    attacked, perturbed = _spy_pgd(monkeypatch, lambda: aspl.surrogates[0].snapshot())
    faces = _faces(4)
    aspl.protect_identity(IdentitySet.from_images(faces[:2], references=faces[2:]))
    clean = torch.stack(faces[2:])  # 32 px at resolution 32: the training view is the image itself
    assert len(calls) == 4 and len(perturbed) == 2
    for r in range(2):
        first, last = calls[2 * r], calls[2 * r + 1]
        assert torch.equal(first["images"], clean)
        assert torch.equal(last["images"], perturbed[r]) and not torch.equal(last["images"], torch.stack(faces[:2]))
        assert not _same(first["exit"], first["entry"]) and not _same(last["exit"], last["entry"])  # both train
        assert all(_same(weights, first["exit"]) for weights in attacked[2 * r : 2 * r + 2])  # PGD attacks f'
        assert _same(last["entry"], first["entry"])  # f' is dropped: f continues
        if r:
            assert _same(first["entry"], calls[1]["exit"])  # f goes on to the next round


def test_e_aspl_trains_each_model_on_its_own_pgd_result(trained_tiny_sd_path, monkeypatch):
    """ensemble_aspl.py: model j's step 3 trains on ITS perturbed photos; the average only seeds the next round."""
    from facedefense.interfaces import IdentitySet
    from facedefense_iterative.aspl import ASPL

    model = str(trained_tiny_sd_path)
    aspl = ASPL(model=f"{model},{model}", steps=1, pgd_steps=1, surrogate_steps=1, learning_rate=1e-4,
                step_size=2 / 255, **FAST)
    calls = _spy_training(monkeypatch)
    _, perturbed = _spy_pgd(monkeypatch, lambda: None)
    faces = _faces(4)
    aspl.protect_identity(IdentitySet.from_images(faces[:2], references=faces[2:]))
    assert len(perturbed) == 2 and not torch.equal(perturbed[0], perturbed[1])
    trained_on = {id(call["surrogate"]): call["images"] for call in calls[2:]}
    for surrogate, own in zip(aspl.surrogates, perturbed):
        assert torch.equal(trained_on[id(surrogate)], own)


def _target_distance(parts, images: list[torch.Tensor], target: torch.Tensor, draws: int = 8) -> float:
    """Mean ``|| x_{t-1}(prediction) - q(z_target, t-1) ||^2`` of the base model, written out here
    (not the library's loss): DDPM posterior mean of the epsilon prediction against the target's
    latent noised with the same eps, at the VAE posterior means, over ``draws`` seeded (t, eps)."""
    from facedefense.diffusion import TextEmbeddingCache, encode_latents

    alphas = parts.scheduler.alphas_cumprod
    states = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)(PROMPT)
    generator, total = torch.Generator().manual_seed(0), 0.0
    with torch.no_grad():
        z = encode_latents(parts.vae, torch.stack(list(images)))
        goal = encode_latents(parts.vae, target).expand_as(z)
        for _ in range(draws):
            t = torch.randint(1, len(alphas), (len(z),), generator=generator)
            eps = torch.randn(z.shape, generator=generator)
            a_t, a_prev = alphas[t].view(-1, 1, 1, 1), alphas[t - 1].view(-1, 1, 1, 1)
            noisy = a_t.sqrt() * z + (1 - a_t).sqrt() * eps
            prediction = parts.unet(noisy, t, states.expand(len(z), -1, -1)).sample
            x0 = (noisy - (1 - a_t).sqrt() * prediction) / a_t.sqrt()
            beta = 1 - a_t / a_prev
            previous = a_prev.sqrt() * beta / (1 - a_t) * x0 + (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t) * noisy
            total += float((previous - (a_prev.sqrt() * goal + (1 - a_prev).sqrt() * eps)).pow(2).mean())
    return total / draws


def test_targeted_aspl_brings_the_prediction_closer_to_the_target(trained_tiny_sd_path, tmp_path):
    """With a target image the denoised x_{t-1} ends closer to the noised target than without; with
    the target term's sign flipped it ends farther (0.00100 against 0.00092 untargeted, 0.00087 here)."""
    from facedefense.interfaces import IdentitySet
    from facedefense.io import save_image
    from facedefense_iterative.aspl import ASPL

    target = torch.zeros(1, 3, 32, 32)  # black: far from every face in latent space
    save_image(target[0], tmp_path / "target.png")
    options = dict(model=str(trained_tiny_sd_path), steps=1, pgd_steps=4, surrogate_steps=0, eps=16 / 255,
                   step_size=4 / 255, **FAST)
    identity = IdentitySet.from_images(_faces(2))
    untargeted = ASPL(**options)
    plain = untargeted.protect_identity(identity).images
    pulled = ASPL(target_image=str(tmp_path / "target.png"), **options).protect_identity(identity).images
    parts = untargeted.surrogates[0].parts  # the base model (surrogate_steps=0 trains nothing): no third load
    assert parts.scheduler.config.prediction_type == "epsilon"
    assert _target_distance(parts, pulled, target) < _target_distance(parts, plain, target)


def test_fsmg_attacks_a_surrogate_trained_on_the_clean_set_and_fixed_during_pgd(trained_tiny_sd_path, monkeypatch):
    """FSMG trains once on the clean references (2 instance images per step, as its reference
    script), then every PGD step attacks exactly the trained weights."""
    from facedefense.interfaces import IdentitySet
    from facedefense_iterative.fsmg import FSMG

    fsmg = FSMG(model=str(trained_tiny_sd_path), steps=2, train_steps=2, learning_rate=1e-4, step_size=2 / 255, **FAST)
    base = fsmg.surrogates[0].snapshot()
    calls = _spy_training(monkeypatch)
    attacked, _ = _spy_pgd(monkeypatch, lambda: fsmg.surrogates[0].snapshot())
    faces = _faces(4)
    fsmg.protect_identity(IdentitySet.from_images(faces[:2], references=faces[2:]))
    assert len(calls) == 1 and torch.equal(calls[0]["images"], torch.stack(faces[2:])) and calls[0]["batch_size"] == 2
    trained = calls[0]["exit"]
    assert _same(calls[0]["entry"], base) and not _same(trained, base)
    assert len(attacked) == 2 and all(_same(weights, trained) for weights in attacked)
