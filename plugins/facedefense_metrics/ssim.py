"""Structural similarity (Wang et al., "Image Quality Assessment: From Error Visibility to
Structural Similarity", IEEE TIP 2004)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces import PairedMetric

if TYPE_CHECKING:
    from torch import Tensor


class SSIM(PairedMetric):
    """Mean SSIM per image: 11x11 Gaussian window (sigma 1.5), data range [0, 1], averaged over the
    RGB channels and all positions (as torchmetrics and the FaceLock evaluation do).

    Shape:
        images, references: same-size pairs, (3, H, W) float in [0, 1] (any size per pair) -> N values in [-1, 1]; 1 means identical.

    Examples:
        >>> SSIM().compute(protected, originals).value
        0.97
    """

    name: ClassVar[str] = "ssim"
    measures: ClassVar[str] = "structural similarity to the reference"
    visibility: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True

    def _pairs(self, images: Tensor, references: Tensor) -> Tensor:
        from kornia.metrics import ssim

        window = min(11, images.shape[-1], images.shape[-2])
        window -= 1 - window % 2  # odd, and no larger than the image
        similarity = ssim(images.float(), references.float(), window_size=window, max_val=1.0, padding="valid")
        return similarity.flatten(1).mean(dim=1)
