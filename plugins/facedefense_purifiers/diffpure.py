"""DiffPure: diffuse the image to a small timestep, then denoise it back with a diffusion model.

Nie, Guo, Huang, Xiao, Vahdat, Anandkumar. *Diffusion Models for Adversarial Purification.*
ICML 2022. Reference code: NVlabs/DiffPure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from facedefense.errors import ConfigError
from facedefense.interfaces import Purifier, PurifierConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def check_strength(strength: float, what: str) -> None:
    """A diffusion strength (t*/T) must lie in (0, 1] (raises ConfigError)."""
    if not (math.isfinite(strength) and 0 < strength <= 1):
        raise ConfigError(f"{what} strength must be in (0, 1] (the fraction of the diffusion run), got {strength}")


def check_model(model: str, what: str, needs: str) -> None:
    if not model:
        raise ConfigError(f"{what} needs a model: --model FOLDER_OR_ID ({needs})")


class PixelDenoiser:
    """DiffPure on a pixel-space DDPM (``UNet2DModel``): forward-diffuse to t* and run DDPM
    ancestral sampling back to 0.

    ``t* = round(strength * T)``; the image is noised with ``alpha_bar[t* - 1]`` and denoised over
    the timesteps ``t* - 1, ..., 0`` (every one by default, as DiffPure's ``p_sample`` loop), or
    ``steps`` of them evenly spaced.
    """

    kind = "pixel_ddpm"

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype) -> None:
        from facedefense.diffusion import load_pixel_ddpm

        self.unet, self.scheduler = load_pixel_ddpm(model, device=device, dtype=dtype)
        self.device, self.dtype = device, dtype
        self.native = int(self.unet.config.sample_size if isinstance(self.unet.config.sample_size, int)
                          else self.unet.config.sample_size[0])
        self.multiple = 2 ** (len(self.unet.config.down_block_types) - 1)

    def timesteps(self, strength: float, steps: int | None) -> list[int]:
        t_star = max(1, round(strength * self.scheduler.config.num_train_timesteps))
        count = t_star if steps is None else min(steps, t_star)
        spaced = [round((t_star - 1) * (1 - i / max(count - 1, 1))) for i in range(count)]
        return sorted(set(spaced), reverse=True)

    def __call__(self, images: Tensor, strength: float, steps: int | None, generator: torch.Generator, **_: Any) -> Tensor:
        import torch
        from tqdm.auto import tqdm

        from facedefense.imaging import from_vae_range, to_vae_range

        timesteps = self.timesteps(strength, steps)
        self.scheduler.set_timesteps(timesteps=timesteps)
        clean = to_vae_range(images).to(self.device, self.dtype)
        noise = torch.randn(clean.shape, generator=generator, device=generator.device).to(self.device, self.dtype)
        x = self.scheduler.add_noise(clean, noise, torch.tensor([timesteps[0]], device=self.device))
        for t in tqdm(timesteps, desc="diffpure", leave=False, disable=None):
            predicted = self.unet(x, t).sample
            x = self.scheduler.step(predicted, t, x, generator=generator).prev_sample
        return from_vae_range(x.float()).clamp(0.0, 1.0)


class Img2ImgDenoiser:
    """DiffPure in Stable Diffusion's latent space: the diffusers img2img pipeline at ``strength``,
    the prompt's embeddings cached.

    ``scheduler``: ``"pipeline"`` keeps the model's own scheduler (RID's ``post_diffpure.py``);
    ``"ddpm"`` swaps in a ``DDPMScheduler`` of the same noise schedule (ancestral sampling, as
    DiffPure's reverse process). ``steps`` is the number of denoising steps actually run: the
    pipeline gets ``ceil(steps / strength)`` inference steps, of which it runs the last ``steps``.
    None: the pipeline's default 50 inference steps, of which it runs ``int(50 * strength)`` (at
    least one), as a plain ``pipeline(image=..., strength=...)`` call.
    """

    kind = "stable_diffusion"

    def __init__(self, model: str, device: torch.device, dtype: torch.dtype, scheduler: str = "pipeline") -> None:
        from diffusers import DDPMScheduler

        from facedefense.diffusion import load_pipeline

        self.pipeline = load_pipeline(model, "img2img", device=device, dtype=dtype)
        if scheduler == "ddpm":
            self.pipeline.scheduler = DDPMScheduler.from_config(self.pipeline.scheduler.config)
        self.device = device
        self.native = int(self.pipeline.unet.config.sample_size) * self.pipeline.vae_scale_factor
        self.multiple = self.pipeline.vae_scale_factor
        self._embeddings: dict[tuple[str, bool], tuple[Tensor, Tensor | None]] = {}

    def _embed(self, prompt: str, guidance: bool) -> tuple[Tensor, Tensor | None]:
        key = (prompt, guidance)
        if key not in self._embeddings:
            self._embeddings[key] = self.pipeline.encode_prompt(prompt, self.device, 1, guidance)
        return self._embeddings[key]

    def __call__(
        self, images: Tensor, strength: float, steps: int | None, generator: torch.Generator,
        prompt: str = "", guidance_scale: float = 1.0,
    ) -> Tensor:
        if steps is None:
            total = max(50, math.ceil(1 / strength - 1e-6))
        else:
            total = max(steps, math.ceil(steps / strength - 1e-6))
        guidance = guidance_scale > 1.0
        positive, negative = self._embed(prompt, guidance)
        count = images.shape[0]
        out = self.pipeline(
            image=images.to(self.device),
            prompt_embeds=positive.expand(count, -1, -1),
            negative_prompt_embeds=negative.expand(count, -1, -1) if guidance else None,
            strength=strength,
            num_inference_steps=total,
            guidance_scale=guidance_scale,
            generator=generator,
            output_type="pt",
        ).images
        return out.float().clamp(0.0, 1.0)


def load_denoiser(
    model: str, device: torch.device, dtype: torch.dtype, scheduler: str = "pipeline"
) -> PixelDenoiser | Img2ImgDenoiser:
    """The pixel DDPM denoiser for a ``UNet2DModel`` folder, else the Stable Diffusion img2img one
    (with ``scheduler``, see `Img2ImgDenoiser`)."""
    from facedefense.diffusion import is_pixel_ddpm

    if is_pixel_ddpm(model):
        return PixelDenoiser(model, device, dtype)
    return Img2ImgDenoiser(model, device, dtype, scheduler)


@dataclass
class DiffPureConfig(PurifierConfig):
    """DiffPure options.

    Attributes:
        model: a pixel-space DDPM (diffusers ``DDPMPipeline`` or ``UNet2DModel`` folder or id) or
            a Stable Diffusion model (folder or id); detected from the folder.
        strength: t*/T, the fraction of the diffusion run the image is noised to, in (0, 1].
            Default 0.1 (t* = 100 of 1000, GrIDPure's ``diffpure.py`` baseline; DiffPure used
            0.15 on ImageNet, 0.1 on CIFAR-10).
        steps: denoising steps actually run. None (default): every timestep from t* to 0 for a
            pixel DDPM (DiffPure's sampler); for Stable Diffusion the pipeline's default 50
            inference steps, of which img2img runs ``int(50 * strength)`` (5 at 0.1).
        resolution: short side of the image the model sees in pixels (resized there and back);
            None (default): the model's native size (``sample_size``: 256 for guided diffusion,
            512 for SD 1.5).
        prompt: Stable Diffusion only: the text condition. Default "A photo of a person" (RID's
            ``post_diffpure.py``).
        guidance_scale: Stable Diffusion only: classifier-free guidance against the empty prompt;
            1 turns it off. Default 7.5 (RID's ``post_diffpure.py``).
        scheduler: Stable Diffusion only: ``"pipeline"`` (default, the model's own scheduler, as
            RID's ``post_diffpure.py``) or ``"ddpm"`` (ancestral sampling, as DiffPure's reverse
            process).
        batch_size: images per denoising pass.
    """

    model: str = ""
    strength: float = 0.1
    steps: int | None = None
    resolution: int | None = None
    prompt: str = "A photo of a person"
    guidance_scale: float = 7.5
    scheduler: Literal["pipeline", "ddpm"] = "pipeline"
    batch_size: int = 4

    def __post_init__(self) -> None:
        check_model(self.model, "diffpure", "a pixel DDPM or a Stable Diffusion model")
        check_strength(self.strength, "diffpure")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"diffpure steps must be at least 1, got {self.steps}")
        if self.resolution is not None and self.resolution < 8:
            raise ConfigError(f"diffpure resolution must be at least 8 pixels, got {self.resolution}")
        if self.batch_size < 1:
            raise ConfigError(f"diffpure batch_size must be at least 1, got {self.batch_size}")


class DiffPure(Purifier):
    """Noise each image to timestep t* and denoise it with a diffusion model.

    ``x_t* = sqrt(abar_t*) x + sqrt(1 - abar_t*) eps``, then reverse sampling to 0: DDPM ancestral
    steps with a pixel-space ``UNet2DModel`` (the DiffPure setting), or the Stable Diffusion
    img2img pipeline at ``strength`` (the latent-space variant). The image is resized so its short
    side is the model's ``resolution`` and back to its own size.

    The differentiable version is the straight-through default (forward: this purifier exactly,
    backward: identity), the BPDA estimate used against DiffPure in the literature.

    Shape:
        (N, 3, H, W) float in [0, 1] -> same.

    Examples:
        >>> purifier = DiffPure(model="google/ddpm-ema-celebahq-256", strength=0.1)
        >>> purified = purifier.purify(images, generator=torch.Generator().manual_seed(0))

    Differences from the reference code:
        DiffPure uses guided-diffusion checkpoints and its own sampler (or an SDE solver); here any
        diffusers DDPM (``UNet2DModel``) with diffusers' ``DDPMScheduler`` (same ancestral step,
        ``clip_sample`` as the model's scheduler config says). The Stable Diffusion variant follows
        RID's ``post_diffpure.py`` (prompt, guidance, scheduler, 50 inference steps) but keeps the
        photo's aspect ratio where RID resizes to 512x512.
    """

    name: ClassVar[str] = "diffpure"
    Config: ClassVar[type[DiffPureConfig]] = DiffPureConfig
    _denoiser: Any = None

    @property
    def denoiser(self) -> PixelDenoiser | Img2ImgDenoiser:
        """The loaded model (loaded on first use)."""
        if self._denoiser is None:
            self._denoiser = load_denoiser(self.config.model, self.device, self.dtype, self.config.scheduler)
        return self._denoiser

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import torch

        from facedefense.imaging import resize, working_size

        denoiser, config = self.denoiser, self.config
        height, width = images.shape[-2:]
        size = working_size(height, width, config.resolution or denoiser.native, denoiser.multiple)
        work = resize(images, size).clamp(0.0, 1.0)
        parts = [
            denoiser(chunk, config.strength, config.steps, generator, prompt=config.prompt,
                     guidance_scale=config.guidance_scale)
            for chunk in work.split(config.batch_size)
        ]
        return resize(torch.cat(parts).to(images.device), (height, width)).clamp(0.0, 1.0)
