"""What the built-in editors share: load the editing pipeline of the right kind once, run it at a
working size (short side ``resolution``, multiples of 8) and map the result back to each photo's size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces.editor import Editor, EditorConfig
from facedefense_attacks.common import load_checked_pipeline

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class DiffusionEditorConfig(EditorConfig):
    """Options of every diffusion editor.

    Attributes:
        steps: denoising steps. guidance_scale: classifier-free guidance of the text.
        resolution: short side the model works at (the aspect ratio is kept; sides rounded to
            multiples of 8); None works at the photo's own size. The edit is resized back.
        negative_prompt: optional negative prompt.
    """

    steps: int = 50
    guidance_scale: float = 7.5
    resolution: int | None = 512
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]
        if self.steps < 1:
            raise ConfigError(f"option 'steps' must be at least 1, got {self.steps}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ConfigError(f"option 'resolution' must be a positive multiple of 8, got {self.resolution}")


class DiffusionEditor(Editor):
    """Template of the built-in editors: one hook, :meth:`_run`, calls the pipeline on a batch at
    working size; loading, resizing and the kind check of the model are here.

    Attributes:
        pipeline_kind: the :data:`facedefense.diffusion.PIPELINE_KINDS` entry to load.
        unet_channels: input channels the model's UNet must have (8 InstructPix2Pix, 9 inpainting).
    """

    Config: ClassVar[type[DiffusionEditorConfig]] = DiffusionEditorConfig
    pipeline_kind: ClassVar[str] = "img2img"
    unet_channels: ClassVar[int] = 4
    _pipeline: Any = None

    @property
    def pipeline(self) -> Any:
        """The editing pipeline, loaded on first use (and checked to be of the right kind)."""
        if self._pipeline is None:
            self._pipeline = load_checked_pipeline(
                self.config.model, self.pipeline_kind, expected_channels=self.unet_channels,
                method=self.name or type(self).__name__, device=self.device, dtype=self.dtype,
            )
            self._pipeline.set_progress_bar_config(disable=True)
        return self._pipeline

    def _edit(self, images: Tensor, prompt: str, mask: Tensor | None, generator: torch.Generator) -> Tensor:
        import torch

        from facedefense.imaging import resize, working_size

        height, width = images.shape[-2:]
        size = working_size(height, width, self.config.resolution, 8)
        pipeline = self.pipeline
        inputs = resize(images, size).clamp(0, 1).to(self.device, pipeline.unet.dtype)
        masks = resize(mask, size).clamp(0, 1).to(self.device, pipeline.unet.dtype) if mask is not None else None
        extra = {"negative_prompt": [self.config.negative_prompt] * len(inputs)} if self.config.negative_prompt else {}
        with torch.no_grad():
            edited = self._run(pipeline, inputs, [prompt] * len(inputs), masks, generator, size, **extra)
        return resize(edited.float(), (height, width)).clamp(0, 1).to(images.device)

    def _run(
        self, pipeline: Any, images: Tensor, prompts: list[str], mask: Tensor | None, generator: torch.Generator,
        size: tuple[int, int], **extra: Any,
    ) -> Tensor:
        """Call the pipeline; return (N, 3, h, w) in [0, 1] at working size."""
        raise NotImplementedError
