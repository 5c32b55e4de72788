"""Image-batch contract and the geometric helpers methods share.

An image batch is a float32 tensor of shape (N, 3, H, W), RGB, values in [0, 1]. The [-1, 1] range
that VAEs and most reference code use appears only through [`to_vae_range`][facedefense.imaging.to_vae_range]
and [`from_vae_range`][facedefense.imaging.from_vae_range].
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from facedefense.errors import ImageError

if TYPE_CHECKING:
    from torch import Tensor


def check_image_batch(images: Tensor, name: str = "images") -> Tensor:
    """Check the image-batch contract and return the batch as float32.

    Raises:
        ImageError: not a 4-D tensor with 3 channels, empty, not finite, or outside [0, 1].
    """
    import torch

    if not isinstance(images, torch.Tensor):
        raise ImageError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ImageError(f"{name} must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ImageError(f"{name} is empty: shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ImageError(f"{name} must be a floating-point tensor in [0, 1], got {images.dtype}")
    images = images.float()
    low, high = (value.item() for value in torch.aminmax(images))  # one pass; NaN and inf show here
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ImageError(f"{name} contains NaN or infinite values")
    if low < 0.0 or high > 1.0:
        raise ImageError(f"{name} must lie in [0, 1], got values in [{low:.4f}, {high:.4f}]")
    return images


def to_vae_range(images: Tensor) -> Tensor:
    """[0, 1] -> [-1, 1] (the range of Stable Diffusion's VAE and of most reference code)."""
    return images * 2.0 - 1.0


def from_vae_range(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1]; no clamping (clamp where the method's reference does)."""
    return (images + 1.0) / 2.0


def resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Differentiable anti-aliased bilinear resize of (N, C, H, W) to ``size`` = (height, width)."""
    import torch.nn.functional as F

    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


#: Largest long-to-short side ratio [`working_size`][facedefense.imaging.working_size] scales up (the file
#: reader refuses more).
MAX_WORKING_ASPECT = 16


def working_size(height: int, width: int, resolution: int | None, multiple: int = 8) -> tuple[int, int]:
    """The size a model sees: the short side scaled to ``resolution`` (aspect kept), rounded to
    ``multiple``. ``None`` keeps the image size (rounded to ``multiple``).

    Examples:
        >>> working_size(600, 400, 512)
        (768, 512)
    """
    if resolution is not None:
        scale = resolution / min(height, width)
        if max(height, width) * scale > MAX_WORKING_ASPECT * resolution:
            raise ImageError(
                f"a {width}x{height} image is too elongated for a working resolution of {resolution} "
                f"(at most {MAX_WORKING_ASPECT}:1; the working image would be {round(width * scale)}x{round(height * scale)})"
            )
        height, width = height * scale, width * scale
    return (max(multiple, round(height / multiple) * multiple), max(multiple, round(width / multiple) * multiple))


def as_image_list(images: Tensor | Sequence[Tensor], name: str = "images") -> list[Tensor]:
    """A batch (N, 3, H, W) or a sequence of images of any sizes -> checked list of (3, H, W) float32.

    Items of a sequence may be (3, H, W) or (1, 3, H, W).

    Raises:
        ImageError: an item breaks the image contract, or nothing was given.

    Examples:
        >>> [tuple(x.shape) for x in as_image_list([torch.rand(3, 8, 8), torch.rand(1, 3, 4, 6)])]
        [(3, 8, 8), (3, 4, 6)]
    """
    import torch

    if isinstance(images, torch.Tensor):
        return list(check_image_batch(images, name).unbind(0))
    items = list(images)
    if not items:
        raise ImageError(f"{name} is empty")
    checked = []
    for index, item in enumerate(items):
        if isinstance(item, torch.Tensor) and item.ndim == 3:
            item = item.unsqueeze(0)
        checked.append(check_image_batch(item, f"{name}[{index}]")[0])
    return checked


def group_by_size(
    images: Sequence[Tensor], max_batch: int | None = None
) -> Iterator[tuple[list[int], Tensor]]:
    """Stack same-size images: yields ``(indices, batch)`` with batch (n, 3, H, W), n <= ``max_batch``.

    Images keep their order inside a group; every index appears exactly once.
    """
    import torch

    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    for indices in groups.values():
        step = max_batch or len(indices)
        for start in range(0, len(indices), step):
            chunk = indices[start : start + step]
            yield chunk, torch.stack([images[i] for i in chunk])
