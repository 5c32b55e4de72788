"""The base classes own the invariants: checks, projection, quantization, BPDA, aggregation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from facedefense.errors import ConfigError, ImageError
from facedefense.interfaces import Defender, DefenderConfig, Metric, Purifier
from facedefense.testing.contracts import DefenderContract, MetricContract, PurifierContract
from facedefense.testing.fixtures import registered


@pytest.fixture(scope="module", autouse=True)
def _test_methods_registered():
    """The contract checks that the registry gives back the tested class: register the local ones."""
    with registered("defender", Brighten), registered("purifier", Posterize), registered("metric", Darkness):
        yield


@dataclass
class BrightenConfig(DefenderConfig):
    device: str = "cpu"
    overshoot: float = 3.0


class Brighten(Defender):
    """Adds ``overshoot * eps`` plus seeded noise: the base must project it back into the budget."""

    name: ClassVar[str] = "brighten"
    Config: ClassVar[type] = BrightenConfig

    def _perturb(self, images, generator):
        noise = torch.rand(images.shape, generator=generator) * self.config.eps
        return images + self.config.overshoot * self.config.eps + noise, [{"n": i} for i in range(len(images))]


class TestBrightenContract(DefenderContract):
    objective_higher_is_better = True

    def make_method(self, request):
        return Brighten(eps=self.eps)

    def objective(self, method, images, generator):
        return images.flatten(1).mean(dim=1)


class Posterize(Purifier):
    name: ClassVar[str] = "posterize"

    def _purify(self, images, generator):
        return torch.round(images * 4) / 4


class TestPosterizeContract(PurifierContract):
    def make_method(self, request):
        return Posterize(device="cpu")


def test_defender_rejects_bad_batches():
    defender = Brighten()
    for bad, message in [
        (torch.rand(3, 8, 8), "shape"),
        (torch.rand(1, 4, 8, 8), "shape"),
        (torch.rand(1, 3, 8, 8) * 2, r"\[0, 1\]"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "floating-point"),
        ([[0.0]], "torch.Tensor"),
    ]:
        with pytest.raises(ImageError, match=message):
            defender.protect(bad)


def test_defender_stats_and_eps_validation():
    result = Brighten(eps=4 / 255).protect(torch.full((2, 3, 8, 8), 128 / 255))
    assert result.stats == [{"n": 0}, {"n": 1}]
    assert max(result.linf) == pytest.approx(4.0)
    with pytest.raises(ConfigError, match="outside"):
        Brighten(eps=0)
    with pytest.raises(ConfigError, match="outside"):
        Brighten(eps="2")


def test_bpda_default_passes_gradient_straight_through():
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    out = Posterize(device="cpu").purify_differentiable(x)
    assert torch.equal(out.detach(), torch.round(x.detach() * 4) / 4)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.ones_like(grad))


class Darkness(Metric):
    """Mean brightness; undefined (NaN) for all-black images."""

    name: ClassVar[str] = "darkness"
    higher_is_better: ClassVar[bool] = False

    def _compute(self, images, references, prompts):
        values = torch.stack([image.mean() for image in images])
        return torch.where(values == 0, torch.nan, values)


class TestDarknessContract(MetricContract):
    def make_method(self, request):
        return Darkness(device="cpu")


def test_metric_mean_ignores_undefined_values():
    result = Darkness(device="cpu").compute([torch.zeros(3, 4, 4), torch.full((3, 6, 4), 0.5)])
    assert math.isnan(result.per_image[0]) and result.value == pytest.approx(0.5)
    assert result.count == 1 and result.protected_if == "higher"
