"""Tests of the example plugin: facedefense's shipped defender contract, then what is specific to it.

Run with ``pytest examples/facedefense-example-plugin/tests`` (no model, a few seconds).
"""

import pytest
import torch
from facedefense_example_plugin.texture import ExampleTexture

import facedefense
from facedefense.registry import MethodSpec
from facedefense.testing.contracts import DefenderContract


class TestNoiseContract(DefenderContract):
    def make_method(self, request):
        return ExampleTexture(eps=self.eps, device="cpu")


class TestCheckerContract(DefenderContract):
    eps = 3 / 255

    def make_method(self, request):
        return ExampleTexture(eps=self.eps, pattern="checker", cell=3, device="cpu")


def gray(count=2, size=32):
    """Mid-gray images on the 8-bit grid: no value is clipped by a small budget."""
    return torch.full((count, 3, size, size), 128 / 255)


def test_registers_a_lazy_target():
    import facedefense_example_plugin

    calls = []
    facedefense_example_plugin.register_defenders(lambda name, target, **kw: calls.append((name, target)))
    assert calls == [("example_texture", "facedefense_example_plugin.texture:ExampleTexture")]
    assert MethodSpec("defender", *calls[0], plugin="example").load() is ExampleTexture


def test_options_come_as_cli_strings():
    defender = facedefense.create("defender", "example_texture", eps="4/255", pattern="checker", cell="2", device="cpu")
    assert (defender.config.eps, defender.config.pattern, defender.config.cell) == (4 / 255, "checker", 2)
    with pytest.raises(facedefense.ConfigError, match="pattern"):
        ExampleTexture(pattern="stripes", device="cpu")
    with pytest.raises(facedefense.ConfigError, match="cell"):
        ExampleTexture(cell=0, device="cpu")
    with pytest.raises(facedefense.ConfigError, match="option 'cell' must be from 1 to 256, got 100000"):
        facedefense.create("defender", "example_texture", cell="100000", device="cpu")


def test_checker_cells_alternate_at_the_full_budget():
    images = gray(1, 8)
    result = ExampleTexture(eps=4 / 255, pattern="checker", cell=2, device="cpu").protect(images)
    levels = torch.round((result.images - images) * 255)[0, 0]
    assert set(levels.unique().tolist()) == {-4.0, 4.0}
    assert torch.equal(levels[0::2, 0::2], levels[1::2, 1::2])  # the two pixels of a cell's diagonal
    assert torch.equal(levels[0, 0:2], levels[1, 0:2]) and levels[0, 0] == -levels[0, 2]


def test_noise_is_high_frequency_and_seeded():
    images = gray(2, 64)
    delta = ExampleTexture(seed=5, device="cpu").protect(images).images - images
    signs = torch.sign(delta)
    horizontal = (signs[..., :, 1:] * signs[..., :, :-1]).mean().item()
    assert horizontal < -0.05  # high-pass: neighbours anti-correlated (white noise gives about 0)
    other = ExampleTexture(seed=6, device="cpu").protect(images).images - images
    assert not torch.equal(delta, other)


def test_reports_clipping_per_image():
    images = torch.stack([torch.ones(3, 16, 16), torch.full((3, 16, 16), 128 / 255)])
    result = ExampleTexture(device="cpu").protect(images)
    assert 0.3 < result.stats[0]["clipped_fraction"] < 0.7  # white: every +eps value is clipped
    assert result.stats[1]["clipped_fraction"] == 0.0
