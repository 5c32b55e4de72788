"""Purifiers against their reference code: each test fails if the method departed from it (the
defaults RID's DiffPure uses, IMPRESS's [-1, 1] units, noisy upscaling's noise levels, GrIDPure's
averaging, the classical filters against OpenCV)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from facedefense.testing.tiny_models import sample_faces
from facedefense_purifiers.diffpure import DiffPure
from facedefense_purifiers.gaussian_blur import GaussianBlur
from facedefense_purifiers.gridpure import GridPure
from facedefense_purifiers.impress import Impress
from facedefense_purifiers.jpeg import JPEG
from facedefense_purifiers.noisy_upscale import NoisyUpscale
from facedefense_purifiers.resize import Resize


def _tiny_sd_with_pndm(tiny_sd_path, path):
    """The tiny SD with PNDM (SD 1.5's scheduler) as its own, so a test sees which scheduler runs."""
    from diffusers import PNDMScheduler

    path.mkdir()
    for part in tiny_sd_path.iterdir():
        if part.name not in ("scheduler", "model_index.json"):
            (path / part.name).symlink_to(part)
    PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, set_alpha_to_one=False,
        steps_offset=1,
    ).save_pretrained(path / "scheduler")
    index = json.loads((tiny_sd_path / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "PNDMScheduler"]
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def test_diffpure_on_stable_diffusion_runs_rids_post_diffpure(tiny_sd_path, tmp_path, monkeypatch):
    """Defaults: "A photo of a person", guidance 7.5 against the empty prompt, the model's own
    scheduler (RID's post_diffpure.py), checked on what the UNet and the scheduler receive."""
    purifier = DiffPure(model=str(_tiny_sd_with_pndm(tiny_sd_path, tmp_path / "sd")), device="cpu")
    pipeline = purifier.denoiser.pipeline
    seen = {"hidden": [], "predicted": [], "stepped": []}

    def record_input(module, args, kwargs):
        seen["hidden"].append(kwargs["encoder_hidden_states"])

    def record_output(module, args, kwargs, output):
        seen["predicted"].append(output[0] if isinstance(output, tuple) else output.sample)

    pipeline.unet.register_forward_pre_hook(record_input, with_kwargs=True)
    pipeline.unet.register_forward_hook(record_output, with_kwargs=True)
    step = pipeline.scheduler.step

    @functools.wraps(step)
    def recording_step(model_output, *args, **kwargs):
        seen["stepped"].append(model_output)
        return step(model_output, *args, **kwargs)

    monkeypatch.setattr(pipeline.scheduler, "step", recording_step)
    faces = sample_faces(1, 32)  # one photo: the guided batch is still [unconditional, text]
    purifier.purify(faces)

    assert type(pipeline.scheduler).__name__ == "PNDMScheduler" and seen["stepped"]
    tokenizer, encoder = pipeline.tokenizer, pipeline.text_encoder

    def embed(text):
        ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        with torch.no_grad():
            return encoder(ids.input_ids)[0]

    expected = torch.cat([embed(""), embed("A photo of a person")])
    for hidden in seen["hidden"]:
        assert torch.allclose(hidden, expected, atol=1e-5)  # unconditional and text halves, every step
    for predicted, stepped in zip(seen["predicted"], seen["stepped"]):
        uncond, text = predicted.chunk(2)
        assert torch.allclose(stepped, uncond + 7.5 * (text - uncond), atol=1e-5)


def test_diffpure_runs_the_pipelines_default_50_inference_steps(tiny_sd_path, monkeypatch):
    """Without `steps`, img2img gets 50 inference steps and runs int(50 * strength) of them."""
    purifier = DiffPure(model=str(tiny_sd_path), strength=0.15, guidance_scale=1.0, device="cpu")
    calls = []
    pipeline = purifier.denoiser.pipeline
    monkeypatch.setattr(type(pipeline), "__call__", lambda self, **kwargs: calls.append(kwargs) or _Out(kwargs["image"]))
    purifier.purify(sample_faces(1, 32))
    assert calls[0]["num_inference_steps"] == 50 and calls[0]["strength"] == 0.15


def test_diffpure_pixel_noises_to_t_star_and_walks_back_to_0(tiny_pixel_ddpm_path):
    """DiffPure's guided runner: x_t* = sqrt(abar[t* - 1]) x + sqrt(1 - abar[t* - 1]) e, then the
    timesteps t* - 1 down to 0 (here 3 of them, evenly spaced)."""
    purifier = DiffPure(model=str(tiny_pixel_ddpm_path), strength=0.05, steps=3, device="cpu")
    denoiser = purifier.denoiser
    seen = []
    denoiser.unet.register_forward_pre_hook(lambda module, args: seen.append((args[0].clone(), int(args[1]))))
    faces = sample_faces(1, denoiser.native)
    purifier.purify(faces, generator=torch.Generator().manual_seed(2))
    assert [t for _, t in seen] == [49, 24, 0]  # t* = 0.05 * 1000 = 50
    abar = denoiser.scheduler.alphas_cumprod[49]
    noise = torch.randn(faces.shape, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(seen[0][0], abar.sqrt() * (faces * 2 - 1) + (1 - abar).sqrt() * noise, atol=1e-5)


class _Out:
    def __init__(self, images):
        self.images = images


def test_impress_works_in_the_references_units(tiny_sd_path):
    """The reference adds N(0, 0.05^2) and takes Adam steps of about lr on the [-1, 1] image: in
    [0, 1] units, noise of std 0.025 and steps of lr / 2 (twice that was the old behaviour)."""
    faces = sample_faces(1, 32)
    purifier = Impress(model=str(tiny_sd_path), iterations=1, learning_rate=0.01, lpips_weights="random", device="cpu")
    out = purifier.purify(faces, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(faces.shape, generator=torch.Generator().manual_seed(3))
    start = ((faces * 2 - 1) + 0.05 * noise + 1) / 2  # the reference's start (noise=0.05), back in [0, 1]
    inside = (start > 0.01) & (start < 0.99)  # not clamped after the step
    step = (out - start)[inside].abs()
    assert step.max() <= 0.005 + 1e-5  # one Adam step moves each pixel by at most lr in [-1, 1] units
    assert step.median() == pytest.approx(0.005, rel=0.02)


def _unet_inputs(pipeline):
    """Record the low-resolution image channels and the noise-level labels the upscaler's UNet gets."""
    seen = []

    def record(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        seen.append((sample[:, -3:].detach().clone(), kwargs["class_labels"].clone()))

    pipeline.unet.register_forward_pre_hook(record, with_kwargs=True)
    return seen


def test_noisy_upscale_noises_once_and_tells_the_upscaler_320(tiny_upscaler_path):
    """noise.py's sigma 0.1 (saved in 8 bits), then upscale.py's fork: the UNet is told noise level
    320 while the pipeline adds its own noise at level 320 - noise_level_sub = 0 (16 px photos: the
    upscaler at 64 px; 768 noise values are plenty for the bounds below)."""
    faces = sample_faces(1, 16)
    purifier = NoisyUpscale(model=str(tiny_upscaler_path), steps=1, device="cpu")
    seen = _unet_inputs(purifier.pipeline)
    purifier.purify(faces, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(faces.shape, generator=torch.Generator().manual_seed(4))
    noisy = torch.round((faces + 0.1 * noise).clamp(0, 1) * 255) / 255
    image, labels = seen[0]
    assert (labels == 320).all()
    gap = image[:1] - (noisy * 2 - 1)  # level 0 adds noise of std sqrt(1 - abar_0) = 0.01 in [-1, 1]
    assert gap.std() < 0.02 and gap.abs().max() < 0.08

    stock = NoisyUpscale(model=str(tiny_upscaler_path), steps=1, added_noise_level=320, device="cpu")
    seen = _unet_inputs(stock.pipeline)
    stock.purify(faces, generator=torch.Generator().manual_seed(4))
    assert (seen[0][0][:1] - (noisy * 2 - 1)).std() > 0.3  # stock diffusers: level-320 noise on top


class _PieceIndex:
    """A stand-in denoiser that paints every crop with its index in the batch / 100."""

    multiple = 1

    def __call__(self, crops, strength, steps, generator, **_):
        return (torch.arange(len(crops), dtype=crops.dtype) / 100).view(-1, 1, 1, 1).expand_as(crops).clone()


def test_gridpure_averages_the_crops_and_the_corner_mosaic():
    """48x64, crops of 32 every 16: crops 0-5 at rows (0, 16) x columns (0, 16, 32), mosaic 6.
    Each pixel is the mean of the crops covering it (gridpure.py's merge_imgs)."""
    purifier = GridPure(model="unused", crop=32, stride=16, iterations=1, gamma=0.0, batch_size=100, device="cpu")
    purifier._denoiser = _PieceIndex()
    out = purifier.purify(torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0)))[0, 0]
    expected = {(0, 0): (0 + 6) / 2, (20, 20): (0 + 1 + 3 + 4) / 4, (40, 60): (5 + 6) / 2, (40, 8): (3 + 6) / 2,
                (8, 40): (1 + 2) / 2}
    for (row, col), value in expected.items():
        assert out[row, col].item() == pytest.approx(value / 100, abs=1e-6), (row, col)


def test_differentiable_jpeg_follows_the_quality(face_images):
    """kornia's JPEG at quality Q is closer to the real codec at Q than at another quality."""
    real = {q: JPEG(quality=q, device="cpu").purify(face_images) for q in (10, 90)}
    for q, other in ((10, 90), (90, 10)):
        approx = JPEG(quality=q, device="cpu").purify_differentiable(face_images)
        assert (approx - real[q]).abs().mean() < (approx - real[other]).abs().mean()


@pytest.mark.parametrize(
    ("options", "ksize", "sigma_x", "sigma_y"), [({}, 3, 0.1, 2.0), ({"kernel_size": 5, "sigma": (1.0,)}, 5, 1.0, 1.0)]
)
def test_gaussian_blur_equals_opencv(face_images, options, ksize, sigma_x, sigma_y):
    """GAP-Diff's cv2.GaussianBlur(img, (3, 3), sigmaX=0.1, sigmaY=2.0), borders included."""
    cv2 = pytest.importorskip("cv2")
    out = GaussianBlur(device="cpu", **options).purify(face_images)
    for image, blurred in zip(face_images, out):
        array = image.permute(1, 2, 0).numpy().astype(np.float32)
        expected = cv2.GaussianBlur(array, (ksize, ksize), sigmaX=sigma_x, sigmaY=sigma_y)
        assert np.allclose(blurred.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_resize_equals_opencv_inter_linear_both_ways(face_images):
    """GAP-Diff's cv2.resize(img, (256, 256), INTER_LINEAR) at half size, then back the same way."""
    cv2 = pytest.importorskip("cv2")
    out = Resize(device="cpu").purify(face_images[:, :, :, :48])
    for image, resampled in zip(face_images[:, :, :, :48], out):
        array = image.permute(1, 2, 0).numpy().astype(np.float32)
        half = cv2.resize(array, (24, 32), interpolation=cv2.INTER_LINEAR)
        expected = cv2.resize(half, (48, 64), interpolation=cv2.INTER_LINEAR)
        assert np.allclose(resampled.permute(1, 2, 0).numpy(), expected, atol=1e-5)
