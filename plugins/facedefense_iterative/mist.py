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
    random_start: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("fused", "textural", "semantic"):
            raise ConfigError(f"mist mode must be fused, textural or semantic, got '{self.mode}'")
        if self.semantic_weight < 0:
            raise ConfigError(f"mist semantic_weight must be non-negative, got {self.semantic_weight}")


class Mist(Defender):
    """Mist: pull the image's latent toward a texture while raising the surrogate's denoising loss.

    Per image, minimizes ``L = L_T - w * L_s`` over ``||delta||_inf <= eps`` with sign steps, where
    ``L_T = mean_sq(z(x) - z(x_target))`` is the textural loss (scaled VAE latents) and
    ``L_s = ||UNet(z_t, t, c) - eps||^2`` the semantic (AdvDM) loss at a random t and noise, with
    the gradient through the UNet. A personalized or edited model then reproduces the texture.

    Args:
        model: diffusers folder or Hugging Face id of the surrogate.
        eps, steps, step_size, mode, semantic_weight, target, prompt, random_start, resolution:
            see :class:`MistConfig`.

    Shape:
        images: (N, 3, H, W) float in [0, 1], any size (the surrogate sees the image resized to
        ``resolution`` on the short side).

    Example:
        >>> defender = Mist(model="stable-diffusion-v1-5/stable-diffusion-v1-5", target="mist.png")
        >>> protected = defender.protect(images).images

    Differences from the reference code:
        per-element (resolution-independent) loss weights; the posterior mean instead of a sample
        for the textural term; no random crop for the semantic term (the image is resized to the
        working resolution instead); a procedural texture by default (MIST.png is not shipped);
        rounded to 8 bits inside the budget.
    """

    name: ClassVar[str] = "mist"
    Config: ClassVar[type[MistConfig]] = MistConfig

    def __init__(self, config: MistConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)

        self.eot = self.config.build_eot(self.device)
        from facedefense_iterative.frozen_model import load_surrogate
        from facedefense_iterative.targets import load_target

        self.target_image = load_target(self.config.target, method=self.name)
        self.surrogate = load_surrogate(
            self.config.model, self.config.prompt, device=self.device, dtype=self.dtype, method=self.name
        )

    def _perturb(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, list[dict[str, Any]]]:
        import torch

        from facedefense.diffusion import denoising_loss, encode_latents
        from facedefense_iterative.frozen_model import flush_denormals, run_pgd
        from facedefense_iterative.targets import target_at

        parts = self.surrogate.parts
        size = working_size(*images.shape[-2:], self.config.resolution)
        mode = self.config.mode
        with torch.no_grad():
            target_latent = encode_latents(parts.vae, target_at(self.target_image, size, self.device, torch.float32))

        def objective(adversarial: Tensor) -> Tensor:
            latents = encode_latents(parts.vae, resize(adversarial, size)).float()
            loss = torch.zeros(latents.shape[0], device=latents.device)
            if mode != "semantic":
                loss = loss + (latents - target_latent.float()).pow(2).flatten(1).mean(1)
            if mode != "textural":
                weight = 1.0 if mode == "semantic" else self.config.semantic_weight
                semantic = denoising_loss(
                    parts.unet, parts.scheduler, latents, self.surrogate.condition, generator=generator
                )
                loss = loss - weight * semantic
            return loss

        with flush_denormals():
            adversarial, stats = run_pgd(self, images, objective, generator, minimize=True, description=f"mist {mode}")
        return adversarial, stats
