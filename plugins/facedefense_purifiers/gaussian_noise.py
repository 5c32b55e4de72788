"""Additive Gaussian noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces import Purifier, PurifierConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def check_sigma(sigma: float, what: str) -> None:
    """A noise standard deviation must be a finite number >= 0 (raises ConfigError)."""
    import math

    if not math.isfinite(sigma) or sigma < 0:
        raise ConfigError(f"{what} sigma must be >= 0 (in [0, 1] pixel units), got {sigma}")


def add_noise(images: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """``clip(x + sigma * N(0, 1), 0, 1)`` with the noise drawn from ``generator`` (any device)."""
    import torch

    noise = torch.randn(images.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return (images + sigma * noise.to(images.device, images.dtype)).clamp(0.0, 1.0)


@dataclass
class GaussianNoiseConfig(PurifierConfig):
    """Noise options.

    Attributes:
        sigma: standard deviation in [0, 1] pixel units, >= 0. Default 0.05 (GAP-Diff's
            ``preprocess/random_noise.py``; also the plain-noise setting in Hönig et al.'s README).
    """

    sigma: float = 0.05

    def __post_init__(self) -> None:
        check_sigma(self.sigma, "gaussian_noise")


class GaussianNoise(Purifier):
    """Add i.i.d. Gaussian noise to every pixel and clip to [0, 1].

    Adding noise is differentiable (identity Jacobian inside [0, 1]), so
    ``purify_differentiable`` is the purifier itself: with the same generator it returns the
    same values (tolerance 0).

    Shape:
        (N, 3, H, W) float in [0, 1] -> same.

    Examples:
        >>> purified = GaussianNoise(sigma=0.1).purify(images, generator=torch.Generator().manual_seed(0))

    Differences from the reference code:
        GAP-Diff truncates to 8 bits (``astype(uint8)``); the file runner rounds to nearest. The
        noise comes from a seeded ``torch.Generator`` instead of NumPy's global state.
    """

    name: ClassVar[str] = "gaussian_noise"
    Config: ClassVar[type[GaussianNoiseConfig]] = GaussianNoiseConfig
    differentiable: ClassVar[bool] = True

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return add_noise(images, self.config.sigma, generator)

    def purify_differentiable(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The same noise, with its exact gradient."""
        return add_noise(images, self.config.sigma, self.make_generator(generator))
