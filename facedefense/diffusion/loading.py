"""Load Stable Diffusion components and pipelines from a local folder or a Hugging Face id.

Everything goes through ``from_pretrained``, so a tiny test model and Stable Diffusion take the same
path. A model that cannot be found (offline, not cached, wrong folder) raises one
:class:`~facedefense.errors.ModelNotFoundError` line that says how to get it. No
``trust_remote_code``, ever.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense._compat.torchvision_ops import ensure_torchvision_importable
from facedefense.errors import ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    import torch

#: Pipeline kind -> diffusers class name.
PIPELINE_KINDS = {
    "text2img": "StableDiffusionPipeline",
    "img2img": "StableDiffusionImg2ImgPipeline",
    "instruct_pix2pix": "StableDiffusionInstructPix2PixPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "upscale_x4": "StableDiffusionUpscalePipeline",
}
#: Component name -> (module, class) loaded from the model's subfolder of the same name.
COMPONENTS = {
    "vae": ("diffusers", "AutoencoderKL"),
    "unet": ("diffusers", "UNet2DConditionModel"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "scheduler": ("diffusers", "DDPMScheduler"),
}


@dataclass
class SDComponents:
    """Frozen Stable Diffusion parts (None where not requested).

    Attributes:
        model: the folder or id they came from.
        vae, unet, text_encoder, tokenizer: eval mode, ``requires_grad`` off, on the device/dtype asked.
        scheduler: the training-noise scheduler (DDPM with the model's betas).
    """

    model: str
    vae: Any = None
    unet: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    scheduler: Any = None

    @property
    def scaling_factor(self) -> float:
        """Latent scaling factor of the VAE (0.18215 for SD 1.x/2.x)."""
        return float(self.vae.config.scaling_factor)


def _prepare_imports() -> None:
    """Make torchvision importable and silence the per-file loading bars of diffusers/transformers."""
    ensure_torchvision_importable()
    import diffusers
    import transformers

    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _not_found(model: str, detail: str = "") -> ModelNotFoundError:
    if Path(model).expanduser().exists() or model.startswith((".", "/", "~")):
        how = "pass a diffusers folder (model_index.json with vae/, unet/, ... subfolders)"
        return ModelNotFoundError(f"model '{model}' cannot be loaded{detail}; {how}")
    return ModelNotFoundError(
        f"model '{model}' is not a local folder and could not be loaded from the Hugging Face cache or hub{detail}; "
        f"download it on a connected machine with `huggingface-cli download {model}` or pass a local diffusers folder"
    )


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _from_pretrained(cls: Any, model: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained``: local folder or cache first, the hub only if reachable."""
    local = Path(model).expanduser()
    if local.exists() and not local.is_dir():
        raise ModelNotFoundError(f"model '{model}' is a file, not a diffusers folder")
    if not local.exists() and model.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model folder '{model}' does not exist")
    subfolder = kwargs.get("subfolder")
    detail = f" (component '{subfolder}')" if subfolder else ""
    try:
        return cls.from_pretrained(str(local) if local.exists() else model, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        if local.exists() or _offline():
            raise _not_found(model, f"{detail}: {_first_line(exc)}") from exc
    if not _hub_reachable():
        raise _not_found(model, f"{detail}: not in the local cache and the hub is unreachable")
    try:
        return cls.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as exc:
        raise _not_found(model, f"{detail}: {_first_line(exc)}") from exc


def load_components(
    model: str,
    *,
    components: tuple[str, ...] = ("vae", "unet", "text_encoder", "tokenizer", "scheduler"),
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> SDComponents:
    """Load the requested parts of a Stable Diffusion model, frozen.

    Args:
        model: local diffusers folder or Hugging Face id.
        components: any of ``vae``, ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.
        device: where the networks go.
        dtype: network precision (default float32).

    Raises:
        ModelNotFoundError: the model or one of its components cannot be found or read.

    Example:
        >>> parts = load_components("runwayml/stable-diffusion-v1-5", components=("vae",), device="cuda")
    """
    import importlib

    import torch

    _prepare_imports()
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ConfigError(f"unknown component(s) {', '.join(sorted(unknown))}; expected {', '.join(COMPONENTS)}")
    loaded = SDComponents(model=model)
    for name in components:
        module, class_name = COMPONENTS[name]
        cls = getattr(importlib.import_module(module), class_name)
        is_network = isinstance(cls, type) and issubclass(cls, torch.nn.Module)
        extra = {"dtype": dtype or torch.float32} if is_network else {}
        part = _from_pretrained(cls, model, subfolder=name, **extra)
        if is_network:
            part = part.to(device).eval().requires_grad_(False)
        setattr(loaded, name, part)
    return loaded


def load_pipeline(
    model: str,
    kind: str = "text2img",
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    progress: bool = False,
) -> Any:
    """Load a diffusers pipeline of one of :data:`PIPELINE_KINDS` (safety checker off).

    Raises:
        ConfigError: unknown kind.
        ModelNotFoundError: the model cannot be found or read.
    """
    import importlib

    import torch

    if kind not in PIPELINE_KINDS:
        raise ConfigError(f"unknown pipeline kind '{kind}'; expected one of {', '.join(PIPELINE_KINDS)}")
    _prepare_imports()
    cls = getattr(importlib.import_module("diffusers"), PIPELINE_KINDS[kind])
    extra = {} if kind == "upscale_x4" else {"safety_checker": None, "requires_safety_checker": False}
    pipeline = _from_pretrained(cls, model, dtype=dtype or torch.float32, **extra)
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=not progress)
    return pipeline
