"""Down-scaling and up-scaling back: the resampling an upload pipeline applies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from facedefense.errors import ConfigError
from facedefense.interfaces import Purifier, PurifierConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class ResizeConfig(PurifierConfig):
    """Resize options.

    Attributes:
        factor: scale of the intermediate image, in (0, 1). Default 0.5 (GAP-Diff's
            ``preprocess/resize.py`` takes 512x512 images to 256x256).
        interpolation: ``bilinear`` (default, OpenCV's ``INTER_LINEAR`` as in GAP-Diff),
            ``bicubic``, ``nearest`` or ``area``; used both ways.
        antialias: low-pass filter when shrinking (PIL-like); default False, like OpenCV's
            ``INTER_LINEAR``. Only for bilinear and bicubic.
    """

    factor: float = 0.5
    interpolation: Literal["bilinear", "bicubic", "nearest", "area"] = "bilinear"
    antialias: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.factor < 1:
            raise ConfigError(f"resize factor must be in (0, 1), got {self.factor}")
        if self.antialias and self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"resize antialias works with bilinear or bicubic, not {self.interpolation}")


class Resize(Purifier):
    """Shrink each image by ``factor`` and enlarge it back to its own size, same interpolation.

    Interpolation is differentiable, so ``purify_differentiable`` is the purifier itself
    (tolerance 0).

    Shape:
        (N, 3, H, W) float in [0, 1] -> same; the intermediate is
        (N, 3, max(1, round(H * factor)), max(1, round(W * factor))).

    Examples:
        >>> purified = Resize(factor=0.25, interpolation="bicubic").purify(images)

    Differences from the reference code:
        GAP-Diff keeps the 256x256 image; here it is enlarged back so the photo keeps its size.
    """

    name: ClassVar[str] = "resize"
    Config: ClassVar[type[ResizeConfig]] = ResizeConfig
    differentiable: ClassVar[bool] = True

    def _resample(self, images: Tensor) -> Tensor:
        import torch.nn.functional as F

        height, width = images.shape[-2:]
        small = (max(1, round(height * self.config.factor)), max(1, round(width * self.config.factor)))
        mode = self.config.interpolation
        extra = {} if mode in ("nearest", "area") else {"align_corners": False}
        down = F.interpolate(images, size=small, mode=mode, antialias=self.config.antialias, **extra)
        up = F.interpolate(down, size=(height, width), mode="nearest" if mode == "area" else mode, **extra)
        return up.clamp(0.0, 1.0)

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return self._resample(images)

    def purify_differentiable(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The same resampling, with its exact gradient."""
        return self._resample(images)
