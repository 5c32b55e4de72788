"""What the personalizers and editors share: the literature's prompts, checks of prompts and model
folders, loading a pipeline of the right kind, and the instance-image preprocessing."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    from torch import Tensor

#: Anti-DreamBooth's five inference prompts (``infer.py``); its metrics use the first two, which are
#: also RID's evaluation prompts. ``sks`` is replaced by the personalizer's identifier.
DEFAULT_PROMPTS = (
    "a photo of sks person",
    "a dslr portrait of sks person",
    "a close-up photo of sks person riding a bike",
    "a photo of sks person in front of eiffel tower",
    "a selfie photo of sks person on top of mount fuji",
)

#: UNet input channels -> what kind of Stable Diffusion model has them.
MODEL_KINDS = {4: "text-to-image", 7: "x4-upscaler", 8: "InstructPix2Pix", 9: "inpainting"}
#: Largest working or training side in pixels (Stable Diffusion XL works at 1024; 4096 already
#: needs tens of GB): ``--resolution 65536`` is refused before any work instead of allocating 51 GB.
MAX_RESOLUTION = 4096
#: Largest number of denoising steps: schedulers refuse more steps than the model's 1000 training
#: timesteps (`check_denoising_steps` checks the model's own number once it is loaded).
MAX_DENOISING_STEPS = 1000


def first_line(exc: BaseException) -> str:
    """An exception's first line (at most 200 characters), or its type's name when it says nothing."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def check_not_empty(config: Any, *names: str) -> None:
    """Each named option of ``config`` must be a non-blank string (one-line `ConfigError` otherwise)."""
    for name in names:
        if not str(getattr(config, name)).strip():
            raise ConfigError(f"option '{name}' must not be empty")


def check_range(name: str, value: float, low: float, high: float) -> None:
    """An option's value must be a finite number in ``[low, high]`` (NaN and infinities refused).

    Raises:
        ConfigError: ``option 'steps' must be from 1 to 1000, got 5000``.
    """
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"option '{name}' must be from {low:g} to {high:g}, got {value}")


def check_resolution(value: int | None, name: str = "resolution") -> None:
    """A working or training side: a multiple of 8 from 8 to `MAX_RESOLUTION`, and a square of
    that side within the image-size limit (``FACEDEFENSE_MAX_PIXELS``, see `facedefense.io.max_pixels`).

    Raises:
        ConfigError: the value is out of range.
    """
    from facedefense.io import max_pixels

    if value is None:
        return
    check_range(name, value, 8, MAX_RESOLUTION)
    if value % 8:
        raise ConfigError(f"option '{name}' must be a multiple of 8, got {value}")
    if value * value > max_pixels():
        raise ConfigError(
            f"option '{name}' {value} makes {value}x{value} images, over the image-size limit of {max_pixels()} "
            "pixels (FACEDEFENSE_MAX_PIXELS)"
        )


def check_denoising_steps(scheduler: Any, steps: dict[str, int], method: str) -> None:
    """Denoising steps cannot exceed the model's training timesteps (diffusers' schedulers raise
    a ValueError mid-run otherwise).

    Raises:
        ConfigError: an option in ``steps`` (name -> value) is larger than the model allows.
    """
    limit = int(getattr(scheduler.config, "num_train_timesteps", MAX_DENOISING_STEPS))
    for name, value in steps.items():
        if value > limit:
            raise ConfigError(f"{method}: option '{name}' is {value}, but the model has only {limit} timesteps")


def default_prompts(identifier: str = "sks") -> list[str]:
    """`DEFAULT_PROMPTS` with ``sks`` replaced by ``identifier``."""
    return [re.sub(r"\bsks\b", identifier, prompt) for prompt in DEFAULT_PROMPTS]


def check_identifier(prompt: str, identifier: str, method: str) -> None:
    """The instance prompt must contain the identifier that binds the identity, as a word.

    Raises:
        ConfigError: it does not.
    """
    if not identifier.strip():
        raise ConfigError(f"{method}: the identifier must not be empty")
    if not re.search(rf"(?<![\w<>]){re.escape(identifier)}(?![\w<>])", prompt):
        raise ConfigError(
            f"{method}: instance prompt {prompt!r} does not contain the identifier {identifier!r}; "
            f"put it in the prompt or set -o identifier=..."
        )


def _local_unet_channels(model: str) -> int | None:
    """UNet input channels read from a local folder's ``unet/config.json`` (None when not local)."""
    config = Path(model).expanduser() / "unet" / "config.json"
    if not config.is_file():
        return None
    try:
        return int(json.loads(config.read_text(encoding="utf-8")).get("in_channels", 4))
    except (OSError, ValueError, TypeError):
        return None


def check_model_kind(channels: int | None, model: str, expected: int, method: str) -> None:
    """Refuse a model whose UNet takes ``channels`` inputs when ``method`` needs ``expected``.

    Raises:
        ModelNotFoundError: the wrong kind of model (an InstructPix2Pix folder given to DreamBooth).
    """
    if channels is None or channels == expected:
        return
    found = MODEL_KINDS.get(channels, f"{channels}-input-channel")
    raise ModelNotFoundError(
        f"model '{model}' is {'an' if found[0] in 'AEIOUaeiou' else 'a'} {found} model (its UNet takes {channels} "
        f"input channels); {method} needs a {MODEL_KINDS[expected]} Stable Diffusion model"
    )


def load_checked_pipeline(
    model: str, kind: str, *, expected_channels: int, method: str, device: Any, dtype: Any = None
) -> Any:
    """`facedefense.diffusion.load_pipeline` after checking the folder is of the right kind."""
    from facedefense.diffusion import load_pipeline

    if not model:
        raise ConfigError(f"{method} needs a base model (--model)")
    check_model_kind(_local_unet_channels(model), model, expected_channels, method)
    pipeline = load_pipeline(model, kind, device=device, dtype=dtype)
    check_model_kind(int(pipeline.unet.config.in_channels), model, expected_channels, method)
    return pipeline


def resize_center_crop(image: Tensor, resolution: int) -> Tensor:
    """One (3, H, W) image -> (3, resolution, resolution): the short side resized to ``resolution``
    (bilinear, antialiased when shrinking), then a center crop, as DreamBooth's data loader does."""
    from facedefense.imaging import resize

    height, width = image.shape[-2:]
    scale = resolution / min(height, width)
    size = (max(resolution, round(height * scale)), max(resolution, round(width * scale)))
    resized = resize(image[None].float(), size)[0]
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return resized[:, top : top + resolution, left : left + resolution].clamp(0, 1)


def square_batch(images: list[Tensor], resolution: int) -> Tensor:
    """Images of any sizes -> one (N, 3, resolution, resolution) batch (resize + center crop)."""
    import torch

    return torch.stack([resize_center_crop(image, resolution) for image in images])

