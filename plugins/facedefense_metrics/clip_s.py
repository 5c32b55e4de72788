"""CLIP-S as FaceLock defines it (Wang et al., "Edit Away and My Face Will not Stay", CVPR 2025;
taco-group/FaceLock ``evaluation/eval_clip_s.py``): the directional CLIP similarity between the
change an edit made and its instruction."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces.metric import Metric, MetricScores
from facedefense_metrics._clip import CLIPConfig

if TYPE_CHECKING:
    from torch import Tensor


class CLIPScore(Metric):
    """``cos(E_I(edit) - E_I(source), E_T(instruction))`` per edit, in [-1, 1], on CLIP's raw
    (unnormalized) image and text projections: how far the edit moved the photo in the direction the
    instruction names. A protected photo whose edit fails scores low; an unchanged edit scores 0.

    For the plain text-image similarity ``cos(E_I(image), E_T(prompt))`` use ``clip_t``.

    Shape:
        images: N edits; references: the N photos they were made from (same sizes); prompts: the
            instruction, one for all or one per edit -> N values.

    Examples:
        >>> CLIPScore(weights="ViT-B-32.pt").compute(edits, photos, prompts="Let the person wear sunglasses").value
        0.12
    """

    name: ClassVar[str] = "clip_s"
    Config: ClassVar[type[CLIPConfig]] = CLIPConfig
    pairing: ClassVar[str] = "paired"
    edit_reference: ClassVar[str] = "source"  # FaceLock's evaluation compares the edit with --src_dir
    needs_prompt: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = True

    def _compute(self, images: list[Tensor], references: list[Tensor] | None, prompts: list[str] | None) -> MetricScores:
        import torch
        import torch.nn.functional as F

        from facedefense_metrics._clip import clip_model, image_features, model_details, text_features

        assert references is not None and prompts is not None
        model = clip_model(self)
        values = [float("nan")] * len(images)
        for indices, batch in self.batches(images):
            sources = torch.stack([references[i] for i in indices]).to(batch.device)
            change = image_features(model, batch, normalize=False) - image_features(model, sources, normalize=False)
            texts = text_features(model, [prompts[i] for i in indices], batch.device, normalize=False)
            for index, value in zip(indices, F.cosine_similarity(change, texts, dim=-1).tolist()):
                values[index] = value
        return MetricScores(per_image=values, details=model_details(model))
