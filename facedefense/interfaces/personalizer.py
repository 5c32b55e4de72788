"""Personalizers: the attacks that learn an identity from a few photos (DreamBooth, LoRA, TI)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from facedefense.config import MethodConfig
from facedefense.errors import ConfigError
from facedefense.imaging import check_image_batch
from facedefense.interfaces.base import Method

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class PersonalizerConfig(MethodConfig):
    """Options of every personalizer.

    Attributes:
        model: diffusers folder or Hugging Face id of the base model.
        instance_prompt: the prompt that binds the identity. Default: ``"a photo of sks person"``.
    """

    model: str = ""
    instance_prompt: str = "a photo of sks person"


class PersonalizedModel(abc.ABC):
    """A model fine-tuned on one identity, able to generate new images of it."""

    @abc.abstractmethod
    def generate(
        self, prompts: Sequence[str], *, num_images: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Generate ``num_images`` images per prompt: (len(prompts) * num_images, 3, H, W) in [0, 1]."""

    @abc.abstractmethod
    def save(self, directory: str | Path) -> Path:
        """Save the fine-tuned weights (or adapter) to ``directory``; return it."""


class Personalizer(Method, abc.ABC):
    """Base class of personalization attacks: :meth:`fit` checks inputs and calls :meth:`_fit`."""

    Config: ClassVar[type[PersonalizerConfig]] = PersonalizerConfig

    def fit(self, images: Tensor, *, generator: torch.Generator | None = None) -> PersonalizedModel:
        """Fine-tune on ``images`` ((N, 3, H, W) in [0, 1], one identity) and return the model."""
        if not self.config.model:
            raise ConfigError(f"{self.name or type(self).__name__} needs a base model (--model)")
        return self._fit(check_image_batch(images).clone(), self.make_generator(generator))

    @abc.abstractmethod
    def _fit(self, images: Tensor, generator: torch.Generator) -> PersonalizedModel:
        """Fine-tune and return the personalized model."""
