"""Editors: the attacks that rewrite a photo from an instruction (InstructPix2Pix, SDEdit, ...)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.config import MethodConfig
from facedefense.errors import ConfigError
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
    """Base class of editing attacks: :meth:`edit` checks inputs and calls :meth:`_edit`."""

    Config: ClassVar[type[EditorConfig]] = EditorConfig

    def edit(self, images: Tensor, prompt: str, *, generator: torch.Generator | None = None) -> Tensor:
        """Edit ``images`` ((N, 3, H, W) in [0, 1]) following ``prompt``; same shape out, in [0, 1]."""
        if not prompt.strip():
            raise ConfigError("an edit needs a non-empty prompt")
        if not self.config.model:
            raise ConfigError(f"{self.name or type(self).__name__} needs a model (--model)")
        return self._edit(check_image_batch(images).clone(), prompt, self.make_generator(generator)).clamp(0, 1)

    @abc.abstractmethod
    def _edit(self, images: Tensor, prompt: str, generator: torch.Generator) -> Tensor:
        """Return the edited images."""
