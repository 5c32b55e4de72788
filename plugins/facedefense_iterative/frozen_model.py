"""The surrogate latent diffusion model the iterative defenders attack: loaded once, frozen, with the
prompt's text embedding computed once, the denoising residual that SDS-type gradients use, and the
PGD options and call the defenders share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from facedefense.errors import ConfigError
from facedefense.interfaces import IterativeDefenderConfig
from facedefense.runtime import module_dtype

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class Surrogate:
    """Frozen SD parts plus the cached embedding of one prompt.

    Attributes:
        parts: ``facedefense.diffusion.SDComponents`` (vae, unet, scheduler, ...).
        condition: (1, L, D) text embedding of the prompt (computed once, no gradient).
        uncond: (1, L, D) embedding of the empty prompt (classifier-free guidance), or None.
    """

    parts: Any
    condition: Tensor
    uncond: Tensor | None = None


def load_surrogate(
    model: str, prompt: str, *, device: torch.device, dtype: torch.dtype, method: str, uncond: bool = False
) -> Surrogate:
    """Load every SD component of ``model`` once and embed ``prompt`` (and "" when ``uncond``)."""
    from facedefense.diffusion import TextEmbeddingCache, load_components

    if not model:
        raise ConfigError(f"{method} needs a surrogate model: --model (a diffusers folder or a Hugging Face id)")
    parts = load_components(model, device=device, dtype=dtype)
    cache = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)
    return Surrogate(parts=parts, condition=cache(prompt), uncond=cache.uncond if uncond else None)


def draw_noise(latents: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise like ``latents``, drawn on the generator's device (seed-stable)."""
    import torch

    device = generator.device if generator is not None else "cpu"
    return torch.randn(latents.shape, generator=generator, device=device).to(latents.device, torch.float32)


def denoising_residual(
    surrogate: Surrogate, latents: Tensor, generator: torch.Generator | None, *, low: int = 0, high: int | None = None
) -> Tensor:
    """``UNet(z_t, t, c) - target`` at a random t and noise, WITHOUT autograd (the SDS gradient).

    ``latents`` are scaled latents (N, 4, h, w); the target is the noise (or the velocity for
    v-prediction models). The per-image denoising loss is ``residual.pow(2).flatten(1).mean(1)``.
    """
    import torch

    from facedefense.diffusion import sample_timesteps

    parts = surrogate.parts
    with torch.no_grad():
        z = latents.detach().float()
        timesteps = sample_timesteps(parts.scheduler, z.shape[0], generator=generator, device=z.device, low=low, high=high)
        noise = draw_noise(z, generator)
        noisy = parts.scheduler.add_noise(z, noise, timesteps)
        states = surrogate.condition.expand(z.shape[0], -1, -1)
        dtype = module_dtype(parts.unet)
        prediction = parts.unet(noisy.to(dtype), timesteps, states.to(dtype)).sample.float()
        if parts.scheduler.config.prediction_type == "v_prediction":
            target = parts.scheduler.get_velocity(z, noise, timesteps)
        elif parts.scheduler.config.prediction_type == "sample":
            target = z
        else:
            target = noise
        return prediction - target


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero on the CPU for the duration (restoring the previous mode).

    Unrolled denoising steps produce denormal activations (SiLU of large negative inputs); x86
    CPUs process those 10-100 times slower. Measured on the tiny model: one 2-step img2img edit at
    64 px went from 10.8 s to 0.9 s. Results change only below 1e-38.
    """
    import torch

    was_on = bool((torch.tensor([1e-40]) * 1.0).item() == 0.0)
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported and not was_on:
            torch.set_flush_denormal(False)


@dataclass
class PGDConfig(IterativeDefenderConfig):
    """The options every defender of this plugin passes to ``facedefense.optim.linf_pgd``.

    Attributes:
        eot: purifiers to optimize through (expectation over transformations), e.g. ``jpeg`` or
            ``none,jpeg``. Default "": none.
        eot_samples: transform draws per step. Default 1.
        momentum: MI-FGSM momentum (0 = plain sign steps, the references'). Default 0.
    """

    eot: str = ""
    eot_samples: int = 1
    momentum: float = 0.0

    def build_eot(self, device: Any) -> Any:
        """The ``facedefense.optim.EOT`` of ``eot`` and ``eot_samples`` on ``device``."""
        from facedefense.optim import EOT

        return EOT.from_names(self.eot, device=device, samples=self.eot_samples)


def run_pgd(
    defender: Any,
    images: Tensor,
    objective: Any,
    generator: torch.Generator,
    *,
    minimize: bool,
    description: str,
    schedule: str = "constant",
) -> tuple[Tensor, list[dict[str, float]]]:
    """``facedefense.optim.linf_pgd`` with ``defender``'s budget, steps, step size, random start,
    momentum and EOT (``defender.config`` and ``defender.eot``).

    Returns:
        The adversarial images and, per image, the objective at the first step and after the last
        (``objective_start``, ``objective_end``).
    """
    from facedefense.optim import linf_pgd

    c = defender.config
    adversarial, start, end = linf_pgd(
        images, objective, eps=c.eps, steps=c.steps, step_size=c.step_size, minimize=minimize,
        schedule=schedule, random_start=c.random_start, momentum=c.momentum,  # type: ignore[arg-type]
        eot=defender.eot, generator=generator, description=description,
    )
    return adversarial, [{"objective_start": float(s), "objective_end": float(e)} for s, e in zip(start, end)]
