"""Glaze style cloaks (Shan et al., "Glaze: Protecting Artists from Style Mimicry by Text-to-Image
Models", USENIX Security 2023, arXiv:2302.04222), as the paper describes them; the Glaze app is
closed source."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from facedefense.config import option
from facedefense.errors import ConfigError
from facedefense.imaging import resize, to_vae_range, working_size
from facedefense.interfaces import Defender
from facedefense_iterative.frozen_model import PGDConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class GlazeConfig(PGDConfig):
    """Glaze options (where the paper gives no value: IMPRESS's reproduction, AAAAAAsuka/Impress).

    Attributes:
        eps: L-infinity budget in [0, 1] units, enforced on top of the LPIPS budget. Default 8/255
            (facedefense's; Glaze itself bounds only LPIPS).
        steps: optimization steps. Default 500 (IMPRESS's ``glaze_iters``).
        step_size: first sign step in [0, 1] units, cosine-decayed (``schedule``). Default 0.005
            (IMPRESS's Adam learning rate 0.01, which is in [-1, 1]).
        schedule: step decay: ``cosine`` (default), ``linear`` or ``constant``.
        style_prompt: the target style T the photo is transferred to. Default "a painting in the
            style of Van Gogh".
        strength: img2img strength of the style transfer. Default 0.4 (IMPRESS's ``style_transfer.py``).
        target_steps: denoising steps of the style transfer (``int(strength * target_steps)`` run).
            Default 50.
        guidance_scale: classifier-free guidance of the style transfer. Default 7.5.
        p: LPIPS budget: distances above it are penalized. Default 0.05 (the paper's low
            perturbation level; IMPRESS's default).
        alpha: weight of the penalty ``max(LPIPS(x', x) - p, 0)``. Default 30 (IMPRESS's).
        lpips_net: LPIPS backbone, ``vgg`` (IMPRESS's, default) or ``alex``.
        lpips_weights: the backbone's torchvision checkpoint (``vgg16-397923af.pth`` /
            ``alexnet-owt-7be5be79.pth``); default: torch.hub's cache; ``random`` for tests only.
        random_start: start from a uniform point of the eps-ball (IMPRESS starts from uniform
            noise). Default True.
        eot, eot_samples, momentum: see ``PGDConfig``.
    """

    eps: float = 8 / 255
    steps: int = 500
    step_size: float = 0.005
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    style_prompt: str = "a painting in the style of Van Gogh"
    strength: float = option(0.4, min=0.0, max=1.0)
    target_steps: int = option(50, min=1)
    guidance_scale: float = option(7.5, min=0.0)
    p: float = option(0.05, min=0.0)
    alpha: float = option(30.0, min=0.0)
    lpips_net: Literal["vgg", "alex"] = "vgg"
    lpips_weights: str | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(f"glaze schedule must be constant, linear or cosine, got '{self.schedule}'")
        if self.lpips_net not in ("vgg", "alex"):
            raise ConfigError(f"glaze lpips_net must be vgg or alex, got '{self.lpips_net}'")
        if not self.style_prompt.strip():
            raise ConfigError("glaze needs a style_prompt (the target style, e.g. 'a painting in the style of Van Gogh')")
        if self.strength <= 0 or int(self.strength * self.target_steps) < 1:
            raise ConfigError(f"glaze strength {self.strength} x target_steps {self.target_steps} runs no denoising step")


class Glaze(Defender):
    """Style cloak: move the photo's VAE-encoder features toward those of its own style transfer.

    First the target ``Omega(x, T)``: the model's img2img (SDEdit) of the photo toward
    ``style_prompt``, drawn from the run's generator. Then, per image, projected sign-gradient
    descent on

        ``L(x') = mean_sq(E(x') - E(Omega(x, T))) + alpha * max(LPIPS(x', x) - p, 0)``

    where ``E`` is the VAE encoder's posterior mean (unscaled: the paper's feature extractor Phi),
    under the L-infinity budget ``eps``. A model fine-tuned on the cloaked photos learns the
    target style's features instead of the photo's.

    Args:
        model: diffusers text-to-image folder or Hugging Face id (style transfer and encoder).
        See ``GlazeConfig`` for the rest.

    Shape:
        images: (N, 3, H, W) in [0, 1], any size (the model sees the short side at ``resolution``).

    Examples:
        >>> glaze = Glaze(model="stable-diffusion-v1-5/stable-diffusion-v1-5", lpips_weights="vgg16-397923af.pth")
        >>> cloaked = glaze.protect(photos).images

    Differences from the paper (``docs/methods/glaze.md``, Fidelity): sign steps with a cosine
    decay and an L-infinity projection instead of an LPIPS-only budget; the VAE posterior mean
    (IMPRESS samples it); one style prompt instead of a target style chosen per artist.
    """

    name: ClassVar[str] = "glaze"
    Config: ClassVar[type[GlazeConfig]] = GlazeConfig

    def __init__(self, config: GlazeConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        from facedefense.models import shared_model
        from facedefense.registry import get_registry
        from facedefense_metrics.lpips import backbone_file

        c = self.config
        if not c.model:
            raise ConfigError("glaze needs a text-to-image model: --model (a diffusers folder or a Hugging Face id)")
        found = backbone_file(c.lpips_weights, c.lpips_net, "glaze", "lpips_weights")
        dtype = str(self.dtype).removeprefix("torch.")
        self.editor = get_registry().create(
            "editor", "sdedit", model=c.model, strength=c.strength, steps=c.target_steps,
            guidance_scale=c.guidance_scale, resolution=c.resolution, device=str(self.device), dtype=dtype, seed=c.seed,
        )
        self.editor.prepare()
        self.vae = self.editor.pipeline.vae  # one copy of the model: the encoder is the pipeline's
        self.lpips = shared_model("lpips", path="random" if found is None else str(found), device=self.device,
                                  dtype=dtype, net=c.lpips_net)
        self.eot = c.build_eot(self.device)

    def style_target(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """``Omega(x, T)``: the img2img of ``images`` toward ``style_prompt``, same shape, in [0, 1]."""
        from facedefense_iterative.frozen_model import flush_denormals

        with flush_denormals():
            return self.editor.edit(images, self.config.style_prompt, generator=generator).to(images.device)

    def features(self, images: Tensor) -> Tensor:
        """``Phi(x)``: the VAE encoder's posterior mean at the working size, unscaled, float32."""
        from facedefense.diffusion import latent_mean

        size = working_size(*images.shape[-2:], self.config.resolution)
        return latent_mean(self.vae, resize(images, size)).float()

    def perceptual(self, images: Tensor, clean: Tensor) -> Tensor:
        """Per-image LPIPS distance (N,) at the working size."""
        size = working_size(*images.shape[-2:], self.config.resolution)
        a, b = (to_vae_range(resize(x, size)).to(self.dtype) for x in (images, clean))
        return self.lpips(a, b).float().flatten()

    def loss(self, images: Tensor, clean: Tensor, target: Tensor) -> Tensor:
        """The per-image objective (N,) of ``images`` given the originals ``clean`` and the target
        features ``target`` (from ``features``); differentiable with respect to ``images``."""
        distance = (self.features(images) - target).pow(2).flatten(1).mean(1)
        if self.config.alpha == 0:
            return distance
        return distance + self.config.alpha * (self.perceptual(images, clean) - self.config.p).clamp_min(0)

    def _perturb(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, list[dict[str, Any]]]:
        import torch

        from facedefense_iterative.frozen_model import run_pgd

        with torch.no_grad():
            target = self.features(self.style_target(images, generator))
        adversarial, stats = run_pgd(self, images, lambda x: self.loss(x, images, target), generator, minimize=True,
                                     schedule=self.config.schedule, description="glaze")
        with torch.no_grad():
            for record, value in zip(stats, self.perceptual(adversarial, images)):
                record["lpips_end"] = float(value)
        return adversarial, stats
