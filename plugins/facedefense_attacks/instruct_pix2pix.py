"""InstructPix2Pix (Brooks et al., "InstructPix2Pix: Learning to Follow Image Editing
Instructions", CVPR 2023, arXiv:2211.09800), with FaceLock's editing settings as the default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense_attacks.common import check_range
from facedefense_attacks.editing import DiffusionEditor, DiffusionEditorConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class InstructPix2PixConfig(DiffusionEditorConfig):
    """InstructPix2Pix options; defaults are FaceLock's ``edit.py`` (taco-group/FaceLock).

    Attributes:
        model: default ``"timbrooks/instruct-pix2pix"``.
        steps: 50, the default of FaceLock's ``edit.py`` and ``main_edit.py`` (its README's
            example commands pass 100, diffusers' pipeline default).
        guidance_scale: text guidance scale (7.5).
        image_guidance_scale: image guidance scale, 0 to 100 (1.5).
        resolution: 512 on the short side.
    """

    model: str = "timbrooks/instruct-pix2pix"
    steps: int = 50
    image_guidance_scale: float = 1.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("image_guidance_scale", self.image_guidance_scale, 0, 100)


class InstructPix2Pix(DiffusionEditor):
    """Edit photos from an instruction ("make him a zombie") with an InstructPix2Pix model (UNet
    conditioned on the image latent, 8 input channels), with text and image classifier-free guidance.

    Args:
        model: InstructPix2Pix folder or hub id. steps, guidance_scale, image_guidance_scale,
            resolution: see `InstructPix2PixConfig`.

    Shape:
        images: (N, 3, H, W) in [0, 1]; the edit has the same shape.

    Example:
        >>> editor = InstructPix2Pix()
        >>> edited = editor.edit(photos, "turn the person into a clown")

    Differences from the reference code: the model's own scheduler is used (Euler ancestral for
    timbrooks/instruct-pix2pix, FaceLock's choice too); photos are edited at short side 512 and
    resized back, where FaceLock edits at the file's size. See ``docs/methods/instruct_pix2pix.md``.
    """

    name: ClassVar[str] = "instruct_pix2pix"
    Config: ClassVar[type[InstructPix2PixConfig]] = InstructPix2PixConfig
    pipeline_kind: ClassVar[str] = "instruct_pix2pix"
    unet_channels: ClassVar[int] = 8

    def _run(
        self, pipeline: Any, images: Tensor, prompts: list[str], mask: Tensor | None, generator: torch.Generator,
        size: tuple[int, int], **extra: Any,
    ) -> Tensor:
        return pipeline(
            prompts, image=images, num_inference_steps=self.config.steps, guidance_scale=self.config.guidance_scale,
            image_guidance_scale=self.config.image_guidance_scale, generator=generator, output_type="pt", **extra,
        ).images
