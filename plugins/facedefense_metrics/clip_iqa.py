"""CLIP-IQA: Wang, Chan and Loy, "Exploring CLIP for Assessing the Look and Feel of Images", AAAI
2023; the zero-shot quality score of the amortized defenders' evaluations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces.metric import Metric
from facedefense_metrics.clip_s import CLIPConfig

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class CLIPIQAConfig(CLIPConfig):
    """Options of :class:`CLIPIQA` (plus ``weights``, ``architecture``).

    Attributes:
        architecture: open_clip architecture (default ``RN50``, the paper's).
        positive, negative: the antonym prompt pair (paper: "Good photo." / "Bad photo.").
        logit_scale: the softmax temperature's inverse (CLIP's 100).
    """

    architecture: str = "RN50"
    positive: str = "Good photo."
    negative: str = "Bad photo."
    logit_scale: float = 100.0


class CLIPIQA(Metric):
    """Probability that CLIP prefers the positive prompt of an antonym pair: softmax over
    ``logit_scale * cos(image, [positive, negative])``, in [0, 1]. Higher is better quality;
    protections that degrade what an attacker generates lower it.

    Shape:
        images: any number, any sizes -> one value each.

    Example:
        >>> CLIPIQA(weights="RN50.pt").compute(generated).value
        0.41

    Differences from the reference code: the paper's RN50 drops the attention pool's positional
    embedding to accept any input size; here images are resized to the model's input instead (as
    open_clip preprocesses), so scores differ slightly from piq/pyiqa's ``clipiqa``.
    """

    name: ClassVar[str] = "clip_iqa"
    Config: ClassVar[type[CLIPIQAConfig]] = CLIPIQAConfig
    higher_is_better: ClassVar[bool] = True

    def _compute(self, images: list[Tensor], references, prompts) -> list[float]:
        from facedefense.models import shared_model
        from facedefense_metrics._clip import image_features, text_features

        model = shared_model("clip", path=self.config.weights, device=self.device, architecture=self.config.architecture)
        values = [float("nan")] * len(images)
        anchors = None
        for indices, batch in self.batches(images):
            if anchors is None:
                anchors = text_features(model, [self.config.positive, self.config.negative], batch.device)
            probabilities = (self.config.logit_scale * image_features(model, batch) @ anchors.T).softmax(dim=-1)
            for index, value in zip(indices, probabilities[:, 0].tolist()):
                values[index] = value
        return values
