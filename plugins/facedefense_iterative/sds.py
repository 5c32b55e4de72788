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
        posterior: the VAE latent the losses see: ``"sample"`` (default; the reference's
            ``get_first_stage_encoding``, drawn from the run's generator at every step) or
            ``"mean"`` (deterministic; near-identical for Stable Diffusion's VAE, whose posterior
            is narrow, but not for a wide one such as the tests' tiny VAE).
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
    posterior: Literal["sample", "mean"] = "sample"
    random_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.posterior not in ("sample", "mean"):
            raise ConfigError(f"sds posterior must be 'sample' or 'mean', got '{self.posterior}'")
        if self.mode not in ("+", "-"):
            raise ConfigError(f"sds mode must be '+' or '-', got '{self.mode}'")
        if self.target_weight <= 0:
            raise ConfigError(f"sds target_weight must be positive, got {self.target_weight}")


class SDS(Defender):
    """Score-distillation protection: the denoiser's residual drives the encoder, the UNet is never
    differentiated.

    Each step encodes the image (a sample of the VAE posterior, as the reference's
    ``get_first_stage_encoding``), draws t ~ U{0..999} and noise, and evaluates
    ``g_z = UNet(z_t, t, c) - eps`` under ``torch.no_grad``; the pixel gradient is the encoder's
    vector-Jacobian product ``J_E^T g_z``. The image moves by ``d * step_size * sign(J_E^T g_z)``
    with ``d = +1`` for mode ``+`` and ``-1`` for mode ``-``. This is the gradient of the denoising
    loss with the UNet Jacobian dropped, at about half the time and memory of AdvDM.

    Args:
        model: diffusers folder or Hugging Face id of the surrogate.
        eps, steps, step_size, mode, target, target_weight, prompt, random_start, resolution:
            see ``SDSConfig``.

    Shape:
        images: (N, 3, H, W) float in [0, 1], any size (the surrogate sees the image resized to
        ``resolution`` on the short side).

    Examples:
        >>> defender = SDS(model="stable-diffusion-v1-5/stable-diffusion-v1-5", mode="-", steps=100)
        >>> protected = defender.protect(images).images

    Differences from the reference code (docs/methods/sds.md, "Fidelity"):
        budgets in [0, 1] units; per-image timesteps and objective; any resolution; the result is
        rounded to 8 bits inside the budget; SDST's texture term uses the step's posterior sample
        and the target's posterior mean (the reference encodes both once more, sampling).
    """

    name: ClassVar[str] = "sds"
    Config: ClassVar[type[SDSConfig]] = SDSConfig

    def __init__(self, config: SDSConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)

        self.eot = self.config.build_eot(self.device)
        from facedefense_iterative.frozen_model import load_surrogate
        from facedefense_iterative.targets import TargetLatents, load_target

        self.target_image = load_target(self.config.target, method=self.name) if self.config.target else None
        self.surrogate = load_surrogate(
            self.config.model, self.config.prompt, device=self.device, dtype=self.dtype, method=self.name
        )
        self.target_latents = TargetLatents(self.target_image, self.surrogate.parts.vae, self.device)

    def target_latent(self, size: tuple[int, int]) -> Tensor:
        """Scaled posterior mean of SDST's target at the working ``size``, (1, 4, h/8, w/8) float32 (cached)."""
        return self.target_latents(size)

    def loss(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """The per-image objective the sign steps ascend, (N,): value ``d * L`` (SDST:
        ``d * target_weight * L - L_T``) where ``L`` is the denoising loss at a posterior sample of
        ``images`` (any size, seen at the working size) and a timestep and noise, all drawn from
        ``generator`` in that order; its gradient is the score-distillation one, ``d * J_E^T g_z``
        (the UNet is run without autograd)."""
        from facedefense.diffusion import encode_latents
        from facedefense_iterative.frozen_model import denoising_residual

        size = working_size(*images.shape[-2:], self.config.resolution)
        direction = 1.0 if self.config.mode == "+" else -1.0
        sample = self.config.posterior == "sample"
        latents = encode_latents(self.surrogate.parts.vae, resize(images, size), sample=sample, generator=generator).float()
        residual = denoising_residual(self.surrogate, latents, generator)
        loss = residual.pow(2).flatten(1).mean(1)
        surrogate = (latents * residual).flatten(1).sum(1)
        sds = loss + surrogate - surrogate.detach()  # value: the loss; gradient: J_E^T g_z
        if not self.config.target:
            return direction * sds
        texture = (latents - self.target_latent(size)).pow(2).flatten(1).sum(1)
        return direction * self.config.target_weight * sds - texture

    def _perturb(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, list[dict[str, Any]]]:
        from facedefense_iterative.frozen_model import flush_denormals, run_pgd

        with flush_denormals():
            adversarial, stats = run_pgd(
                self, images, lambda adversarial: self.loss(adversarial, generator), generator, minimize=False,
                description=f"sds{self.config.mode}",
            )
        return adversarial, stats
