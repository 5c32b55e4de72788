"""AdvDM: adversarial examples for diffusion models (Liang et al., "Adversarial Example Does Good:
Preventing Painting Imitation from Diffusion Models via Adversarial Examples", ICML 2023,
arXiv:2302.04578); the semantic loss of Mist (psyker-team/mist, ``mode=0``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError
from facedefense.imaging import resize, working_size
from facedefense.interfaces import Defender
from facedefense_iterative.frozen_model import PGDConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class AdvDMConfig(PGDConfig):
    """AdvDM options (defaults: Mist's ``mode=0``; its budgets are already in [0, 1] units).

    Attributes:
        eps: L-infinity budget in [0, 1] units. Default 16/255 (the reference's ``-e 16``).
        steps: PGD steps. Default 100.
        step_size: sign step in [0, 1] units. Default 1/255.
        prompt: conditioning prompt of the denoising loss. Default ``"a photo"`` (Mist with
            ``object=True``; it uses ``"a painting"`` for artworks).
        random_start: start from a uniform point of the eps-ball (advertorch's PGD does). Default True.
        eot: purifiers to optimize through, e.g. ``jpeg`` or ``none,jpeg``.
        eot_samples: transform draws per step.
        momentum: MI-FGSM momentum (0 = plain sign steps, the reference).
        schedule: ``constant`` (reference), ``linear`` or ``cosine``.
        gradient_checkpointing: recompute UNet activations in the backward pass to save memory.
    """

    eps: float = 16 / 255
    steps: int = 100
    step_size: float = 1 / 255
    prompt: str = "a photo"
    random_start: bool = True
    schedule: str = "constant"
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(f"schedule must be constant, linear or cosine, got '{self.schedule}'")


class AdvDM(Defender):
    """Maximize the surrogate's latent-diffusion loss: ``max_delta E_{t, eps} ||eps_theta(z_t, t, c) - eps||^2``.

    Each step draws one timestep and one noise per image and samples the VAE posterior (Monte-Carlo
    estimate of the expectation, as the reference); the UNet and VAE are frozen, so only the images
    get gradients.

    Args:
        model: diffusers folder or Hugging Face id of the surrogate.
        eps, steps, step_size, prompt, random_start, eot, momentum, schedule, resolution: see
            ``AdvDMConfig``.

    Shape:
        images: (N, 3, H, W) in [0, 1], any size (the model sees the short side at ``resolution``;
        the perturbation keeps the original resolution).

    Examples:
        >>> protected = AdvDM(model="CompVis/stable-diffusion-v1-4", steps=100).protect(images).images

    Differences from the reference code:
        a diffusers model instead of the CompVis checkpoint; no random crop of the input (Mist crops
        to ``input_size``; we resize the whole image); the result is rounded to 8 bits inside the
        budget; optional EOT, momentum and step decay.
    """

    name: ClassVar[str] = "advdm"
    Config: ClassVar[type[AdvDMConfig]] = AdvDMConfig

    def __init__(self, config: AdvDMConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        from facedefense.diffusion import TextEmbeddingCache, load_components

        if not self.config.model:
            raise ConfigError("advdm needs a surrogate model: --model (a diffusers folder or Hugging Face id)")
        self.parts = load_components(self.config.model, device=self.device, dtype=self.dtype)
        if self.config.gradient_checkpointing:
            self.parts.unet.enable_gradient_checkpointing()
        self.states = TextEmbeddingCache(self.parts.tokenizer, self.parts.text_encoder)(self.config.prompt)
        self.eot = self.config.build_eot(self.device)

    def loss(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The per-image denoising loss (N,) of ``images`` (any size) at a random t, VAE sampled."""
        import contextlib

        import torch

        from facedefense.diffusion import denoising_loss, encode_latents

        size = working_size(*images.shape[-2:], self.config.resolution)
        latents = encode_latents(self.parts.vae, resize(images, size), sample=True, generator=generator).float()
        accelerated = self.device.type == "cuda" and self.dtype in (torch.bfloat16, torch.float16)
        with torch.autocast("cuda", dtype=self.dtype) if accelerated else contextlib.nullcontext():
            return denoising_loss(self.parts.unet, self.parts.scheduler, latents, self.states, generator=generator)

    def _perturb(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, list[dict[str, Any]]]:
        from facedefense_iterative.frozen_model import run_pgd

        return run_pgd(self, images, functools.partial(self.loss, generator=generator), generator, minimize=False,
                       schedule=self.config.schedule, description="advdm")
