"""The CLIP model that CLIP-S and CLIP-I share (open_clip; weights by path)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from facedefense.errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: open_clip's mean/std of the OpenAI CLIP image preprocessing.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build(*, path: str | None, device: torch.device, dtype: torch.dtype, architecture: str = "ViT-B-32") -> torch.nn.Module:
    """Shared-model factory: an open_clip model; ``path`` is its weights file (OpenAI ``ViT-B-32.pt`` or
    an open_clip ``open_clip_pytorch_model.bin``); ``"random"``: random weights (tests only)."""
    from pathlib import Path

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    if architecture not in open_clip.list_models():
        raise ConfigError(f"unknown CLIP architecture '{architecture}' (open_clip has e.g. ViT-B-32, ViT-L-14)")
    if path is None:
        raise ModelNotFoundError(
            f"CLIP {architecture} weights are needed: pass -o weights=PATH (OpenAI ViT-B-32.pt or open_clip_pytorch_model.bin, from the HF hub)"
        )
    if path != "random" and not Path(path).is_file():
        raise ModelNotFoundError(f"CLIP weights file {path} not found (OpenAI ViT-B-32.pt or open_clip_pytorch_model.bin)")
    model = open_clip.create_model(architecture, pretrained=None if path == "random" else str(path))
    model.tokenizer = open_clip.get_tokenizer(architecture)
    return model.to(device=device, dtype=dtype).eval()


def image_features(model, batch: Tensor) -> Tensor:
    """Unit-norm CLIP embeddings of (N, 3, H, W) in [0, 1] (resized to the model's input, normalized)."""
    import torch
    import torch.nn.functional as F

    size = model.visual.image_size
    size = size if isinstance(size, tuple) else (size, size)
    x = F.interpolate(batch, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return F.normalize(model.encode_image((x - mean) / std).float(), dim=-1)


def text_features(model, prompts: list[str], device) -> Tensor:
    """Unit-norm CLIP embeddings of the prompts."""
    import torch.nn.functional as F

    return F.normalize(model.encode_text(model.tokenizer(prompts).to(device)).float(), dim=-1)
