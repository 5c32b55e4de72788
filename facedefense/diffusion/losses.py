"""The latent-diffusion denoising loss, with controllable randomness (common random numbers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from facedefense.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def sample_timesteps(scheduler: Any, count: int, *, generator: torch.Generator | None = None, device: Any = "cpu") -> Tensor:
    """``count`` timesteps drawn uniformly from {0, ..., T-1} (T = ``num_train_timesteps``)."""
    import torch

    total = scheduler.config.num_train_timesteps
    return torch.randint(0, total, (count,), generator=generator, device="cpu").to(device)


def denoising_loss(
    unet: Any,
    scheduler: Any,
    latents: Tensor,
    encoder_hidden_states: Tensor,
    *,
    timesteps: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    reduction: Literal["per_image", "mean"] = "per_image",
) -> Tensor:
    """``|| target - UNet(z_t, t, c) ||^2`` with ``z_t = sqrt(a_t) z + sqrt(1 - a_t) eps``.

    Args:
        unet: ``UNet2DConditionModel``.
        scheduler: a diffusers scheduler with ``add_noise`` (and ``get_velocity`` for v-prediction).
        latents: scaled latents z, (N, C, h, w).
        encoder_hidden_states: text embeddings, (N, L, D) (or (1, L, D), broadcast).
        timesteps: (N,) integer timesteps; drawn uniformly with ``generator`` when None.
        noise: eps, same shape as ``latents``; drawn from ``generator`` when None.
        generator: randomness (CPU generator); pass the same one to compare image sets fairly.
        reduction: ``"per_image"`` gives (N,) means over C, h, w; ``"mean"`` one scalar.

    The target is eps, the velocity for ``prediction_type == "v_prediction"`` models (SD 2.x-768),
    or the clean latent for ``"sample"``.
    """
    import torch

    count = latents.shape[0]
    if timesteps is None:
        timesteps = sample_timesteps(scheduler, count, generator=generator)
    timesteps = timesteps.to(latents.device)
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    states = encoder_hidden_states
    if states.shape[0] == 1 and count > 1:
        states = states.expand(count, -1, -1)
    prediction = unet(noisy.to(unet.dtype), timesteps, states.to(unet.dtype)).sample.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    elif kind == "sample":
        target = latents
    else:
        raise ConfigError(f"unsupported prediction_type '{kind}'")
    per_image = (prediction - target.float()).pow(2).flatten(1).mean(dim=1)
    return per_image if reduction == "per_image" else per_image.mean()
