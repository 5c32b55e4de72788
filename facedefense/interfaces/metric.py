"""Metrics: how imperceptible a protection is, and how well it holds against attacks."""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from facedefense.config import MethodConfig
from facedefense.errors import ConfigError
from facedefense.imaging import as_image_list, group_by_size
from facedefense.interfaces.base import Method

if TYPE_CHECKING:
    from torch import Tensor

PAIRINGS = ("none", "paired", "set")


@dataclass
class MetricConfig(MethodConfig):
    """Options of every metric.

    Attributes:
        batch_size: images per forward pass of a model-based metric. Default 16.
    """

    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass
class MetricScores:
    """What a metric's hook may return when it has more to say than per-image values.

    Attributes:
        per_image: one value per image (NaN where undefined), or None for set-level metrics.
        value: the aggregate; default the NaN-aware mean of ``per_image``.
        details: facts to report beside the value (backend, images without a face, ...).
    """

    per_image: Sequence[float] | None = None
    value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricResult:
    """A metric value.

    Attributes:
        name: metric name.
        value: the aggregate (by default the mean over the images with a defined value); NaN if none.
        per_image: one value per image, NaN where undefined (e.g. no face detected); None for
            set-level metrics (FID).
        higher_is_better: the direction of *better image quality / similarity*.
        unit: e.g. ``"dB"``; empty when unitless.
        count: the number of images with a defined value (set-level: the number of images).
        details: extra facts (backend used, images without a face, ...).
        protected_if: which direction means the protection worked (``"higher"``/``"lower"``).
    """

    name: str
    value: float
    per_image: list[float] | None
    higher_is_better: bool
    unit: str = ""
    count: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    protected_if: str | None = None


