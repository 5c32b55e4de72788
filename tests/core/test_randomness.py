"""`facedefense.runtime.global_rng_from`: third-party draws from torch's global state follow the
method's generator, and the caller's global state is untouched."""

from __future__ import annotations

import torch

from facedefense.runtime import global_rng_from, make_generator


def test_the_inside_follows_the_generator_and_the_outside_is_restored():
    torch.manual_seed(5)
    expected_outside = torch.rand(3)
    torch.manual_seed(5)
    with global_rng_from(make_generator(1)):
        first = torch.rand(3)
    outside = torch.rand(3)
    with global_rng_from(make_generator(1)):
        again = torch.rand(3)
    with global_rng_from(make_generator(2)):
        other = torch.rand(3)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(outside, expected_outside)  # as if the block had not drawn at all
