"""Inpainting masks: read from a file, or made from the face a detector finds.

The detector is scikit-image's LBP frontal-face cascade (its model file ships in the scikit-image
wheel, so it works offline); install ``facedefense[metrics]`` or ``scikit-image`` to get it.
Masks are (1, H, W) float in [0, 1], 1 = region to repaint.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from facedefense.errors import ImageError, MissingDependencyError

if TYPE_CHECKING:
    from torch import Tensor

#: Side the detector sees (the cascade misses faces under about 24 pixels).
DETECTION_SIDE = 256


def load_mask(path: str | Path, size: tuple[int, int]) -> Tensor:
    """A mask file (any image; its luminance, white = repaint) resized to ``size`` = (H, W).

    Returns:
        (1, H, W) float32 in [0, 1].
    """
    from facedefense.imaging import resize
    from facedefense.io import load_image

    pixels = load_image(path).pixels  # (1, 3, h, w)
    gray = pixels.mean(dim=1, keepdim=True)
    return resize(gray, size)[0].clamp(0, 1)


def face_boxes(image: Tensor) -> list[tuple[int, int, int, int]]:
    """Faces in one (3, H, W) image as ``(top, left, bottom, right)`` pixel boxes, largest first.

    Raises:
        MissingDependencyError: scikit-image is not installed.
    """
    try:
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade
    except ImportError as exc:
        raise MissingDependencyError(
            "automatic masks need a face detector: pip install scikit-image (or pass --mask FILE)"
        ) from exc
    from facedefense.imaging import resize

    height, width = image.shape[-2:]
    scale = DETECTION_SIDE / min(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    gray = resize(image[None].float(), size)[0].mean(0)
    array = (gray.clamp(0, 1) * 255).round().byte().cpu().numpy()
    found = Cascade(lbp_frontal_face_cascade_filename()).detect_multi_scale(
        img=array, scale_factor=1.1, step_ratio=1, min_size=(24, 24), max_size=size
    )
    boxes = [
        (round(f["r"] / scale), round(f["c"] / scale), round((f["r"] + f["height"]) / scale),
         round((f["c"] + f["width"]) / scale))
        for f in found
    ]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def face_mask(image: Tensor, region: Literal["face", "background"] = "background", margin: float = 0.4) -> Tensor:
    """Mask of the largest face of a (3, H, W) image, its box grown by ``margin`` of its side on each
    side (hair and chin); ``region="background"`` is its complement (keep the face, repaint the rest).

    Returns:
        (1, H, W) float32, 1 = repaint.

    Raises:
        ImageError: no face found.
    """
    import torch

    boxes = face_boxes(image)
    if not boxes:
        raise ImageError("no face found for an automatic mask; pass --mask FILE")
    top, left, bottom, right = boxes[0]
    grow_y, grow_x = round((bottom - top) * margin), round((right - left) * margin)
    height, width = image.shape[-2:]
    mask = torch.zeros(1, height, width)
    mask[:, max(0, top - grow_y) : min(height, bottom + grow_y), max(0, left - grow_x) : min(width, right + grow_x)] = 1
    return mask if region == "face" else 1 - mask
