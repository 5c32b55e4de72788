"""CLIP-IQA: Wang, Chan and Loy, "Exploring CLIP for Assessing the Look and Feel of Images", AAAI
2023, as pyiqa's ``clipiqa`` computes it (chaofengc/IQA-PyTorch ``pyiqa/archs/clipiqa_arch.py``):
CLIP's ResNet at the image's own resolution, five antonym prompt pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces.metric import Metric, MetricScores
from facedefense_metrics._clip import CLIPConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: pyiqa's prompt pairs (positive, negative); the paper and piq use the single pair "Good photo." / "Bad photo.".
PYIQA_POSITIVES = ("Good image", "Sharp image", "sharp edges", "High resolution image", "Noise-free image")
PYIQA_NEGATIVES = ("bad image", "blurry image", "blurry edges", "low resolution image", "noisy image")


@dataclass
class CLIPIQAConfig(CLIPConfig):
    """Options of `CLIPIQA` (plus ``weights``, ``quick_gelu``).

    Attributes:
        architecture: an open_clip ResNet CLIP (default ``RN50`` with OpenAI's ``RN50.pt``, as pyiqa).
        positives, negatives: the antonym prompt pairs, comma-separated, pair i = (positives[i],
            negatives[i]); default pyiqa's five. The paper's and piq's: ``Good photo.`` / ``Bad photo.``.
        pos_embedding: add the attention pool's positional embedding, bicubically resized to the
            image's token count (pyiqa's ``pos_embedding=True``, its ``clipiqa+_rn50_512``); default
            false: left out, as pyiqa's ``clipiqa``, piq and the paper.
    """

    architecture: str = "RN50"
    positives: tuple[str, ...] = PYIQA_POSITIVES
    negatives: tuple[str, ...] = PYIQA_NEGATIVES
    pos_embedding: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.positives or len(self.positives) != len(self.negatives):
            raise ConfigError(f"CLIP-IQA needs one negative per positive prompt, got {len(self.positives)} and {len(self.negatives)}")


class CLIPIQA(Metric):
    """Mean over the prompt pairs of the probability that CLIP prefers the positive prompt:
    ``softmax(s * [cos(I, T+), cos(I, T-)])[0]`` with ``s = exp(logit_scale)`` of the checkpoint (100
    for OpenAI's), in [0, 1]. The image runs through the ResNet at its own size (no resize, at least
    32 px), the attention pool without positional embedding (see ``pos_embedding``). Higher is better
    quality; protections that degrade what an attacker generates lower it.

    Shape:
        images: any number, any sizes (at least 32 x 32) -> one value each.

    Examples:
        >>> CLIPIQA(weights="RN50.pt").compute(generated).value
        0.41
    """

    name: ClassVar[str] = "clip_iqa"
    Config: ClassVar[type[CLIPIQAConfig]] = CLIPIQAConfig
    higher_is_better: ClassVar[bool] = True

    def _compute(self, images: list[Tensor], references, prompts) -> MetricScores:
        from facedefense_metrics._clip import clip_model, model_details, text_features

        small = next((i for i, image in enumerate(images) if min(image.shape[-2:]) < 32), None)
        if small is not None:
            raise ConfigError(f"CLIP-IQA needs images of at least 32 x 32 pixels; image {small} is {images[small].shape[-1]}x{images[small].shape[-2]}")
        model = clip_model(self)
        if not hasattr(model.visual, "attnpool"):
            raise ConfigError(f"CLIP-IQA runs a ResNet CLIP (RN50, RN101, ...), not {self.config.architecture}")
        pairs = [text for pair in zip(self.config.positives, self.config.negatives) for text in pair]
        anchors = text_features(model, pairs, self.device)  # (2P, D): positive, negative, positive, ...
        scale = model.logit_scale.exp().float()
        values = [float("nan")] * len(images)
        for indices, batch in self.batches(images):
            logits = scale * resnet_features(model.visual, batch, self.config.pos_embedding) @ anchors.T
            scores = logits.view(len(indices), -1, 2).softmax(dim=-1)[..., 0].mean(dim=1)
            for index, value in zip(indices, scores.tolist()):
                values[index] = value
        return MetricScores(per_image=values, details=model_details(model))


def resnet_features(visual: torch.nn.Module, batch: Tensor, pos_embedding: bool) -> Tensor:
    """Unit-norm embeddings (N, D) of (N, 3, H, W) in [0, 1] by CLIP's ResNet at the images' size:
    CLIP's mean/std, the trunk, then `attention_pool`."""
    import torch.nn.functional as F

    from facedefense_metrics._clip import normalize_pixels

    x = normalize_pixels(batch).to(visual.conv1.weight.dtype)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))
    return F.normalize(attention_pool(visual.attnpool, x, pos_embedding).float(), dim=-1)


def attention_pool(pool: torch.nn.Module, x: Tensor, pos_embedding: bool) -> Tensor:
    """CLIP's attention pooling of (N, C, h, w) features at any h, w -> (N, D): the mean token
    attends to itself and the h*w tokens. With ``pos_embedding`` the (L0, C) table is resized
    bicubically, as one 2-D image, to (h*w + 1, C) and added (pyiqa); without it nothing is added."""
    import torch
    import torch.nn.functional as F

    tokens = x.flatten(2).permute(2, 0, 1)  # (h*w, N, C)
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens])
    if pos_embedding:
        table = pool.positional_embedding
        resized = F.interpolate(table[None, None], size=(tokens.shape[0], table.shape[1]), mode="bicubic", align_corners=False)
        tokens = tokens + resized[0, 0, :, None].to(tokens.dtype)
    pooled, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=tokens.shape[-1], num_heads=pool.num_heads,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias, training=False, need_weights=False,
        use_separate_proj_weight=True, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
    )
    return pooled[0]
