"""CLIP-S: text-image CLIP similarity (Hessel et al., "CLIPScore", EMNLP 2021), the prompt
fidelity score of editing evaluations such as FaceLock (Wang et al., CVPR 2025)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces.metric import Metric, MetricConfig

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class CLIPConfig(MetricConfig):
    """Options of the CLIP metrics.

    Attributes:
        weights: CLIP weights file (OpenAI ``ViT-B-32.pt`` or open_clip ``open_clip_pytorch_model.bin``);
            required; ``"random"``: random weights (tests only).
        architecture: open_clip architecture name (default ``ViT-B-32``, as the papers).
    """

    weights: str | None = None
    architecture: str = "ViT-B-32"


class CLIPScore(Metric):
    """Cosine similarity between each image's CLIP embedding and its prompt's (in [-1, 1]; CLIPScore
    reports 2.5 * max(cos, 0)). A protected photo whose edit ignores the instruction scores low.

    Shape:
        images: N images, any sizes; prompts: one string, or one per image -> N values.

    Example:
        >>> CLIPScore(weights="ViT-B-32.pt").compute(edits, prompts="a person wearing glasses").value
        0.27

    Differences from the reference code: the raw cosine (no 2.5 rescaling, no clipping at 0).
    """

    name: ClassVar[str] = "clip_s"
    Config: ClassVar[type[CLIPConfig]] = CLIPConfig
    needs_prompt: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True

    def _compute(self, images: list[Tensor], references, prompts: list[str] | None) -> list[float]:
        from facedefense.models import shared_model
        from facedefense_metrics._clip import image_features, text_features

        model = shared_model("clip", path=self.config.weights, device=self.device, architecture=self.config.architecture)
        values = [float("nan")] * len(images)
        for indices, batch in self.batches(images):
            texts = text_features(model, [prompts[i] for i in indices], batch.device)
            for index, value in zip(indices, (image_features(model, batch) * texts).sum(-1).tolist()):
                values[index] = value
        return values
