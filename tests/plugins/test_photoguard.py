"""PhotoGuard encoder attack: contract, objective, options."""

from __future__ import annotations

import pytest

from facedefense.errors import ConfigError
from facedefense.testing.contracts import DefenderContract
from facedefense_iterative.photoguard import PhotoGuard


class TestPhotoGuard(DefenderContract):
    image_size = (32, 32)  # 4x4 latents
    odd_size = (24, 40)

    def make_method(self, request):
        model = str(request.getfixturevalue("tiny_sd_path"))
        return PhotoGuard(model=model, eps=self.eps, steps=6, step_size=2 / 255, resolution=None, device="cpu", dtype="float32")

    def objective(self, method, images, generator):
        import torch

        from facedefense.diffusion import latent_mean
        from facedefense.imaging import resize, working_size

        size = working_size(*images.shape[-2:], method.config.resolution)
        with torch.no_grad():
            return latent_mean(method.vae, resize(images, size)).flatten(1).norm(dim=1)


def test_requires_a_model():
    with pytest.raises(ConfigError, match="needs a surrogate model"):
        PhotoGuard(device="cpu")


def test_bad_target(tiny_sd_path):
    with pytest.raises(ConfigError, match="target"):
        PhotoGuard(model=str(tiny_sd_path), target="nowhere.png", device="cpu")


def test_gray_target_moves_latent_toward_gray(tiny_sd_path, faces_and_mask_32):
    import torch

    from facedefense.diffusion import latent_mean

    face_images = faces_and_mask_32[0]  # 32 px: 4x4 latents
    defender = PhotoGuard(
        model=str(tiny_sd_path), target="gray", steps=5, step_size=2 / 255, resolution=None, device="cpu", dtype="float32"
    )
    result = defender.protect(face_images)
    gray = torch.full_like(face_images[:1], 0.5)
    with torch.no_grad():
        target = latent_mean(defender.vae, gray)
        before = (latent_mean(defender.vae, face_images) - target).flatten(1).norm(dim=1)
        after = (latent_mean(defender.vae, result.images) - target).flatten(1).norm(dim=1)
    assert (after < before).all()
    assert all(s["objective_end"] < s["objective_start"] for s in result.stats)


