"""CAAT and SimAC, the ASPL variants of the published comparison: contracts on the trained tiny
model, and tests that fail if their distinctive part or its sign were wrong (CAAT: only the
cross-attention keys/values train, descending the loss the photos ascend, from one backward pass)."""

from __future__ import annotations

import pytest
import torch

from facedefense.errors import ConfigError
from facedefense.testing.contracts import DefenderContract

PROMPT = "a photo of sks person"
FAST = dict(device="cpu", dtype="float32", resolution=32, step_size=2 / 255)
_PARTS: dict = {}


def attacker_loss(model_path: str, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The base model's denoising loss per image at 32x32, averaged over 4 draws of (t, eps)."""
    from facedefense.diffusion import TextEmbeddingCache, denoising_loss, encode_latents, load_components
    from facedefense.imaging import resize

    if model_path not in _PARTS:
        _PARTS[model_path] = load_components(model_path)
    parts = _PARTS[model_path]
    with torch.no_grad():
        latents = encode_latents(parts.vae, resize(images, (32, 32)))
        states = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)(PROMPT)
        return sum(denoising_loss(parts.unet, parts.scheduler, latents, states, generator=generator) for _ in range(4)) / 4


class SmallContract(DefenderContract):
    image_size = (32, 32)
    odd_size = (24, 40)
    objective_higher_is_better = True

    def objective(self, method, images, generator):
        return attacker_loss(method.config.model, images, generator)


# -- CAAT ---------------------------------------------------------------------------------------

CAAT_FAST = dict(FAST, steps=2, learning_rate=1e-4)


@pytest.fixture(scope="module")
def caat(trained_tiny_sd_path):
    """One CAAT (CAAT_FAST) for the module: every run starts from the base weights (``reset_surrogates``)."""
    from facedefense_iterative.caat import CAAT

    return CAAT(model=str(trained_tiny_sd_path), eps=SmallContract.eps, **CAAT_FAST)


class TestCAAT(SmallContract):
    registry_name = "caat"

    def make_method(self, request):
        return request.getfixturevalue("caat")


def test_pgd_step_gives_parameters_the_gradient_of_the_same_loss():
    """``LinfPGD.step(parameters=...)``: the parameters' .grad is the gradient of the objective's sum
    from the same backward pass that moves the images."""
    from facedefense.optim import LinfPGD

    weight = torch.tensor([0.5, -2.0], requires_grad=True)
    images = torch.full((2, 1, 1, 2), 0.5)

    def objective(x):
        return (x.flatten(1) * weight).sum(1) ** 2

    state = LinfPGD(eps=0.1, step_size=0.05).step(images, objective, LinfPGD(eps=0.1, step_size=0.05).start(images),
                                                   parameters=[weight])
    x = images.clone().requires_grad_(True)
    expected, direction = torch.autograd.grad(objective(x).sum(), [weight, x])
    assert torch.allclose(weight.grad, expected)
    assert torch.allclose(state.adversarial, images + 0.05 * direction.sign())


def test_caat_trains_only_cross_attention_kv_and_descends_the_loss(caat, face_images, monkeypatch):
    """Only the cross-attention (attn2) key/value weights move; each AdamW step goes against the
    gradient it was given (descent: ascending them fails), and that gradient is a positive multiple
    of the one the PGD step's backward pass gave them (the loss the photos ascend; a flipped sign
    fails)."""
    from facedefense.optim import LinfPGD

    assert caat.config.steps == 2
    unet = caat.surrogates[0].unet
    trainable = {name for name, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in trainable)
    assert {n for n in dict(unet.named_parameters()) if ".attn2.to_k." in n or ".attn2.to_v." in n} == trainable
    assert not any(p.requires_grad for p in caat.surrogates[0].text_encoder.parameters())
    before = {name: p.detach().clone() for name, p in unet.named_parameters()}
    gradients, steps, from_pgd = [], [], []
    original_step, pgd_step = torch.optim.AdamW.step, LinfPGD.step

    def pgd_spy(self, *args, **kwargs):
        state = pgd_step(self, *args, **kwargs)
        from_pgd.append(torch.cat([p.grad.flatten() for p in kwargs["parameters"]]))
        return state

    def spy(optimizer, *args, **kwargs):
        gradients.append({id(p): p.grad.clone() for group in optimizer.param_groups for p in group["params"]})
        snapshot = {id(p): p.detach().clone() for group in optimizer.param_groups for p in group["params"]}
        out = original_step(optimizer, *args, **kwargs)
        steps.append({id(p): p.detach() - snapshot[id(p)] for group in optimizer.param_groups for p in group["params"]})
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    monkeypatch.setattr(LinfPGD, "step", pgd_spy)
    caat.protect(face_images[:2, :, :32, :32])
    assert len(steps) == len(from_pgd) == 2
    for grads, moves, backward in zip(gradients, steps, from_pgd):
        assert sum((grads[k] * moves[k]).sum() for k in grads) < 0, "the keys/values must descend the loss"
        given = torch.cat([g.flatten() for g in grads.values()])
        assert torch.nn.functional.cosine_similarity(given, backward, dim=0) > 0.999
    after = dict(unet.named_parameters())
    moved = {name for name in before if not torch.equal(before[name], after[name].detach())}
    assert moved == trainable


