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


@dataclass
class NoisyUpscaleConfig(PurifierConfig):
    """Noisy-upscaling options.

    Attributes:
        model: a Stable Diffusion x4 upscaler, folder or id (``stabilityai/stable-diffusion-x4-upscaler``).
        sigma: standard deviation of the Gaussian noise added first, [0, 1] units, >= 0. Default 0.1
            (``noise.py``: skimage ``random_noise`` with variance 0.1**2).
        noise_level: the upscaler's own noise augmentation of its low-resolution input, 0 to its
            ``max_noise_level`` (350). Default 320 (``upscale.py``).
        steps: denoising steps. Default 75 (the pipeline's default, which ``upscale.py`` keeps).
        guidance_scale: classifier-free guidance. Default 9.0 (the pipeline's default).
        prompt: text condition. The reference uses a BLIP-2 caption; default empty.
        resolution: short side of the upscaler's input in pixels; None (default): the photo's own
            size (rounded to a multiple of 8). The upscaler works at 4x this size.
        batch_size: images per upscaler pass.
    """

    model: str = ""
    sigma: float = 0.1
    noise_level: int = 320
    steps: int = 75
    guidance_scale: float = 9.0
    prompt: str = ""
    resolution: int | None = None
    batch_size: int = 1

    def __post_init__(self) -> None:
        check_model(self.model, "noisy_upscale", "the Stable Diffusion x4 upscaler")
        check_sigma(self.sigma, "noisy_upscale")
        if self.noise_level < 0:
            raise ConfigError(f"noisy_upscale noise_level must be >= 0, got {self.noise_level}")
        for key in ("steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"noisy_upscale {key} must be at least 1, got {getattr(self, key)}")
        if self.resolution is not None and self.resolution < 8:
            raise ConfigError(f"noisy_upscale resolution must be at least 8 pixels, got {self.resolution}")


class NoisyUpscale(Purifier):
    """Add Gaussian noise, upscale x4 with the Stable Diffusion upscaler, resize back.

    The upscaler re-synthesizes fine detail from a noised low-resolution image, so the noise and
    the perturbation are both replaced by plausible texture. The 4x output is reduced to the
    photo's size with an antialiased bilinear filter.

    Shape:
        (N, 3, H, W) float in [0, 1] -> same (the upscaler works at (4H', 4W'), H' x W' the input
        size rounded to a multiple of 8, or ``resolution``).

    Example:
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
            self._embeddings = pipeline.encode_prompt(self.config.prompt, self.device, 1, self.config.guidance_scale > 1)
            self._pipeline = pipeline
        return self._pipeline

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import torch

        from facedefense.imaging import resize, working_size

        pipeline, config = self.pipeline, self.config
        height, width = images.shape[-2:]
        noisy = add_noise(images, config.sigma, generator)
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
