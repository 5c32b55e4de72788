"""Glaze and ACE (Mist v2) on the trained tiny model: the contracts (budget after 8-bit rounding,
beat same-budget noise on their own objectives with common random numbers), tests that fail if an
objective's sign or the LoRA's training set were wrong, and ACE's bit-for-bit resume."""

from __future__ import annotations

import pytest
import torch

from facedefense.errors import ConfigError
from facedefense.testing.contracts import DefenderContract, _images
from tests.plugins.test_caat_simac import PROMPT, SmallContract

# -- ACE ----------------------------------------------------------------------------------------

#: Two rounds of three PGD steps, one LoRA step between them: two rounds train the LoRA once, and
#: three steps a round move ACE's objective clearly past noise (+0.13% of the base model's score
#: error; -0.29% with the sign flipped). One step a round moved it by +0.23% on the tiny model of the
#: earlier training recipe and by -0.01% on the current one: within what a change of model shifts.
ACE_FAST = dict(device="cpu", dtype="float32", resolution=32, step_size=4 / 255, num_class_images=2,
                class_image_steps=2, learning_rate=1e-3, steps=2, pgd_steps=3, surrogate_steps=1)


def base_score_error(ace, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ACE's objective on the BASE model at 32x32 (its LoRA reset to zero; the built-in pattern as
    target), averaged over 4 draws of (t, eps): what an attacker's LoRA starts from."""
    from facedefense.diffusion import encode_latents
    from facedefense.imaging import resize
    from facedefense_iterative.ace import score_error

    ace.reset_surrogates()
    surrogate = ace.surrogates[0]
    with torch.no_grad():
        states = surrogate.embed([PROMPT], grad=False)
        latents = encode_latents(surrogate.vae, resize(images, (32, 32)))
        target = ace.target_latents((32, 32))
        return sum(score_error(surrogate.unet, surrogate.scheduler, latents, states, target, generator=generator)
                   for _ in range(4)) / 4


@pytest.fixture(scope="module")
def ace(trained_tiny_sd_path):
    from facedefense_iterative.ace import ACE

    return ACE(model=str(trained_tiny_sd_path), eps=SmallContract.eps, **ACE_FAST)


