"""Textual inversion (Gal et al., "An Image is Worth One Word: Personalizing Text-to-Image
Generation using Textual Inversion", ICLR 2023, arXiv:2208.01618); defaults from RID's evaluation
(``train_sd_token.py`` with ``config/sd_token.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from facedefense.errors import ConfigError
from facedefense_attacks.personalized import PipelinePersonalized
from facedefense_attacks.training import Trainables, TrainedPersonalizer, TrainingConfig

#: File name of the learned embedding (diffusers' ``textual_inversion.py`` writes the same).
EMBEDDING_WEIGHTS = "learned_embeds.safetensors"


@dataclass
class TextualInversionConfig(TrainingConfig):
    """Textual-inversion options; defaults from RID's ``config/sd_token.py``.

    Attributes:
        identifier: the new token, ``"<new1>"`` (RID's); the instance prompt must contain it.
        instance_prompt: training prompt (``"photo of a <new1> person"``, RID's).
        class_prompt: prompt of the class images (``"photo of a person"``, RID's).
        initializer_token: the word whose embedding starts the new token (``"ktn"``, RID's; a word
            that the tokenizer splits starts from the mean of its pieces).
        steps: optimizer steps (1000).
        learning_rate: constant AdamW learning rate (5e-5, weight decay 1e-2).
        batch_size: instance images per step (1).
        prior_preservation: add the class-prior loss (on, RID's).
        prior_loss_weight: weight of the class-prior loss (1.0).
        num_class_images: class images generated (100, RID's).
        max_grad_norm: 1.0, the norm of the new row's gradient (RID zeroes the other rows'
            gradients before clipping; diffusers' ``textual_inversion.py`` does not clip).
        inference_steps: denoising steps of ``generate`` (50, RID's sampling of its tuned models).
        guidance_scale: classifier-free guidance of ``generate`` (5.0, RID's).
    """

    identifier: str = "<new1>"
    instance_prompt: str = "photo of a <new1> person"
    class_prompt: str = "photo of a person"
    initializer_token: str = "ktn"
    steps: int = 1000
    learning_rate: float = 5e-5
    num_class_images: int = 100
    inference_steps: int = 50
    guidance_scale: float = 5.0


def check_token(tokenizer: Any, token: str, initializer: str) -> None:
    """The new token must not be a word the tokenizer knows, and the initializer must give tokens.

    Raises:
        ConfigError: either is not so.
    """
    if token in tokenizer.get_vocab():
        raise ConfigError(f"the identifier {token!r} is already in the tokenizer; choose a new token such as '<new1>'")
    if not tokenizer.encode(initializer, add_special_tokens=False):
        raise ConfigError(f"initializer_token {initializer!r} gives no token")


def add_token(pipeline: Any, token: str, initializer: str) -> tuple[Any, Any]:
    """Add ``token`` to the tokenizer, give it the initializer's embedding, and make only its row
    trainable: the gradient of every other row is zeroed as it is computed (so gradient clipping
    sees the new row's gradient only, as in RID's ``train_sd_token.py``).

    Returns:
        ``(weight, restore)``: the embedding matrix to optimize and a function that puts every other
        row back after an optimizer step (AdamW's weight decay would otherwise shrink them).

    Raises:
        ConfigError: the token is already a word of the tokenizer, or the initializer is empty.
    """
    import torch

    tokenizer, encoder = pipeline.tokenizer, pipeline.text_encoder
    check_token(tokenizer, token, initializer)
    pieces = tokenizer.encode(initializer, add_special_tokens=False)
    tokenizer.add_tokens([token])
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = encoder.get_input_embeddings().weight
    new_id = tokenizer.convert_tokens_to_ids(token)
    with torch.no_grad():
        weight[new_id] = weight[pieces].mean(0)
    frozen = weight.detach().clone()
    keep = torch.ones(weight.shape[0], 1, dtype=torch.bool, device=weight.device)
    keep[new_id] = False
    weight.requires_grad_(True)
    weight.register_hook(lambda grad: grad.masked_fill(keep.to(grad.device), 0))

    def restore() -> None:
        rows = keep[:, 0]
        weight[rows.to(weight.device)] = frozen[rows].to(weight.device, weight.dtype)

    return weight, restore


def token_embedding(pipeline: Any, token: str) -> Any:
    """The (1, D) learned embedding of ``token``."""
    weight = pipeline.text_encoder.get_input_embeddings().weight
    return weight[pipeline.tokenizer.convert_tokens_to_ids(token)].detach().float().cpu()[None].clone()


def save_embedding(pipeline: Any, token: str, directory: Path) -> Path:
    """Write ``{token: (1, D) embedding}`` as safetensors (``pipe.load_textual_inversion`` reads it)."""
    from safetensors.torch import save_file

    path = directory / EMBEDDING_WEIGHTS
    save_file({token: token_embedding(pipeline, token)}, str(path))
    return path


class TextualInversionModel(PipelinePersonalized):
    """The base pipeline with one new token; saved as ``learned_embeds.safetensors``, which
    ``pipe.load_textual_inversion(path, token=...)`` accepts."""

    format: ClassVar[str] = "textual_inversion"

    def _save_weights(self, directory: Path) -> None:
        save_embedding(self.pipeline, self.identifier, directory)

    @classmethod
    def _attach(cls, directory: Path, info: dict[str, Any], device: Any, dtype: Any) -> Any:
        pipeline = cls._base_pipeline(info, device, dtype)
        pipeline.load_textual_inversion(str(directory / EMBEDDING_WEIGHTS), token=info["identifier"])
        return pipeline


class TextualInversion(TrainedPersonalizer):
    """Learn the embedding of one new token so that ``"a photo of <new1> person"`` renders the person;
    the UNet, the text encoder and every other embedding stay frozen.

    Args:
        model: base text-to-image model. identifier: the new token (``"<new1>"``).
        initializer_token: the word it starts from (``"ktn"``). Other options: see
            `TextualInversionConfig`.

    Shape:
        images: list of (3, H, W) in [0, 1], any sizes (resize + center crop to ``resolution``).

    Example:
        >>> model = TextualInversion(model="stabilityai/stable-diffusion-2-1-base").fit(photos, output_dir="out/ti")
        >>> pipe.load_textual_inversion("out/ti/learned_embeds.safetensors", token="<new1>")

    Differences from the reference code: the other rows' gradients are zeroed (RID) and the rows are
    also put back after each step (diffusers' ``textual_inversion.py``), so weight decay cannot
    shrink them; a multi-piece initializer starts from the mean of its pieces (the reference
    requires a single token). VAE latents are cached; the text encoder runs every step because its
    input embedding is trained. See ``docs/methods/textual_inversion.md``.
    """

    name: ClassVar[str] = "textual_inversion"
    Config: ClassVar[type[TextualInversionConfig]] = TextualInversionConfig
    Model: ClassVar[type[PipelinePersonalized]] = TextualInversionModel

    def _check_base(self, pipeline: Any) -> None:
        check_token(pipeline.tokenizer, self.config.identifier, self.config.initializer_token)

    def _trainables(self, pipeline: Any) -> Trainables:
        weight, restore = add_token(pipeline, self.config.identifier, self.config.initializer_token)
        return Trainables([weight], [pipeline.text_encoder], train_text_encoder=True, after_step=restore)
