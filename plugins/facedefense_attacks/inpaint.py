"""Stable Diffusion inpainting (Rombach et al., "High-Resolution Image Synthesis with Latent
Diffusion Models", CVPR 2022), with PhotoGuard's inpainting evaluation settings as the default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError
from facedefense_attacks.editing import DiffusionEditor, DiffusionEditorConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class InpaintConfig(DiffusionEditorConfig):
    """Inpainting options; defaults are PhotoGuard's inpainting evaluation.

    Attributes:
        model: default ``"stable-diffusion-v1-5/stable-diffusion-inpainting"``.
        steps: 100. guidance_scale: 7.5. strength: 0.7. eta: 1.0 (DDIM eta).
    """

    model: str = "stable-diffusion-v1-5/stable-diffusion-inpainting"
    steps: int = 100
    strength: float = 0.7
    eta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.strength <= 1:
            raise ConfigError(f"option 'strength' must be in (0, 1], got {self.strength}")


class Inpaint(DiffusionEditor):
    """Regenerate the masked region of each photo from a prompt (mask 1 = repaint, 0 = keep).

    The typical abuse keeps the face and repaints everything else (PhotoGuard's scenario); the CLI
    makes that mask automatically with a face detector (``--mask background``) or reads a mask file.

    Args:
        model: inpainting model (9-channel UNet). steps, guidance_scale, strength, eta, resolution:
            see :class:`InpaintConfig`.

    Shape:
        images: (N, 3, H, W) in [0, 1]; mask (N, 1, H, W) in [0, 1]; the edit has the images' shape.

    Example:
        >>> edited = Inpaint().edit(photos, "a person in a prison cell", mask=background_mask)

    Differences from the reference code: PhotoGuard's notebook inpaints 512x512 crops; here the short
    side is 512. The pipeline's output is returned as is (the kept region is re-encoded by the VAE,
    as in the reference).
    """

    name: ClassVar[str] = "inpaint"
    Config: ClassVar[type[InpaintConfig]] = InpaintConfig
    pipeline_kind: ClassVar[str] = "inpaint"
    unet_channels: ClassVar[int] = 9
    needs_mask: ClassVar[bool] = True

    def _run(
        self, pipeline: Any, images: Tensor, prompts: list[str], mask: Tensor | None, generator: torch.Generator,
        size: tuple[int, int], **extra: Any,
    ) -> Tensor:
        if mask is None:
            raise ConfigError("inpaint needs a mask (1 = region to repaint): --mask FILE, or --mask face/background")
        return pipeline(
            prompts, image=images, mask_image=mask, height=size[0], width=size[1], strength=self.config.strength,
            num_inference_steps=self.config.steps, guidance_scale=self.config.guidance_scale, eta=self.config.eta,
            generator=generator, output_type="pt", **extra,
        ).images
