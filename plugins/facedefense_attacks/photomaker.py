"""PhotoMaker v1 (Li et al., "PhotoMaker: Customizing Realistic Human Photos via Stacked ID
Embedding", CVPR 2024; code: TencentARC/PhotoMaker): SDXL whose prompt carries the identity.

The ID encoder (CLIP ViT-L/14 vision tower, its 768-D ``visual_projection`` and a 1280-D
``visual_projection_2``) embeds each reference photo as one 2048-D vector. In the prompt the trigger
word (``img``) follows a class word ("a photo of a man img"): the trigger is removed, the class
word's token is repeated once per reference photo, and each copy's embedding (both SDXL text
encoders' penultimate hidden states, concatenated: 2048-D) is replaced by the FuseModule's
fusion of it with one photo's ID embedding (the *stacked ID embedding*). Denoising uses the
text-only prompt (trigger removed, class word once) up to ``start_merge_step`` and the stacked
prompt after it; the UNet carries the LoRA of the adapter file. Written on diffusers'
``StableDiffusionXLPipeline`` (``callback_on_step_end`` switches the embeddings) and transformers'
``CLIPVisionModelWithProjection``; the adapter file holds ``id_encoder`` and ``lora_weights``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense_attacks.common import check_not_empty, check_range, first_line
from facedefense_attacks.zero_shot import (
    SDXL_KIND,
    ZeroShotConfig,
    ZeroShotModel,
    ZeroShotPersonalizer,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: The negative prompt of PhotoMaker's README (v1 "Use like diffusers" example).
NEGATIVE_PROMPT = (
    "(asymmetry, worst quality, low quality, illustration, 3d, 2d, painting, cartoons, sketch), "
    "open mouth, grayscale"
)
#: ``gradio_demo/app.py`` caps the text-only steps at 30.
MAX_MERGE_STEP = 30
#: Key prefixes of the adapter file (``load_photomaker_adapter``).
ENCODER_PREFIX, LORA_PREFIX = "id_encoder", "lora_weights"
#: The LoRA adapter's name in the pipeline (the reference's).
LORA_NAME = "photomaker"
#: Key prefix of the FuseModule in the ID encoder's state dict.
FUSE_PREFIX = "fuse_module."


def split_trigger(prompt: str, trigger: str) -> tuple[str, str]:
    """``(text_only, prefix)``: ``prompt`` without its one trigger word, and the text before it
    (which ends with the class word). Raises `ConfigError` (one line) for a prompt with no
    trigger word, several, or none before it."""
    found = list(re.finditer(rf"(?<!\w){re.escape(trigger)}(?!\w)", prompt))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise ConfigError(
            f"photomaker: prompt {prompt!r} has {what} trigger word '{trigger}'; put exactly one after "
            f"the class word, e.g. 'a photo of a man {trigger}'"
        )
    prefix = prompt[: found[0].start()].rstrip()
    if not re.search(r"\w", prefix):
        raise ConfigError(
            f"photomaker: prompt {prompt!r} has no class word before the trigger word '{trigger}'"
        )
    text_only = re.sub(r"\s+", " ", prefix + " " + prompt[found[0].end() :]).strip()
    return text_only, prefix


def start_merge_step(steps: int, style_strength: float) -> int:
    """The last text-only step: ``int(style_strength / 100 * steps)``, at most 30 (``app.py``)."""
    return min(int(float(style_strength) / 100 * steps), MAX_MERGE_STEP)


def fuse(weights: dict[str, Tensor], prompt_embeds: Tensor, id_embeds: Tensor) -> Tensor:
    """PhotoMaker's FuseModule on (M, D) class-token embeddings and (M, D) ID embeddings:
    ``mlp1([prompt, id]) + prompt``, then the residual ``mlp2`` and a LayerNorm; each MLP is
    LayerNorm -> Linear -> GELU -> Linear. ``weights`` are the module's (``mlp1.fc1.weight``, ...)."""
    import torch
    from torch.nn import functional as F

    def norm(x: Tensor, name: str) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], weights[f"{name}.weight"], weights[f"{name}.bias"])

    def mlp(x: Tensor, name: str) -> Tensor:
        hidden = F.linear(
            norm(x, f"{name}.layernorm"), weights[f"{name}.fc1.weight"], weights[f"{name}.fc1.bias"]
        )
        return F.linear(F.gelu(hidden), weights[f"{name}.fc2.weight"], weights[f"{name}.fc2.bias"])

    id_embeds = id_embeds.to(prompt_embeds.dtype)
    stacked = mlp(torch.cat([prompt_embeds, id_embeds], dim=-1), "mlp1") + prompt_embeds
    stacked = mlp(stacked, "mlp2") + stacked
    return norm(stacked, "layer_norm")


