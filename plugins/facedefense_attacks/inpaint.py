"""Stable Diffusion inpainting (Rombach et al., "High-Resolution Image Synthesis with Latent
Diffusion Models", CVPR 2022), with PhotoGuard's inpainting evaluation settings as the default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from facedefense_attacks.common import check_range
from facedefense_attacks.editing import DiffusionEditor, DiffusionEditorConfig, check_strength_steps

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class InpaintConfig(DiffusionEditorConfig):
    """Inpainting options; defaults are PhotoGuard's inpainting evaluation.

    Attributes:
        model: default ``"stable-diffusion-v1-5/stable-diffusion-inpainting"``.
        steps: denoising steps (100).
        guidance_scale: classifier-free guidance scale (7.5).
        eta: DDIM eta, 0 to 1 (1.0).
        strength: 1.0 (in (0, 1]; ``int(steps * strength)`` steps run, at least one), the masked region regenerated from noise: PhotoGuard's notebook passes 0.7,
            but its diffusers (0.10.2) inpainting pipeline has no strength and its logged runs
            take all 100 steps; 0.7 runs 70 steps from the noised photo.
        auto_mask: the mask used when none is given: ``"background"`` (keep the largest face
            a detector finds, repaint the rest: PhotoGuard's scenario), ``"face"`` (repaint the
            face) or ``"all"`` (repaint everything).
    """

    model: str = "stable-diffusion-v1-5/stable-diffusion-inpainting"
    steps: int = 100
    strength: float = 1.0
    eta: float = 1.0
    auto_mask: Literal["background", "face", "all"] = "background"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_strength_steps(self.strength, self.steps)  # the pipeline runs int(steps * strength) steps
        check_range("eta", self.eta, 0, 1)


class Inpaint(DiffusionEditor):
    """Regenerate the masked region of each photo from a prompt (mask 1 = repaint, 0 = keep).

    The typical abuse keeps the face and repaints everything else (PhotoGuard's scenario): without
    a mask, that mask is made from the face scikit-image's detector finds (``auto_mask``); the CLI
    also reads a mask file (``--mask FILE``). Pixels outside the mask are the photo's own
    (``Editor.edit`` pastes them back, PhotoGuard's ``recover_image``): the kept face is not
    re-encoded by the VAE.

    Args:
        model: inpainting model (9-channel UNet). steps, guidance_scale, strength, eta, resolution:
            see `InpaintConfig`.

    Shape:
        images: (N, 3, H, W) in [0, 1]; mask (N, 1, H, W) in [0, 1]; the edit has the images' shape.

    Example:
        >>> edited = Inpaint().edit(photos, "a person in a prison cell", mask=background_mask)

    Differences from the reference code: PhotoGuard's notebook inpaints 512x512 resized photos; here
    the short side is 512 and the edit is resized back before the photo's pixels are pasted outside
    the mask. See ``docs/methods/inpaint.md``.
    """

    name: ClassVar[str] = "inpaint"
    Config: ClassVar[type[InpaintConfig]] = InpaintConfig
    pipeline_kind: ClassVar[str] = "inpaint"
    unet_channels: ClassVar[int] = 9

    def automatic_mask(self, images: Tensor) -> Tensor:
        """(N, 1, H, W) masks of ``config.auto_mask`` for a batch (ImageError when a face is missing)."""
        import torch

        from facedefense_attacks.masks import face_mask

        if self.config.auto_mask == "all":
            return torch.ones_like(images[:, :1])
        masks = [face_mask(image.cpu(), self.config.auto_mask) for image in images]
        return torch.stack(masks).to(images.device)

    def _run(
        self, pipeline: Any, images: Tensor, prompts: list[str], mask: Tensor | None, generator: torch.Generator,
        size: tuple[int, int], **extra: Any,
    ) -> Tensor:
        return pipeline(
            prompts, image=images, mask_image=mask, height=size[0], width=size[1], strength=self.config.strength,
            num_inference_steps=self.config.steps, guidance_scale=self.config.guidance_scale, eta=self.config.eta,
            generator=generator, output_type="pt", **extra,
        ).images
