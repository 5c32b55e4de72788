"""Editors: the attacks that rewrite a photo from an instruction (InstructPix2Pix, SDEdit, ...)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.config import MethodConfig
from facedefense.errors import ConfigError, ImageError
from facedefense.imaging import check_image_batch
from facedefense.interfaces.base import Method

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class EditorConfig(MethodConfig):
    """Options of every editor.

    Attributes:
        model: diffusers folder or Hugging Face id of the editing model.
    """

    model: str = ""


class Editor(Method, abc.ABC):
    """Base class of editing attacks: ``edit`` checks inputs, calls ``_edit``, and keeps the
    photo's own pixels outside the mask.

    With a mask (given, or the editor's ``automatic_mask``), the result is
    ``mask * edit + (1 - mask) * photo``: pixels the mask leaves out (0) come back unchanged, not
    re-encoded by a VAE (PhotoGuard's ``recover_image``).

    Attributes:
        needs_mask: the editor only works with a mask (inpainting without an automatic mask).
    """

    Config: ClassVar[type[EditorConfig]] = EditorConfig
    needs_mask: ClassVar[bool] = False

    def edit(
        self,
        images: Tensor,
        prompt: str,
        *,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Edit ``images`` following ``prompt``.

        Args:
            images: (N, 3, H, W) float in [0, 1].
            prompt: the instruction or target prompt (non-empty).
            mask: optional (N, 1, H, W) or (1, 1, H, W) in [0, 1]; 1 marks the region to edit,
                0 the pixels returned unchanged. Default: ``automatic_mask``.
            generator: source of randomness (default: seeded with ``config.seed``).

        Returns:
            The edited images, same shape, float32 in [0, 1].
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"editor '{self.name}' needs a non-empty prompt")
        if not self.config.model:
            raise ConfigError(f"{self.name or type(self).__name__} needs a model (option 'model')")
        original = check_image_batch(images)
        if mask is None and self.needs_mask:
            raise ConfigError(f"editor '{self.name}' needs a mask")
        work = self._to_device(original)
        mask = self._check_mask(mask, original) if mask is not None else self.automatic_mask(work)
        edited = self._edit(work, prompt, mask, self.make_generator(generator))
        edited = self._check_output(edited, original, "_edit")
        if mask is None:
            return edited
        mask = mask.to(edited.device)
        return mask * edited + (1 - mask) * original.to(edited.dtype)

    def prepare(self) -> None:
        """Load and check what the editor needs (its model) before any output is written.

        ``facedefense attack`` calls it before it claims its output folder, so a missing, damaged or
        wrong model is refused with nothing written; a subclass that loads a model overrides it
        (``edit`` must still work without it being called). Default: nothing.

        Raises:
            ConfigError, ModelNotFoundError: what the editor cannot work with (one line).
        """

    def automatic_mask(self, images: Tensor) -> Tensor | None:
        """The mask used when none is given: (N, 1, H, W) in [0, 1] on ``images``' device, or None
        (edit everywhere; the default)."""
        return None

    def _check_mask(self, mask: Tensor, images: Tensor) -> Tensor:
        import torch

        if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1:
            raise ImageError(f"mask must be a (N, 1, H, W) tensor, got {getattr(mask, 'shape', type(mask).__name__)}")
        if mask.shape[-2:] != images.shape[-2:] or mask.shape[0] not in (1, images.shape[0]):
            raise ImageError(
                f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(images.shape)}"
            )
        mask = mask.float()
        if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ImageError("mask values must lie in [0, 1]")
        return mask.expand(images.shape[0], -1, -1, -1).to(self.device, copy=True)

    @abc.abstractmethod
    def _edit(self, images: Tensor, prompt: str, mask: Tensor | None, generator: torch.Generator) -> Tensor:
        """Return the edited images (same shape); ``mask`` is (N, 1, H, W) on the device, or None.
        Pixels outside the mask are put back by ``edit`` afterwards."""
