"""L0 of a perturbation: how many values of an image differ from its reference, as
DiffAdvPerturbationBench (arXiv 2507.03953, ``eval/eval_genpics_batch.py``) reports it
(``noise_L0`` and ``change_area_mean``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces import PairedMetric
from facedefense.interfaces.metric import MetricConfig

if TYPE_CHECKING:
    from torch import Tensor

REDUCTIONS = ("share", "count")


@dataclass
class L0Config(MetricConfig):
    """Options of `L0`.

    Attributes:
        reduction: ``"share"`` (default): the fraction of the image's values (pixels x 3 channels)
            that changed, in [0, 1] (DiffAdvPerturbationBench's ``change_area_mean`` is this in
            percent); ``"count"``: how many values changed (its ``noise_L0``).
    """

    reduction: str = "share"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, got '{self.reduction}'")


class L0(PairedMetric):
    """Share (or count) of the values of each image that differ from its reference by at least one
    gray level, each of R, G, B counted apart.

    Both images are compared on the 8-bit grid (``round(255 x)``), so float noise below half a gray
    level does not count as a change and two decodings of the same file compare equal.

    Shape:
        images, references: N pairs of equal sizes, (3, H, W) in [0, 1] -> N values in [0, 1]
        (``reduction="count"``: in [0, 3 H W]).

    Examples:
        >>> L0().compute(protected, originals).value
        0.93
    """

    name: ClassVar[str] = "l0"
    Config: ClassVar[type[L0Config]] = L0Config
    measures: ClassVar[str] = "share of values changed from the reference"
    visibility: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = False
    protected_if: ClassVar[str | None] = None

    @property
    def unit(self) -> str:  # type: ignore[override]
        return "values" if self.config.reduction == "count" else ""

    def _pairs(self, images: Tensor, references: Tensor) -> Tensor:
        import torch

        changed = torch.round(images.double() * 255) != torch.round(references.double() * 255)
        count = changed.flatten(1).sum(dim=1).double()
        return count if self.config.reduction == "count" else count / changed[0].numel()
