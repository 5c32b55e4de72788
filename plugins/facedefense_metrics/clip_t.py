"""CLIP-T: text-image CLIP similarity between each image and its prompt (the "CLIP-T" of
personalization evaluations, e.g. Custom Diffusion, Kumari et al., CVPR 2023; CLIPScore, Hessel et
al., EMNLP 2021, is 2.5 * max(cos, 0) of it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces.metric import Metric, MetricScores
from facedefense_metrics._clip import CLIPConfig

if TYPE_CHECKING:
    from torch import Tensor


class CLIPText(Metric):
    """Cosine similarity between each image's CLIP embedding and its prompt's, in [-1, 1]. A generated
    image that ignores its prompt scores low.

    Shape:
        images: N images, any sizes; prompts: one string, or one per image -> N values.

    Examples:
        >>> CLIPText(weights="ViT-B-32.pt").compute(generated, prompts="a photo of sks person").value
        0.27
    """

    name: ClassVar[str] = "clip_t"
    Config: ClassVar[type[CLIPConfig]] = CLIPConfig
    needs_prompt: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True

    def _compute(self, images: list[Tensor], references, prompts: list[str] | None) -> MetricScores:
        from facedefense_metrics._clip import clip_model, image_features, model_details, text_features

        assert prompts is not None
        model = clip_model(self)
        values = [float("nan")] * len(images)
        for indices, batch in self.batches(images):
            texts = text_features(model, [prompts[i] for i in indices], batch.device)
            for index, value in zip(indices, (image_features(model, batch) * texts).sum(-1).tolist()):
                values[index] = value
        return MetricScores(per_image=values, details=model_details(model))
