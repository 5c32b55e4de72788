"""Classical purifiers: contracts, known values, bad input; JPEG against PIL's own codec."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from facedefense.errors import ConfigError
from facedefense.testing.contracts import PurifierContract
from facedefense_purifiers.gaussian_blur import GaussianBlur
from facedefense_purifiers.gaussian_noise import GaussianNoise
from facedefense_purifiers.jpeg import JPEG
from facedefense_purifiers.quantize import Quantize
from facedefense_purifiers.resize import Resize


class TestGaussianBlur(PurifierContract):
    registry_name = "gaussian_blur"

    def make_method(self, request):
        return GaussianBlur(device="cpu")


class TestResize(PurifierContract):
    registry_name = "resize"

    def make_method(self, request):
        return Resize(factor=0.5, interpolation="bicubic", antialias=True, device="cpu")


class TestQuantize(PurifierContract):
    registry_name = "quantize"

    def make_method(self, request):
        return Quantize(bits=3, device="cpu")


class TestGaussianNoise(PurifierContract):
    registry_name = "gaussian_noise"

    def make_method(self, request):
        return GaussianNoise(sigma=0.1, device="cpu")


def _pil_jpeg(image: torch.Tensor, quality: int, subsampling: int) -> torch.Tensor:
    """PIL's encoder then decoder on the 8-bit image, written here independently of the purifier."""
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize(("quality", "subsampling"), [(10, "4:2:0"), (70, "4:2:0"), (95, "4:4:4")])
def test_jpeg_matches_pil(face_images, quality, subsampling):
    purified = JPEG(quality=quality, subsampling=subsampling, device="cpu").purify(face_images)
    code = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}[subsampling]
    expected = torch.stack([_pil_jpeg(image, quality, code) for image in face_images])
    assert torch.equal(purified, expected)
    assert not torch.equal(purified, face_images)


def test_blur_matches_a_hand_computed_kernel():
    image = torch.zeros(1, 3, 9, 9)
    image[..., 4, 4] = 1.0
    out = GaussianBlur(kernel_size=3, sigma=(1.0,), device="cpu").purify(image)[0, 0]
    weights = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / 2)
    weights = weights / weights.sum()
    assert torch.allclose(out[3:6, 3:6], torch.outer(weights, weights), atol=1e-6)
    # (vertical, horizontal) like OpenCV's (sigmaY, sigmaX): GAP-Diff's default blurs vertically.
    column = GaussianBlur(device="cpu").purify(image)[0, 0]
    assert column[3, 4] > 0.3 and column[4, 3] < 1e-6


def test_quantize_levels():
    values = torch.linspace(0, 1, 256).view(1, 1, 1, 256).expand(1, 3, 1, 256)
    out = Quantize(bits=1, device="cpu").purify(values)
    assert set(out.unique().tolist()) == {0.0, 0.5, 1.0}
    assert len(Quantize(bits=6, device="cpu").purify(values).unique()) == 65
    assert torch.equal(Quantize(bits=8, device="cpu").purify(values), torch.floor(values * 256) / 256)


def test_noise_strength_and_seed(face_images):
    noisy = GaussianNoise(sigma=0.05, device="cpu").purify(face_images)
    middle = (face_images > 0.2) & (face_images < 0.8)
    assert (noisy - face_images)[middle].std().item() == pytest.approx(0.05, rel=0.05)
    again = GaussianNoise(sigma=0.05, seed=1, device="cpu").purify(face_images)
    assert not torch.equal(noisy, again)
    assert torch.equal(GaussianNoise(sigma=0.0, device="cpu").purify(face_images), face_images)


def test_resize_interpolations_differ_and_keep_size(face_images):
    outs = {mode: Resize(interpolation=mode, device="cpu").purify(face_images) for mode in ("bilinear", "nearest", "area")}
    for out in outs.values():
        assert out.shape == face_images.shape
    assert not torch.equal(outs["bilinear"], outs["nearest"])
    # Nearest by 1/2 then back keeps one pixel of each 2x2 block.
    assert torch.equal(outs["nearest"][..., ::2, ::2], face_images[..., ::2, ::2])


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (GaussianNoise, {"sigma": -0.1}, "sigma must be >= 0"),
        (GaussianBlur, {"sigma": (-1.0,)}, "positive"),
        (GaussianBlur, {"kernel_size": 4}, "odd"),
        (Quantize, {"bits": 0}, "1..8"),
        (Quantize, {"bits": 9}, "1..8"),
        (Resize, {"factor": 1.5}, r"\(0, 1\)"),
        (Resize, {"interpolation": "lanczos"}, "must be one of"),
    ],
)
def test_bad_options(cls, options, message):
    with pytest.raises(ConfigError, match=message):
        cls(**options)
