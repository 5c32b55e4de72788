"""Mist and SDS: contracts on the trained tiny model (a higher denoising loss than same-budget
noise, with common random numbers), options and bad input."""

from __future__ import annotations

import pytest

from facedefense.errors import ConfigError
from facedefense.testing.contracts import DefenderContract
from facedefense_iterative.mist import Mist
from facedefense_iterative.sds import SDS


def denoising_loss_of(method, images, generator, draws: int = 8):
    """Mean denoising loss of the surrogate over ``draws`` (t, noise) pairs from ``generator``."""
    import torch

    from facedefense.diffusion import denoising_loss, encode_latents
    from facedefense.imaging import resize, working_size

    parts = method.surrogate.parts
    size = working_size(*images.shape[-2:], method.config.resolution)
    with torch.no_grad():
        latents = encode_latents(parts.vae, resize(images, size)).float()
        losses = [
            denoising_loss(parts.unet, parts.scheduler, latents, method.surrogate.condition, generator=generator)
            for _ in range(draws)
        ]
    return torch.stack(losses).mean(0)


class TestMist(DefenderContract):
    registry_name = "mist"
    odd_size = (24, 40)  # shape and budget only (at 32x32 Mist's gain over noise is thin: 1.5x)
    objective_higher_is_better = True

    def make_method(self, request):
        model = str(request.getfixturevalue("trained_tiny_sd_path"))
        # 4 steps: the protected loss gain is 9x noise's (8 steps: 21x)
        return Mist(model=model, eps=self.eps, steps=4, step_size=2 / 255, resolution=None, device="cpu", dtype="float32")

    def objective(self, method, images, generator):
        return denoising_loss_of(method, images, generator)


class TestSDSPlus(DefenderContract):
    """SDS(+) raises the denoising loss. The posterior mean: the tiny VAE's posterior is wide (std
    1.1 against |mean| 0.2, unlike Stable Diffusion's), and with samples a flipped sign still beat
    noise here; the sampled default is checked by test_denoising_loss_is_taken_at_a_posterior_sample."""

    registry_name = "sds"
    image_size = (32, 32)  # 4x4 latents and 4 steps: the gain is still 24x noise's
    odd_size = (24, 40)
    objective_higher_is_better = True

    def make_method(self, request):
        model = str(request.getfixturevalue("trained_tiny_sd_path"))
        return SDS(
            model=model, mode="+", eps=self.eps, steps=4, step_size=2 / 255, posterior="mean", resolution=None,
            device="cpu", dtype="float32",
        )

    def objective(self, method, images, generator):
        return denoising_loss_of(method, images, generator)


@pytest.fixture(scope="module")
def faces():
    """Two 32x32 sample faces (4x4 latents)."""
    from facedefense.testing.tiny_models import sample_faces

    return sample_faces(2, 32)


