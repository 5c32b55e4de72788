"""The latent-diffusion denoising loss, with controllable randomness (common random numbers)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from facedefense.errors import ConfigError
from facedefense.runtime import module_dtype

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def _draw_device(generator: torch.Generator | None) -> Any:
    """Draw on the generator's device (CPU when none), so a seed gives the same numbers anywhere."""
    return generator.device if generator is not None else "cpu"


def sample_timesteps(
    scheduler: Any,
    count: int,
    *,
    generator: torch.Generator | None = None,
    device: Any = "cpu",
    low: int = 0,
    high: int | None = None,
) -> Tensor:
    """``count`` integer timesteps drawn uniformly from {low, ..., high-1} (default {0, ..., T-1}).

    Args:
        scheduler: a diffusers scheduler (T = ``scheduler.config.num_train_timesteps``, 1000 for SD).
        count: how many (one per image).
        generator: randomness; draws happen on its device.
        device: where the result goes.
        low: the sub-range's first timestep, e.g. Mist/SDS-style attacks restricted to t in [low, high).
        high: one past the sub-range's last timestep (default T).

    Examples:
        >>> sample_timesteps(parts.scheduler, 4, generator=torch.Generator().manual_seed(0))
        tensor([ 44, 239, 933, 760])
    """
    import torch

    high = scheduler.config.num_train_timesteps if high is None else high
    if not 0 <= low < high <= scheduler.config.num_train_timesteps:
        raise ConfigError(f"timestep range [{low}, {high}) outside [0, {scheduler.config.num_train_timesteps})")
    drawn = torch.randint(low, high, (count,), generator=generator, device=_draw_device(generator))
    return drawn.to(device)


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
        generator: randomness of timesteps then noise; pass identically seeded generators to compare
            image sets with common random numbers.
        reduction: ``"per_image"`` gives (N,) means over C, h, w; ``"mean"`` one scalar.

    The target is eps, the velocity for ``prediction_type == "v_prediction"`` models (SD 2.x-768),
    or the clean latent for ``"sample"``. Differentiable w.r.t. ``latents`` (and the UNet's
    parameters when they require grad); computed in float32 whatever the UNet's dtype.

    Returns:
        (N,) per-image losses, or a scalar for ``reduction="mean"``.

    Examples:
        >>> z = encode_latents(parts.vae, images)                      # (N, 4, H/8, W/8)
        >>> c = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)("a photo of sks person")
        >>> loss = denoising_loss(parts.unet, parts.scheduler, z, c, generator=torch.Generator().manual_seed(0))
    """
    import torch

    kind = scheduler.config.prediction_type
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise ConfigError(f"unsupported prediction_type '{kind}'")
    count = latents.shape[0]
    if timesteps is None:
        timesteps = sample_timesteps(scheduler, count, generator=generator)
    timesteps = torch.as_tensor(timesteps).to(latents.device).long()
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(count)
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, device=_draw_device(generator))
        noise = noise.to(latents.device, latents.dtype)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    states = encoder_hidden_states
    if states.shape[0] == 1 and count > 1:
        states = states.expand(count, -1, -1)
    dtype = module_dtype(unet)
    prediction = unet(noisy.to(dtype), timesteps, states.to(dtype)).sample.float()
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = latents
    per_image = (prediction - target.float()).pow(2).flatten(1).mean(dim=1)
    return per_image if reduction == "per_image" else per_image.mean()
