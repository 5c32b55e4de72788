"""DreamBooth (Ruiz et al., "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for
Subject-Driven Generation", CVPR 2023, arXiv:2208.12242), with Anti-DreamBooth's evaluation protocol
(Van Le et al., ICCV 2023) as the default."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from facedefense_attacks.personalized import PipelinePersonalized
from facedefense_attacks.training import Trainables, TrainedPersonalizer, TrainingConfig


@dataclass
class DreamBoothConfig(TrainingConfig):
    """DreamBooth options; defaults are Anti-DreamBooth's ``scripts/train_dreambooth_alone.sh``.

    Attributes:
        steps: optimizer steps (1000).
        learning_rate: constant AdamW learning rate (5e-7).
        batch_size: instance images per step (2, plus 2 class images).
        resolution: training side in pixels (512; resize + center crop).
        prior_preservation: add the class-prior loss (on), on class images of ``"a photo of person"``.
        prior_loss_weight: weight of the class-prior loss (1.0).
        num_class_images: class images generated (200).
        train_text_encoder: also fine-tune the text encoder (on, as Anti-DreamBooth does).
        inference_steps: denoising steps of ``generate`` (100, Anti-DreamBooth's ``infer.py``).
        guidance_scale: classifier-free guidance of ``generate`` (7.5, Anti-DreamBooth's ``infer.py``).
    """

    steps: int = 1000
    learning_rate: float = 5e-7
    batch_size: int = 2
    train_text_encoder: bool = True


class DreamBoothModel(PipelinePersonalized):
    """A fully fine-tuned pipeline, saved as a diffusers folder (``from_pretrained`` loads it)."""

    format: ClassVar[str] = "pipeline"


class DreamBooth(TrainedPersonalizer):
    """Fine-tune the whole UNet (and the text encoder) on a few photos of one person.

    Minimizes ``E ||eps - eps_theta(z_t, t, c_inst)||^2 + w * E ||eps - eps_theta(z'_t, t, c_class)||^2``
    where z are latents of the photos, z' latents of images the base model generated for the class
    prompt (prior preservation, so the model does not forget what a "person" looks like).

    Args:
        model: base text-to-image model (diffusers folder or hub id).
        instance_prompt: default ``"a photo of sks person"``; must contain ``identifier``.
        class_prompt: default ``"a photo of person"``.
        steps, learning_rate, batch_size, resolution, prior_preservation, num_class_images,
        train_text_encoder, mixed_precision, gradient_checkpointing, optimizer: see
        `DreamBoothConfig` and `TrainingConfig`.

    Shape:
        images: a list of (3, H, W) tensors in [0, 1] of any sizes (resized and center-cropped to
        ``resolution``). Generated images: (P * K, 3, resolution, resolution).

    Example:
        >>> db = DreamBooth(model="stabilityai/stable-diffusion-2-1-base")
        >>> model = db.fit(photos, output_dir="out/dreambooth")
        >>> images = model.generate(["a dslr portrait of sks person"], num_images=16)

    Differences from the reference code: latents are sampled each step from the VAE posterior cached
    once (the reference re-encodes every image every step: same distribution, less work); class
    images are cached across runs; AdamW betas/eps are torch's defaults (the reference's too).
    """

    name: ClassVar[str] = "dreambooth"
    Config: ClassVar[type[DreamBoothConfig]] = DreamBoothConfig
    Model: ClassVar[type[PipelinePersonalized]] = DreamBoothModel

    def _trainables(self, pipeline: Any) -> Trainables:
        pipeline.unet.requires_grad_(True)
        parameters = list(pipeline.unet.parameters())
        modules = [pipeline.unet]
        if self.config.train_text_encoder:
            pipeline.text_encoder.requires_grad_(True)
            parameters += list(pipeline.text_encoder.parameters())
            modules.append(pipeline.text_encoder)
        return Trainables(parameters, modules, train_text_encoder=self.config.train_text_encoder)
