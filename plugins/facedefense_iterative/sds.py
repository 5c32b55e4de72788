"""SDS protection (Xue et al., "Toward Effective Protection Against Diffusion-Based Mimicry through
Score Distillation", ICLR 2024, arXiv:2311.12832; reference code xavihart/Diff-Protect)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from facedefense.errors import ConfigError
from facedefense.imaging import resize, working_size
from facedefense.interfaces import Defender
from facedefense_iterative.frozen_model import PGDConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class SDSConfig(PGDConfig):
    """SDS options (the reference's 16/255-scale numbers are already in [0, 1] units).

    Attributes:
        eps: L-infinity budget in [0, 1] units. Default 16/255 (the reference's ``-e 16``).
        steps: sign steps. Default 100 (the reference's).
        step_size: constant sign step in [0, 1] units. Default 1/255 (the reference's).
        mode: ``"+"`` raises the surrogate's denoising loss, ``"-"`` lowers it (the paper's
            recommended SDS(-), the reference default).
        target: None for plain SDS; ``"pattern"`` (the built-in texture) or an image path adds the
            texture term of SDST: each step follows ``sign(d * target_weight * g_sds - grad L_T)``.
        target_weight: weight of the SDS gradient against the texture gradient. Default 5 (the reference's).
        prompt: conditioning of the surrogate. Default "a portrait photo" (the reference's prompt for portraits).
        random_start: start from a uniform point of the ball (the reference starts at the image).
        eot: purifiers to optimize through (expectation over transformations), e.g. ``jpeg`` or
            ``none,jpeg``; empty: none.
        eot_samples: transform draws per step.
        momentum: MI-FGSM momentum (0 = plain sign steps, the reference).
    """

    eps: float = 16 / 255
    mode: Literal["+", "-"] = "-"
    target: str | None = None
    target_weight: float = 5.0
    prompt: str = "a portrait photo"
    random_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("+", "-"):
            raise ConfigError(f"sds mode must be '+' or '-', got '{self.mode}'")
        if self.target_weight <= 0:
            raise ConfigError(f"sds target_weight must be positive, got {self.target_weight}")


class SDS(Defender):
    """Score-distillation protection: the denoiser's residual drives the encoder, the UNet is never
    differentiated.

    Each step encodes the image, draws t ~ U{0..999} and noise, and evaluates
    ``g_z = UNet(z_t, t, c) - eps`` under ``torch.no_grad``; the pixel gradient is the encoder's
    vector-Jacobian product ``J_E^T g_z``. The image moves by ``d * step_size * sign(J_E^T g_z)``
    with ``d = +1`` for mode ``+`` and ``-1`` for mode ``-``. This is the gradient of the denoising
    loss with the UNet Jacobian dropped, at about half the time and memory of AdvDM.

    Args:
        model: diffusers folder or Hugging Face id of the surrogate.
        eps, steps, step_size, mode, target, target_weight, prompt, random_start, resolution:
            see :class:`SDSConfig`.

    Shape:
        images: (N, 3, H, W) float in [0, 1], any size (the surrogate sees the image resized to
        ``resolution`` on the short side).

    Example:
        >>> defender = SDS(model="stable-diffusion-v1-5/stable-diffusion-v1-5", mode="-", steps=100)
        >>> protected = defender.protect(images).images

    Differences from the reference code:
        the encoder's posterior mean instead of a sample; budgets in [0, 1] units; per-image
        timesteps and objective; any resolution; the result is rounded to 8 bits inside the budget.
    """

    name: ClassVar[str] = "sds"
    Config: ClassVar[type[SDSConfig]] = SDSConfig

    def __init__(self, config: SDSConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)

        self.eot = self.config.build_eot(self.device)
        from facedefense_iterative.frozen_model import load_surrogate
        from facedefense_iterative.targets import load_target

        self.target_image = load_target(self.config.target, method=self.name) if self.config.target else None
        self.surrogate = load_surrogate(
            self.config.model, self.config.prompt, device=self.device, dtype=self.dtype, method=self.name
        )

    def _perturb(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, list[dict[str, Any]]]:
        import torch

        from facedefense.diffusion import encode_latents
        from facedefense_iterative.frozen_model import denoising_residual, flush_denormals, run_pgd
        from facedefense_iterative.targets import target_at

        vae = self.surrogate.parts.vae
        size = working_size(*images.shape[-2:], self.config.resolution)
        direction = 1.0 if self.config.mode == "+" else -1.0
        target_latent = None
        if self.config.target:
            with torch.no_grad():
                target = target_at(self.target_image, size, self.device, torch.float32)
                target_latent = encode_latents(vae, target).float()

        def objective(adversarial: Tensor) -> Tensor:
            latents = encode_latents(vae, resize(adversarial, size)).float()
            residual = denoising_residual(self.surrogate, latents, generator)
            loss = residual.pow(2).flatten(1).mean(1)
            surrogate = (latents * residual).flatten(1).sum(1)
            sds = loss + surrogate - surrogate.detach()  # value: the loss; gradient: J_E^T g_z
            if target_latent is None:
                return direction * sds
            texture = (latents - target_latent).pow(2).flatten(1).sum(1)
            return direction * self.config.target_weight * sds - texture

        with flush_denormals():
            adversarial, stats = run_pgd(
                self, images, objective, generator, minimize=False, description=f"sds{self.config.mode}"
            )
        return adversarial, stats
