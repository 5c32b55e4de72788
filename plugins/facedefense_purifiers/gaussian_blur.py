"""Gaussian blur, a classical low-pass purification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces import Purifier, PurifierConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class GaussianBlurConfig(PurifierConfig):
    """Gaussian blur options.

    Attributes:
        kernel_size: side of the square kernel in pixels, odd, at least 3. Default 3 (GAP-Diff's
            ``preprocess/gaussianblur.py``).
        sigma: standard deviation(s) of the kernel in pixels: one value (isotropic) or two
            (vertical, horizontal), like OpenCV's ``sigmaY, sigmaX``. Default ``(2.0, 0.1)``, the
            ``cv2.GaussianBlur(img, (3, 3), sigmaX=0.1, sigmaY=2.0)`` call of GAP-Diff's script.
    """

    kernel_size: int = 3
    sigma: tuple[float, ...] = (2.0, 0.1)

    def __post_init__(self) -> None:
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ConfigError(f"gaussian_blur kernel_size must be odd and at least 3, got {self.kernel_size}")
        if len(self.sigma) not in (1, 2):
            raise ConfigError(f"gaussian_blur sigma takes one value or two (vertical,horizontal), got {self.sigma}")
        if any(s <= 0 for s in self.sigma):
            raise ConfigError(f"gaussian_blur sigma must be positive, got {self.sigma}")


class GaussianBlur(Purifier):
    """Convolve each channel with a Gaussian kernel (reflected borders, as OpenCV's default).

    The blur is differentiable as it stands, so ``purify_differentiable`` is the purifier itself
    (tolerance 0).

    Shape:
        (N, 3, H, W) float in [0, 1] -> same.

    Examples:
        >>> purified = GaussianBlur(kernel_size=5, sigma=(1.0,)).purify(images)

    Differences from the reference code:
        GAP-Diff's script blurs the 8-bit image with OpenCV and writes 8 bits; here the blur runs on
        floats and the file runner rounds to 8 bits when it writes.
    """

    name: ClassVar[str] = "gaussian_blur"
    Config: ClassVar[type[GaussianBlurConfig]] = GaussianBlurConfig
    differentiable: ClassVar[bool] = True

    def _blur(self, images: Tensor) -> Tensor:
        from kornia.filters import gaussian_blur2d

        sigma = tuple(self.config.sigma) * (2 // len(self.config.sigma))
        size = self.config.kernel_size
        # kornia takes (sigma_y, sigma_x); a kernel larger than the image cannot reflect.
        if min(images.shape[-2:]) <= size // 2:
            raise ConfigError(f"gaussian_blur kernel_size {size} is too large for a {tuple(images.shape[-2:])} image")
        return gaussian_blur2d(images, (size, size), sigma, border_type="reflect").clamp(0.0, 1.0)

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return self._blur(images)

    def purify_differentiable(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The same blur, with its exact gradient."""
        return self._blur(images)
