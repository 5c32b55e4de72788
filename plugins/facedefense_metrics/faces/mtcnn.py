"""MTCNN face detector (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", IEEE SPL 2016) from facenet-pytorch, whose wheel ships the trained P-, R-
and O-Nets. Detection only: facenet-pytorch's embedding network needs weights that do not ship.

Differences from the reference code: the MTCNN protocol papers (SER-FIQ, Anti-DreamBooth) use the
insightface/mxnet MTCNN; this is facenet-pytorch's port of the same networks and thresholds
(0.6, 0.7, 0.7), so detections can differ slightly at the margins. Faces below ``min_probability``
(default 0.9) are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError, MissingDependencyError
from facedefense_metrics.faces.base import Face, FaceBackend

if TYPE_CHECKING:
    from torch import Tensor


@lru_cache(maxsize=2)
def _mtcnn(device: str, min_face_size: int):
    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    ensure_torchvision_importable()
    try:
        from facenet_pytorch import MTCNN
    except ImportError as error:
        raise MissingDependencyError("the mtcnn face backend needs facenet-pytorch: pip install --no-deps facenet-pytorch") from error
    return MTCNN(device=device, keep_all=True, min_face_size=min_face_size)


class MTCNNBackend(FaceBackend):
    """MTCNN detection with 5 landmarks (eye centres, nose tip, mouth corners); no embedding.

    Args:
        device: where the three small networks run (default ``"cpu"``).
        min_face_size: smallest face searched for, in pixels (default 20).
        min_probability: detections below this probability are ignored (default 0.9).

    Shape:
        detect: (3, H, W) in [0, 1] -> faces, largest first; ``detect_many`` batches same-size images.

    Examples:
        >>> len(MTCNNBackend().detect(portrait))
        1
    """

    name: ClassVar[str] = "mtcnn"

    def __init__(self, device: str = "cpu", min_face_size: int = 20, min_probability: float = 0.9) -> None:
        if not 0.0 <= min_probability <= 1.0:
            raise ConfigError(f"min_probability must be in [0, 1], got {min_probability}")
        self.device, self.min_face_size, self.min_probability = device, int(min_face_size), float(min_probability)

    def detect(self, image: Tensor) -> list[Face]:
        return self.detect_many([image])[0]

    def detect_many(self, images: Sequence[Tensor]) -> list[list[Face]]:
        """Faces of each image, largest first; same-size images run as one batch."""
        import torch

        from facedefense.imaging import group_by_size

        model = _mtcnn(self.device, self.min_face_size)
        out: list[list[Face]] = [[] for _ in images]
        for indices, batch in group_by_size(list(images)):
            pixels = (batch.detach().float().clamp(0, 1) * 255).round().permute(0, 2, 3, 1).cpu()
            with torch.no_grad():
                boxes, probs, points = model.detect(pixels, landmarks=True)
            for index, image_boxes, image_probs, image_marks in zip(indices, boxes, probs, points):
                if image_boxes is None:
                    continue
                faces = [
                    Face(tuple(float(v) for v in box), float(prob), torch.tensor(marks.astype(float), dtype=torch.float32))
                    for box, prob, marks in zip(image_boxes, image_probs, image_marks)
                    if prob is not None and float(prob) >= self.min_probability
                ]
                out[index] = sorted(faces, key=lambda face: -face.area)
        return out
