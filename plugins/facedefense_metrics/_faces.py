"""What the face metrics (FDFR, ISM, FR, SER-FIQ) share: the backend option and its construction."""

from __future__ import annotations

from dataclasses import dataclass

from facedefense.errors import ConfigError
from facedefense.interfaces.metric import MetricConfig


@dataclass
class FaceMetricConfig(MetricConfig):
    """Options of the face metrics.

    Attributes:
        backend: face backend, always named in the result: ``"dlib"`` (default; real, offline),
            ``"dlib_torch"`` (same model in torch, batched, any device), ``"mtcnn"`` or
            ``"retinaface"`` (detection only) or ``"arcface"`` (RetinaFace + ArcFace, weights by path).
        detector: dlib detector, ``"hog"`` (default) or ``"cnn"``.
        upsample: times dlib upsamples the image before detecting (0: faces from about 80 px).
        weights: embedding weights of the ``arcface`` backend (``recognition_arcface_ir_se50.pth``).
        detector_weights: RetinaFace weights of the ``retinaface``/``arcface``/``vgg_face`` backends
            (``detection_Resnet50_Final.pth``).
        detector_threshold: minimum RetinaFace face confidence in [0, 1] (``retinaface``,
            ``arcface`` backends); default 0.9, the Anti-DreamBooth protocol's (deepface's
            ``RetinaFaceWrapper.detect_face``; facexlib's own default is 0.8).
    """

    backend: str = "dlib"
    detector: str = "hog"
    upsample: int = 0
    weights: str | None = None
    detector_weights: str | None = None
    detector_threshold: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        from facedefense_metrics.faces import BACKENDS

        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown face backend '{self.backend}'; choose one of: {', '.join(BACKENDS)}")
        if self.detector not in ("hog", "cnn"):
            raise ConfigError(f"detector must be 'hog' or 'cnn', got '{self.detector}'")
        if self.upsample < 0:
            raise ConfigError(f"upsample must be >= 0, got {self.upsample}")
        if not 0.0 <= self.detector_threshold < 1.0:
            raise ConfigError(f"detector_threshold must be in [0, 1), got {self.detector_threshold}")


def make_backend(metric, *, embed: bool):
    """The face backend a face metric's config names; ``embed`` requires one with an embedding."""
    from facedefense_metrics.faces import get_backend

    config = metric.config
    backend = get_backend(
        config.backend,
        detector=config.detector,
        upsample=config.upsample,
        device=str(metric.device),
        weights=config.weights,
        detector_weights=config.detector_weights,
        threshold=config.detector_threshold,
    )
    if embed and not backend.can_embed:
        raise ConfigError(f"{metric.name}: backend '{config.backend}' has no identity embedding; use dlib or dlib_torch")
    return backend
