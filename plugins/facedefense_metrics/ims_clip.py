"""IMS with a CLIP image backbone: identity similarity of generated images to a person's clean
photos as DiffAdvPerturbationBench (arXiv 2507.03953) computes its ``IMS_CLIP_ViT-B/32`` column
(``eval/eval_score.py``, ``IMS_CLIP_get_score``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces.metric import Metric, MetricScores
from facedefense_metrics._clip import CLIPConfig

if TYPE_CHECKING:
    from torch import Tensor


class IMSCLIP(Metric):
    """Cosine similarity of each image's CLIP embedding to the identity's CLIP centre: the mean of
    the clean reference photos' raw (unnormalized) embeddings, then normalized. No face is detected
    or aligned: the whole image is embedded, so every image has a value.

    Higher means the generated images still look like the clean photos; a protection works when it
    drops. The face-embedding form is `ism`.

    Shape:
        images: N images, any sizes; references: M clean photos, any sizes -> N values in [-1, 1].

    Examples:
        >>> IMSCLIP(weights="ViT-B-32.pt").compute(generated, references=clean_photos).value
        0.78
    """

    name: ClassVar[str] = "ims_clip"
    measures: ClassVar[str] = "CLIP similarity of the images to the clean photos"
    Config: ClassVar[type[CLIPConfig]] = CLIPConfig
    pairing: ClassVar[str] = "set"
    higher_is_better: ClassVar[bool] = True
    protected_if: ClassVar[str] = "lower"

    def _compute(self, images: list[Tensor], references: list[Tensor] | None, prompts) -> MetricScores:
        import torch
        import torch.nn.functional as F

        from facedefense_metrics._clip import clip_model, image_features, model_details

        assert references is not None
        model = clip_model(self)
        total = None
        for _, batch in self.batches(references):
            raw = image_features(model, batch, normalize=False).sum(dim=0)
            total = raw if total is None else total + raw
        assert total is not None
        centre = F.normalize(total / len(references), dim=-1)
        values = torch.empty(len(images), dtype=torch.float64)
        for indices, batch in self.batches(images):
            values[indices] = (image_features(model, batch) @ centre).double().cpu()
        return MetricScores(per_image=values, details=model_details(model))
