"""Budgets in [0, 1] units, honest 8-bit quantization, option parsing."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from facedefense.budget import check_budget, parse_budget, quantize_within_budget
from facedefense.config import MethodConfig, build_config, parse_option_pairs
from facedefense.errors import BudgetViolationError, ConfigError


@pytest.mark.parametrize("text, expected", [("8/255", 8 / 255), ("0.0314", 0.0314), (" 16 / 255 ", 16 / 255), ("1", 1.0)])
def test_parse_budget(text, expected):
    assert parse_budget(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["0", "-1/255", "2", "abc", "8/0", "nan", "inf"])
def test_parse_budget_rejects(text):
    with pytest.raises(ConfigError):
        parse_budget(text)


@pytest.mark.parametrize("eps", [8 / 255, 0.05, 0.0314, 6.4 / 255, 1 / 255])
def test_quantization_never_exceeds_budget(eps):
    generator = torch.Generator().manual_seed(0)
    original = torch.randint(0, 256, (3, 3, 16, 16), generator=generator).float() / 255
    adversarial = (original + (torch.rand(original.shape, generator=generator) * 2 - 1) * eps * 1.5).clamp(0, 1)
    quantized = quantize_within_budget(adversarial, original, eps)
    assert torch.equal(torch.round(quantized * 255), quantized * 255)
    levels = check_budget(quantized, original, eps)
    assert max(levels) <= eps * 255 + 1e-6
    assert quantized.min() >= 0 and quantized.max() <= 1


@pytest.mark.parametrize("eps", [8 / 255, 0.05, 6.4 / 255, 1 / 255, 0.5])
def test_quantization_of_8bit_originals_matches_the_float64_rule(eps):
    """The float32 integer path for 8-bit originals picks the same gray level as the general rule
    (nearest multiple of 1/255 inside [x - eps, x + eps] and [0, 1], computed in float64)."""
    generator = torch.Generator().manual_seed(1)
    original = torch.randint(0, 256, (2, 3, 64, 64), generator=generator).float() / 255
    adversarial = (original + (torch.rand(original.shape, generator=generator) * 2 - 1) * eps * 2).clamp(0, 1)
    tie = ((adversarial.double() * 255).frac() - 0.5).abs() < 1e-3  # float32 and float64 may round a tie apart
    adversarial = torch.where(tie, adversarial + 0.01 / 255, adversarial)
    x255 = torch.round(original.double() * 255)
    low = torch.ceil(x255 - eps * 255 - 1e-4).clamp(0, 255)
    high = torch.floor(x255 + eps * 255 + 1e-4).clamp(0, 255)
    expected = torch.round(adversarial.double() * 255).clamp(low, high)
    quantized = quantize_within_budget(adversarial, original, eps)
    assert torch.equal(torch.round(quantized.double() * 255), expected)
    assert check_budget(quantized, original, eps) == (expected - x255).abs().flatten(1).amax(1).tolist()


def test_quantization_off_grid_original():
    original = torch.full((1, 3, 4, 4), 0.50001)
    quantized = quantize_within_budget(original + 0.5 / 255, original, 1 / 255)
    assert (quantized - original).abs().max() <= 1 / 255


def test_check_budget_raises():
    original = torch.zeros(1, 3, 4, 4)
    with pytest.raises(BudgetViolationError, match="over its budget"):
        check_budget(original + 9 / 255, original, 8 / 255)


@dataclass
class ExampleConfig(MethodConfig):
    eps: float = 8 / 255
    steps: int = 10
    flag: bool = False
    resolution: int | None = 512
    name: str = "x"


def test_build_config_coerces_strings():
    config = build_config(ExampleConfig, {"eps": "16/255", "steps": "5", "flag": "true", "resolution": "none"})
    assert config.eps == pytest.approx(16 / 255) and config.steps == 5 and config.flag is True and config.resolution is None


@pytest.mark.parametrize(
    "options, message",
    [({"stepz": "5"}, "no option 'stepz'.*valid options"), ({"steps": "five"}, "integer"), ({"flag": "maybe"}, "true or false")],
)
def test_build_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        build_config(ExampleConfig, options, method="example")


def test_option_pairs():
    assert parse_option_pairs(["a=1", "b-c = x=y"]) == {"a": "1", "b_c": "x=y"}
    with pytest.raises(ConfigError):
        parse_option_pairs(["novalue"])
