"""LIQE: Zhang et al., "Blind Image Quality Assessment via Vision-Language Correspondence: A
Multitask Learning Perspective", CVPR 2023; the quality score of the Anti-DreamBooth-style tables
(lower LIQE on the attacker's outputs = protected)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ModelNotFoundError
from facedefense.interfaces.metric import Metric, MetricConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

QUALITIES = ("bad", "poor", "fair", "good", "perfect")
SCENES = ("animal", "cityscape", "human", "indoor", "landscape", "night", "plant", "still_life", "others")
DISTORTIONS = (
    "jpeg2000 compression", "jpeg compression", "noise", "blur", "color", "contrast", "overexposure",
    "underexposure", "spatial", "quantization", "other",
)
PATCH, STRIDE, PATCHES = 224, 32, 15


def build(*, path: str | None, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Shared-model factory: LIQE's fine-tuned CLIP ViT-B/32 (``LIQE.pt``, an OpenAI-format state dict)
    with the 495 joint prompt embeddings cached as ``prompt_features``; ``"random"``: random weights."""
    from pathlib import Path

    import torch
    import torch.nn.functional as F

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    if path is None or (path != "random" and not Path(path).is_file()):
        where = "pass -o weights=PATH" if path is None else f"{path} not found"
        raise ModelNotFoundError(f"liqe needs LIQE.pt (the authors' checkpoint, github.com/zwx8981/LIQE): {where}")
    if path == "random":
        model = open_clip.create_model("ViT-B-32-quickgelu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model_from_openai_state_dict(state, cast_dtype=torch.float32)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    prompts = [f"a photo of a {s} with {d} artifacts, which is of {q} quality" for q, s, d in product(QUALITIES, SCENES, DISTORTIONS)]
    model = model.to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        model.register_buffer("prompt_features", F.normalize(model.encode_text(tokenizer(prompts).to(device)).float(), dim=-1))
    return model


@dataclass
class LIQEConfig(MetricConfig):
    """Options of ``LIQE``.

    Attributes:
        weights: the authors' ``LIQE.pt`` (required; ``"random"``: random weights, tests only).
    """

    weights: str | None = None


class LIQE(Metric):
    """Expected quality level (1 bad ... 5 perfect) from CLIP's joint correspondence with 495 prompts
    "a photo of a {scene} with {distortion} artifacts, which is of {quality} quality": the
    logits, averaged over 15 evenly spaced 224x224 patches (stride 32), go through a softmax, the
    probabilities are summed over scenes and distortions, and LIQE = sum_q q p(q). Higher is better quality; lower means
    *protected*.

    Shape:
        images: any number, any sizes (sides under 224 are upscaled to 224) -> one value each in [1, 5].

    Examples:
        >>> LIQE(weights="LIQE.pt").compute(generated).value
        3.9

    Differences from the reference code: the reference picks patches with a step computed from the
    batch size (a bug; pyiqa fixes it the same way as here: from the number of patches); images
    smaller than 224 are upscaled bicubically instead of failing.
    """

    name: ClassVar[str] = "liqe"
    Config: ClassVar[type[LIQEConfig]] = LIQEConfig
    higher_is_better: ClassVar[bool] = True

    def _compute(self, images: list[Tensor], references, prompts) -> list[float]:
        import torch
        import torch.nn.functional as F

        from facedefense.models import shared_model
        from facedefense_metrics._clip import CLIP_MEAN, CLIP_STD

        model = shared_model("liqe", path=self.config.weights, device=self.device)
        levels = torch.arange(1, len(QUALITIES) + 1, dtype=torch.float32, device=self.device)
        values = [float("nan")] * len(images)
        for indices, batch in self.batches(images):
            height, width = batch.shape[-2:]
            if min(height, width) < PATCH:
                scale = PATCH / min(height, width)
                size = (max(PATCH, round(height * scale)), max(PATCH, round(width * scale)))
                batch = F.interpolate(batch, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
            mean = torch.tensor(CLIP_MEAN, device=batch.device).view(1, 3, 1, 1)
            std = torch.tensor(CLIP_STD, device=batch.device).view(1, 3, 1, 1)
            patches = ((batch - mean) / std).unfold(2, PATCH, STRIDE).unfold(3, PATCH, STRIDE)
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(batch.shape[0], -1, 3, PATCH, PATCH)
            chosen = torch.arange(PATCHES) * (patches.shape[1] // PATCHES) if patches.shape[1] >= PATCHES else torch.arange(patches.shape[1])
            patches = patches[:, chosen]
            features = F.normalize(model.encode_image(patches.flatten(0, 1)).float(), dim=-1)
            logits = model.logit_scale.exp() * features @ model.prompt_features.T
            probabilities = logits.view(batch.shape[0], len(chosen), -1).mean(1).softmax(dim=-1)
            quality = probabilities.view(-1, len(QUALITIES), len(SCENES) * len(DISTORTIONS)).sum(-1)
            for index, value in zip(indices, (quality @ levels).tolist()):
                values[index] = value
        return values
