"""Personalizers: the attacks that learn an identity from a few photos (DreamBooth, LoRA, TI), or,
zero-shot, only encode them (IP-Adapter: `Personalizer.trains` is False).

A personalized model saves in the format the diffusers ecosystem loads (a pipeline folder, a LoRA
safetensors file for ``pipe.load_lora_weights``, an embedding for ``pipe.load_textual_inversion``,
the reference photos' image embeddings for ``ip_adapter_image_embeds`` plus the adapter's name)
plus ``facedefense_personalized.json``, and loads back with [`load_personalized`][facedefense.interfaces.personalizer.load_personalized].
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.config import MethodConfig
from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense.imaging import as_image_list
from facedefense.interfaces.base import Method
from facedefense.interfaces.identity import DEFAULT_CLASS_PROMPT, DEFAULT_INSTANCE_PROMPT

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: File that describes a saved personalized model.
METADATA_NAME = "facedefense_personalized.json"
#: The formats a personalized model saves in.
FORMATS = ("pipeline", "lora", "textual_inversion", "lora_ti", "ip_adapter")


@dataclass
class PersonalizerConfig(MethodConfig):
    """Options of every personalizer.

    Attributes:
        model: diffusers folder or Hugging Face id of the base model.
        instance_prompt: the prompt that binds the identity. Default: ``"a photo of sks person"``.
        class_prompt: the prompt of the class (prior preservation). Default: ``"a photo of person"``.
    """

    model: str = ""
    instance_prompt: str = DEFAULT_INSTANCE_PROMPT
    class_prompt: str = DEFAULT_CLASS_PROMPT


class PersonalizedModel(abc.ABC):
    """A model fine-tuned on one identity, able to generate new images of it.

    Attributes:
        format: ``"pipeline"``, ``"lora"``, ``"textual_inversion"``, ``"lora_ti"`` or
            ``"ip_adapter"`` (the reference photos' embeddings and the adapter's name).
    """

    format: ClassVar[str] = ""

    @abc.abstractmethod
    def generate(
        self,
        prompts: Sequence[str],
        *,
        num_images: int = 1,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> Tensor:
        """Generate ``num_images`` images per prompt: (len(prompts) * num_images, 3, H, W) in [0, 1],
        prompt-major (all images of the first prompt first)."""

    @abc.abstractmethod
    def save(self, directory: str | Path) -> Path:
        """Save in the diffusers format of `format` plus ``METADATA_NAME``; return the folder."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: str | Path, *, device: str = "auto", dtype: str = "auto") -> PersonalizedModel:
        """Load a model saved by `save`."""


def write_metadata(directory: str | Path, *, personalizer: str, format: str, **facts: Any) -> Path:
    """Write ``METADATA_NAME`` (personalizer name, format, base model, prompts, files...)."""
    if format not in FORMATS:
        raise ValueError(f"unknown personalized-model format {format!r}; expected one of {', '.join(FORMATS)}")
    path = Path(directory) / METADATA_NAME
    path.write_text(json.dumps({"personalizer": personalizer, "format": format, **facts}, indent=2) + "\n", encoding="utf-8")
    return path


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The metadata of a saved personalized model.

    Raises:
        ModelNotFoundError: no metadata file, or it is not valid JSON with a personalizer name.
    """
    path = Path(directory) / METADATA_NAME
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"{directory} holds no personalized model ({METADATA_NAME} is missing)") from exc
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict) or "personalizer" not in metadata:
        raise ModelNotFoundError(f"{path} does not name the personalizer that wrote it")
    return metadata


def load_personalized(directory: str | Path, **options: Any) -> PersonalizedModel:
    """Load any saved personalized model: the registry finds its personalizer's ``Model`` class.

    Example:
        >>> model = load_personalized("attack-out/model")
        >>> images = model.generate(["a photo of sks person"], num_images=4)
    """
    from facedefense.registry import get_registry

    metadata = read_metadata(directory)
    personalizer = get_registry().load("personalizer", metadata["personalizer"])
    return personalizer.Model.load(directory, **options)


class Personalizer(Method, abc.ABC):
    """Base class of personalization attacks: `fit` checks inputs and calls `_fit`.

    Attributes:
        Model: the [`PersonalizedModel`][facedefense.interfaces.personalizer.PersonalizedModel] subclass this personalizer produces (and loads).
        trains: False for a zero-shot attack, whose `fit` only encodes the reference photos (no
            optimizer steps, no class images: ``class_images`` and ``class_prompt`` are ignored);
            ``facedefense attack`` then reports the photos as encoded, not trained on.
    """

    Config: ClassVar[type[PersonalizerConfig]] = PersonalizerConfig
    Model: ClassVar[type[PersonalizedModel]]
    trains: ClassVar[bool] = True

    def prepare(self, *, instance_prompt: str | None = None, class_prompt: str | None = None) -> None:
        """Check the options and prompts, and load what `fit` needs (the base model), before
        any output is written.

        ``facedefense attack`` calls it before it claims its output folder, so a missing, damaged or
        wrong model, or a prompt the method refuses, is refused with nothing written. A subclass
        that loads a model overrides it (calling this one first) and may keep what it loaded for the
        next `fit`; `fit` must still work without it being called.

        Args:
            instance_prompt: the instance prompt the coming `fit` gets (default: the config's).
            class_prompt: its class prompt (default: the config's).

        Raises:
            ConfigError, ModelNotFoundError: what the personalizer cannot work with (one line).
        """
        if not self.config.model:
            raise ConfigError(f"{self.name or type(self).__name__} needs a base model (option 'model')")
        prompt = instance_prompt if instance_prompt is not None else self.config.instance_prompt
        if not prompt.strip():
            raise ConfigError("the instance prompt is empty (e.g. 'a photo of sks person')")

    def fit(
        self,
        images: Tensor | Sequence[Tensor],
        *,
        instance_prompt: str | None = None,
        class_images: Tensor | Sequence[Tensor] | None = None,
        class_prompt: str | None = None,
        output_dir: str | Path | None = None,
        generator: torch.Generator | None = None,
    ) -> PersonalizedModel:
        """Fine-tune on one identity's photos (or, when `trains` is False, encode them) and return
        the personalized model.

        Args:
            images: a batch or a list of (3, H, W) photos of any sizes in [0, 1] (resized as the
                personalizer's protocol says).
            instance_prompt: default ``config.instance_prompt``.
            class_images: prior-preservation images; None lets the personalizer generate (and cache)
                them when its protocol uses them.
            class_prompt: default ``config.class_prompt``.
            output_dir: when given, the trained model is saved there.
            generator: source of randomness (default: seeded with ``config.seed``).
        """
        Personalizer.prepare(self, instance_prompt=instance_prompt)  # the checks only: no model is loaded here
        prompt = instance_prompt if instance_prompt is not None else self.config.instance_prompt
        listed = [image.clone() for image in as_image_list(images)]
        classes = as_image_list(class_images, "class images") if class_images is not None and len(class_images) else None
        output = Path(output_dir) if output_dir is not None else None
        return self._fit(
            listed,
            instance_prompt=prompt,
            class_images=classes,
            class_prompt=class_prompt if class_prompt is not None else self.config.class_prompt,
            output_dir=output,
            generator=self.make_generator(generator),
        )

    @abc.abstractmethod
    def _fit(
        self,
        images: list[Tensor],
        *,
        instance_prompt: str,
        class_images: list[Tensor] | None,
        class_prompt: str,
        output_dir: Path | None,
        generator: torch.Generator,
    ) -> PersonalizedModel:
        """Fine-tune and return the personalized model (saved to ``output_dir`` when given)."""
