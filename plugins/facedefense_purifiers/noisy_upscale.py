"""Noisy upscaling: Gaussian noise, then Stable Diffusion's x4 upscaler, then back to size.

Hönig, Rando, Carlini, Tramèr. *Adversarial Perturbations Cannot Reliably Protect Artists From
Generative AI.* ICLR 2025 (arXiv:2406.12027). Reference code: ethz-spylab/robust-style-mimicry
(``noise.py``, ``upscale.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces import Purifier, PurifierConfig
from facedefense_purifiers.diffpure import check_model
from facedefense_purifiers.gaussian_noise import add_noise, check_sigma

if TYPE_CHECKING:
    import torch
    from torch import Tensor


class AddedNoiseLevel:
    """The upscaler's ``low_res_scheduler`` adding its noise at ``level`` whatever level the UNet is
    told: the ``noise_level_sub`` of Hönig et al.'s diffusers fork (level = noise_level -
    noise_level_sub). The noise is drawn either way, so the generator's stream is the same."""

    def __init__(self, scheduler: Any, level: int) -> None:
        self.scheduler, self.level = scheduler, level

    def add_noise(self, original: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        import torch

        return self.scheduler.add_noise(original, noise, torch.full_like(timesteps, self.level))

    def __getattr__(self, name: str) -> Any:  # everything else: the wrapped scheduler's
        if name == "scheduler":  # not set yet (copy, pickle)
            raise AttributeError(name)
        return getattr(self.scheduler, name)


@dataclass
class NoisyUpscaleConfig(PurifierConfig):
    """Noisy-upscaling options.

    Attributes:
        model: a Stable Diffusion x4 upscaler, folder or id (``stabilityai/stable-diffusion-x4-upscaler``).
        sigma: standard deviation of the Gaussian noise added first, [0, 1] units, >= 0. Default 0.1
            (the README's ``noise.py --gaussian_noise 0.1``: skimage ``random_noise``, variance
            0.1**2); the noisy photo is rounded to 8 bits, as ``noise.py`` saves it.
        noise_level: the noise level the upscaler is told its low-resolution input has (its
            ``class_labels``), 0 to its ``max_noise_level`` (350). Default 320 (``upscale.py``).
        added_noise_level: the level at which the upscaler's own noise augmentation is actually
            added to its input. Default 0: ``upscale.py`` passes ``noise_level_sub=320`` to the
            authors' diffusers fork, which adds noise at ``noise_level - noise_level_sub``, so the
            Gaussian noise of the first stage stands in for it. Set it to ``noise_level`` for stock
            diffusers' behaviour (RID's copy of ``upscale.py``).
        steps: denoising steps. Default 75 (the pipeline's default, which ``upscale.py`` keeps).
        guidance_scale: classifier-free guidance. Default 9.0 (the pipeline's default).
        prompt: text condition. Default "a person": RID's copy of ``upscale.py`` for portraits
            (the reference captions each image with BLIP-2).
        resolution: short side of the upscaler's input in pixels; None (default): the photo's own
            size (rounded to a multiple of 8). The upscaler works at 4x this size.
        batch_size: images per upscaler pass.
    """

    model: str = ""
    sigma: float = 0.1
    noise_level: int = 320
    added_noise_level: int = 0
    steps: int = 75
    guidance_scale: float = 9.0
    prompt: str = "a person"
    resolution: int | None = None
    batch_size: int = 1

    def __post_init__(self) -> None:
        check_model(self.model, "noisy_upscale", "the Stable Diffusion x4 upscaler")
        check_sigma(self.sigma, "noisy_upscale")
        for key in ("noise_level", "added_noise_level"):
            if getattr(self, key) < 0:
                raise ConfigError(f"noisy_upscale {key} must be >= 0, got {getattr(self, key)}")
        for key in ("steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"noisy_upscale {key} must be at least 1, got {getattr(self, key)}")
        if self.resolution is not None and self.resolution < 8:
            raise ConfigError(f"noisy_upscale resolution must be at least 8 pixels, got {self.resolution}")


class NoisyUpscale(Purifier):
    """Add Gaussian noise, round to 8 bits, upscale x4 with the Stable Diffusion upscaler, resize back.

    The upscaler, told that its input is noisy (``noise_level``), re-synthesizes fine detail from
    the noised image, so the noise and the perturbation are both replaced by plausible texture.
    The 4x output is reduced to the photo's size with an antialiased bilinear filter.

    Shape:
        (N, 3, H, W) float in [0, 1] -> same (the upscaler works at (4H', 4W'), H' x W' the input
        size rounded to a multiple of 8, or ``resolution``).

    Examples:
        >>> purified = NoisyUpscale(model="stabilityai/stable-diffusion-x4-upscaler").purify(images)

    Differences from the reference code:
        The reference captions each image with BLIP-2 ("An illustration of ...") and keeps the 4x
        output for fine-tuning (resized to 512 there); here the prompt is an option and the output
        keeps the photo's size. Noise comes from a seeded ``torch.Generator``.
    """

    name: ClassVar[str] = "noisy_upscale"
    Config: ClassVar[type[NoisyUpscaleConfig]] = NoisyUpscaleConfig
    _pipeline: Any = None
    _embeddings: Any = None

    def __init__(self, config: Any = None, **options: Any) -> None:
        from facedefense.diffusion import refuse_pixel_ddpm

        super().__init__(config, **options)
        refuse_pixel_ddpm(self.config.model)  # before any output is written

    @property
    def pipeline(self) -> Any:
        """The upscaler pipeline (loaded on first use)."""
        if self._pipeline is None:
            from facedefense.diffusion import load_pipeline

            pipeline = load_pipeline(self.config.model, "upscale_x4", device=self.device, dtype=self.dtype)
            maximum = int(pipeline.config.max_noise_level)
            if self.config.noise_level > maximum:
                raise ConfigError(f"noisy_upscale noise_level must be at most {maximum} for this upscaler, got {self.config.noise_level}")
            if self.config.added_noise_level > maximum:
                raise ConfigError(
                    f"noisy_upscale added_noise_level must be at most {maximum} for this upscaler, got {self.config.added_noise_level}"
                )
            pipeline.low_res_scheduler = AddedNoiseLevel(pipeline.low_res_scheduler, self.config.added_noise_level)
            self._embeddings = pipeline.encode_prompt(self.config.prompt, self.device, 1, self.config.guidance_scale > 1)
            self._pipeline = pipeline
        return self._pipeline

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import torch

        from facedefense.imaging import resize, working_size

        pipeline, config = self.pipeline, self.config
        height, width = images.shape[-2:]
        noisy = torch.round(add_noise(images, config.sigma, generator) * 255) / 255  # noise.py saves 8 bits
        low = resize(noisy, working_size(height, width, config.resolution, 8)).clamp(0.0, 1.0)
        positive, negative = self._embeddings
        guidance = config.guidance_scale > 1
        outputs = []
        for chunk in low.split(config.batch_size):
            count = chunk.shape[0]
            outputs.append(pipeline(
                image=chunk.to(self.device),
                prompt_embeds=positive.expand(count, -1, -1),
                negative_prompt_embeds=negative.expand(count, -1, -1) if guidance else None,
                num_inference_steps=config.steps,
                guidance_scale=config.guidance_scale,
                noise_level=config.noise_level,
                generator=generator,
                output_type="pt",
            ).images.float().to(images.device))
        return resize(torch.cat(outputs), (height, width)).clamp(0.0, 1.0)
