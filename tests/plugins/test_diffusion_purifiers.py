"""Diffusion purifiers on the tiny models: contracts, algorithm checks, bad input."""

from __future__ import annotations

import pytest
import torch

from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense.testing.contracts import PurifierContract
from facedefense.testing.tiny_models import sample_faces
from facedefense_purifiers.diffpure import DiffPure, PixelDenoiser
from facedefense_purifiers.gridpure import GridPure, crop_starts
from facedefense_purifiers.impress import Impress
from facedefense_purifiers.noisy_upscale import NoisyUpscale


class TestDiffPurePixel(PurifierContract):
    registry_name = "diffpure"
    image_size = (32, 32)  # the pixel DDPM's own size
    odd_size = (28, 44)

    def make_method(self, request):
        return DiffPure(model=str(request.getfixturevalue("tiny_pixel_ddpm_path")), strength=0.05, steps=2, device="cpu")


class TestGridPure(PurifierContract):
    registry_name = "gridpure"
    image_size = (32, 32)  # one crop and the corner mosaic (the grid itself: test_gridpure_grid_and_mosaic_...)
    odd_size = (28, 44)

    def make_method(self, request):
        return GridPure(
            model=str(request.getfixturevalue("tiny_pixel_ddpm_path")), crop=32, stride=16, strength=0.02, steps=1,
            iterations=1, device="cpu",
        )


class TestNoisyUpscale(PurifierContract):
    registry_name = "noisy_upscale"
    image_size = (32, 32)
    odd_size = (28, 44)

    def make_method(self, request):
        # resolution 16: the upscaler works at 64 px, not 128 (the resize to and from it runs as at any size)
        return NoisyUpscale(model=str(request.getfixturevalue("tiny_upscaler_path")), steps=1, resolution=16,
                            device="cpu")


class TestImpress(PurifierContract):
    registry_name = "impress"
    image_size = (32, 32)
    odd_size = (28, 44)

    def make_method(self, request):
        return Impress(model=str(request.getfixturevalue("tiny_sd_path")), iterations=1, lpips_weights="random", device="cpu")


def test_pixel_timesteps_follow_diffpure():
    denoiser = PixelDenoiser.__new__(PixelDenoiser)
    denoiser.scheduler = type("S", (), {"config": type("C", (), {"num_train_timesteps": 1000})})()
    assert denoiser.timesteps(0.1, None) == list(range(99, -1, -1))  # t* = 100: every step back to 0
    assert denoiser.timesteps(0.1, 4) == [99, 66, 33, 0]
    assert denoiser.timesteps(0.001, 5) == [0]


def test_diffpure_through_stable_diffusion_img2img(tiny_sd_path):
    faces = sample_faces(2, 32)
    purifier = DiffPure(model=str(tiny_sd_path), strength=0.2, steps=2, device="cpu")
    assert purifier.denoiser.kind == "stable_diffusion" and purifier.denoiser.native == 64
    out = purifier.purify(faces[:, :, :24, :])
    assert out.shape == (2, 3, 24, 32) and not torch.equal(out, faces[:, :, :24, :])
    assert torch.equal(out, purifier.purify(faces[:, :, :24, :]))


def test_diffpure_strength_sets_how_much_changes(tiny_pixel_ddpm_path):
    faces = sample_faces(1, 32)
    changes = [
        (DiffPure(model=str(tiny_pixel_ddpm_path), strength=s, steps=2, device="cpu").purify(faces) - faces).abs().mean()
        for s in (0.01, 0.5)
    ]
    assert changes[0] < changes[1]


class _Fake:
    """A stand-in denoiser: identity, or a constant image, counting the crops it sees."""

    multiple = 1

    def __init__(self, value=None):
        self.value, self.shapes = value, []

    def __call__(self, crops, strength, steps, generator, **_):
        self.shapes.append(tuple(crops.shape))
        return crops.clone() if self.value is None else torch.full_like(crops, self.value)


def _gridpure_with(fake, **options):
    purifier = GridPure(model="unused", device="cpu", **options)
    purifier._denoiser = fake
    return purifier


def test_gridpure_grid_and_mosaic_reassemble_the_image():
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    fake = _Fake()
    out = _gridpure_with(fake, crop=32, stride=16, iterations=3, batch_size=100).purify(images)
    assert torch.allclose(out, images, atol=1e-6)
    # 2 x 3 crops + the corner mosaic, for each of the 2 images, every round.
    assert fake.shapes == [(14, 3, 32, 32)] * 3
    assert crop_starts(512, 256, 128) == [0, 128, 256] and crop_starts(600, 256, 128)[-1] == 344


