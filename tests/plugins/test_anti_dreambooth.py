"""Anti-DreamBooth family (aspl, fsmg) and advdm: contracts on the trained tiny model, identity
sets, targeted and ensemble variants, resume, bad input."""

from __future__ import annotations

import pytest
import torch

from facedefense.errors import ConfigError, ModelNotFoundError
from tests.plugins.test_caat_simac import PROMPT, SmallContract

FAST = dict(device="cpu", dtype="float32", resolution=32, step_size=2 / 255)
SET_FAST = dict(FAST, num_class_images=2, class_image_steps=2, learning_rate=1e-4)

# SmallContract (test_caat_simac): 32 px photos; the objective is the attacker's (base model's)
# denoising loss, higher is better, its model loaded once per process for every module that uses it.


class TestAdvDM(SmallContract):
    registry_name = "advdm"

    def make_method(self, request):
        from facedefense_iterative.advdm import AdvDM

        # 2 steps: the protected loss gain is 7.5x same-budget noise's (3 steps: 10x)
        return AdvDM(model=str(request.getfixturevalue("trained_tiny_sd_path")), eps=self.eps, steps=2, prompt=PROMPT, **FAST)


def test_advdm_options_and_eot(trained_tiny_sd_path, face_images):
    from facedefense_iterative.advdm import AdvDM

    defender = AdvDM(model=str(trained_tiny_sd_path), steps=2, eot="none,jpeg", momentum=0.5, schedule="cosine", **FAST)
    assert defender.eot.names == ["none", "jpeg"]
    result = defender.protect(face_images[:1])
    assert max(result.linf) <= 16 + 1e-3 and result.stats[0]["objective_end"] > 0
    with pytest.raises(ConfigError, match="schedule"):
        AdvDM(model=str(trained_tiny_sd_path), schedule="exponential", **FAST)
    with pytest.raises(ConfigError, match="needs a surrogate model"):
        AdvDM(device="cpu")


#: One round of one PGD step and one surrogate step: the contract's gain is 5x same-budget noise's.
ASPL_FAST = dict(SET_FAST, steps=1, pgd_steps=1, surrogate_steps=1)


class TestASPL(SmallContract):
    registry_name = "aspl"

    def make_method(self, request):
        from facedefense_iterative.aspl import ASPL

        return ASPL(model=str(request.getfixturevalue("trained_tiny_sd_path")), eps=self.eps, **ASPL_FAST)

    def test_single_photo_identity(self, method):
        from facedefense.interfaces import IdentitySet

        result = method.protect_identity(IdentitySet.from_images(_faces(1, 32)))
        assert len(result.images) == 1 and 0 < result.linf[0] <= method.config.eps * 255 + 1e-3


class TestFSMG(SmallContract):
    registry_name = "fsmg"

    def make_method(self, request):
        from facedefense_iterative.fsmg import FSMG

        # 2 steps: with 1, a PGD of the wrong sign still passed the contract's beats-noise check
        return FSMG(model=str(request.getfixturevalue("trained_tiny_sd_path")), eps=self.eps, steps=2, train_steps=1, **SET_FAST)


def _faces(count: int, size: int = 64) -> list[torch.Tensor]:
    from facedefense.testing.tiny_models import sample_faces

    return list(torch.round(sample_faces(count, size) * 255) / 255)


def test_identity_of_any_sizes_targeted_ensemble_lora(trained_tiny_sd_path, tmp_path):
    """Photos and references of other sizes, a target image, two models and LoRA in one run."""
    from facedefense.imaging import resize
    from facedefense.interfaces import IdentitySet
    from facedefense.io import save_image
    from facedefense_iterative.aspl import ASPL

    faces = _faces(4, 48)
    photos = [resize(faces[0][None], (32, 32))[0], resize(faces[1][None], (40, 32))[0]]
    references = [resize(faces[2][None], (48, 24))[0], faces[3]]
    target = tmp_path / "target.png"
    save_image(torch.full((3, 40, 40), 0.5), target)
    model = str(trained_tiny_sd_path)
    aspl = ASPL(model=f"{model},{model}", target_image=str(target), lora_rank=2, eps=4 / 255, **ASPL_FAST)
    assert all("lora_" in name for name in aspl.surrogates[0].trainable)
    result = aspl.protect_identity(IdentitySet.from_images(photos, references=references), workdir=tmp_path / "w")
    assert [tuple(i.shape) for i in result.images] == [(3, 32, 32), (3, 40, 32)]
    assert max(result.linf) <= 4 + 1e-3 and min(result.linf) > 0
    assert all("denoising_loss_last" in s for s in result.stats)


