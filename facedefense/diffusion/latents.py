"""Pixels <-> Stable Diffusion latents. Images are (N, 3, H, W) in [0, 1] on both sides."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from facedefense.imaging import from_vae_range, to_vae_range
from facedefense.runtime import module_dtype

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def latent_mean(vae: Any, images: Tensor) -> Tensor:
    """Mean of the VAE posterior, unscaled: (N, 3, H, W) in [0, 1] -> (N, C, H/f, W/f).

    Differentiable; images are cast to the VAE's dtype. PhotoGuard's encoder attack works here.

    Examples:
        >>> latent_mean(parts.vae, torch.rand(1, 3, 512, 512)).shape
        torch.Size([1, 4, 64, 64])
    """
    return vae.encode(to_vae_range(images).to(module_dtype(vae))).latent_dist.mean


def encode_latents(
    vae: Any, images: Tensor, *, sample: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """Scaled latents ``z = s * E(x)`` (s = ``vae.config.scaling_factor``), the UNet's input space.

    Args:
        vae: an ``AutoencoderKL``.
        images: (N, 3, H, W) in [0, 1]; H and W multiples of the VAE's downsampling factor.
        sample: draw from the posterior (reparameterized, as training does) instead of its mean.
        generator: randomness of the sample.

    Returns:
        (N, 4, H/f, W/f) in the VAE's dtype (f = 8 for Stable Diffusion); differentiable.

    Examples:
        >>> encode_latents(parts.vae, torch.rand(2, 3, 512, 512)).shape
        torch.Size([2, 4, 64, 64])
    """
    posterior = vae.encode(to_vae_range(images).to(module_dtype(vae))).latent_dist
    latents = posterior.sample(generator=generator) if sample else posterior.mean
    return latents * vae.config.scaling_factor


def decode_latents(vae: Any, latents: Tensor) -> Tensor:
    """Inverse of [`encode_latents`][facedefense.diffusion.latents.encode_latents]: scaled latents (N, 4, h,
    w) -> float32 images (N, 3, f*h, f*w) in [0, 1] (clamped). Differentiable inside the range."""
    decoded = vae.decode(latents.to(module_dtype(vae)) / vae.config.scaling_factor).sample
    return from_vae_range(decoded.float()).clamp(0.0, 1.0)
