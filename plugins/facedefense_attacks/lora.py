"""DreamBooth-LoRA: low-rank adapters (Hu et al., "LoRA: Low-Rank Adaptation of Large Language
Models", ICLR 2022, arXiv:2106.09685) on the attention of the UNet, trained with the DreamBooth
objective; defaults from RID's LoRA evaluation (Guo et al., 2024, arXiv:2412.09844)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from facedefense_attacks.common import check_range
from facedefense_attacks.personalized import PipelinePersonalized
from facedefense_attacks.training import Trainables, TrainedPersonalizer, TrainingConfig

#: Attention projections that get adapters (diffusers' ``train_dreambooth_lora.py``).
TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
#: File name ``pipe.load_lora_weights(folder)`` looks for.
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class LoRAConfig(TrainingConfig):
    """LoRA options; defaults are RID's ``config/sd_lora.py`` (without the new token).

    Attributes:
        rank: adapter rank (32); alpha = rank, so the scale is 1.
        steps: optimizer steps (221).
        learning_rate: constant AdamW learning rate (3e-4).
        batch_size: instance images per step (1).
        prior_preservation: add the class-prior loss (on).
        prior_loss_weight: weight of the class-prior loss (1.0).
        num_class_images: class images generated (100).
        inference_steps: denoising steps of ``generate`` (50; RID samples LoRA models with 50-100 steps).
        guidance_scale: classifier-free guidance of ``generate`` (5.0, RID's).
    """

    rank: int = 32
    steps: int = 221
    learning_rate: float = 3e-4
    num_class_images: int = 100
    inference_steps: int = 50
    guidance_scale: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("rank", self.rank, 1, 1024)


def add_lora(unet: Any, rank: int) -> list[Any]:
    """Add a peft LoRA adapter (A ~ N(0, 1/rank^2), B = 0, as RID's ``LoRALinearLayer``) to the
    UNet's attention; return its trainable tensors. A is drawn from torch's global random state
    (``TrainedPersonalizer`` seeds it from the method's generator)."""
    from peft import LoraConfig

    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(TARGET_MODULES))
    )
    return [parameter for parameter in unet.parameters() if parameter.requires_grad]


def save_lora(unet: Any, directory: Path) -> Path:
    """Write the UNet's adapter as ``pytorch_lora_weights.safetensors`` in diffusers' key layout."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        directory, unet_lora_layers=layers, weight_name=LORA_WEIGHTS, safe_serialization=True
    )
    return directory / LORA_WEIGHTS


class LoRAModel(PipelinePersonalized):
    """The base pipeline with a LoRA adapter; saved as ``pytorch_lora_weights.safetensors``, which
    ``pipe.load_lora_weights(folder)`` accepts."""

    format: ClassVar[str] = "lora"

    def _save_weights(self, directory: Path) -> None:
        save_lora(self.pipeline.unet, directory)

    @classmethod
    def _attach(cls, directory: Path, info: dict[str, Any], device: Any, dtype: Any) -> Any:
        pipeline = cls._base_pipeline(info, device, dtype)
        pipeline.load_lora_weights(str(directory), weight_name=LORA_WEIGHTS)
        return pipeline


class LoRA(TrainedPersonalizer):
    """Train rank-``r`` adapters ``W + B A`` on the UNet's attention projections (q, k, v, out) with
    the DreamBooth loss (instance + prior preservation); the base weights stay frozen.

    Args:
        model: base text-to-image model. rank: adapter rank (32). Other options: see
            `LoRAConfig` and `TrainingConfig`.

    Shape:
        images: list of (3, H, W) in [0, 1], any sizes (resize + center crop to ``resolution``).

    Example:
        >>> model = LoRA(model="stabilityai/stable-diffusion-2-1-base").fit(photos, output_dir="out/lora")
        >>> pipe = StableDiffusionPipeline.from_pretrained("stabilityai/stable-diffusion-2-1-base")
        >>> pipe.load_lora_weights("out/lora")

    Differences from the reference code: RID trains LoRA together with a new token (that is
    ``lora_ti``); this is LoRA alone with RID's rank, learning rate and steps. Adapters come from
    peft through diffusers' ``add_adapter`` (RID uses diffusers' older attention processors, same
    initialization). Text embeddings and VAE latents are cached (nothing that produces them is
    trained). See ``docs/methods/lora.md``.
    """

    name: ClassVar[str] = "lora"
    Config: ClassVar[type[LoRAConfig]] = LoRAConfig
    Model: ClassVar[type[PipelinePersonalized]] = LoRAModel

    def _trainables(self, pipeline: Any) -> Trainables:
        return Trainables(add_lora(pipeline.unet, self.config.rank), [pipeline.unet])
