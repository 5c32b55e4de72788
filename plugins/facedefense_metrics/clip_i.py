"""CLIP-I: image-image CLIP similarity between each image and its reference (as in DreamBooth,
Ruiz et al., CVPR 2023, and FaceLock's ``evaluation/eval_clip_i.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces import PairedMetric
from facedefense_metrics._clip import CLIPConfig

if TYPE_CHECKING:
    from torch import Tensor


class CLIPImage(PairedMetric):
    """Cosine similarity of the CLIP embeddings of each image and its paired reference (in [-1, 1]).

    Shape:
        images, references: N pairs (same sizes; each goes through CLIP's preprocessing) -> N values.

    Examples:
        >>> CLIPImage(weights="ViT-B-32.pt").compute(edits, references=photos).value
        0.82
    """

    name: ClassVar[str] = "clip_i"
    Config: ClassVar[type[CLIPConfig]] = CLIPConfig
    higher_is_better: ClassVar[bool] = True
    edit_reference: ClassVar[str] = "source"  # FaceLock's evaluation compares the edit with --src_dir

    def _pairs(self, images: Tensor, references: Tensor) -> Tensor:
        from facedefense_metrics._clip import clip_model, image_features

        model = clip_model(self)
        return (image_features(model, images) * image_features(model, references)).sum(-1)