@pytest.fixture(scope="module")
def small_aspl(trained_tiny_sd_path):
    from facedefense_iterative.aspl import ASPL

    # two rounds of one PGD step: the momentum and the random start carry across the interruption
    return ASPL(model=str(trained_tiny_sd_path), **dict(ASPL_FAST, steps=2, pgd_steps=1, momentum=0.5, random_start=True))


def test_interrupted_aspl_resumes_to_the_same_result(small_aspl, tmp_path, monkeypatch):
    from facedefense.interfaces import IdentitySet
    from facedefense_iterative.aspl import ASPL

    identity = IdentitySet.from_images(_faces(2, 32), references=_faces(3, 32)[2:])
    aspl = small_aspl
    reference = aspl.protect_identity(identity, workdir=tmp_path / "whole")

    original_round = ASPL._round
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original_round(self, *args, **kwargs)

    monkeypatch.setattr(ASPL, "_round", interrupted)
    with pytest.raises(KeyboardInterrupt):
        aspl.protect_identity(identity, workdir=tmp_path / "cut")
    monkeypatch.setattr(ASPL, "_round", original_round)
    assert (tmp_path / "cut" / "aspl" / "state.pt").is_file()
    resumed = aspl.protect_identity(identity, workdir=tmp_path / "cut")  # surrogates come from the saved state
    for a, b in zip(reference.images, resumed.images):
        assert torch.equal(a, b)


def test_bad_inputs_are_refused_before_any_model_loads(trained_tiny_sd_path, tmp_path, monkeypatch):
    import facedefense_iterative.surrogate
    from facedefense_iterative.aspl import ASPL

    def load(model, **kwargs):
        raise AssertionError(f"{model} loaded before every option was checked")

    monkeypatch.setattr(facedefense_iterative.surrogate, "Surrogate", load)
    not_an_image = tmp_path / "target.png"
    not_an_image.write_text("hello")
    with pytest.raises(ConfigError, match="target_image"):
        ASPL(model=str(trained_tiny_sd_path), target_image=str(not_an_image), **ASPL_FAST)
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        ASPL(model=f"{trained_tiny_sd_path},{tmp_path / 'nowhere'}", **ASPL_FAST)
    with pytest.raises(ConfigError, match="needs a surrogate model"):
        ASPL(device="cpu")
    with pytest.raises(ConfigError, match="schedule"):
        ASPL(model=str(trained_tiny_sd_path), schedule="fast", **ASPL_FAST)
    (tmp_path / "empty").mkdir()  # a class-image folder is read when the first photo is protected: checked before
    for folder, message in (("empty", "holds no images"), ("nowhere", "is not a folder"), ("target.png", "is not a folder")):
        with pytest.raises(ConfigError, match=f"class image folder .*{folder} {message}"):
            ASPL(model=str(trained_tiny_sd_path), class_images=str(tmp_path / folder), **ASPL_FAST)


def test_class_image_folder_replaces_generation(tmp_path, tiny_sd_path):
    """A user's class-image folder: its first `count` images (sorted), square-cropped to the resolution."""
    from facedefense_iterative.aspl import ASPL
    from facedefense_iterative.surrogate import class_images

    folder = _write_set(tmp_path / "class", [torch.full((3, 40, 48), value) for value in (0.2, 0.4, 0.6)])
    images = class_images("no-model", "a photo of person", 2, resolution=32, steps=1, seed=0, device=torch.device("cpu"),
                          dtype=torch.float32, folder=folder)
    assert images.shape == (2, 3, 32, 32) and torch.allclose(images.mean((1, 2, 3)), torch.tensor([0.2, 0.4]), atol=1 / 255)
    no_prior = ASPL(model=str(tiny_sd_path), class_images=str(folder), num_class_images=0, resolution=32, device="cpu")
    assert no_prior.class_images_for(0, "a photo of person") is None  # 0 images: no prior, even with a folder


