"""AdverseCleaner (lllyasviel/AdverseCleaner, ``clean.py``, 2023): repeated bilateral filtering,
then a guided filter steered by the input photo. No learning, no model: the cleaner users ran
against Anti-DreamBooth (its issue #1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError, MissingDependencyError
from facedefense.interfaces import Purifier, PurifierConfig

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor


@dataclass
class AdverseCleanerConfig(PurifierConfig):
    """AdverseCleaner options (``clean.py``'s constants; gray levels are 0-255 units).

    Attributes:
        bilateral_steps: bilateral filter passes. Default 64.
        diameter: bilateral filter neighbourhood diameter in pixels. Default 5.
        sigma_color: bilateral filter range sigma in gray levels. Default 8.
        sigma_space: bilateral filter spatial sigma in pixels. Default 8.
        guided_steps: guided filter passes, each guided by the input photo. Default 4.
        radius: guided filter window radius in pixels (window 2r+1). Default 4.
        guided_eps: guided filter regularization in squared gray levels. Default 16.
    """

    bilateral_steps: int = 64
    diameter: int = 5
    sigma_color: float = 8.0
    sigma_space: float = 8.0
    guided_steps: int = 4
    radius: int = 4
    guided_eps: float = 16.0

    def __post_init__(self) -> None:
        if self.bilateral_steps < 0 or self.guided_steps < 0:
            raise ConfigError("adverse_cleaner bilateral_steps and guided_steps must be at least 0")
        if self.diameter < 1 or self.radius < 1:
            raise ConfigError("adverse_cleaner diameter and radius must be at least 1 pixel")
        if not (self.sigma_color > 0 and self.sigma_space > 0 and self.guided_eps > 0):
            raise ConfigError("adverse_cleaner sigma_color, sigma_space and guided_eps must be positive")


def box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2r+1)x(2r+1) window of every pixel, borders mirrored with the edge pixel
    (OpenCV's ``BORDER_REFLECT``, as ``cv2.ximgproc``'s guided filter averages)."""
    import cv2

    side = 2 * radius + 1
    return cv2.boxFilter(image, -1, (side, side), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He, Sun and Tang's guided filter with a colour guide (ECCV 2010, Eqs. 19-21).

    In each window the output is a linear function of the guide's three channels, ``a . I + b``,
    fitted to ``source`` by ridge regression (``eps`` on the covariance's diagonal); each pixel
    averages the models of the windows that hold it.

    Args:
        guide: (H, W, 3) float32.
        source: (H, W, C) float32, filtered channel by channel.
        radius: window radius in pixels.
        eps: regularization, in the squared units of ``guide``.

    Returns:
        (H, W, C) float32.
    """
    import numpy as np

    guide, source = guide.astype(np.float32), source.astype(np.float32)
    mean_i = box_mean(guide, radius)  # (H, W, 3)
    products = np.stack([guide[..., k : k + 1] * guide for k in range(3)], axis=-2)  # (H, W, 3, 3)
    covariance = np.stack([box_mean(np.ascontiguousarray(products[..., k, :]), radius) for k in range(3)], axis=-2)
    covariance = covariance - mean_i[..., :, None] * mean_i[..., None, :] + eps * np.eye(3, dtype=np.float32)
    inverse = np.linalg.inv(covariance.astype(np.float64))
    out = np.empty_like(source)
    for channel in range(source.shape[-1]):
        p = np.ascontiguousarray(source[..., channel])
        mean_p = box_mean(p, radius)
        cross = box_mean(guide * p[..., None], radius) - mean_i * mean_p[..., None]  # (H, W, 3)
        a = np.einsum("hwij,hwj->hwi", inverse, cross).astype(np.float32)
        b = mean_p - (a * mean_i).sum(-1)
        out[..., channel] = (box_mean(a, radius) * guide).sum(-1) + box_mean(b, radius)
    return out


class AdverseCleaner(Purifier):
    """Bilateral filtering (``bilateral_steps`` passes), then ``guided_steps`` guided-filter passes
    guided by the input photo, on 0-255 floats as ``clean.py`` does.

    The bilateral filter is OpenCV's (``cv2.bilateralFilter``); the guided filter is written here
    (``cv2.ximgproc``, which ``clean.py`` calls, ships only in opencv-contrib) with the same window,
    regularization and borders. Not differentiable: EOT through it uses the straight-through
    estimator.

    Shape:
        (N, 3, H, W) float in [0, 1] -> same.

    Examples:
        >>> purified = AdverseCleaner().purify(images)
    """

    name: ClassVar[str] = "adverse_cleaner"
    Config: ClassVar[type[AdverseCleanerConfig]] = AdverseCleanerConfig

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import numpy as np
        import torch

        try:
            import cv2
        except ImportError as exc:
            raise MissingDependencyError("adverse_cleaner needs OpenCV: pip install 'facedefense[purifiers]'") from exc
        c = self.config
        cleaned = []
        for image in images.detach().float().cpu():
            photo = np.ascontiguousarray(image.permute(1, 2, 0).numpy() * 255.0, dtype=np.float32)
            result = photo.copy()
            for _ in range(c.bilateral_steps):
                result = cv2.bilateralFilter(result, c.diameter, c.sigma_color, c.sigma_space)
            for _ in range(c.guided_steps):
                result = guided_filter(photo, result, c.radius, c.guided_eps)
            cleaned.append(torch.from_numpy(np.clip(result, 0, 255) / 255.0).permute(2, 0, 1))
        return torch.stack(cleaned).to(images.device, images.dtype)