class Metric(Method, abc.ABC):
    """Base class of metrics: [`compute`][facedefense.interfaces.metric.Metric.compute] checks inputs and
    calls ``_compute``.

    Attributes:
        pairing: what ``references`` are: ``"none"`` (not used), ``"paired"`` (reference i is the
            original of image i, same size) or ``"set"`` (clean photos of any sizes and count, e.g.
            the identity that ISM compares with, the distribution FID compares with).
        needs_prompt: whether [`compute`][facedefense.interfaces.metric.Metric.compute] needs ``prompts``
            (CLIP-S).
        per_image: False for set-level metrics (FID), which give one value only.
        higher_is_better: direction of better quality / similarity.
        protected_if: which direction means the protection worked; default the opposite of
            ``higher_is_better`` (a worse generated image, a lower identity similarity).
        unit: unit of the values.
        measures: what a value says, in a few words, for reports (``"identity similarity to the
            clean photos"``); empty: the summary of the registry says it.
        visibility: a budget metric: compared with the original photo it says how visible a change
            is (PSNR, SSIM, LPIPS, L-inf), rather than whether an attack failed; reports of
            protected photos word it so.
        edit_reference: what a paired metric compares an editing attack's outputs with in the
            benchmark (FaceLock's evaluation, ``evaluation/eval_*.py``): ``"clean_edit"``, the same
            edit of the clean photo (PSNR, SSIM, LPIPS: did the protection change the edit), or
            ``"source"``, the clean photo the edit was made from (FR, CLIP-I, CLIP-S: does the edit
            keep the person, follow the instruction).
    """

    Config: ClassVar[type[MetricConfig]] = MetricConfig
    pairing: ClassVar[Literal["none", "paired", "set"]] = "none"
    needs_prompt: ClassVar[bool] = False
    per_image: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True
    protected_if: ClassVar[Literal["higher", "lower"] | None] = None
    unit: ClassVar[str] = ""
    measures: ClassVar[str] = ""
    visibility: ClassVar[bool] = False
    edit_reference: ClassVar[Literal["clean_edit", "source"]] = "clean_edit"

    @property
    def needs_reference(self) -> bool:
        """Whether [`compute`][facedefense.interfaces.metric.Metric.compute] requires ``references`` (paired
        and set metrics)."""
        return self.pairing != "none"

    @classmethod
    def protection_direction(cls) -> str:
        """``"higher"`` or ``"lower"``: which way of this metric means a working protection."""
        return cls.protected_if or ("lower" if cls.higher_is_better else "higher")

    def compute(
        self,
        images: Tensor | Sequence[Tensor],
        references: Tensor | Sequence[Tensor] | None = None,
        *,
        prompts: str | Sequence[str] | None = None,
    ) -> MetricResult:
        """Score ``images``.

        Args:
            images: a batch (N, 3, H, W) or a list of (3, H, W) images of any sizes, in [0, 1].
            references: paired metrics: one original per image, same size; set metrics: clean
                photos of any sizes and count; ignored by metrics with ``pairing = "none"``.
            prompts: metrics with ``needs_prompt``: one prompt for all images, or one per image.

        Raises:
            ConfigError: references or prompts missing or mismatched (the message names the image).
        """
        import torch

        listed = as_image_list(images)
        refs = None
        if self.pairing != "none":
            if references is None or (not isinstance(references, torch.Tensor) and len(references) == 0):
                raise ConfigError(f"metric '{self.name}' needs reference images")
            refs = as_image_list(references, "references")
            if self.pairing == "paired":
                if len(refs) != len(listed):
                    raise ConfigError(f"metric '{self.name}' pairs images with references: {len(listed)} image(s), {len(refs)} reference(s)")
                for index, (image, ref) in enumerate(zip(listed, refs)):
                    if image.shape != ref.shape:
                        raise ConfigError(
                            f"metric '{self.name}': image {index} is {image.shape[2]}x{image.shape[1]} but its reference is "
                            f"{ref.shape[2]}x{ref.shape[1]} (paired metrics compare same-size images)"
                        )
        prompt_list = None
        if self.needs_prompt:
            if prompts is None or (isinstance(prompts, str) and not prompts.strip()):
                raise ConfigError(f"metric '{self.name}' needs a prompt")
            prompt_list = [prompts] * len(listed) if isinstance(prompts, str) else list(prompts)
            if len(prompt_list) != len(listed):
                raise ConfigError(f"metric '{self.name}': {len(prompt_list)} prompt(s) for {len(listed)} image(s)")
        with torch.no_grad():
            scores = self._compute(listed, refs, prompt_list)
        return self._result(scores, len(listed))

    def _result(self, scores: Any, count: int) -> MetricResult:
        import torch

        if not isinstance(scores, MetricScores):
            if isinstance(scores, (int, float)):
                scores = MetricScores(value=float(scores))
            else:
                scores = MetricScores(per_image=scores)
        per_image = None
        if scores.per_image is not None:
            values = scores.per_image
            if isinstance(values, torch.Tensor):
                values = values.detach().double().cpu().flatten().tolist()
            per_image = [float(v) for v in values]
            if len(per_image) != count:
                raise RuntimeError(f"{type(self).__name__}._compute returned {len(per_image)} value(s) for {count} image(s)")
        elif self.per_image:
            raise RuntimeError(f"{type(self).__name__}._compute returned no per-image values (set per_image = False)")
        if scores.value is not None:
            value, defined = float(scores.value), count
        else:
            finite = [v for v in per_image or [] if not math.isnan(v)]
            value, defined = (sum(finite) / len(finite) if finite else math.nan), len(finite)
        return MetricResult(
            self.name,
            value,
            per_image,
            self.higher_is_better,
            self.unit,
            defined,
            dict(scores.details),
            self.protection_direction(),
        )

    def batches(self, images: Sequence[Tensor]) -> Iterator[tuple[list[int], Tensor]]:
        """Same-size images stacked into batches of at most ``config.batch_size``, on the device."""
        for indices, batch in group_by_size(images, self.config.batch_size):
            yield indices, batch.to(self.device)

    @abc.abstractmethod
    def _compute(
        self, images: list[Tensor], references: list[Tensor] | None, prompts: list[str] | None
    ) -> Tensor | Sequence[float] | float | MetricScores:
        """Score the images.

        Args:
            images: (3, H, W) float32 images in [0, 1] (CPU; batch them with
                [`batches`][facedefense.interfaces.metric.Metric.batches]).
            references: per ``pairing``: None, one per image (same sizes), or a set.
            prompts: one per image when ``needs_prompt``, else None.

        Returns:
            Per-image values (NaN where undefined), a float (set-level), or
            [`MetricScores`][facedefense.interfaces.metric.MetricScores].
        """


class PairedMetric(Metric):
    """A paired metric computed batch by batch: implement ``_pairs`` on same-size batches."""

    pairing: ClassVar[Literal["none", "paired", "set"]] = "paired"

    def _compute(self, images: list[Tensor], references: list[Tensor] | None, prompts: list[str] | None) -> Tensor:
        import torch

        assert references is not None
        values = torch.empty(len(images), dtype=torch.float64)
        for indices, batch in self.batches(images):
            refs = torch.stack([references[i] for i in indices]).to(self.device)
            values[indices] = self._pairs(batch, refs).detach().double().cpu()
        return values

    @abc.abstractmethod
    def _pairs(self, images: Tensor, references: Tensor) -> Tensor:
        """One value per pair: images and references are (n, 3, H, W) of the same size."""