def read_adapter(adapter: str, subfolder: str, weight_name: str, label: str) -> tuple[dict, dict]:
    """The ``(id_encoder, lora_weights)`` state dicts of a PhotoMaker file: a ``.bin`` holding both
    dicts (read with ``torch.load(weights_only=True)``) or a ``.safetensors`` with the two key
    prefixes. A hub id is read from the cache or downloaded as diffusers downloads adapters."""
    import pickle

    import torch
    from diffusers.utils import _get_model_file
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = "/".join(part for part in (adapter, subfolder, weight_name) if part)
    try:
        path = _get_model_file(adapter, weights_name=weight_name, subfolder=subfolder or None)
        if weight_name.endswith(".safetensors"):
            flat = load_file(path)
            state: dict[str, dict] = {ENCODER_PREFIX: {}, LORA_PREFIX: {}}
            for key, value in flat.items():
                head, _, rest = key.partition(".")
                if head in state:
                    state[head][rest] = value
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError) as exc:
        raise ModelNotFoundError(
            f"{label}: the adapter {where} cannot be loaded ({first_line(exc)})"
        ) from exc
    if not isinstance(state, dict) or not all(state.get(key) for key in (ENCODER_PREFIX, LORA_PREFIX)):
        raise ConfigError(
            f"{label}: {where} is not a PhotoMaker adapter (it needs id_encoder and lora_weights)"
        )
    encoder = state[ENCODER_PREFIX]
    if f"{FUSE_PREFIX}mlp1.fc1.weight" not in encoder or any(key.startswith("qformer") for key in encoder):
        raise ConfigError(f"{label}: {where} is not a PhotoMaker v1 ID encoder (v2 is not supported)")
    return encoder, state[LORA_PREFIX]


def load_lora(pipeline: Any, lora: dict, scale: float, label: str) -> None:
    """The adapter's LoRA into ``pipeline`` as ``photomaker``, weighted ``scale``."""
    try:
        pipeline.load_lora_weights(dict(lora), adapter_name=LORA_NAME)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(
            f"{label}: the adapter's LoRA does not fit the base model ({first_line(exc)})"
        ) from exc
    pipeline.set_adapters([LORA_NAME], adapter_weights=[scale])


def fuse_weights(encoder: dict, device: Any, dtype: Any) -> dict[str, Tensor]:
    """The FuseModule's tensors of an ID encoder state dict, without the prefix."""
    return {
        k[len(FUSE_PREFIX) :]: v.to(device, dtype) for k, v in encoder.items() if k.startswith(FUSE_PREFIX)
    }