def test_gridpure_blends_with_gamma():
    images = torch.zeros(1, 3, 32, 32)
    out = _gridpure_with(_Fake(1.0), crop=32, stride=16, iterations=2, gamma=0.25).purify(images)
    # x1 = 0.75 * 1 + 0.25 * 0; x2 = 0.75 * 1 + 0.25 * x1
    assert torch.allclose(out, torch.full_like(images, 0.75 + 0.25 * 0.75))


def test_gridpure_photo_smaller_than_a_crop(tiny_pixel_ddpm_path):
    small = sample_faces(1, 48)[:, :, :24, :40]
    fake = _Fake()
    out = _gridpure_with(fake, crop=32, stride=16, iterations=1).purify(small)
    assert out.shape == small.shape
    assert fake.shapes[0][-2:] == (32, 32)  # enlarged so the model sees whole crops
    assert (out - small).abs().mean() < 0.03  # only the resize round trip changed it
    real = GridPure(model=str(tiny_pixel_ddpm_path), crop=32, stride=16, strength=0.02, steps=1, iterations=1, device="cpu")
    assert real.purify(small).shape == small.shape


def test_impress_lowers_the_vae_inconsistency(tiny_sd_path):
    from facedefense.diffusion import load_components
    from facedefense.imaging import to_vae_range

    vae = load_components(str(tiny_sd_path), components=("vae",)).vae
    faces = sample_faces(1, 32)

    def inconsistency(x):
        with torch.no_grad():
            return (vae(to_vae_range(x)).sample - to_vae_range(x)).pow(2).mean().item()

    purified = Impress(
        model=str(tiny_sd_path), iterations=5, learning_rate=0.02, sigma=0.0, lpips_weights="random", device="cpu"
    ).purify(faces)
    assert inconsistency(purified) < 0.9 * inconsistency(faces)


def test_cached_lpips_equals_the_package():
    from facedefense.models import shared_model
    from facedefense_purifiers.impress import lpips_distance, lpips_features

    model = shared_model("lpips", path="random", device="cpu", net="vgg")
    x, y = sample_faces(2, 32) * 2 - 1, sample_faces(4, 32)[2:] * 2 - 1
    expected = model(x, y).flatten()
    assert torch.allclose(lpips_distance(model, lpips_features(model, x), lpips_features(model, y)), expected, atol=1e-6)
    assert expected.min() > 0


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (DiffPure, {"model": "m", "strength": 0.0}, r"strength must be in \(0, 1\]"),
        (DiffPure, {"model": "m", "strength": 1.5}, r"strength must be in \(0, 1\]"),
        (GridPure, {"model": "m", "strength": -0.1}, r"strength must be in \(0, 1\]"),
        (DiffPure, {}, "needs a model"),
        (GridPure, {"model": "m", "stride": 300}, "stride"),
        (GridPure, {"model": "m", "gamma": 1.0}, "gamma"),
        (NoisyUpscale, {"model": "m", "sigma": -0.1}, "sigma must be >= 0"),
        (Impress, {"model": "m", "sigma": -1.0, "lpips_weights": "random"}, "sigma must be >= 0"),
        (DiffPure, {"model": "m", "scheduler": "euler"}, "must be one of"),
        (NoisyUpscale, {"model": "m", "added_noise_level": -1}, "added_noise_level must be >= 0"),
    ],
)
def test_bad_options(cls, options, message):
    with pytest.raises(ConfigError, match=message):
        cls(**options)


def test_pixel_ddpm_where_stable_diffusion_is_expected(tiny_pixel_ddpm_path):
    for make in (
        lambda: NoisyUpscale(model=str(tiny_pixel_ddpm_path), device="cpu"),
        lambda: Impress(model=str(tiny_pixel_ddpm_path), lpips_weights="random", device="cpu"),
    ):
        with pytest.raises(ModelNotFoundError, match="pixel-space DDPM") as info:
            make()
        assert "\n" not in str(info.value)


def test_noise_level_above_the_upscalers_maximum(tiny_upscaler_path):
    with pytest.raises(ConfigError, match="at most 350"):
        NoisyUpscale(model=str(tiny_upscaler_path), noise_level=400, device="cpu").purify(sample_faces(1, 16))
