"""Bit-depth reduction (colour quantization)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces import Purifier, PurifierConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class QuantizeConfig(PurifierConfig):
    """Quantization options.

    Attributes:
        bits: bits per channel kept, 1-8. Default 6 (64 levels, GAP-Diff's
            ``preprocess/quantization.py``).
    """

    bits: int = 6

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ConfigError(f"quantize bits must be in 1..8, got {self.bits}")


class Quantize(Purifier):
    """Keep ``bits`` bits per channel: ``x <- floor(x * 2**bits) / 2**bits`` (1.0 stays 1.0).

    Rounding has a zero gradient almost everywhere, so ``purify_differentiable`` is the
    straight-through estimator (forward: this quantizer, exactly; backward: identity).

    Shape:
        (N, 3, H, W) float in [0, 1] -> same.

    Examples:
        >>> purified = Quantize(bits=4).purify(images)

    Differences from the reference code:
        none in the formula (GAP-Diff floors ``x * 64`` and writes ``uint8(x * 255)``); the file
        runner rounds the result to the nearest 8-bit value instead of truncating.
    """

    name: ClassVar[str] = "quantize"
    Config: ClassVar[type[QuantizeConfig]] = QuantizeConfig

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import torch

        levels = float(2**self.config.bits)
        return (torch.floor(images * levels) / levels).clamp(0.0, 1.0)
