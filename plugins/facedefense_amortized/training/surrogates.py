"""The frozen diffusion models the amortized defenders are trained against (an ensemble)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from facedefense.runtime import module_dtype

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class Surrogate:
    """One frozen Stable Diffusion model: VAE, UNet, noise schedule and a cached prompt embedding."""

    name: str
    vae: Any
    unet: Any
    scheduler: Any
    prompt: Tensor  # (1, L, D)

    @property
    def timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)


def load_surrogates(models: list[str], prompt: str, *, device: torch.device, dtype: torch.dtype) -> list[Surrogate]:
    """Load each model's VAE, UNet and scheduler (frozen), encode ``prompt`` once with its own text
    encoder and drop the encoder."""
    from facedefense.diffusion import TextEmbeddingCache, load_components

    loaded = []
    for model in models:
        parts = load_components(model, device=device, dtype=dtype)
        embedding = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)(prompt)
        loaded.append(Surrogate(model, parts.vae, parts.unet, parts.scheduler, embedding))
    return loaded


def encode(surrogate: Surrogate, images_vae_range: Tensor, generator: torch.Generator) -> Tensor:
    """Scaled latents sampled from the VAE posterior (reparameterized; differentiable)."""
    import torch

    posterior = surrogate.vae.encode(images_vae_range.to(module_dtype(surrogate.vae))).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator, device=generator.device)
    latents = posterior.mean + posterior.std * noise.to(posterior.mean.device, posterior.mean.dtype)
    return latents.float() * surrogate.vae.config.scaling_factor


def draw(surrogate: Surrogate, latents: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One timestep per image, uniform over the schedule, and Gaussian noise."""
    import torch

    count = latents.shape[0]
    timesteps = torch.randint(0, surrogate.timesteps, (count,), generator=generator, device=generator.device)
    noise = torch.randn(latents.shape, generator=generator, device=generator.device)
    return timesteps.to(latents.device), noise.to(latents.device, latents.dtype)


def predict_noise(surrogate: Surrogate, noisy: Tensor, timesteps: Tensor) -> Tensor:
    """The UNet's noise prediction (an epsilon- or v-prediction model), float32."""
    dtype = module_dtype(surrogate.unet)
    states = surrogate.prompt.expand(noisy.shape[0], -1, -1).to(dtype)
    output = surrogate.unet(noisy.to(dtype), timesteps, states).sample.float()
    if surrogate.scheduler.config.prediction_type == "v_prediction":
        alphas = surrogate.scheduler.alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, 1, 1, 1)
        output = alphas.sqrt() * output + (1 - alphas).sqrt() * noisy.float()
    return output
