"""Metrics: how imperceptible a protection is, and how well it holds against attacks."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.config import MethodConfig
from facedefense.errors import ConfigError
from facedefense.imaging import check_image_batch
from facedefense.interfaces.base import Method

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class MetricConfig(MethodConfig):
    """Options of every metric (device, dtype, seed)."""


@dataclass(frozen=True)
class MetricResult:
    """A metric value.

    Attributes:
        name: metric name.
        value: the aggregate (mean over the images with a defined value); NaN if none has one.
        per_image: one value per image; NaN where undefined (e.g. no face detected).
        higher_is_better: the direction of *better image quality / similarity*.
        unit: e.g. ``"dB"``; empty when unitless.
    """

    name: str
    value: float
    per_image: list[float]
    higher_is_better: bool
    unit: str = ""


class Metric(Method, abc.ABC):
    """Base class of metrics: :meth:`compute` checks inputs and calls :meth:`_per_image`.

    Attributes:
        higher_is_better: direction of the metric.
        needs_reference: whether :meth:`compute` requires ``references``.
        unit: unit of the values.
    """

    Config: ClassVar[type[MetricConfig]] = MetricConfig
    higher_is_better: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False
    unit: ClassVar[str] = ""

    def compute(self, images: Tensor, references: Tensor | None = None) -> MetricResult:
        """Score ``images`` ((N, 3, H, W) in [0, 1]), against ``references`` of the same shape if given."""
        import torch

        images = check_image_batch(images)
        if references is not None:
            references = check_image_batch(references, "references")
            if references.shape != images.shape:
                raise ConfigError(
                    f"{self.name}: references have shape {tuple(references.shape)}, images {tuple(images.shape)}"
                )
            references = references.to(self.device)
        elif self.needs_reference:
            raise ConfigError(f"metric '{self.name}' needs reference images (--reference)")
        with torch.no_grad():
            values = self._per_image(images.to(self.device), references)
        per_image = [float(v) for v in values.detach().double().cpu().tolist()]
        defined = [v for v in per_image if not math.isnan(v)]
        value = sum(defined) / len(defined) if defined else math.nan
        return MetricResult(self.name, value, per_image, self.higher_is_better, self.unit)

    @abc.abstractmethod
    def _per_image(self, images: Tensor, references: Tensor | None) -> Tensor:
        """Return one value per image, shape (N,); NaN where undefined."""
