"""Zero-shot identity attacks: an image encoder turns the reference photos into embeddings that an
adapter feeds to the diffusion model's cross-attention; nothing is trained.

They are personalizers whose `fit` only encodes (``trains = False``): ``facedefense attack
PHOTOS/ --personalizer ip_adapter`` and the benchmark's ``attacks:`` list run them like the
fine-tuning attacks. The saved model is the reference embeddings (``image_embeds.safetensors``,
what diffusers' ``ip_adapter_image_embeds`` takes) plus the adapter's name in
``facedefense_personalized.json``; loading it needs the base model and the adapter, not the encoder.

The base model is a Stable Diffusion 1.x/2.x folder or an SDXL one (`is_sdxl`: its
``model_index.json`` names an SDXL pipeline); the adapter must match its UNet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense.interfaces.personalizer import Personalizer, PersonalizerConfig, read_metadata
from facedefense_attacks.common import (
    DEFAULT_PROMPTS,
    check_denoising_steps,
    check_range,
    check_resolution,
    first_line,
    load_checked_pipeline,
)
from facedefense_attacks.personalized import PipelinePersonalized

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: File of the saved reference embeddings.
EMBEDS_NAME = "image_embeds.safetensors"
#: Pipeline kinds (`facedefense.diffusion.PIPELINE_KINDS`) of SD 1.x/2.x and SDXL base models.
SD_KIND, SDXL_KIND = "text2img", "sdxl_text2img"
#: IP-Adapter's negative prompt (``ip_adapter/ip_adapter.py``, ``IPAdapter.generate``).
REFERENCE_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"


def _local_file(repo: str, name: str, subfolder: str = "") -> Path | None:
    """``repo/subfolder/name`` when ``repo`` is a local folder, else the file in the Hugging Face
    cache; None when it is not on this machine."""
    folder = Path(repo).expanduser()
    if folder.is_dir():
        path = folder / subfolder / name if subfolder else folder / name
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, f"{subfolder}/{name}" if subfolder else name)
    except (ValueError, OSError):
        return None
    return Path(found) if isinstance(found, str) else None


def model_class(model: str) -> str | None:
    """The pipeline class ``model``'s ``model_index.json`` names (a local diffusers folder, or a hub
    id in the Hugging Face cache); None when it cannot be read."""
    index = _local_file(model, "model_index.json")
    try:
        return str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")) if index else None
    except (OSError, ValueError, AttributeError):
        return None


def is_sdxl(model: str) -> bool:
    """Whether ``model`` is an SDXL pipeline: its ``model_index.json`` names a
    ``StableDiffusionXL*`` class (`model_class`). Unknown: False."""
    return (model_class(model) or "").startswith("StableDiffusionXL")


def adapter_projection(
    adapter: str, subfolder: str, weight_name: str
) -> tuple[str, dict[str, tuple[int, ...]]] | None:
    """The projection diffusers' ``load_ip_adapter`` builds from the adapter file
    ``adapter/subfolder/weight_name`` (a local folder, or a hub id in the Hugging Face cache),
    read without loading the weights (a safetensors header; a ``.bin`` memory-mapped): the class
    name (diffusers' ``_convert_ip_adapter_image_proj_to_diffusers`` picks it from the
    ``image_proj`` keys) and the shapes of those weights. None when the file is not on this
    machine or cannot be read (loading it then says why)."""
    import pickle

    from safetensors import SafetensorError

    path = _local_file(adapter, weight_name, subfolder)
    if path is None:
        return None
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as file:
                shapes = {
                    key[len("image_proj."):]: tuple(file.get_slice(key).get_shape())
                    for key in file.keys() if key.startswith("image_proj.")
                }
        else:
            import torch

            state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
            shapes = {key: tuple(value.shape) for key, value in state["image_proj"].items()}
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError, pickle.UnpicklingError):
        return None
    if not shapes:  # not an IP-Adapter file: the load reports it
        return None
    if "proj.weight" in shapes:
        name = "ImageProjection"
    elif "proj.3.weight" in shapes:
        name = "IPAdapterFullImageProjection"
    elif "perceiver_resampler.proj_in.weight" in shapes:
        name = "IPAdapterFaceIDPlusImageProjection"
    elif "norm.weight" in shapes:
        name = "IPAdapterFaceIDImageProjection"
    else:
        name = "IPAdapterPlusImageProjection"
    return name, shapes


def pipeline_kind(model: str) -> str:
    """The pipeline kind a zero-shot attack loads ``model`` as (``SDXL_KIND`` or ``SD_KIND``)."""
    return SDXL_KIND if is_sdxl(model) else SD_KIND


@dataclass
class ZeroShotConfig(PersonalizerConfig):
    """Options of every zero-shot attack; defaults are IP-Adapter's ``IPAdapter.generate``.

    Attributes:
        instance_prompt: the prompt generated when none is given (``"a photo of person"``: the
            identity comes from the photos, no identifier word is needed).
        class_prompt: unused (nothing is trained; kept for the personalizer interface).
        resolution: side of the generated images in pixels (512).
        inference_steps: denoising steps of ``generate`` (30).
        guidance_scale: classifier-free guidance of ``generate`` (7.5).
        negative_prompt: the negative prompt of ``generate`` (IP-Adapter's; empty: none).
        scale: weight of the image tokens in every cross-attention layer (1.0; 0 turns them off:
            the base model, plus the LoRA an adapter such as FaceID brings).
    """

    instance_prompt: str = "a photo of person"
    resolution: int = 512
    inference_steps: int = 30
    guidance_scale: float = 7.5
    negative_prompt: str = REFERENCE_NEGATIVE_PROMPT
    scale: float = 1.0

    def __post_init__(self) -> None:
        if hasattr(super(), "__post_init__"):
            super().__post_init__()  # type: ignore[misc]
        check_resolution(self.resolution)
        check_range("inference_steps", self.inference_steps, 1, 1000)
        check_range("guidance_scale", self.guidance_scale, 0, 100)
        check_range("scale", self.scale, 0, 10)


class ZeroShotModel(PipelinePersonalized):
    """The base pipeline with an IP-Adapter loaded and the reference photos' embeddings.

    Args:
        pipeline: a Stable Diffusion or SDXL pipeline (InstantID: SDXL with its ControlNet) with
            ``load_ip_adapter`` done and the scale set.
        info: metadata (`PipelinePersonalized`), plus ``pipeline`` (the base model's pipeline kind),
            ``adapter``, ``subfolder``, ``weight_name`` and ``scale``, which `load` uses to load
            the adapter again.
        image_embeds: (1, N, ...) embeddings of the N reference photos (what one adapter's entry of
            ``ip_adapter_image_embeds`` holds without guidance); `load` sets them from the file.
        negative_image_embeds: the same shape: the unconditional embeddings of guidance.
        extra_embeds: further named tensors generation needs besides ``ip_adapter_image_embeds``
            (FaceID Plus: the face crops' CLIP hidden states, which `_prepare_projection` hands to
            the projection; InstantID: the keypoint image), saved and loaded with the embeddings.
    """

    format: ClassVar[str] = "ip_adapter"

    def __init__(
        self,
        pipeline: Any,
        info: dict[str, Any],
        image_embeds: Tensor | None = None,
        negative_image_embeds: Tensor | None = None,
        extra_embeds: dict[str, Tensor] | None = None,
    ) -> None:
        super().__init__(pipeline, info)
        self.image_embeds = None if image_embeds is None else image_embeds.detach().float().cpu()
        self.negative_image_embeds = (
            None if negative_image_embeds is None else negative_image_embeds.detach().float().cpu()
        )
        self.extra_embeds = {key: value.detach().float().cpu() for key, value in (extra_embeds or {}).items()}

    def _guided(self, guidance_scale: float) -> bool:
        """Whether the pipeline runs classifier-free guidance (and so takes negative embeddings)."""
        return guidance_scale > 1 and getattr(self.pipeline.unet.config, "time_cond_proj_dim", None) is None

    def generate(
        self,
        prompts: Sequence[str] | str,
        *,
        num_images: int = 1,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> Tensor:
        """`PipelinePersonalized.generate`, after `_prepare_projection` for the whole batch."""
        count = 1 if isinstance(prompts, str) else len(prompts)
        guidance = float(
            guidance_scale if guidance_scale is not None else self.info.get("guidance_scale", 7.5)
        )
        self._prepare_projection(count * max(num_images, 1), self._guided(guidance))
        return super().generate(
            prompts, num_images=num_images, generator=generator, steps=steps, guidance_scale=guidance_scale
        )

    def _prepare_projection(self, batch: int, guided: bool) -> None:
        """Set what the adapter's projection reads besides its input for ``batch`` generated images
        (nothing by default; FaceID Plus: its CLIP embeddings)."""

    def _pipeline_inputs(self, prompts: int, guidance_scale: float) -> dict[str, Any]:
        """``ip_adapter_image_embeds`` for ``prompts`` prompts: [(negative, positive)] stacked on
        the batch axis when guidance is on (diffusers splits it with ``chunk(2)``), and the
        negative prompt."""
        import torch

        unet = self.pipeline.unet
        guided = self._guided(guidance_scale)
        parts = [self.negative_image_embeds, self.image_embeds] if guided else [self.image_embeds]
        embeds = torch.cat([part.expand(prompts, *part.shape[1:]) for part in parts])
        negative = str(self.info.get("negative_prompt") or "")
        return {
            "ip_adapter_image_embeds": [embeds.to(self.pipeline.device, unet.dtype)],
            "negative_prompt": [negative] * prompts if negative and guided else None,
        }

    def _save_weights(self, directory: Path) -> None:
        from safetensors.torch import save_file

        save_file(
            {
                "image_embeds": self.image_embeds.contiguous(),
                "negative_image_embeds": self.negative_image_embeds.contiguous(),
                **{key: value.contiguous() for key, value in self.extra_embeds.items()},
            },
            str(directory / EMBEDS_NAME),
        )

    @classmethod
    def _attach(cls, directory: Path, info: dict[str, Any], device: Any, dtype: Any) -> Any:
        from facedefense.diffusion import load_pipeline

        pipeline = load_pipeline(
            str(info["base_model"]), str(info.get("pipeline", SD_KIND)), device=device, dtype=dtype
        )
        pipeline = cls._extend_pipeline(pipeline, info)
        pipeline.load_ip_adapter(
            str(info["adapter"]),
            subfolder=info.get("subfolder") or None,
            weight_name=str(info["weight_name"]),
            image_encoder_folder=None,
        )
        pipeline.set_ip_adapter_scale(float(info.get("scale", 1.0)))
        return pipeline

    @classmethod
    def _extend_pipeline(cls, pipeline: Any, info: dict[str, Any]) -> Any:
        """The pipeline the adapter goes into, built on the loaded base ``pipeline`` (itself by
        default; InstantID adds its ControlNet)."""
        return pipeline

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "auto", dtype: str = "auto") -> ZeroShotModel:
        """Rebuild the model saved in ``directory``: the base model and the adapter its metadata
        names, and the saved embeddings (the image encoder is not loaded)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        read_metadata(directory)
        try:
            tensors = load_file(str(directory / EMBEDS_NAME))
            embeds = (tensors.pop("image_embeds"), tensors.pop("negative_image_embeds"))
        except (OSError, KeyError, SafetensorError) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelNotFoundError(
                f"{directory}: the saved reference embeddings cannot be read ({reason})"
            ) from exc
        model: Any = super().load(directory, device=device, dtype=dtype)
        model.image_embeds, model.negative_image_embeds = (embed.float() for embed in embeds)
        model.extra_embeds = {key: value.float() for key, value in tensors.items()}
        return model


class ZeroShotPersonalizer(Personalizer):
    """Template of the zero-shot attacks: `prepare` loads the base model (SD or SDXL, `pipeline_kind`)
    and the adapter (checked, before anything is written); `fit` encodes the photos (``_encode``, the hook) and wraps the
    pipeline in ``Model``; the pipeline is kept for the next `fit` (encoding changes nothing in it).

    Attributes:
        progress: show progress bars (the CLI turns it on).
    """

    Config: ClassVar[type[ZeroShotConfig]] = ZeroShotConfig
    Model: ClassVar[type[ZeroShotModel]] = ZeroShotModel
    trains: ClassVar[bool] = False
    #: The attack takes only SDXL base models (InstantID, PhotoMaker).
    needs_sdxl: ClassVar[bool] = False
    progress: bool = False
    last_training: Any = None
    _prepared: Any = None
    _kind: str = SD_KIND

    def default_prompts(self) -> list[str]:
        """Anti-DreamBooth's five prompts without the identifier (``"a photo of person"``, ...)."""
        return [re.sub(r"\bsks ", "", prompt) for prompt in DEFAULT_PROMPTS]

    def prepare(self, *, instance_prompt: str | None = None, class_prompt: str | None = None) -> None:
        """Check the prompt, load the base model in the inference dtype and the adapter (`_load_adapter`)."""
        super().prepare(instance_prompt=instance_prompt, class_prompt=class_prompt)
        if self._prepared is not None:
            return
        from facedefense.progress import progress_enabled_as, status

        config, label = self.config, self.name or type(self).__name__
        self._kind = pipeline_kind(config.model)
        self._check_before_loading()
        with progress_enabled_as(self.progress):
            status(f"{label}: loading {config.model} ...")
        pipeline = load_checked_pipeline(
            config.model, self._kind, expected_channels=4, method=label, device=self.device, dtype=self.dtype
        )
        pipeline.set_progress_bar_config(disable=not self.progress, leave=False)
        check_denoising_steps(pipeline.scheduler, {"inference_steps": config.inference_steps}, label)
        self._check_sdxl()
        pipeline = self._extend_pipeline(pipeline)
        self._load_adapter(pipeline)
        self._prepared = pipeline

    def _check_before_loading(self) -> None:
        """Refuse, before the base model loads, what the options and the files' headers already
        show would be refused after it: a base model that is not SDXL for an attack that
        `needs_sdxl` (when its ``model_index.json`` is readable; else after loading); the
        subclasses add their adapter's checks."""
        if model_class(self.config.model) is not None:
            self._check_sdxl()

    def _check_sdxl(self) -> None:
        """Refuse a base model that is not SDXL when the attack `needs_sdxl`."""
        if self.needs_sdxl and self._kind != SDXL_KIND:
            raise ConfigError(f"{self.name} needs an SDXL base model; {self.config.model} is not one")

    def _extend_pipeline(self, pipeline: Any) -> Any:
        """The pipeline the adapter goes into, built on the base ``pipeline`` (itself by default;
        checked before anything is written)."""
        return pipeline

    def _load_adapter(self, pipeline: Any) -> None:
        """Load the adapter into ``pipeline`` and set its scale; refuse one this attack cannot use."""
        raise NotImplementedError

    def _load_ip_adapter(self, pipeline: Any, what: str, *, subfolder: str | None, image_encoder_folder: str | None) -> Any:
        """diffusers' ``load_ip_adapter`` of ``config.adapter`` / ``subfolder`` / ``config.weight_name``
        (``what`` names it in the one-line error a file that cannot be loaded gives); returns the
        projection layer it added, for the attack to check."""
        from safetensors import SafetensorError

        config = self.config
        try:
            pipeline.load_ip_adapter(config.adapter, subfolder=subfolder, weight_name=config.weight_name,
                                     image_encoder_folder=image_encoder_folder)
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            raise ModelNotFoundError(f"{self.name}: {what} {self._adapter_path()} cannot be loaded ({first_line(exc)})") from exc
        return pipeline.unet.encoder_hid_proj.image_projection_layers[0]

    def _adapter_path(self) -> str:
        """``adapter/subfolder/weight_name``, as the errors name the adapter file."""
        config = self.config
        return "/".join(part for part in (config.adapter, config.subfolder, config.weight_name) if part)

    def _encode(self, pipeline: Any, images: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The (1, N, ...) embeddings of the N photos, their unconditional counterpart, and the
        model's ``extra_embeds`` (usually none)."""
        raise NotImplementedError

    def _adapter_info(self) -> dict[str, Any]:
        """What `ZeroShotModel.load` needs to load the adapter again (recorded in the metadata)."""
        raise NotImplementedError

    def _fit(
        self,
        images: list[Tensor],
        *,
        instance_prompt: str,
        class_images: list[Tensor] | None,
        class_prompt: str,
        output_dir: Path | None,
        generator: torch.Generator,
    ) -> ZeroShotModel:
        import torch

        config = self.config
        if self._prepared is None:
            self.prepare(instance_prompt=instance_prompt)
        pipeline = self._prepared
        with torch.no_grad():
            positive, negative, extra = self._encode(pipeline, images)
        info = {
            "personalizer": self.name,
            "base_model": config.model,
            "pipeline": self._kind,
            "instance_prompt": instance_prompt,
            "resolution": config.resolution,
            "inference_steps": config.inference_steps,
            "guidance_scale": config.guidance_scale,
            "negative_prompt": config.negative_prompt,
            "references": len(images),
            **self._adapter_info(),
        }
        model = self.Model(pipeline, info, positive, negative, extra)
        if output_dir is not None:
            model.save(output_dir)
        return model