def test_caat_refuses_what_it_does_not_train():
    from facedefense_iterative.caat import CAAT

    with pytest.raises(ConfigError, match="prior_loss_weight"):
        CAAT.Config(model="m", prior_loss_weight=1.0)
    with pytest.raises(ConfigError, match="cross-attention"):
        CAAT.Config(model="m", lora_rank=4)
    with pytest.raises(ConfigError, match="one surrogate"):
        CAAT.Config(model="a,b")
    defaults = CAAT.Config()
    assert (defaults.eps, defaults.step_size, defaults.steps, defaults.learning_rate) == (8 / 255, 0.0025, 250, 1e-5)


def test_caat_resumes_bit_for_bit(trained_tiny_sd_path, face_images, tmp_path, monkeypatch):
    """A run stopped during its second step resumes from the state saved after the first (photos,
    keys/values, AdamW moments, generator) and ends where an uninterrupted run ends (its third
    step's PGD sees the keys/values that the restored moments moved in the second)."""
    from facedefense.interfaces import IdentitySet
    from facedefense.optim import LinfPGD
    from facedefense_iterative.caat import CAAT

    photos = list(face_images[:2, :, :32, :32])
    caat = CAAT(model=str(trained_tiny_sd_path), **dict(CAAT_FAST, steps=3, checkpoint_every=1))  # each run starts afresh
    whole = caat.protect_identity(IdentitySet.from_images(photos))
    real, calls = LinfPGD.step, []

    def stopping(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("stopped")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LinfPGD, "step", stopping)
    with pytest.raises(RuntimeError, match="stopped"):
        caat.protect_identity(IdentitySet.from_images(photos), workdir=tmp_path)
    monkeypatch.setattr(LinfPGD, "step", real)
    resumed = caat.protect_identity(IdentitySet.from_images(photos), workdir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(whole.images, resumed.images))


# -- SimAC --------------------------------------------------------------------------------------

#: One ASPL round of one PGD step (the contract's gain is 9.5x same-budget noise's) after one search
#: iteration over two samples.
SIMAC_FAST = dict(FAST, num_class_images=2, class_image_steps=2, learning_rate=1e-4, steps=1, pgd_steps=1,
                  surrogate_steps=1, search_steps=1, search_samples=2)


@pytest.fixture(scope="module")
def simac(trained_tiny_sd_path):
    """One SimAC (SIMAC_FAST) for the module: every run starts from the base weights (``reset_surrogates``)."""
    from facedefense_iterative.simac import SimAC

    return SimAC(model=str(trained_tiny_sd_path), eps=SmallContract.eps, **SIMAC_FAST)


