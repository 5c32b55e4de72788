"""SDEdit (Meng et al., "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential
Equations", ICLR 2022, arXiv:2108.01073) as Stable Diffusion img2img, with PhotoGuard's img2img
evaluation settings as the default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense_attacks.editing import DiffusionEditor, DiffusionEditorConfig, check_strength_steps

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class SDEditConfig(DiffusionEditorConfig):
    """SDEdit options; defaults are PhotoGuard's img2img evaluation.

    Attributes:
        model: default ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``.
        strength: how far the photo is noised, in (0, 1]: 0.5 (t0 = 500 of 1000).
        steps: denoising steps of the full schedule (50; ``strength * steps`` of them run).
        guidance_scale: classifier-free guidance scale (7.5).
    """

    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    strength: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_strength_steps(self.strength, self.steps)


class SDEdit(DiffusionEditor):
    """Noise the photo's latent to timestep ``strength * T`` and denoise it guided by the prompt.

    Args:
        model: text-to-image model (4-channel UNet). strength, steps, guidance_scale, resolution:
            see `SDEditConfig`.

    Shape:
        images: (N, 3, H, W) in [0, 1]; the edit has the same shape.

    Example:
        >>> edited = SDEdit(strength=0.5).edit(photos, "a photo of a person in a hospital bed")

    Differences from the reference code: none in the procedure (diffusers' img2img pipeline, the
    model's own scheduler); PhotoGuard's notebook edits 512x512 crops, here the short side is 512.
    """

    name: ClassVar[str] = "sdedit"
    Config: ClassVar[type[SDEditConfig]] = SDEditConfig
    pipeline_kind: ClassVar[str] = "img2img"
    unet_channels: ClassVar[int] = 4

    def _run(
        self, pipeline: Any, images: Tensor, prompts: list[str], mask: Tensor | None, generator: torch.Generator,
        size: tuple[int, int], **extra: Any,
    ) -> Tensor:
        return pipeline(
            prompts, image=images, strength=self.config.strength, num_inference_steps=self.config.steps,
            guidance_scale=self.config.guidance_scale, generator=generator, output_type="pt", **extra,
        ).images
