"""JPEG purifier and PSNR/SSIM metrics: contracts and known values."""

from __future__ import annotations

import math

import pytest
import torch

from facedefense.errors import ConfigError
from facedefense.testing.contracts import MetricContract, PurifierContract
from facedefense_metrics.psnr import PSNR
from facedefense_metrics.ssim import SSIM
from facedefense_purifiers.jpeg import JPEG


class TestJPEG(PurifierContract):
    differentiable_tolerance = 0.02  # kornia's differentiable JPEG vs the libjpeg codec, mean |diff|

    def make_method(self, request):
        return JPEG(quality=50, device="cpu")


class TestPSNR(MetricContract):
    def make_method(self, request):
        return PSNR(device="cpu")


class TestSSIM(MetricContract):
    def make_method(self, request):
        return SSIM(device="cpu")


def test_lower_jpeg_quality_changes_more(face_images):
    high = JPEG(quality=95, device="cpu").purify(face_images)
    low = JPEG(quality=10, device="cpu").purify(face_images)
    assert (high - face_images).abs().mean() < (low - face_images).abs().mean()
    assert torch.equal(torch.round(low * 255), low * 255)  # decoded 8-bit values


def test_differentiable_jpeg_approximates_the_codec(face_images):
    codec = JPEG(quality=75, device="cpu")
    real, approx = codec.purify(face_images), codec.purify_differentiable(face_images)
    assert (real - approx).abs().mean() < 0.02


def test_jpeg_quality_validated():
    with pytest.raises(ConfigError, match="1..100"):
        JPEG(quality=0)


def test_psnr_known_value():
    x = torch.zeros(1, 3, 8, 8)
    y = x + 0.1
    assert PSNR(device="cpu").compute(y, x).value == pytest.approx(20.0)
    assert PSNR(device="cpu").compute(x, x).value == 100.0


def test_ssim_identical_is_one():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert SSIM(device="cpu").compute(x, x).value == pytest.approx(1.0, abs=1e-5)
    assert not math.isnan(SSIM(device="cpu").compute(x, 1 - x).value)