class TestSimAC(SmallContract):
    registry_name = "simac"

    def make_method(self, request):
        return request.getfixturevalue("simac")

    def test_records_its_timestep_sets(self, result):
        """One search iteration deletes 2 x 20 of the 1000 timesteps."""
        assert [s["timesteps_kept"] for s in result.stats] == [960, 960]
        assert all(0 <= s["timesteps_lowest"] < s["timesteps_highest"] <= 999 for s in result.stats)

    def test_resumes_without_repeating_the_search(self, method, images, result, tmp_path, monkeypatch):
        """A run stopped in its first ASPL round resumes with the saved timestep sets (no second
        search) and ends where the uninterrupted run (the contract's ``result``) ended."""
        from facedefense.interfaces import IdentitySet
        from facedefense_iterative import simac as simac_module
        from facedefense_iterative.aspl import ASPL

        real_round, searches = ASPL._round, []

        def stopping(self, *args, **kwargs):
            raise RuntimeError("stopped")

        monkeypatch.setattr(ASPL, "_round", stopping)
        with pytest.raises(RuntimeError, match="stopped"):
            method.protect_identity(IdentitySet.from_images(list(images)), workdir=tmp_path)
        monkeypatch.setattr(ASPL, "_round", real_round)
        real_search = simac_module.greedy_timesteps
        monkeypatch.setattr(simac_module, "greedy_timesteps", lambda *a, **k: searches.append(1) or real_search(*a, **k))
        resumed = method.protect_identity(IdentitySet.from_images(list(images)), workdir=tmp_path)
        assert searches == []
        assert all(torch.equal(a, b) for a, b in zip(result.images, resumed.images))


@pytest.mark.parametrize("strong_end", ["high", "low"])
def test_greedy_search_deletes_around_the_weakest_and_steps_at_the_strongest(strong_end):
    """With a score that grows toward one end, the search deletes around the lowest-scoring
    candidate and steps at the highest-scoring one each iteration, so the survivors gather at the
    strong end; swapping min and max sends them to the other end and fails."""
    from facedefense_iterative.simac import greedy_timesteps

    sign = 1 if strong_end == "high" else -1
    scored, advanced = [], []

    def score(t):
        scored.append(t)
        return sign * t

    kept = greedy_timesteps(score, advanced.append, total=1000, generator=torch.Generator().manual_seed(0),
                            steps=50, samples=5, radius=20, keep=100)
    assert len(kept) <= 100 and len(advanced) == len(scored) // 5
    for number, best in enumerate(advanced):
        batch = scored[5 * number : 5 * number + 5]
        assert best == (max(batch) if sign > 0 else min(batch))
        assert (min(batch) if sign > 0 else max(batch)) not in kept.tolist()
    assert (kept.float().mean() > 700) if sign > 0 else (kept.float().mean() < 300)
    untouched = greedy_timesteps(score, advanced.append, total=1000, generator=torch.Generator(), steps=0)
    assert len(untouched) == 1000


def test_simac_loss_draws_the_kept_timesteps_and_adds_a_feature_term_with_a_gradient(simac, face_images):
    """Every UNet call of the objective runs at a timestep of the photo's kept set; with
    feature_weight 1 the objective is the denoising loss (same draws) PLUS a positive feature
    distance whose gradient reaches the photos (GAP-Diff's copy adds it as a float: no gradient)."""
    from facedefense_iterative.simac import simac_loss
    from facedefense_iterative.surrogate import PhotoBatch

    surrogate = simac.surrogates[0]
    photos = PhotoBatch.pack(list(face_images[:2, :, :32, :32]), 32)
    states = surrogate.embed([PROMPT], grad=False).detach()
    allowed = [torch.tensor([700, 701]), torch.tensor([300])]
    seen = []
    hook = surrogate.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[1].tolist()))
    moved = (photos.padded + 4 / 255 * torch.randn(photos.padded.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    values, gradients = [], []
    try:
        for weight in (0.0, 1.0):
            x = moved.clone().requires_grad_(True)
            value = simac_loss(surrogate, photos, x, states, allowed, generator=torch.Generator().manual_seed(3),
                               feature_weight=weight)
            values.append(value.detach())
            gradients.append(torch.autograd.grad(value.sum(), x)[0])
    finally:
        hook.remove()
    assert seen and all(t[0] in (700, 701) and t[1] == 300 for t in seen)
    assert (values[1] > values[0]).all()
    assert (gradients[1] - gradients[0]).abs().sum() > 0


def test_simac_defaults_and_refusals():
    from facedefense_iterative.simac import SimAC

    with pytest.raises(ConfigError, match="feature_weight"):
        SimAC.Config(model="m", feature_weight=-1.0)
    defaults = SimAC.Config()
    assert (defaults.eps, defaults.step_size, defaults.steps, defaults.pgd_steps, defaults.surrogate_steps) == (8 / 255, 0.0025, 50, 6, 3)
    assert (defaults.search_steps, defaults.search_samples, defaults.search_radius, defaults.search_keep) == (50, 5, 20, 100)
