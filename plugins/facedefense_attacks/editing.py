"""What the built-in editors share: load the editing pipeline of the right kind once, run it at a
working size (short side ``resolution``, multiples of 8) and map the result back to each photo's size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError, ImageError
from facedefense.interfaces.editor import Editor, EditorConfig
from facedefense_attacks.common import (
    MAX_DENOISING_STEPS,
    MAX_RESOLUTION,
    check_denoising_steps,
    check_range,
    check_resolution,
    load_checked_pipeline,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class DiffusionEditorConfig(EditorConfig):
    """Options of every diffusion editor.

    Attributes:
        steps: denoising steps, 1 to 1000 (at most the model's training timesteps).
        guidance_scale: classifier-free guidance of the text, 0 to 100.
        resolution: short side the model works at, a multiple of 8 up to 4096 (the aspect ratio is
            kept; sides rounded to multiples of 8); None works at the photo's own size (at most
            4096 x 4096 pixels). The edit is resized back.
        negative_prompt: optional negative prompt.
    """

    steps: int = 50
    guidance_scale: float = 7.5
    resolution: int | None = 512
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]
        check_range("steps", self.steps, 1, MAX_DENOISING_STEPS)
        check_range("guidance_scale", self.guidance_scale, 0, 100)
        check_resolution(self.resolution)


def check_strength_steps(strength: float, steps: int) -> None:
    """Image-to-image pipelines run ``int(steps * strength)`` denoising steps: that must be at least one.

    Raises:
        ConfigError: ``strength`` is outside (0, 1], or it leaves no step to run.
    """
    if not 0 < strength <= 1:
        raise ConfigError(f"option 'strength' must be in (0, 1], got {strength}")
    if int(steps * strength) < 1:
        raise ConfigError(
            f"strength {strength} x steps {steps} runs no denoising step; "
            f"use steps >= {math.ceil(1 / strength)} or a larger strength"
        )


class DiffusionEditor(Editor):
    """Template of the built-in editors: one hook, `_run`, calls the pipeline on a batch at
    working size; loading, resizing and the kind check of the model are here.

    Attributes:
        pipeline_kind: the `facedefense.diffusion.PIPELINE_KINDS` entry to load.
        unet_channels: input channels the model's UNet must have (8 InstructPix2Pix, 9 inpainting).
    """

    Config: ClassVar[type[DiffusionEditorConfig]] = DiffusionEditorConfig
    pipeline_kind: ClassVar[str] = "img2img"
    unet_channels: ClassVar[int] = 4
    _pipeline: Any = None

    def prepare(self) -> None:
        """Load the editing pipeline and check it: the right kind of model, and no more denoising
        steps than its scheduler has timesteps."""
        check_denoising_steps(self.pipeline.scheduler, {"steps": self.config.steps}, self.name or type(self).__name__)

    @property
    def pipeline(self) -> Any:
        """The editing pipeline, loaded on first use (and checked to be of the right kind)."""
        if self._pipeline is None:
            from facedefense.progress import progress_enabled, status

            status(f"{self.name}: loading {self.config.model} ...")
            self._pipeline = load_checked_pipeline(
                self.config.model, self.pipeline_kind, expected_channels=self.unet_channels,
                method=self.name or type(self).__name__, device=self.device, dtype=self.dtype,
            )
            # Its denoising steps show when bars are shown (a CPU edit takes minutes).
            self._pipeline.set_progress_bar_config(disable=not progress_enabled(), leave=False)
        return self._pipeline

    def _edit(self, images: Tensor, prompt: str, mask: Tensor | None, generator: torch.Generator) -> Tensor:
        import torch

        from facedefense.imaging import resize, working_size

        height, width = images.shape[-2:]
        size = working_size(height, width, self.config.resolution, 8)
        if size[0] * size[1] > MAX_RESOLUTION**2:
            raise ImageError(
                f"a {width}x{height} photo would be edited at {size[1]}x{size[0]}, over {MAX_RESOLUTION}x{MAX_RESOLUTION} "
                "pixels; set a smaller option 'resolution'"
            )
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
