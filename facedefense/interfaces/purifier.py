"""Purifiers: counter-measures an adversary applies to protected images before attacking."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.config import MethodConfig
from facedefense.imaging import check_image_batch
from facedefense.interfaces.base import Method

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class PurifierConfig(MethodConfig):
    """Options of every purifier (device, dtype, seed)."""


class Purifier(Method, abc.ABC):
    """Base class of purifiers.

    [`purify`][facedefense.interfaces.purifier.Purifier.purify] checks the batch, never modifies it, calls
    ``_purify`` and returns images of the same shape in [0, 1] (a purifier may work at another size inside,
    e.g. x4 upscaling, but returns the input's). It runs without autograd unless the purifier sets
    ``needs_grad = True`` (IMPRESS optimizes the image).
    [`purify_differentiable`][facedefense.interfaces.purifier.Purifier.purify_differentiable] is what a
    defender optimizes through (expectation over transformations): by default the straight-through estimator
    (BPDA: forward is the real purifier, backward is the identity); a purifier with a differentiable
    approximation sets ``differentiable = True`` and overrides it.
    """

    Config: ClassVar[type[PurifierConfig]] = PurifierConfig
    differentiable: ClassVar[bool] = False
    needs_grad: ClassVar[bool] = False

    def purify(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Purify a batch: (N, 3, H, W) in [0, 1] -> same shape in [0, 1]."""
        import torch

        original = check_image_batch(images)
        with torch.set_grad_enabled(self.needs_grad):
            purified = self._purify(self._to_device(original), self.make_generator(generator))
        return self._check_output(purified, original, "_purify")

    def purify_differentiable(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Purify with a gradient: straight-through (BPDA) unless the purifier overrides it."""
        purified = self._purify(images.detach(), self.make_generator(generator)).to(images.dtype)
        return images + (purified.clamp(0.0, 1.0) - images).detach()

    @abc.abstractmethod
    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Return the purified images (same shape, values in [0, 1])."""