def test_cli_protects_a_folder_within_budget(tmp_path, tiny_sd_path, png_folder):
    """The issue's acceptance command on a folder of small portraits."""
    import json

    import numpy as np
    from PIL import Image

    from facedefense.testing.cli import invoke

    out = tmp_path / "out"
    args = ["protect", str(png_folder), "--method", "photoguard", "--model", str(tiny_sd_path), "--eps", "8/255",
            "--steps", "2", "--output", str(out), "--device", "cpu", "--dtype", "float32", "-o", "resolution=none"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    for source in sorted(png_folder.glob("*.png")):
        original = np.asarray(Image.open(source)).astype(int)
        protected = np.asarray(Image.open(out / source.name)).astype(int)
        assert protected.shape == original.shape
        assert 0 < np.abs(protected - original).max() <= 8
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["method"]["name"] == "photoguard" and manifest["method"]["config"]["steps"] == 2
    assert all(entry["within_budget"] for entry in manifest["images"])


class TestPhotoGuardDiffusion(DefenderContract):
    """The diffusion attack (img2img edit unrolled) on the trained tiny model.

    No beats-noise check here: the tiny models' edits are dominated by their own draws (the tiny
    VAE's latents are small next to unit noise), so a few PGD steps do not generalize to other
    draws; test_diffusion_attack_beats_noise_with_common_random_numbers holds the draws fixed.
    """

    registry_name = "photoguard"
    image_size = (32, 32)
    odd_size = (24, 40)

    def make_method(self, request):
        model = str(request.getfixturevalue("trained_tiny_sd_path"))
        return PhotoGuard(
            model=model, attack="diffusion", eps=self.eps, steps=2, step_size=2 / 255, diffusion_steps=1,
            guidance_scale=1.0, resolution=None, device="cpu", dtype="float32",
        )


def test_diffusion_gradient_descends_the_edit_distance(trained_tiny_sd_path, faces_and_mask_32):
    """With the edit's random numbers fixed, one sign step against the gradient brings the edit of
    every image closer to the target by far more than same-budget noise moves it."""
    import torch

    face_images = faces_and_mask_32[0]  # 32 px: 4x4 latents
    defender = PhotoGuard(
        model=str(trained_tiny_sd_path), attack="diffusion", diffusion_steps=2, guidance_scale=1.0,
        resolution=None, device="cpu",
    )
    x = face_images.clone().requires_grad_(True)
    clean = defender.diffusion_distance(x, torch.Generator().manual_seed(7))
    (gradient,) = torch.autograd.grad(clean.sum(), x)
    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 2 / 255
    with torch.no_grad():
        stepped = defender.diffusion_distance(face_images - 2 / 255 * gradient.sign(), torch.Generator().manual_seed(7))
        noisy = defender.diffusion_distance(face_images + noise, torch.Generator().manual_seed(7))
    gain, noise_gain = clean.detach() - stepped, clean.detach() - noisy
    assert (gain > 0).all() and (gain > 2 * noise_gain.abs()).all(), (gain, noise_gain)


def test_text_to_image_model_needs_strength_below_one(tiny_sd_path, face_images):
    defender = PhotoGuard(model=str(tiny_sd_path), attack="diffusion", strength=1.0, steps=1, device="cpu")
    with pytest.raises(ConfigError, match="strength"):
        defender.protect(face_images)


def _half_mask(folder, size):
    """A size x size mask whose right half (white) is to be repainted."""
    import numpy as np
    from PIL import Image

    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[:, size // 2 :] = 255
    path = folder / f"mask{size}.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def faces_and_mask_32(tmp_path_factory, face_images):
    """The sample faces at 32x32 (8-bit grid) and a 32x32 half mask: 4x4 latents (read only)."""
    import torch

    from facedefense.imaging import resize

    faces = torch.round(resize(face_images, (32, 32)).clamp(0, 1) * 255) / 255
    return faces, _half_mask(tmp_path_factory.mktemp("mask"), 32)


@pytest.fixture(scope="module")
def inpaint_guard(tiny_inpaint_path, faces_and_mask_32):
    """The diffusion attack on the inpainting model with the half mask, a prompt and classifier-free
    guidance (one load for the tests that read it; none changes it)."""
    return PhotoGuard(
        model=str(tiny_inpaint_path), attack="diffusion", mask=str(faces_and_mask_32[1]), steps=1, step_size=2 / 255,
        diffusion_steps=2, prompt="a photo", guidance_scale=3.0, resolution=None, device="cpu",
    )


def test_diffusion_attack_inpainting_with_mask(inpaint_guard, faces_and_mask_32):
    """Inpainting model, a prompt with classifier-free guidance, checkpointing: the perturbation
    stays outside the mask and a seeded edit is reproducible (the objective's descent is
    test_diffusion_attack_beats_noise_with_common_random_numbers)."""
    import torch

    face_images, defender = faces_and_mask_32[0], inpaint_guard
    assert defender.surrogate.uncond is not None
    result = defender.protect(face_images)
    delta = (result.images - face_images).abs()
    assert delta[..., 16:].max() == 0 and delta[..., :16].max() > 0
    with torch.no_grad():
        a = defender.diffusion_distance(face_images, torch.Generator().manual_seed(1))
        b = defender.diffusion_distance(face_images, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


@pytest.fixture(scope="module")
def sd_guard(tiny_sd_path):
    """The diffusion attack on the text-to-image model, the reference's empty prompt, checkpointing
    on (one load for the tests that read it; a test that changes it restores it with monkeypatch)."""
    return PhotoGuard(
        model=str(tiny_sd_path), attack="diffusion", diffusion_steps=2, guidance_scale=2.0, resolution=None,
        device="cpu",
    )


def test_checkpointing_gives_the_same_gradient(sd_guard, faces_and_mask_32):
    import torch

    face_images = faces_and_mask_32[0]  # 32 px: 4x4 latents
    assert sd_guard.config.checkpointing
    grads = []
    for checkpointing in (True, False):
        defender = sd_guard if checkpointing else PhotoGuard(sd_guard.config.replace(checkpointing=False))
        x = face_images.clone().requires_grad_(True)
        defender.diffusion_distance(x, torch.Generator().manual_seed(0)).sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_mask_of_the_wrong_size(tiny_sd_path, face_images, tmp_path):
    from PIL import Image

    from facedefense.errors import ConfigError

    path = tmp_path / "small.png"
    Image.new("L", (32, 40), 255).save(path)
    defender = PhotoGuard(model=str(tiny_sd_path), mask=str(path), steps=1, device="cpu")
    with pytest.raises(ConfigError, match="mask is 32x40 but the image is 64x64"):
        defender.protect(face_images)


def test_target_or_mask_that_is_not_an_image(tiny_sd_path, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match="target.*not an image"):
        PhotoGuard(model=str(tiny_sd_path), target=str(bad), device="cpu")
    with pytest.raises(ConfigError, match="mask.*not an image"):
        PhotoGuard(model=str(tiny_sd_path), mask=str(bad), device="cpu")
    with pytest.raises(ConfigError, match="attack"):
        PhotoGuard(model=str(tiny_sd_path), attack="decoder", device="cpu")


def test_inpainting_hole_is_mid_gray_as_in_the_reference(inpaint_guard, faces_and_mask_32):
    """The masked image the inpainting model's VAE encodes is ``image * (mask < 0.5)`` in [-1, 1]
    (the reference's and diffusers' ``prepare_mask_and_masked_image``): the hole is 0, mid-gray."""
    import torch

    face_images, defender = faces_and_mask_32[0], inpaint_guard
    seen = []
    hook = defender.vae.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            defender.diffusion_distance(face_images, torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    mask = defender.mask  # (1, 1, 32, 32), 1 = repainted
    expected = (face_images * 2 - 1) * (mask < 0.5)
    assert len(seen) == 1  # strength 1: only the masked image is encoded
    torch.testing.assert_close(seen[0], expected)


def test_edit_is_not_clamped_so_saturated_pixels_keep_their_gradient(sd_guard, faces_and_mask_32, monkeypatch):
    """The reference's loss sees the decoder's raw output: with a decoder whose every pixel is
    past white, the edit leaves [0, 1] and the distance to the target still has a gradient."""
    import copy

    import torch

    face_images, defender = faces_and_mask_32[0], sd_guard
    monkeypatch.setattr(defender, "vae", copy.deepcopy(defender.vae))  # the loaded VAE is shared
    with torch.no_grad():
        defender.vae.decoder.conv_out.bias += 20.0
    x = face_images.clone().requires_grad_(True)
    edit = defender.edit(x, torch.Generator().manual_seed(0))
    (gradient,) = torch.autograd.grad((edit - 0.5).flatten(1).norm(dim=1).sum(), x)
    assert edit.min() > 1.0
    assert gradient.abs().sum() > 0


def test_default_prompt_is_the_references_empty_prompt(sd_guard, tiny_sd_path):
    """The reference attacks with prompt ""; then guidance changes nothing, so no unconditional pass."""
    from facedefense_iterative.photoguard import PhotoGuardConfig

    assert PhotoGuardConfig().prompt == "" and PhotoGuardConfig().guidance_scale == 7.5
    assert sd_guard.config.prompt == "" and sd_guard.config.guidance_scale > 1
    assert sd_guard.surrogate.uncond is None
    guided = PhotoGuard(model=str(tiny_sd_path), attack="diffusion", prompt="a photo", device="cpu")
    assert guided.surrogate.uncond is not None


def test_diffusion_attack_beats_noise_with_common_random_numbers(tiny_inpaint_path, faces_and_mask_32):
    """With the edit's random numbers common to every edit (the same seed in the optimization and
    in the evaluation), the protected photo's edit ends closer to the target than the clean
    photo's, by far more than a same-budget noise photo's (noise in the kept region only; at 32 px
    two steps' gains are 8x and 14x noise's)."""
    import torch

    from facedefense.budget import quantize_within_budget

    face_images, half_mask = faces_and_mask_32

    defender = PhotoGuard(
        model=str(tiny_inpaint_path), attack="diffusion", mask=str(half_mask), steps=2, step_size=2 / 255,
        diffusion_steps=2, resolution=None, device="cpu",
    )
    distance = defender.diffusion_distance

    def common(images, generator=None):
        return distance(images, torch.Generator().manual_seed(7))

    defender.diffusion_distance = common
    protected = defender.protect(face_images).images
    noise = (torch.rand(face_images.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * (1 - defender.mask)
    eps = defender.config.eps
    noisy = quantize_within_budget((face_images + noise * eps).clamp(0, 1), face_images, eps)
    with torch.no_grad():
        clean = common(face_images)
        gain, noise_gain = clean - common(protected), clean - common(noisy)
    assert (gain > 0).all() and (gain > 3 * noise_gain.abs()).all(), (gain, noise_gain)
