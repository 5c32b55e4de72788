"""Load Stable Diffusion components and pipelines from a local folder or a Hugging Face id.

Everything goes through ``from_pretrained``, so a tiny test model and Stable Diffusion take the same
path. A model that cannot be found or read (offline, not cached, wrong folder, damaged weights)
raises one [`ModelNotFoundError`][facedefense.errors.ModelNotFoundError] line saying how to get it. Local folders
and the Hugging Face cache are tried first; the hub only when it answers. No ``trust_remote_code``,
ever; diffusers and transformers prefer safetensors and read legacy ``.bin`` files with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense._compat.torchvision_ops import ensure_torchvision_importable
from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense.runtime import module_device

if TYPE_CHECKING:
    import torch

#: Pipeline kind -> diffusers class name.
PIPELINE_KINDS = {
    "text2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "instruct_pix2pix": "StableDiffusionInstructPix2PixPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "upscale_x4": "StableDiffusionUpscalePipeline",
    "sdxl_text2img": "StableDiffusionXLPipeline",
}
#: Component name -> (module, class) loaded from the model's subfolder of the same name. The
#: scheduler is always the DDPM training-noise scheduler built from the model's betas.
COMPONENTS = {
    "vae": ("diffusers", "AutoencoderKL"),
    "unet": ("diffusers", "UNet2DConditionModel"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "scheduler": ("diffusers", "DDPMScheduler"),
}
_FOLDER_HINT = "a diffusers folder has model_index.json and vae/, unet/, text_encoder/, tokenizer/, scheduler/"


@dataclass
class SDComponents:
    """Frozen Stable Diffusion parts (None where not requested).

    Attributes:
        model: the folder or id they came from.
        vae, unet, text_encoder: eval mode, ``requires_grad`` off, on ``device`` in ``dtype``.
        tokenizer: the ``CLIPTokenizer``.
        scheduler: the training-noise scheduler (``DDPMScheduler`` with the model's betas and
            ``prediction_type``).
        device, dtype: where and in which precision the networks live.
    """

    model: str
    vae: Any = None
    unet: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    scheduler: Any = None
    device: Any = None
    dtype: Any = None

    @property
    def scaling_factor(self) -> float:
        """Latent scaling factor of the VAE (0.18215 for SD 1.x/2.x).

        Raises:
            ConfigError: the VAE was not loaded.
        """
        if self.vae is None:
            raise ConfigError("scaling_factor needs the VAE: load it with components=(..., 'vae')")
        return float(self.vae.config.scaling_factor)


def _prepare_imports() -> None:
    """Make torchvision importable and silence the per-file loading bars of diffusers/transformers."""
    ensure_torchvision_importable()
    import diffusers
    import transformers

    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
    warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a refused pickle is reported in one line
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (fails fast instead of retrying)."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _in_hub_cache(model: str) -> bool:
    """Whether the Hugging Face cache holds any snapshot of ``model`` (a pipeline or a single model)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model_index.json", "config.json"):
        try:
            if isinstance(try_to_load_from_cache(model, filename), str):
                return True
        except (ValueError, OSError):  # not a valid repo id
            return False
    return False


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _load_errors() -> tuple[type[BaseException], ...]:
    """What a damaged, missing or refused checkpoint raises inside ``from_pretrained`` (a legacy
    pickle that ``torch.load(weights_only=True)`` refuses raises ``UnpicklingError``)."""
    import pickle

    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, KeyError, SafetensorError, pickle.UnpicklingError)


#: Suffixes of legacy pickled weights (read with ``torch.load(weights_only=True)``).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _refused_pickle(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is ``torch.load(weights_only=True)`` refusing a pickle."""
    import pickle

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, pickle.UnpicklingError) or "weights only load failed" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _cannot_read(model: str, what: str, exc: BaseException, folder: Path | None) -> str:
    """One line saying why ``what`` of ``model`` cannot be read; a refused pickle names its file(s)."""
    if not _refused_pickle(exc):
        return f"model '{model}': {what} cannot be read ({_first_line(exc)})"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES) if folder else []
    named = ", ".join(str(p) for p in files[:3]) + (", ..." if len(files) > 3 else "") if files else "its legacy weights file"
    return (
        f"model '{model}': {what} cannot be read: {named} is not a plain weights file (torch.load with "
        "weights_only=True refused it; loading it could run code); use safetensors weights"
    )


