"""Face detection failure rate (FDFR), the protocol of Anti-DreamBooth (Van Le et al., ICCV 2023)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces.metric import Metric, MetricScores
from facedefense_metrics._faces import FaceMetricConfig, make_backend

if TYPE_CHECKING:
    from torch import Tensor


class FDFR(Metric):
    """Share of images in which the face backend finds no face; per image 1 (no face) or 0.

    A protection against personalization works when the faces the attacker's model generates are
    broken: FDFR rises. The backend (``-o backend=``) is named in the details; RetinaFace-based
    backends keep faces above ``detector_threshold`` (default 0.9, Anti-DreamBooth's).

    Shape:
        images: any number, any sizes, (3, H, W) in [0, 1] -> one 0/1 value each; value = the rate.

    Examples:
        >>> FDFR().compute(generated).value
        0.25

    Differences from the reference code: Anti-DreamBooth detects with RetinaFace (deepface, threshold
    0.9); the default here is dlib's HOG detector, the real detector that ships offline
    (``backend=retinaface`` with weights by path for the protocol's).
    """

    name: ClassVar[str] = "fdfr"
    measures: ClassVar[str] = "share of images where no face is detected"
    Config: ClassVar[type[FaceMetricConfig]] = FaceMetricConfig
    higher_is_better: ClassVar[bool] = False
    protected_if: ClassVar[str] = "higher"

    def _compute(self, images: list[Tensor], references, prompts) -> MetricScores:
        backend = make_backend(self, embed=False)
        missing = [0.0 if backend.detect(image) else 1.0 for image in images]
        return MetricScores(per_image=missing, details={"backend": backend.name, "no_face": int(sum(missing))})
