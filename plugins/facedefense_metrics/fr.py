"""FaceLock's facial-recognition similarity (FR): Wang et al., "Edit Away and My Face Will not
Stay: Personal Biometric Defense against Malicious Generative Editing", CVPR 2025."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces.metric import Metric, MetricScores
from facedefense_metrics._faces import FaceMetricConfig, make_backend

if TYPE_CHECKING:
    from torch import Tensor


class FR(Metric):
    """Cosine similarity between the largest face of each edited image and that of its source photo
    (paired by name).

    FaceLock protects a photo so that an edit of it no longer shows the person: FR drops. NaN where
    either image has no face (counted in ``details["no_face"]``); the backend is named.

    Shape:
        images (edits) and references (their source photos): N pairs of equal sizes -> N values in [-1, 1].

    Example:
        >>> FR().compute(edits, references=photos).value
        0.93

    Differences from the reference code: FaceLock embeds with AdaFace-KPRPE (CVLFace, gated
    weights) after DFA alignment; the default here is dlib's ResNet with 5-point alignment.
    """

    name: ClassVar[str] = "fr"
    Config: ClassVar[type[FaceMetricConfig]] = FaceMetricConfig
    pairing: ClassVar[str] = "paired"
    higher_is_better: ClassVar[bool] = True
    protected_if: ClassVar[str] = "lower"

    def _compute(self, images: list[Tensor], references: list[Tensor] | None, prompts) -> MetricScores:
        import torch

        backend = make_backend(self, embed=True)
        edited, sources = backend.embed_largest(images), backend.embed_largest(references)
        scores = [
            float("nan") if a is None or b is None else float(torch.nn.functional.cosine_similarity(a, b, dim=0))
            for a, b in zip(edited, sources)
        ]
        return MetricScores(per_image=scores, details={"backend": backend.name, "no_face": sum(s != s for s in scores)})