def _local_folder(model: str) -> Path | None:
    """The local folder ``model`` names, None for a hub id; errors for a missing path or a file."""
    local = Path(model).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise ModelNotFoundError(f"model '{model}' is a file, not a diffusers folder; {_FOLDER_HINT}")
    if model.startswith((".", "/", "~", "\\")) or (len(model) > 1 and model[1] == ":") or model.count("/") > 1:
        raise ModelNotFoundError(
            f"model folder '{model}' does not exist; pass an existing diffusers folder or a Hugging Face id"
        )
    return None


def _hub_error(model: str, detail: str) -> ModelNotFoundError:
    get = f"download it on a connected machine with `hf download {model}` or pass a local diffusers folder"
    return ModelNotFoundError(f"model '{model}' {detail}; {get}")


def _from_pretrained(cls: Any, model: str, *, subfolder: str | None = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` with facedefense's errors: local folder or cache first, hub if it answers."""
    errors = _load_errors()
    what = f"component '{subfolder}'" if subfolder else "pipeline"
    extra = {"subfolder": subfolder} if subfolder else {}
    local = _local_folder(model)
    if local is not None:
        if subfolder and not (local / subfolder).is_dir():
            raise ModelNotFoundError(f"model '{model}' has no {what} ({local / subfolder} is missing); {_FOLDER_HINT}")
        try:
            return cls.from_pretrained(str(local), local_files_only=True, **extra, **kwargs)
        except errors as exc:
            reason = _cannot_read(model, what, exc, local / subfolder if subfolder else local)
            raise ModelNotFoundError(f"{reason}; rebuild or re-download the folder") from exc
    cached = _in_hub_cache(model)
    try:
        return cls.from_pretrained(model, local_files_only=True, **extra, **kwargs)
    except errors as exc:
        if cached:
            if _refused_pickle(exc):
                raise ModelNotFoundError(f"{_cannot_read(model, what, exc, None)}; it is in the Hugging Face cache") from exc
            raise _hub_error(model, f"is in the Hugging Face cache but its {what} cannot be read ({_first_line(exc)})") from exc
        if _offline():
            raise _hub_error(model, "is not a local folder and is not in the Hugging Face cache (offline: HF_HUB_OFFLINE is set)") from exc
    if not _hub_reachable():
        raise _hub_error(model, "is not a local folder, is not in the Hugging Face cache, and the hub is unreachable")
    try:
        return cls.from_pretrained(model, **extra, **kwargs)
    except errors as exc:
        raise ModelNotFoundError(
            f"model '{model}' could not be downloaded ({_first_line(exc)}); check the id, run `hf auth login` "
            "for gated models, or pass a local diffusers folder"
        ) from exc


def _check_tokenizer(tokenizer: Any, model: str) -> Any:
    """transformers 5 builds an empty tokenizer from a folder without vocabulary files: refuse it."""
    if len(tokenizer) <= 3:
        raise ModelNotFoundError(f"model '{model}': component 'tokenizer' has no vocabulary files; {_FOLDER_HINT}")
    return tokenizer


def load_components(
    model: str,
    *,
    components: tuple[str, ...] | list[str] = ("vae", "unet", "text_encoder", "tokenizer", "scheduler"),
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> SDComponents:
    """Load the requested parts of a Stable Diffusion model (1.x/2.x layout), frozen.

    Args:
        model: local diffusers folder or Hugging Face id.
        components: any of ``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.
        device: where the networks go.
        dtype: network precision (default ``torch.float32``).

    Returns:
        [`SDComponents`][facedefense.diffusion.loading.SDComponents], the parts not requested left as None.

    Raises:
        ConfigError: an unknown component name.
        ModelNotFoundError: the model or one of its components cannot be found or read.

    Example:
        >>> parts = load_components("runwayml/stable-diffusion-v1-5", components=("vae",), device="cuda")
        >>> parts.scaling_factor
        0.18215
    """
    import importlib

    import torch

    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ConfigError(f"unknown component(s) {', '.join(sorted(unknown))}; expected {', '.join(COMPONENTS)}")
    refuse_pixel_ddpm(str(model))
    _prepare_imports()
    dtype = dtype or torch.float32
    loaded = SDComponents(model=str(model), device=torch.device(device), dtype=dtype)
    for name in components:
        module, class_name = COMPONENTS[name]
        cls = getattr(importlib.import_module(module), class_name)
        is_network = isinstance(cls, type) and issubclass(cls, torch.nn.Module)
        part = _from_pretrained(cls, str(model), subfolder=name, **({"dtype": dtype} if is_network else {}))
        if is_network:
            if module_device(part) != torch.device(device):  # a no-op .to still walks every submodule
                part = part.to(device)
            part = part.eval().requires_grad_(False)
        elif name == "tokenizer":
            part = _check_tokenizer(part, str(model))
        setattr(loaded, name, part)
    return loaded


def _check_pipeline_folder(local: Path, model: str) -> None:
    """A local pipeline folder has model_index.json and a subfolder for every component it lists."""
    index = local / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(f"model '{model}' has no model_index.json; {_FOLDER_HINT}")
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"model '{model}': model_index.json cannot be read ({_first_line(exc)})") from exc
    for name, value in entries.items():
        listed = isinstance(value, list) and len(value) == 2 and value[0] is not None
        if not name.startswith("_") and listed and name not in ("safety_checker", "feature_extractor"):
            if not (local / name).is_dir():
                raise ModelNotFoundError(f"model '{model}' has no component '{name}' ({local / name} is missing)")


def load_pipeline(
    model: str,
    kind: str = "text2img",
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> Any:
    """Load a diffusers pipeline of one of ``PIPELINE_KINDS``, safety checker off.

    ``img2img`` can load a text-to-image folder (the components are the same). The pipeline's own
    scheduler is kept; swap it with ``pipeline.scheduler = X.from_config(pipeline.scheduler.config)``.

    Args:
        model: local diffusers folder or Hugging Face id.
        kind: ``text2img``, ``img2img``, ``instruct_pix2pix``, ``inpaint``, ``upscale_x4`` or
            ``sdxl_text2img`` (an SDXL folder: two text encoders, no safety checker).
        device: where the pipeline goes.
        dtype: precision (default ``torch.float32``).
        progress: show the denoising progress bar.

    Raises:
        ConfigError: unknown kind.
        ModelNotFoundError: the model cannot be found or read.

    Example:
        >>> pipe = load_pipeline("timbrooks/instruct-pix2pix", "instruct_pix2pix", device="cuda")
        >>> edited = pipe("make it a statue", image=image, num_inference_steps=20).images
    """
    import importlib

    import torch

    if kind not in PIPELINE_KINDS:
        raise ConfigError(f"unknown pipeline kind '{kind}'; expected one of {', '.join(PIPELINE_KINDS)}")
    refuse_pixel_ddpm(str(model))
    _prepare_imports()
    local = _local_folder(str(model))
    if local is not None:
        _check_pipeline_folder(local, str(model))
    cls = getattr(importlib.import_module("diffusers"), PIPELINE_KINDS[kind])
    extra: dict[str, Any] = {}
    if kind != "sdxl_text2img":  # SDXL pipelines have no safety checker
        extra["safety_checker"] = None
    if kind not in ("upscale_x4", "sdxl_text2img"):
        extra["requires_safety_checker"] = False
    pipeline = _from_pretrained(cls, str(model), dtype=dtype or torch.float32, **extra)
    if getattr(pipeline, "tokenizer", None) is not None:
        _check_tokenizer(pipeline.tokenizer, str(model))
    networks = [part for part in pipeline.components.values() if isinstance(part, torch.nn.Module)]
    if any(module_device(network) != torch.device(device) for network in networks):
        pipeline = pipeline.to(device)  # diffusers' .to walks every submodule even when nothing moves
    pipeline.set_progress_bar_config(disable=not progress)
    return pipeline


def _read_json(path: Path | str | None) -> dict[str, Any]:
    if not path or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_pixel_ddpm(model: str) -> bool:
    """Whether ``model`` (local folder, or a hub id in the Hugging Face cache) is a pixel-space
    diffusion model: a ``DDPMPipeline``-style folder whose ``unet`` is a ``UNet2DModel``, or a bare
    ``UNet2DModel`` folder. Unknown hub ids answer False.

    Example:
        >>> is_pixel_ddpm(str(build_tiny_pixel_ddpm("/tmp/ddpm"))), is_pixel_ddpm(str(build_tiny_sd("/tmp/sd")))
        (True, False)
    """
    local = Path(model).expanduser()
    if local.is_dir():
        index, config = local / "model_index.json", local / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            index, config = (try_to_load_from_cache(model, name) for name in ("model_index.json", "config.json"))
        except (ValueError, OSError):
            return False
        index, config = (path if isinstance(path, str) else None for path in (index, config))
    unet = _read_json(index).get("unet")
    if isinstance(unet, list) and len(unet) == 2:
        return unet[1] == "UNet2DModel"
    return _read_json(config).get("_class_name") == "UNet2DModel"


def refuse_pixel_ddpm(model: str) -> None:
    """Raise one clear line when a pixel-space DDPM is given where Stable Diffusion is expected.

    Raises:
        ModelNotFoundError: ``model`` is a pixel DDPM (see [`is_pixel_ddpm`][facedefense.diffusion.loading.is_pixel_ddpm]).
    """
    if is_pixel_ddpm(model):
        raise ModelNotFoundError(
            f"model '{model}' is a pixel-space DDPM (UNet2DModel), not a Stable Diffusion model; "
            "pass a Stable Diffusion folder or id"
        )


def load_pixel_ddpm(
    model: str, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[Any, Any]:
    """Load a pixel-space diffusion model: a ``UNet2DModel`` and its ``DDPMScheduler``.

    Accepts a ``DDPMPipeline`` folder or id (``unet/`` and ``scheduler/``, like
    ``google/ddpm-celebahq-256``'s pipeline layout) or a bare ``UNet2DModel`` folder
    (``config.json`` at the top, optionally ``scheduler_config.json``; without it, DiffPure's linear
    betas 1e-4..0.02 over 1000 steps).

    Returns:
        ``(unet, scheduler)``: the UNet frozen in eval mode on ``device`` in ``dtype`` (default
        float32); a ``DDPMScheduler`` built from the model's scheduler config.

    Raises:
        ModelNotFoundError: the model cannot be found or read, or it is not a pixel DDPM.

    Example:
        >>> unet, scheduler = load_pixel_ddpm("google/ddpm-ema-celebahq-256", device="cuda")
    """
    import torch

    _prepare_imports()
    from diffusers import DDPMScheduler, UNet2DModel

    local = _local_folder(str(model))
    if local is not None and not is_pixel_ddpm(str(model)):
        raise ModelNotFoundError(
            f"model '{model}' is not a pixel-space DDPM (no UNet2DModel in model_index.json or config.json); "
            "pass a DDPMPipeline folder or a UNet2DModel folder"
        )
    flat = local is not None and not (local / "unet").is_dir()
    unet = _from_pretrained(UNet2DModel, str(model), subfolder=None if flat else "unet", dtype=dtype or torch.float32)
    if flat and not (local / "scheduler_config.json").is_file():
        scheduler = DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000)
    else:
        scheduler = _from_pretrained(DDPMScheduler, str(model), subfolder=None if flat else "scheduler")
    return unet.to(device).eval().requires_grad_(False), scheduler
