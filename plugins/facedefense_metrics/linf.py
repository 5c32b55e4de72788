"""L-infinity distance in gray levels: checks the budget of images protected by any tool."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces import PairedMetric

if TYPE_CHECKING:
    from torch import Tensor


class Linf(PairedMetric):
    """Largest absolute difference between an image and its reference, over pixels and channels,
    in gray levels (0-255): a budget of 8/255 reads 8.

    Shape:
        images, references: N pairs of equal sizes -> N values in [0, 255].

    Examples:
        >>> Linf().compute(protected, originals).value
        8.0
    """

    name: ClassVar[str] = "linf"
    measures: ClassVar[str] = "largest pixel change from the reference"
    visibility: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = False
    protected_if: ClassVar[str | None] = None
    unit: ClassVar[str] = "gray levels"

    def _pairs(self, images: Tensor, references: Tensor) -> Tensor:
        return ((images.double() - references.double()).abs().flatten(1).amax(dim=1) * 255).round(decimals=4)
