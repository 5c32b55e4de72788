"""What every face backend provides: detection of the faces in a photo and, when it can, an embedding
of the largest one."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class Face:
    """A detected face.

    Attributes:
        box: (left, top, right, bottom) in pixels of the image it was found in.
        score: detector confidence (its own scale: dlib HOG margin, MTCNN probability).
        landmarks: (5, 2) (x, y) pixels in the backend's own 5-point convention, or None.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: Tensor | None = None

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


class FaceBackend(abc.ABC):
    """A face detector, optionally with an identity embedding.

    Attributes:
        name: backend name, reported in every metric result that uses it.
        can_embed: whether ``embed_largest`` is available.
    """

    name: ClassVar[str]
    can_embed: ClassVar[bool] = False

    @abc.abstractmethod
    def detect(self, image: Tensor) -> list[Face]:
        """Faces of one (3, H, W) image in [0, 1], largest first."""

    def embed_largest(self, images: Sequence[Tensor]) -> list[Tensor | None]:
        """Identity embedding (D,) of the largest face of each image; None where no face is found."""
        from facedefense.errors import ConfigError

        raise ConfigError(f"face backend '{self.name}' detects faces but has no identity embedding")

    def embed_whole(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Identity embedding (D,) of each whole image, resized to the network's input without
        detection or alignment: what deepface embeds with ``enforce_detection=False`` when it finds
        no face, and how FR scores an edit whose face is gone (FaceLock scores every edit)."""
        from facedefense.errors import ConfigError

        raise ConfigError(f"face backend '{self.name}' detects faces but has no identity embedding")


def to_uint8_hwc(image: Tensor):
    """(3, H, W) float in [0, 1] -> contiguous (H, W, 3) uint8 numpy array (what dlib and cv2 read)."""
    import numpy as np

    array = (image.detach().float().clamp(0, 1) * 255).round().to("cpu").byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(array)
