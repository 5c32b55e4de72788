"""LoRA and a new token trained together, the personalization attack of RID's evaluation (Guo et
al., "Real-time Identity Defenses against Malicious Personalization of Diffusion Models",
arXiv:2412.09844; ``train_sd_lora_dreambooth_token.py`` with ``config/sd_lora.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from facedefense_attacks.common import check_range
from facedefense_attacks.lora import LORA_WEIGHTS, add_lora, save_lora
from facedefense_attacks.personalized import PipelinePersonalized
from facedefense_attacks.textual_inversion import EMBEDDING_WEIGHTS, add_token, check_token, save_embedding
from facedefense_attacks.training import Trainables, TrainedPersonalizer, TrainingConfig


@dataclass
class LoRATIConfig(TrainingConfig):
    """LoRA+TI options; defaults are RID's ``config/sd_lora.py``.

    Attributes:
        identifier: the new token (``"<new1>"``), initialized from ``initializer_token``.
        initializer_token: the word whose embedding starts the new token (``"ktn"``, RID's).
        instance_prompt: training prompt (``"photo of a <new1> person"``, RID's).
        class_prompt: prompt of the class images (``"photo of a person"``, RID's).
        rank: adapter rank (32).
        steps: optimizer steps (221).
        learning_rate: constant AdamW learning rate of the adapters and the token (3e-4).
        batch_size: instance images per step (1).
        prior_preservation: add the class-prior loss (on).
        prior_loss_weight: weight of the class-prior loss (1.0).
        num_class_images: class images generated (100).
        inference_steps: denoising steps of ``generate`` (50).
        guidance_scale: classifier-free guidance of ``generate`` (5.0).
    """

    identifier: str = "<new1>"
    instance_prompt: str = "photo of a <new1> person"
    class_prompt: str = "photo of a person"
    initializer_token: str = "ktn"
    rank: int = 32
    steps: int = 221
    learning_rate: float = 3e-4
    num_class_images: int = 100
    inference_steps: int = 50
    guidance_scale: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("rank", self.rank, 1, 1024)


class LoRATIModel(PipelinePersonalized):
    """Base pipeline + adapter + token; saved as ``pytorch_lora_weights.safetensors`` and
    ``learned_embeds.safetensors`` in one folder."""

    format: ClassVar[str] = "lora_ti"

    def _save_weights(self, directory: Path) -> None:
        save_lora(self.pipeline.unet, directory)
        save_embedding(self.pipeline, self.identifier, directory)

    @classmethod
    def _attach(cls, directory: Path, info: dict[str, Any], device: Any, dtype: Any) -> Any:
        pipeline = cls._base_pipeline(info, device, dtype)
        pipeline.load_textual_inversion(str(directory / EMBEDDING_WEIGHTS), token=info["identifier"])
        pipeline.load_lora_weights(str(directory), weight_name=LORA_WEIGHTS)
        return pipeline


class LoRATI(TrainedPersonalizer):
    """Train UNet attention adapters and a new token's embedding jointly with the DreamBooth loss.

    Args:
        model: base text-to-image model. rank, identifier, initializer_token and the training
            options: see `LoRATIConfig`.

    Shape:
        images: list of (3, H, W) in [0, 1], any sizes (resize + center crop to ``resolution``).

    Example:
        >>> model = LoRATI(model="stabilityai/stable-diffusion-2-1-base").fit(photos, output_dir="out/lora_ti")
        >>> pipe.load_textual_inversion("out/lora_ti/learned_embeds.safetensors", token="<new1>")
        >>> pipe.load_lora_weights("out/lora_ti")

    Differences from the reference code: adapters through peft; a multi-piece initializer starts from
    the mean of its pieces; the gradient norm is clipped over the adapters and the new row (RID zeroes
    the other rows' gradients too). See ``docs/methods/lora_ti.md``.
    """

    name: ClassVar[str] = "lora_ti"
    Config: ClassVar[type[LoRATIConfig]] = LoRATIConfig
    Model: ClassVar[type[PipelinePersonalized]] = LoRATIModel

    def _check_base(self, pipeline: Any) -> None:
        check_token(pipeline.tokenizer, self.config.identifier, self.config.initializer_token)

    def _trainables(self, pipeline: Any) -> Trainables:
        weight, restore = add_token(pipeline, self.config.identifier, self.config.initializer_token)
        adapters = add_lora(pipeline.unet, self.config.rank)
        return Trainables([*adapters, weight], [pipeline.unet, pipeline.text_encoder], train_text_encoder=True,
                          after_step=restore)