class TestACE(SmallContract):
    registry_name = "ace"
    objective_higher_is_better = False

    def make_method(self, request):
        return request.getfixturevalue("ace")

    def objective(self, method, images, generator):
        return base_score_error(method, images, generator)

    def test_trains_the_lora_on_the_perturbed_photos_and_resumes(self, method, images, result, tmp_path, monkeypatch):
        """A run stopped in its second round has trained only the LoRA adapters, once, on the
        PGD's perturbed photos (training on the clean ones fails); resumed from the state saved
        after round one (photos, LoRA, generator) it ends where the uninterrupted run ended."""
        from facedefense.interfaces import IdentitySet
        from facedefense.optim import LinfPGD
        from facedefense_iterative.surrogate import Surrogate

        seen, train, run, calls = [], Surrogate.train, LinfPGD.run, []

        def spy(self, instances, **kwargs):
            seen.append(instances.clone())
            return train(self, instances, **kwargs)

        def stopping(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("stopped")
            return run(self, *args, **kwargs)

        monkeypatch.setattr(Surrogate, "train", spy)
        monkeypatch.setattr(LinfPGD, "run", stopping)
        with pytest.raises(RuntimeError, match="stopped"):
            method.protect_identity(IdentitySet.from_images(list(images)), workdir=tmp_path)
        assert len(seen) == 1 and not torch.allclose(seen[0], images)
        assert (seen[0] - images).abs().max() <= method.config.eps + 1e-6
        names = set(method.surrogates[0].trainable)
        assert names and all("lora_" in n for n in names)
        monkeypatch.setattr(LinfPGD, "run", run)
        resumed = method.protect_identity(IdentitySet.from_images(list(images)), workdir=tmp_path)
        assert len(seen) == 1, "no LoRA training after the last round"
        assert all(torch.equal(a, b) for a, b in zip(result.images, resumed.images))


def test_score_error_is_the_prediction_distance_to_the_target(ace):
    """`score_error` draws t then eps from the generator and compares the UNet's prediction at
    z_t with the target latent (not with the noise)."""
    from facedefense_iterative.ace import score_error

    surrogate = ace.surrogates[0]
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    target = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    states = surrogate.embed([PROMPT], grad=False)
    with torch.no_grad():
        value = score_error(surrogate.unet, surrogate.scheduler, latents, states, target,
                            generator=torch.Generator().manual_seed(3))
        draws = torch.Generator().manual_seed(3)
        t = torch.randint(0, 1000, (2,), generator=draws)
        noise = torch.randn(latents.shape, generator=draws)
        noisy = surrogate.scheduler.add_noise(latents, noise, t)
        prediction = surrogate.unet(noisy, t, states.expand(2, -1, -1)).sample
    assert torch.allclose(value, (prediction - target).pow(2).flatten(1).mean(1), atol=1e-6)


def test_ace_defaults_and_refusals():
    from facedefense_iterative.ace import ACE

    c = ACE.Config()
    assert (c.eps, c.step_size, c.steps, c.pgd_steps, c.surrogate_steps) == (4 / 255, 0.0025, 5, 30, 10)
    assert (c.lora_rank, c.learning_rate, c.prior_loss_weight, c.num_class_images, c.target) == (4, 1e-4, 0.1, 50, "pattern")
    assert not c.train_text_encoder and not c.random_start
    with pytest.raises(ConfigError, match="target"):
        ACE.Config(model="m", target_image="x.png")
    with pytest.raises(ConfigError, match="one surrogate"):
        ACE.Config(model="a,b")
    with pytest.raises(ConfigError, match="train_text_encoder"):
        ACE.Config(model="m", train_text_encoder=True)


# -- Glaze --------------------------------------------------------------------------------------

GLAZE_FAST = dict(device="cpu", dtype="float32", resolution=32, steps=2, step_size=4 / 255, target_steps=3, lpips_net="alex",
                  lpips_weights="random")


@pytest.fixture(scope="module")
def glaze(trained_tiny_sd_path):
    from facedefense_iterative.glaze import Glaze

    return Glaze(model=str(trained_tiny_sd_path), eps=SmallContract.eps, **GLAZE_FAST)


#: The features of the clean photos' style transfer, per Glaze instance (TestGlaze.objective).
_STYLE_FEATURES: dict = {}


class TestGlaze(DefenderContract):
    registry_name = "glaze"
    image_size = (32, 32)
    odd_size = (24, 40)

    def make_method(self, request):
        return request.getfixturevalue("glaze")

    def objective(self, method, images, generator):
        """Distance of the features to those of the CLEAN photos' style transfer, drawn as the
        run drew it (the target comes first from a generator seeded like the run's). The target
        is the same for the clean, noisy and protected photos: computed once (``_STYLE_FEATURES``)."""
        with torch.no_grad():
            if id(method) not in _STYLE_FEATURES:
                clean = _images(self.batch, *self.image_size)
                _STYLE_FEATURES[id(method)] = method.features(method.style_target(clean, method.make_generator()))
            target = _STYLE_FEATURES[id(method)]
            return (method.features(images) - target).pow(2).flatten(1).mean(1)


def test_glaze_target_is_the_style_transfer_and_the_penalty_a_hinge(glaze, face_images):
    """The target is the sdedit editor's img2img of the photo toward the style prompt (same
    draws); the loss adds alpha * max(LPIPS - p, 0): zero below p, alpha times the excess above."""
    photos = face_images[:1, :, :32, :32]
    c = glaze.config
    assert glaze.editor.name == "sdedit" and glaze.vae is glaze.editor.pipeline.vae
    assert (glaze.editor.config.strength, glaze.editor.config.steps, glaze.editor.config.guidance_scale) == (
        c.strength, c.target_steps, c.guidance_scale)
    expected = glaze.editor.edit(photos, c.style_prompt, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(glaze.style_target(photos, torch.Generator().manual_seed(5)), expected, atol=1e-6)
    moved = (photos + 0.2 * torch.rand(photos.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    with torch.no_grad():
        target = glaze.features(expected)
        distance = (glaze.features(moved) - target).pow(2).flatten(1).mean(1)
        lpips = glaze.perceptual(moved, photos)
        value = glaze.loss(moved, photos, target)
    assert torch.allclose(value, distance + c.alpha * (lpips - c.p).clamp_min(0), atol=1e-5)
    assert torch.allclose(glaze.loss(photos, photos, target), (glaze.features(photos) - target).pow(2).flatten(1).mean(1))


def test_glaze_defaults_and_refusals():
    from facedefense_iterative.glaze import Glaze

    c = Glaze.Config()
    assert (c.eps, c.steps, c.step_size, c.schedule, c.p, c.alpha, c.lpips_net) == (8 / 255, 500, 0.005, "cosine", 0.05, 30.0, "vgg")
    assert (c.style_prompt, c.strength, c.target_steps, c.guidance_scale) == ("a painting in the style of Van Gogh", 0.4, 50, 7.5)
    with pytest.raises(ConfigError, match="no denoising step"):
        Glaze.Config(model="m", strength=0.01, target_steps=50)
    with pytest.raises(ConfigError, match="style_prompt"):
        Glaze.Config(model="m", style_prompt=" ")


# -- the command line ---------------------------------------------------------------------------

CLI_CASES = {
    "ace": ["-o", "steps=2", "-o", "pgd_steps=1", "-o", "surrogate_steps=1", "-o", "num_class_images=2",
            "-o", "class_image_steps=2", "-o", "resolution=32"],
    "glaze": ["-o", "steps=2", "-o", "target_steps=5", "-o", "lpips_weights=random", "-o", "lpips_net=alex",
              "-o", "resolution=none"],
}


@pytest.mark.integration
@pytest.mark.parametrize("method", list(CLI_CASES))
def test_cli_protects_a_folder_within_budget(method, tmp_path, tiny_sd_path, png_folder):
    """`facedefense protect FOLDER --method glaze|ace` writes every photo, changed and within the
    budget after 8-bit saving, with its manifest (in-process, but a whole model load and run each:
    the integration tier)."""
    import json

    import numpy as np
    from PIL import Image

    from facedefense.testing.cli import invoke

    out = tmp_path / "out"
    args = ["protect", str(png_folder), "--method", method, "--model", str(tiny_sd_path), "--eps", "4/255",
            "--output", str(out), "--device", "cpu", "--dtype", "float32", *CLI_CASES[method]]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    for source in sorted(png_folder.glob("*.png")):
        original = np.asarray(Image.open(source)).astype(int)
        protected = np.asarray(Image.open(out / source.name)).astype(int)
        assert protected.shape == original.shape and 0 < np.abs(protected - original).max() <= 4
    assert json.loads((out / "facedefense.json").read_text())["method"]["name"] == method
