"""Peak signal-to-noise ratio."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces import PairedMetric

if TYPE_CHECKING:
    from torch import Tensor

#: PSNR reported for identical images (a finite cap keeps JSON valid and means stay defined).
MAX_PSNR_DB = 100.0


class PSNR(PairedMetric):
    """PSNR = 10 log10(1 / MSE) per image, data range [0, 1], over all pixels and channels.

    Higher means the images are closer (a protection's imperceptibility). Identical images score
    ``MAX_PSNR_DB`` (100 dB) instead of infinity.

    Shape:
        images, references: same-size pairs, (3, H, W) float in [0, 1] (any size per pair) -> N values in dB.

    Examples:
        >>> PSNR().compute(protected, originals).value
        38.7
    """

    name: ClassVar[str] = "psnr"
    measures: ClassVar[str] = "pixel similarity to the reference"
    visibility: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    unit: ClassVar[str] = "dB"

    def _pairs(self, images: Tensor, references: Tensor) -> Tensor:
        import torch

        mse = (images.double() - references.double()).pow(2).flatten(1).mean(dim=1)
        psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(1e-30))
        return psnr.clamp(max=MAX_PSNR_DB)
