"""Mist (Liang et al., "Mist: Towards Improved Adversarial Examples for Diffusion Models",
arXiv:2305.12683, and "Adversarial Example Does Good", ICML 2023; reference code psyker-team/mist)."""

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

#: The reference fuses ``sum_sq(z - z_target) - 1e4 * L_s`` on 4x64x64 latents (512 px); per latent
#: element that is ``mean_sq(z - z_target) - (1e4 / 16384) * L_s``.
REFERENCE_SEMANTIC_WEIGHT = 1e4 / (4 * 64 * 64)


@dataclass
class MistConfig(PGDConfig):
    """Mist options (the reference's /255 numbers are already [0, 1] units).

    Attributes:
        eps: L-infinity budget in [0, 1] units. Default 16/255 (the reference's ``-e 16``).
        steps: PGD steps. Default 100 (the reference's).
        step_size: constant sign step in [0, 1] units. Default 1/255 (the reference's).
        mode: ``"fused"`` (the reference's mode 2, default) minimizes
            ``mean_sq(z - z_target) - semantic_weight * L_s``; ``"textural"`` (mode 1) only the first
            term; ``"semantic"`` (mode 0, AdvDM) maximizes ``L_s``, the surrogate's denoising loss.
        semantic_weight: weight of the semantic loss against the per-element textural loss.
            Default 0.61 (the reference's rate 1e4 against a sum over 4x64x64 latents).
        target: ``"pattern"`` (a built-in texture standing in for Mist's ``MIST.png``) or an image path.
        prompt: conditioning of the semantic loss. Default "a photo" (the reference's object mode).
        posterior: the VAE latent the losses see: ``"sample"`` (default; the reference's
            ``get_first_stage_encoding``, drawn from the run's generator at every step) or
            ``"mean"`` (deterministic; near-identical for Stable Diffusion's VAE, whose posterior
            is narrow, but not for a wide one such as the tests' tiny VAE).
        random_start: start from a uniform point of the ball, as the reference (advertorch) does.
        eot: purifiers to optimize through (expectation over transformations), e.g. ``jpeg`` or
            ``none,jpeg``; empty: none.
        eot_samples: transform draws per step.
        momentum: MI-FGSM momentum (0 = plain sign steps, the reference).
    """

    eps: float = 16 / 255
    mode: Literal["fused", "textural", "semantic"] = "fused"
    semantic_weight: float = REFERENCE_SEMANTIC_WEIGHT
    target: str = "pattern"
    prompt: str = "a photo"
    posterior: Literal["sample", "mean"] = "sample"
    random_start: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.posterior not in ("sample", "mean"):
            raise ConfigError(f"mist posterior must be 'sample' or 'mean', got '{self.posterior}'")
        if self.mode not in ("fused", "textural", "semantic"):
            raise ConfigError(f"mist mode must be fused, textural or semantic, got '{self.mode}'")
        if self.semantic_weight < 0:
            raise ConfigError(f"mist semantic_weight must be non-negative, got {self.semantic_weight}")


class Mist(Defender):
    """Mist: pull the image's latent toward a texture while raising the surrogate's denoising loss.

    Per image, minimizes ``L = L_T - w * L_s`` over ``||delta||_inf <= eps`` with sign steps, where
    ``L_T = mean_sq(z(x) - z(x_target))`` is the textural loss and ``L_s = ||UNet(z_t, t, c) - eps||^2``
    the semantic (AdvDM) loss at a random t and noise, with the gradient through the UNet. As in the
    reference (LDM's ``get_first_stage_encoding``), ``z(x)`` is a sample of the VAE posterior
    (reparameterized, drawn from the method's generator at each step), scaled; the target's latent
    is its posterior mean (a constant: the same gradient in expectation, less variance). A
    personalized or edited model then reproduces the texture.

    Args:
        model: diffusers folder or Hugging Face id of the surrogate.
        eps, steps, step_size, mode, semantic_weight, target, prompt, random_start, resolution:
            see ``MistConfig``.

    Shape:
        images: (N, 3, H, W) float in [0, 1], any size (the surrogate sees the image resized to
        ``resolution`` on the short side).

    Examples:
        >>> defender = Mist(model="stable-diffusion-v1-5/stable-diffusion-v1-5", target="mist.png")
        >>> protected = defender.protect(images).images

    Differences from the reference code (docs/methods/mist.md, "Fidelity"):
        per-element (resolution-independent) loss weights; one posterior sample for both terms
        (as Diff-Protect's ``diff_mist.py``; ``mist_v3.py`` draws one per term); no random crop for
        the semantic term (the image is resized to the working resolution instead); a procedural
        texture by default (MIST.png is not shipped); rounded to 8 bits inside the budget.
    """

    name: ClassVar[str] = "mist"
    Config: ClassVar[type[MistConfig]] = MistConfig

    def __init__(self, config: MistConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)

        self.eot = self.config.build_eot(self.device)
        from facedefense_iterative.frozen_model import load_surrogate
        from facedefense_iterative.targets import TargetLatents, load_target

        self.target_image = load_target(self.config.target, method=self.name)
        self.surrogate = load_surrogate(
            self.config.model, self.config.prompt, device=self.device, dtype=self.dtype, method=self.name
        )
        self.target_latents = TargetLatents(self.target_image, self.surrogate.parts.vae, self.device)

    def target_latent(self, size: tuple[int, int]) -> Tensor:
        """Scaled posterior mean of the target at the working ``size``, (1, 4, h/8, w/8) float32 (cached)."""
        return self.target_latents(size)

    def loss(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """Per-image ``L_T - w * L_s`` of ``images`` ((N, 3, H, W) in [0, 1], any size; the
        surrogate sees them at the working size), with the posterior sample, timestep and noise
        drawn from ``generator`` in that order; (N,), differentiable with respect to ``images``.
        Mode ``textural`` gives ``L_T`` alone, ``semantic`` gives ``-L_s``."""
        import torch

        from facedefense.diffusion import denoising_loss, encode_latents

        parts, mode = self.surrogate.parts, self.config.mode
        size = working_size(*images.shape[-2:], self.config.resolution)
        sample = self.config.posterior == "sample"
        latents = encode_latents(parts.vae, resize(images, size), sample=sample, generator=generator).float()
        loss = torch.zeros(latents.shape[0], device=latents.device)
        if mode != "semantic":
            loss = loss + (latents - self.target_latent(size)).pow(2).flatten(1).mean(1)
        if mode != "textural":
            weight = 1.0 if mode == "semantic" else self.config.semantic_weight
            semantic = denoising_loss(parts.unet, parts.scheduler, latents, self.surrogate.condition, generator=generator)
            loss = loss - weight * semantic
        return loss

    def _perturb(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, list[dict[str, Any]]]:
        from facedefense_iterative.frozen_model import flush_denormals, run_pgd

        with flush_denormals():
            adversarial, stats = run_pgd(
                self, images, lambda adversarial: self.loss(adversarial, generator), generator, minimize=True,
                description=f"mist {self.config.mode}",
            )
        return adversarial, stats