def id_encoder(encoder: dict, label: str) -> tuple[Any, Tensor]:
    """``CLIPVisionModelWithProjection`` and the ``visual_projection_2`` weight of an ID encoder
    state dict. The vision config is read from the shapes (ViT-L/14 at 224 px for the released
    file; heads of width 64, as every CLIP ViT)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    try:
        patch = encoder["vision_model.embeddings.patch_embedding.weight"]
        width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
        positions = int(encoder["vision_model.embeddings.position_embedding.weight"].shape[0])
        layers = 1 + max(
            int(key.split(".")[3]) for key in encoder if key.startswith("vision_model.encoder.layers.")
        )
        config = CLIPVisionConfig(
            hidden_size=width,
            intermediate_size=int(encoder["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
            num_hidden_layers=layers,
            num_attention_heads=max(width // 64, 1),
            patch_size=patch_size,
            image_size=round((positions - 1) ** 0.5) * patch_size,
            projection_dim=int(encoder["visual_projection.weight"].shape[0]),
        )
        model = CLIPVisionModelWithProjection(config).eval()
        tower = {k: v for k, v in encoder.items() if not k.startswith((FUSE_PREFIX, "visual_projection_2"))}
        model.load_state_dict(tower, strict=False)
        missing = set(model.state_dict()) - set(tower) - {"vision_model.embeddings.position_ids"}
        if missing:
            raise KeyError(f"missing {sorted(missing)[0]}")
        return model, encoder["visual_projection_2.weight"]
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{label}: the adapter's ID encoder cannot be built ({first_line(exc)})") from exc


@dataclass
class PhotoMakerConfig(ZeroShotConfig):
    """PhotoMaker v1 options; generation defaults are the reference's demo and README.

    Attributes:
        instance_prompt: the prompt when none is given (``"a photo of person img"``: class word
            ``person``, then the trigger word).
        resolution: side of the generated images in pixels (1024, SDXL's).
        inference_steps: denoising steps (50, ``gradio_demo/app.py``).
        guidance_scale: classifier-free guidance (5.0, the pipeline's and the demo's).
        negative_prompt: the README's negative prompt.
        scale: weight of the adapter's LoRA in the UNet (1.0: the README fuses it at full weight).
        style_strength: percentage of the steps that see the text-only prompt (20, ``app.py``'s
            "Style strength"): the stacked prompt starts after step ``int(strength / 100 * steps)``,
            at most step 30.
        trigger_word: the word after the class word that marks it (``img``).
        adapter, subfolder, weight_name: the adapter file (``TencentARC/PhotoMaker``,
            ``photomaker-v1.bin``).
    """

    instance_prompt: str = "a photo of person img"
    resolution: int = 1024
    inference_steps: int = 50
    guidance_scale: float = 5.0
    negative_prompt: str = NEGATIVE_PROMPT
    scale: float = 1.0
    style_strength: float = 20.0
    trigger_word: str = "img"
    adapter: str = "TencentARC/PhotoMaker"
    subfolder: str = ""
    weight_name: str = "photomaker-v1.bin"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_not_empty(self, "adapter", "weight_name", "trigger_word")
        if not re.fullmatch(r"\w+", self.trigger_word):
            raise ConfigError(f"option 'trigger_word' must be one word, not {self.trigger_word!r}")
        check_range("style_strength", self.style_strength, 0, 100)
        split_trigger(self.instance_prompt, self.trigger_word)


class PhotoMakerModel(ZeroShotModel):
    """SDXL with PhotoMaker's LoRA and FuseModule, and the reference photos' ID embeddings.

    ``image_embeds`` are (1, N, 2048): the N photos' ``[visual_projection, visual_projection_2]``
    embeddings; ``negative_image_embeds`` are zeros (unused: the negative prompt has no class
    word). The FuseModule's weights are on the pipeline (``photomaker_fuse``); `load` reads them and
    the LoRA from the adapter file again.
    """

    @classmethod
    def _attach(cls, directory: Path, info: dict[str, Any], device: Any, dtype: Any) -> Any:
        from facedefense.diffusion import load_pipeline

        pipeline = load_pipeline(str(info["base_model"]), SDXL_KIND, device=device, dtype=dtype)
        encoder, lora = read_adapter(
            str(info["adapter"]), str(info.get("subfolder") or ""), str(info["weight_name"]), "photomaker"
        )
        load_lora(pipeline, lora, float(info.get("scale", 1.0)), "photomaker")
        pipeline.photomaker_fuse = fuse_weights(encoder, pipeline.device, pipeline.unet.dtype)
        return pipeline

    def prompt_embeds(self, prompt: str) -> tuple[Tensor, Tensor, Tensor]:
        """The stacked prompt of ``prompt``: (1, 77, 2048) embeddings with the class token repeated
        N times and fused with the N ID embeddings, the (1, 1280) pooled embedding of the last
        encoder on those tokens, and the (77,) mask of the fused positions."""
        import torch

        pipeline, count = self.pipeline, int(self.image_embeds.shape[1])
        text_only, prefix = split_trigger(prompt, str(self.info.get("trigger_word", "img")))
        hidden, pooled, index = [], None, 0
        for tokenizer, encoder in (
            (pipeline.tokenizer, pipeline.text_encoder),
            (pipeline.tokenizer_2, pipeline.text_encoder_2),
        ):
            length = tokenizer.model_max_length
            ids = tokenizer(text_only, padding="max_length", max_length=length, truncation=True).input_ids
            index = len(tokenizer(prefix, add_special_tokens=False).input_ids)  # after the start token
            if index + count > length - 1:
                raise ConfigError(f"photomaker: prompt {prompt!r} is too long: its class word is cut off")
            ids = (ids[:index] + [ids[index]] * count + ids[index + 1 :])[:length]
            with torch.no_grad():
                output = encoder(torch.tensor([ids], device=pipeline.device), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled = output[0]
        embeds = torch.cat(hidden, dim=-1)
        mask = torch.zeros(embeds.shape[1], dtype=torch.bool, device=embeds.device)
        mask[index : index + count] = True
        weights = pipeline.photomaker_fuse
        ids_embeds = self.image_embeds[0].to(embeds.device, embeds.dtype)
        with torch.no_grad():
            embeds[0, mask] = fuse(weights, embeds[0, mask], ids_embeds).to(embeds.dtype)
        return embeds, pooled, mask

    def generate(
        self,
        prompts: Sequence[str] | str,
        *,
        num_images: int = 1,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> Tensor:
        """`PipelinePersonalized.generate` with PhotoMaker's prompts: each prompt needs the trigger
        word after its class word; steps up to ``start_merge_step`` see the text-only prompt, the
        later ones the stacked prompt (`prompt_embeds`)."""
        import torch

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        trigger = str(self.info.get("trigger_word", "img"))
        for prompt in prompts:
            split_trigger(prompt, trigger)
        if not prompts or num_images < 1:
            raise ConfigError("generate needs at least one prompt and num_images >= 1")
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        pipeline, size = self.pipeline, int(self.info.get("resolution", 1024))
        guidance = float(
            guidance_scale if guidance_scale is not None else self.info.get("guidance_scale", 5.0)
        )
        steps = steps or int(self.info.get("inference_steps", 50))
        merge = start_merge_step(steps, float(self.info.get("style_strength", 20.0)))
        negative = str(self.info.get("negative_prompt") or "") or None
        guided = self._guided(guidance)
        with torch.no_grad():
            text = [
                pipeline.encode_prompt(
                    split_trigger(prompt, trigger)[0],
                    device=pipeline.device,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=guided,
                    negative_prompt=negative,
                )
                for prompt in prompts
            ]
            stacked = [self.prompt_embeds(prompt)[:2] for prompt in prompts]
            fused = torch.cat([embeds for embeds, _ in stacked]).repeat_interleave(num_images, dim=0)
            fused_pooled = torch.cat([pooled for _, pooled in stacked]).repeat_interleave(num_images, dim=0)

            def switch(pipe: Any, step: int, timestep: Any, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
                if step != merge:
                    return {}
                embeds, pooled = tensors["prompt_embeds"], tensors["add_text_embeds"]
                half = embeds.shape[0] - fused.shape[0]  # the unconditional half when guided
                return {
                    "prompt_embeds": torch.cat([embeds[:half], fused.to(embeds.dtype)]),
                    "add_text_embeds": torch.cat([pooled[:half], fused_pooled.to(pooled.dtype)]),
                }

            images = pipeline(
                prompt_embeds=torch.cat([part[0] for part in text]),
                negative_prompt_embeds=torch.cat([part[1] for part in text]) if guided else None,
                pooled_prompt_embeds=torch.cat([part[2] for part in text]),
                negative_pooled_prompt_embeds=torch.cat([part[3] for part in text]) if guided else None,
                num_images_per_prompt=num_images,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=size,
                width=size,
                generator=generator,
                output_type="pt",
                callback_on_step_end=switch,
                callback_on_step_end_tensor_inputs=["prompt_embeds", "add_text_embeds"],
            ).images
        return images.float().cpu().clamp(0, 1)


class PhotoMaker(ZeroShotPersonalizer):
    """Zero-shot identity transfer with PhotoMaker v1 on SDXL: the photos' ID embeddings are stacked
    into the prompt's class word; nothing is trained.

    Args:
        model: base SDXL model. adapter, subfolder, weight_name: the adapter file; scale: its LoRA
            weight; style_strength, trigger_word: see `PhotoMakerConfig`. Generation options: see
            `ZeroShotConfig`.

    Shape:
        images: list of N (3, H, W) photos in [0, 1], any sizes; each is prepared as the reference's
            ``CLIPImageProcessor`` (shorter side resized to the encoder's 224 px, bicubic, center
            crop, CLIP's mean and std) from its 8-bit form. The model keeps (1, N, 2048) ID
            embeddings; every prompt needs one trigger word after its class word.

    Example:
        >>> model = PhotoMaker(model="stabilityai/stable-diffusion-xl-base-1.0").fit(photos)
        >>> images = model.generate(["a photo of a man img as a knight"], num_images=4)

    See ``docs/methods/photomaker.md`` (defaults, licence, GPU memory).
    """

    name: ClassVar[str] = "photomaker"
    needs_sdxl: ClassVar[bool] = True
    Config: ClassVar[type[PhotoMakerConfig]] = PhotoMakerConfig
    Model: ClassVar[type[ZeroShotModel]] = PhotoMakerModel
    _encoder: Any = None
    _projection_2: Any = None

    def default_prompts(self) -> list[str]:
        """The zero-shot prompts with the trigger word after ``person``."""
        return [
            prompt.replace("person", f"person {self.config.trigger_word}", 1)
            for prompt in super().default_prompts()
        ]

    def prepare(self, *, instance_prompt: str | None = None, class_prompt: str | None = None) -> None:
        """Refuse an instance prompt without the trigger word, then load (`ZeroShotPersonalizer.prepare`)."""
        split_trigger(instance_prompt or self.config.instance_prompt, self.config.trigger_word)
        super().prepare(instance_prompt=instance_prompt, class_prompt=class_prompt)

    def _load_adapter(self, pipeline: Any) -> None:
        config = self.config
        encoder, lora = read_adapter(config.adapter, config.subfolder, config.weight_name, self.name)
        model, projection_2 = id_encoder(encoder, self.name)
        fusion = fuse_weights(encoder, pipeline.device, pipeline.unet.dtype)
        width = int(pipeline.text_encoder.config.hidden_size + pipeline.text_encoder_2.config.hidden_size)
        if fusion["mlp2.fc1.weight"].shape[1] != width:
            raise ConfigError(
                f"{self.name}: the adapter fuses {fusion['mlp2.fc1.weight'].shape[1]}-D embeddings, "
                f"the base model's prompt embeddings are {width}-D"
            )
        load_lora(pipeline, lora, config.scale, self.name)
        pipeline.photomaker_fuse = fusion
        self._encoder = model.to(pipeline.device, pipeline.unet.dtype)
        self._projection_2 = projection_2.to(pipeline.device, pipeline.unet.dtype)

    def _encode(self, pipeline: Any, images: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The (1, N, 2048) ID embeddings: the vision tower's pooled output through both projections."""
        import torch
        from PIL import Image
        from torch.nn import functional as F
        from transformers import CLIPImageProcessor

        from facedefense.io import to_uint8

        size = int(self._encoder.config.image_size)
        processor = CLIPImageProcessor(size=size, crop_size=size)
        photos = [Image.fromarray(to_uint8(image)) for image in images]
        pixels = processor(images=photos, return_tensors="pt").pixel_values
        pixels = pixels.to(pipeline.device, self._projection_2.dtype)
        pooled = self._encoder.vision_model(pixel_values=pixels).pooler_output
        embeds = torch.cat(
            [self._encoder.visual_projection(pooled), F.linear(pooled, self._projection_2)], dim=-1
        )
        positive = embeds[None].float().cpu()
        return positive, torch.zeros_like(positive), {}

    def _adapter_info(self) -> dict[str, Any]:
        config = self.config
        return {
            "adapter": config.adapter,
            "subfolder": config.subfolder,
            "weight_name": config.weight_name,
            "scale": config.scale,
            "style_strength": config.style_strength,
            "trigger_word": config.trigger_word,
        }
