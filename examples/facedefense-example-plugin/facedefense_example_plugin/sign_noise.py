"""Random sign noise at the full L-infinity budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from facedefense import Defender, DefenderConfig
from facedefense.errors import ConfigError


@dataclass
class SignNoiseConfig(DefenderConfig):
    """Options.

    Attributes:
        eps: L-infinity budget in [0, 1] units. Default: 8/255.
        density: share of pixels perturbed, in (0, 1]. Default: 1.0.
    """

    density: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.density <= 1.0:
            raise ConfigError(f"density must be in (0, 1], got {self.density}")


class SignNoise(Defender):
    """Add ``eps * s`` with ``s`` uniformly +1 or -1 per pixel and channel (on a ``density`` share
    of the pixels). No model: it only sets the bar that real protections must clear.

    Shape:
        (N, 3, H, W) float in [0, 1] -> same, within ``eps`` after 8-bit rounding.

    Example:
        >>> SignNoise(eps=4 / 255, seed=1).protect(images).images
    """

    name: ClassVar[str] = "sign_noise"
    Config: ClassVar[type[SignNoiseConfig]] = SignNoiseConfig

    def _perturb(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        signs = torch.randint(0, 2, images.shape, generator=generator, device=generator.device) * 2 - 1
        keep = torch.rand(images.shape[:1] + images.shape[2:], generator=generator, device=generator.device)
        mask = (keep < self.config.density).unsqueeze(1)
        return images + self.config.eps * signs.to(images) * mask.to(images)
