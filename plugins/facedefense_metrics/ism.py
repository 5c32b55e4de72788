"""Identity score matching (ISM), the protocol of Anti-DreamBooth (Van Le et al., ICCV 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces.metric import Metric, MetricScores
from facedefense_metrics._faces import FaceMetricConfig, make_backend

if TYPE_CHECKING:
    from torch import Tensor


def identity_center(backend, references: list[Tensor], metric: str) -> Tensor:
    """Mean embedding of the largest face of each reference photo; ConfigError when none has a face."""
    import torch

    embeddings = [e for e in backend.embed_largest(references) if e is not None]
    if not embeddings:
        raise ConfigError(
            f"{metric}: no face found in any of the {len(references)} reference image(s) "
            f"(backend {backend.name}): no identity to compare with"
        )
    return torch.stack(embeddings).mean(dim=0)


class ISM(Metric):
    """Cosine similarity of the largest face of each image to the mean embedding of the clean
    reference set (the person's other photos: any sizes, any count).

    Higher means the generated faces still look like the person; a protection works when ISM
    drops. Images with no face get NaN (the mean skips them) and are counted in
    ``details["no_face"]``; when no image has a face, ISM is undefined (NaN) and the details say
    so. The backend is named in the details.

    Shape:
        images: N images, any sizes; references: M clean photos, any sizes -> N values in [-1, 1].

    Examples:
        >>> ISM().compute(generated, references=clean_photos).value
        0.71

    Differences from the reference code: Anti-DreamBooth embeds with ArcFace (deepface, RetinaFace
    alignment); the default here is dlib's 128-D ResNet (5-point alignment), the real face
    recognition model that ships offline, so values are on dlib's scale (same person about 0.9+,
    different people about 0.6-0.8 on portraits), not ArcFace's.
    """

    name: ClassVar[str] = "ism"
    measures: ClassVar[str] = "identity similarity of the faces to the clean photos"
    Config: ClassVar[type[FaceMetricConfig]] = FaceMetricConfig
    pairing: ClassVar[str] = "set"
    higher_is_better: ClassVar[bool] = True
    protected_if: ClassVar[str] = "lower"

    def _compute(self, images: list[Tensor], references: list[Tensor] | None, prompts) -> MetricScores:
        import torch

        backend = make_backend(self, embed=True)
        center = identity_center(backend, references, self.name)
        scores = []
        for embedding in backend.embed_largest(images):
            if embedding is None:
                scores.append(float("nan"))
            else:
                scores.append(float(torch.nn.functional.cosine_similarity(embedding, center, dim=0)))
        missing = sum(1 for s in scores if s != s)
        details = {"backend": backend.name, "no_face": missing, "references": len(references)}
        if missing == len(images):
            details["undefined"] = "no face detected in any image"
        return MetricScores(per_image=scores, details=details)
