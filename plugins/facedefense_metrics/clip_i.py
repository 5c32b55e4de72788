"""CLIP-I: image-image CLIP similarity between each image and its reference (as in DreamBooth,
Ruiz et al., CVPR 2023, and FaceLock's evaluation)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces.metric import Metric
from facedefense_metrics.clip_s import CLIPConfig

if TYPE_CHECKING:
    from torch import Tensor


class CLIPImage(Metric):
    """Cosine similarity of the CLIP embeddings of each image and its paired reference (in [-1, 1]).

    Shape:
        images, references: N pairs (any sizes; each is resized to CLIP's input) -> N values.

    Example:
        >>> CLIPImage(weights="ViT-B-32.pt").compute(edits, references=photos).value
        0.82

    Differences from the reference code: none beyond the weights coming from a file.
    """

    name: ClassVar[str] = "clip_i"
    Config: ClassVar[type[CLIPConfig]] = CLIPConfig
    pairing: ClassVar[str] = "paired"
    higher_is_better: ClassVar[bool] = True

    def _compute(self, images: list[Tensor], references: list[Tensor] | None, prompts) -> list[float]:
        import torch

        from facedefense.models import shared_model
        from facedefense_metrics._clip import image_features

        model = shared_model("clip", path=self.config.weights, device=self.device, architecture=self.config.architecture)
        values = [float("nan")] * len(images)
        for indices, batch in self.batches(images):
            ours = image_features(model, batch)
            theirs = image_features(model, torch.stack([references[i] for i in indices]).to(batch.device))
            for index, value in zip(indices, (ours * theirs).sum(-1).tolist()):
                values[index] = value
        return values
