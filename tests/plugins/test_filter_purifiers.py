"""AdverseCleaner and TVM (issue 22): contracts, the guided filter against its definition computed
window by window, TVM's gradient against finite differences, and both against noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facedefense.errors import ConfigError
from facedefense.testing.contracts import PurifierContract
from facedefense_purifiers.adverse_cleaner import AdverseCleaner, guided_filter
from facedefense_purifiers.tvm import TVM, tv_objective


class TestAdverseCleaner(PurifierContract):
    registry_name = "adverse_cleaner"

    def make_method(self, request):
        return AdverseCleaner(bilateral_steps=4, guided_steps=1, device="cpu")


class TestTVM(PurifierContract):
    registry_name = "tvm"

    def make_method(self, request):
        return TVM(max_iter=3, device="cpu")


def _windowed_guided_filter(guide, source, radius, eps):
    """The guided filter by its definition: a ridge regression per (2r+1)^2 window (borders mirrored
    with the edge pixel), each pixel averaging the models of the windows that hold it."""
    height, width = source.shape
    pad = np.pad(guide, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    pad_p = np.pad(source, radius, mode="symmetric")
    a = np.zeros((height, width, 3))
    b = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            window = pad[y : y + 2 * radius + 1, x : x + 2 * radius + 1].reshape(-1, 3).astype(np.float64)
            values = pad_p[y : y + 2 * radius + 1, x : x + 2 * radius + 1].ravel().astype(np.float64)
            centred = window - window.mean(0)
            covariance = centred.T @ centred / len(values) + eps * np.eye(3)
            a[y, x] = np.linalg.solve(covariance, centred.T @ (values - values.mean()) / len(values))
            b[y, x] = values.mean() - a[y, x] @ window.mean(0)
    mean_a = np.stack([_window_mean(a[..., k], radius) for k in range(3)], -1)
    return (mean_a * guide).sum(-1) + _window_mean(b, radius)


def _window_mean(image, radius):
    pad = np.pad(image, radius, mode="symmetric")
    side = 2 * radius + 1
    return np.array([[pad[y : y + side, x : x + side].mean() for x in range(image.shape[1])] for y in range(image.shape[0])])


def test_guided_filter_is_the_windowed_ridge_regression():
    rng = np.random.default_rng(0)
    guide = rng.uniform(0, 255, (12, 10, 3)).astype(np.float32)
    source = (0.5 * guide[..., :1] + rng.normal(0, 20, (12, 10, 1))).astype(np.float32)
    expected = _windowed_guided_filter(guide, source[..., 0], 2, 16.0)
    assert np.abs(guided_filter(guide, source, 2, 16.0)[..., 0] - expected).max() < 1e-2  # float32 vs float64


def test_guided_filter_keeps_what_the_guide_explains_and_flattens_the_rest():
    rng = np.random.default_rng(1)
    guide = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    linear = (0.3 * guide[..., :1] + 0.2 * guide[..., 1:2] + 10).astype(np.float32)
    assert np.abs(guided_filter(guide, linear, 3, 1e-3) - linear).max() < 0.5  # a linear function of the guide stays
    flat = np.full((16, 16, 1), 77.0, dtype=np.float32)
    assert np.abs(guided_filter(guide, flat, 3, 16.0) - 77.0).max() < 1e-3


def _smooth_and_noisy(seed=0):
    """Two flat regions with a sharp edge between them, plus 8/255 uniform noise."""
    clean = torch.empty(1, 3, 32, 32)
    clean[..., :16] = torch.tensor([0.25, 0.4, 0.6])[:, None, None]
    clean[..., 16:] = torch.tensor([0.7, 0.5, 0.3])[:, None, None]
    noise = (torch.rand(clean.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * 8 / 255
    return clean, (clean + noise).clamp(0, 1)


@pytest.mark.parametrize("make", [AdverseCleaner, TVM])
def test_the_purifier_takes_high_frequency_noise_away(make):
    clean, noisy = _smooth_and_noisy()
    purified = make().purify(noisy)  # the defaults
    assert (purified - clean).abs().mean() < 0.5 * (noisy - clean).abs().mean()


def test_tv_gradient_is_the_derivative_of_the_objective():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 255, (6, 5))
    z = x + rng.normal(0, 5, x.shape)
    mask = (rng.uniform(size=x.shape) < 0.5).astype(float)
    for norm in (1, 2):
        value, gradient = tv_objective(z, x, mask, norm, 0.5)
        step = 1e-5
        numeric = np.zeros_like(z)
        for index in np.ndindex(z.shape):
            shifted = z.copy()
            shifted[index] += step
            numeric[index] = (tv_objective(shifted, x, mask, norm, 0.5)[0] - value) / step
        assert np.abs(numeric - gradient).max() < 1e-3, norm


def test_tvm_keeps_the_photo_where_variation_costs_nothing():
    clean, _ = _smooth_and_noisy()
    assert (TVM(lamb=0.0).purify(clean) - clean).abs().max() < 1e-6  # no variation term: the photo is optimal


def test_bad_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="prob"):
        TVM(prob=0)
    with pytest.raises(ConfigError, match="norm"):
        TVM(norm=3)
    with pytest.raises(ConfigError, match="radius"):
        AdverseCleaner(radius=0)