def test_sds_minus_lowers_the_loss_and_never_differentiates_the_unet(trained_tiny_sd_path, faces):
    """SDS(-) descends the denoising loss; no UNet activation keeps an autograd graph. The posterior
    mean: the tiny VAE's posterior is wide (std 1.1 against |mean| 0.2, unlike Stable Diffusion's),
    so its samples would bury the signal of 6 steps (SDS(+)'s contract checks the sampled default)."""
    import torch

    defender = SDS(
        model=str(trained_tiny_sd_path), mode="-", steps=6, step_size=2 / 255, posterior="mean", resolution=None,
        device="cpu",
    )
    graphs = []
    hook = defender.surrogate.parts.unet.register_forward_hook(lambda m, i, o: graphs.append(o.sample.requires_grad))
    try:
        result = defender.protect(faces)
    finally:
        hook.remove()
    assert graphs and not any(graphs)
    noise = torch.rand(faces.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    noisy = (faces + noise * defender.config.eps).clamp(0, 1)
    generator = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    protected = denoising_loss_of(defender, result.images, generator()).mean()
    assert protected < denoising_loss_of(defender, noisy, generator()).mean()


@pytest.mark.parametrize("cls", [Mist, SDS])
def test_texture_target_pulls_the_latent(cls, tiny_sd_path, face_images):
    """The textural term moves the latent toward the target pattern's latent (64 px: at 32 and 48
    px SDS's posterior samples hide the five steps' pull on one of the two faces)."""
    import torch

    from facedefense.diffusion import encode_latents
    from facedefense_iterative.targets import texture_pattern

    options = {"mode": "textural"} if cls is Mist else {"target": "pattern", "target_weight": 1e-6}
    defender = cls(model=str(tiny_sd_path), steps=5, step_size=2 / 255, resolution=None, device="cpu", **options)
    result = defender.protect(face_images)
    vae = defender.surrogate.parts.vae
    with torch.no_grad():
        target = encode_latents(vae, texture_pattern((64, 64)))
        before = (encode_latents(vae, face_images) - target).flatten(1).norm(dim=1)
        after = (encode_latents(vae, result.images) - target).flatten(1).norm(dim=1)
    assert (after < before).all()


def test_target_that_is_not_an_image(tmp_path, tiny_sd_path):
    bad = tmp_path / "target.png"
    bad.write_text("not an image")
    with pytest.raises(ConfigError, match="target.*not an image"):
        Mist(model=str(tiny_sd_path), target=str(bad), device="cpu")
    with pytest.raises(ConfigError, match="is not a file"):
        SDS(model=str(tiny_sd_path), target=str(tmp_path / "missing.png"), device="cpu")


def test_bad_options(tiny_sd_path):
    with pytest.raises(ConfigError, match="mode"):
        SDS(model=str(tiny_sd_path), mode="*", device="cpu")
    with pytest.raises(ConfigError, match="mode"):
        Mist(model=str(tiny_sd_path), mode="loud", device="cpu")
    with pytest.raises(ConfigError, match="needs a surrogate model"):
        Mist(device="cpu")
    with pytest.raises(ConfigError, match="posterior"):
        SDS(model=str(tiny_sd_path), posterior="mode", device="cpu")


def _posterior_then_loss(method, images, seed):
    """Independently of the methods: (denoising loss at a posterior sample, at the posterior mean),
    with the sample then t and noise drawn from one generator seeded ``seed`` (mean: same t and noise)."""
    import torch

    from facedefense.diffusion import denoising_loss

    parts = method.surrogate.parts
    scale = parts.vae.config.scaling_factor
    posterior = parts.vae.encode(images * 2 - 1).latent_dist
    losses = []
    for latents in ("sample", "mean"):
        generator = torch.Generator().manual_seed(seed)
        sample = posterior.sample(generator=generator)
        z = (sample if latents == "sample" else posterior.mean) * scale
        losses.append(denoising_loss(parts.unet, parts.scheduler, z, method.surrogate.condition, generator=generator))
    return losses


@pytest.mark.parametrize("cls", [Mist, SDS])
def test_denoising_loss_is_taken_at_a_posterior_sample(cls, tiny_sd_path, faces):
    """As the references' ``get_first_stage_encoding``: the latent is a sample of the VAE posterior
    from the method's generator, not its mean (which the tiny VAE's wide posterior tells apart)."""
    import torch

    options = {"mode": "semantic"} if cls is Mist else {"mode": "+"}
    defender = cls(model=str(tiny_sd_path), resolution=None, device="cpu", **options)
    with torch.no_grad():
        value = defender.loss(faces, torch.Generator().manual_seed(5))
        at_sample, at_mean = _posterior_then_loss(defender, faces, 5)
    expected = -at_sample if cls is Mist else at_sample
    torch.testing.assert_close(value, expected)
    assert (at_sample - at_mean).abs().min() > 1e-3


def test_mist_fused_loss_adds_texture_and_subtracts_semantic(tiny_sd_path, faces):
    """``L_T - w * L_s`` with the signs of the reference's mode 2 (a flipped term fails)."""
    import torch

    from facedefense.diffusion import denoising_loss, encode_latents
    from facedefense_iterative.targets import texture_pattern

    defender = Mist(model=str(tiny_sd_path), resolution=None, device="cpu", semantic_weight=0.3)
    parts = defender.surrogate.parts
    with torch.no_grad():
        value = defender.loss(faces, torch.Generator().manual_seed(2))
        generator = torch.Generator().manual_seed(2)
        z = encode_latents(parts.vae, faces, sample=True, generator=generator)
        semantic = denoising_loss(parts.unet, parts.scheduler, z, defender.surrogate.condition, generator=generator)
        texture = (z - encode_latents(parts.vae, texture_pattern((32, 32)))).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(value, texture - 0.3 * semantic)
