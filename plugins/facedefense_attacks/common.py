"""What the personalizers and editors share: the literature's prompts, checks of prompts and model
folders, loading a pipeline of the right kind, and the instance-image preprocessing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    import torch
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


def default_prompts(identifier: str = "sks") -> list[str]:
    """:data:`DEFAULT_PROMPTS` with ``sks`` replaced by ``identifier``."""
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
    """:func:`facedefense.diffusion.load_pipeline` after checking the folder is of the right kind."""
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


def seeded(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator with ``seed`` (on the CPU for CUDA devices too, so seeds match across machines)."""
    import torch

    return torch.Generator("cpu").manual_seed(int(seed) % (2**63))
