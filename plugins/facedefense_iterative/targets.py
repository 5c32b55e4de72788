"""Targets and masks shared by the iterative defenders: target images (a file or the built-in
texture pattern) and edit masks, loaded once and checked with one-line errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from facedefense.errors import ConfigError, ImageError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: Option values that name the built-in texture instead of a file.
PATTERN = "pattern"


def texture_pattern(size: tuple[int, int], *, period: int = 24) -> Tensor:
    """A deterministic high-contrast colour texture, (1, 3, H, W) in [0, 1].

    Stands in for Mist's ``MIST.png`` (a dense repeated texture, not shipped here): three
    sinusoidal gratings at different orientations and phases, one per channel, thresholded into
    sharp stripes so the VAE encodes strong high-frequency structure.

    Args:
        size: (height, width) in pixels.
        period: stripe period in pixels at 512 px; it scales with the image's short side.

    Examples:
        >>> texture_pattern((64, 96)).shape
        torch.Size([1, 3, 64, 96])
    """
    import torch

    height, width = size
    scale = max(4.0, period * min(height, width) / 512)
    y = torch.arange(height, dtype=torch.float32).view(-1, 1)
    x = torch.arange(width, dtype=torch.float32).view(1, -1)
    channels = []
    for angle, phase in ((0.35, 0.0), (1.4, 2.1), (2.5, 4.2)):
        wave = torch.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / scale + phase)
        channels.append((torch.tanh(4 * wave) + 1) / 2)
    return torch.stack(channels).unsqueeze(0)


def load_target(value: str, *, method: str, option: str = "target") -> Tensor | None:
    """Load ``option=value`` of ``method``: ``"pattern"`` gives None (the texture is drawn at the
    working size later), anything else must be an image file.

    Returns:
        (1, 3, H, W) float32 in [0, 1], or None for the built-in pattern.

    Raises:
        ConfigError: the file is missing or is not an image (one line naming it).
    """
    from facedefense.io import load_image

    if value == PATTERN:
        return None
    if not Path(value).is_file():
        raise ConfigError(f"{method} option {option}='{value}' is not a file; give an image path or '{PATTERN}'")
    try:
        pixels = load_image(value).pixels
        return pixels.reshape(1, 3, *pixels.shape[-2:])
    except ImageError as exc:
        raise ConfigError(f"{method} option {option}: {exc}") from exc


def target_at(target: Tensor | None, size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """The target image resized to ``size`` (the texture pattern when ``target`` is None)."""
    from facedefense.imaging import resize

    image = texture_pattern(size) if target is None else resize(target, size).clamp(0, 1)
    return image.to(device=device, dtype=dtype)


class TargetLatents:
    """The target's scaled posterior mean at each working size, (1, 4, h/8, w/8) float32, encoded
    once per size (Mist's and SDS's textural losses compare every step's latents with it).

    Args:
        target: (1, 3, H, W) in [0, 1], or None for the texture pattern (`texture_pattern`).
        vae: the surrogate's VAE.
        device: where the latents live.
    """

    def __init__(self, target: Tensor | None, vae: torch.nn.Module, device: torch.device) -> None:
        self.target, self.vae, self.device = target, vae, device
        self._encoded: dict[tuple[int, int], Tensor] = {}

    def __call__(self, size: tuple[int, int]) -> Tensor:
        import torch

        from facedefense.diffusion import encode_latents

        if size not in self._encoded:
            with torch.no_grad():
                image = target_at(self.target, size, self.device, torch.float32)
                self._encoded[size] = encode_latents(self.vae, image).float()
        return self._encoded[size]


def load_mask(path: str | None, *, method: str) -> Tensor | None:
    """An edit mask from a file: (1, 1, H, W) in {0, 1}, 1 = the region an editor will repaint.

    Raises:
        ConfigError: the file is missing or not an image.
    """
    import torch

    from facedefense.io import load_image

    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigError(f"{method} option mask='{path}' is not a file; give a black-and-white image (white = edited)")
    try:
        pixels = load_image(path).pixels
    except ImageError as exc:
        raise ConfigError(f"{method} option mask: {exc}") from exc
    pixels = pixels.reshape(1, 3, *pixels.shape[-2:])
    return (pixels.mean(dim=1, keepdim=True) > 0.5).to(torch.float32)


def check_mask(mask: Tensor, images: Tensor, *, method: str) -> None:
    """The mask must have the images' height and width (one line naming both)."""
    if tuple(mask.shape[-2:]) != tuple(images.shape[-2:]):
        raise ConfigError(
            f"{method} mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is "
            f"{images.shape[-1]}x{images.shape[-2]} (width x height); give a mask of the image's size"
        )