def _write_set(folder, faces):
    from facedefense.io import save_image

    folder.mkdir(parents=True)
    for index, face in enumerate(faces):
        save_image(face, folder / f"{index}.png")
    return folder


def test_cli_reference_set_resume_and_bad_resume(trained_tiny_sd_path, tmp_path, monkeypatch):
    """`protect SET_B --reference SET_A --method aspl`, then --resume (same images), then --resume
    with another method, budget or options: one-line errors, before the defender is built."""
    import json

    import facedefense.cli.run
    from facedefense.imaging import resize
    from facedefense.testing.cli import invoke

    faces = _faces(4, 32)
    set_b = _write_set(tmp_path / "B", [faces[0], resize(faces[1][None], (24, 40))[0]])
    set_a = _write_set(tmp_path / "A", faces[2:])
    out = tmp_path / "out"
    # the class images of SET_FAST (the same cache entry as the other ASPL tests: no second generation)
    common = ["-o", "num_class_images=2", "-o", "class_image_steps=2", "-o", "resolution=32", "--steps", "1",
              "--device", "cpu", "--dtype", "float32", "--no-progress"]
    options = [*common, "-o", "pgd_steps=1", "-o", "surrogate_steps=1"]  # one round: its state is saved, then removed
    base = ["protect", str(set_b), "--reference", str(set_a), "--output", str(out), "--model", str(trained_tiny_sd_path)]
    first = invoke(*base, "--method", "aspl", *options)
    assert first.exit_code == 0, first.output
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["summary"]["processed"] == 2 and manifest["summary"]["failed"] == 0
    assert manifest["status"] == "completed" and manifest["references"].endswith("A")
    assert not list((out / ".facedefense-work").rglob("*.pt"))  # a completed run keeps no surrogate state
    written = {p.name: p.read_bytes() for p in out.glob("*.png")}
    again = invoke(*base, "--method", "aspl", *options, "--resume")
    assert again.exit_code == 0, again.output
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == written
    built, make = [], facedefense.cli.run._make
    monkeypatch.setattr(facedefense.cli.run, "_make", lambda *args: built.append(args[1]) or make(*args))
    others = {"method": ["--method", "fsmg", *common], "budget": ["--method", "aspl", "--eps", "4/255", *options],
              "options": ["--method", "aspl", *common, "-o", "pgd_steps=2", "-o", "surrogate_steps=1"]}
    for message, other in others.items():
        failed = invoke(*base, *other, "--resume")
        assert failed.exit_code == 2 and message in failed.output and "Traceback" not in failed.output
        assert len(failed.output.strip().splitlines()) == 1, failed.output
    (out / ".facedefense-work" / "run.json").unlink()
    # an ensemble of models passes the path check (the resume check refuses the run), a missing member does not
    model, nowhere = str(trained_tiny_sd_path), str(tmp_path / "nowhere")
    for models, message in (([model], "holds no saved run"), ([model, model], "holds no saved run"),
                            ([model, nowhere], f"model folder {nowhere} does not exist")):
        failed = invoke(*base[:-2], "--model", ",".join(models), "--method", "aspl", *options, "--resume")
        assert failed.exit_code == 2 and message in failed.output and "Traceback" not in failed.output, failed.output
    assert built == []  # refused before loading the model


def test_surrogate_latents_match_encode_latents_and_encode_each_image_once(tiny_sd_path):
    from facedefense.diffusion import encode_latents
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_iterative.surrogate import Surrogate

    surrogate = Surrogate(str(tiny_sd_path), device=torch.device("cpu"), dtype=torch.float32)
    pixels = sample_faces(2, 32)
    with torch.no_grad():
        expected = encode_latents(surrogate.vae, pixels, sample=True, generator=torch.Generator().manual_seed(3))
    calls = []
    encode = surrogate.vae.encode
    surrogate.vae.encode = lambda x: calls.append(len(x)) or encode(x)
    drawn = surrogate.latent_samples(pixels, torch.Generator().manual_seed(3))
    assert torch.allclose(drawn, expected.float(), atol=1e-5) and calls == [1, 1]  # one image at a time
    again = surrogate.latent_samples(pixels.flip(0), torch.Generator().manual_seed(4))
    assert calls == [1, 1] and again.shape == drawn.shape and not torch.equal(again, drawn.flip(0))  # cached; new noise
