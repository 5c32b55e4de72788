"""The CLIP model that CLIP-S, CLIP-T, CLIP-I and CLIP-IQA share (open_clip; weights by path).

OpenAI trained CLIP with QuickGELU (``x * sigmoid(1.702 x)``) in its transformers; open_clip's
``ViT-B-32`` / ``RN50`` configs use GELU (LAION's weights were trained with it). The activation
must match the weights, so it is read from the checkpoint:

* OpenAI's released ``.pt`` files are TorchScript archives. They are read without running any of
  their code: a restricted unpickler rebuilds the tensors of ``<name>/data.pkl`` from
  ``<name>/data/<key>`` and records the module classes the archive names (``QuickGELU`` or
  ``GELU``), and nothing else is allowed to load.
* open_clip's hub files (``open_clip_model.safetensors``, ``open_clip_pytorch_model.safetensors``
  or ``.bin``) carry it in the ``open_clip_config.json`` beside them (``model_cfg.quick_gelu``);
  ``.bin``/``.pth`` files load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense.interfaces.metric import MetricConfig

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import Tensor

#: OpenAI CLIP's image preprocessing mean/std (RGB).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Keys of OpenAI's archives that hold settings, not weights (OpenAI's ``build_model`` drops them too).
_SETTINGS = ("input_resolution", "context_length", "vocab_size")

_STORAGE_DTYPES = {
    "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16", "DoubleStorage": "float64",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}


@dataclass
class CLIPConfig(MetricConfig):
    """Options of the CLIP metrics.

    Attributes:
        weights: CLIP weights file, required: OpenAI's ``ViT-B-32.pt`` (a TorchScript archive), or
            open_clip's ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` from the HF
            hub (keep its ``open_clip_config.json`` beside it); ``"random"``: random weights (tests).
        architecture: open_clip architecture name (default ``ViT-B-32``, as the papers).
        quick_gelu: the transformers' activation: None (default) reads it from the checkpoint
            (OpenAI's archives: QuickGELU; open_clip's files: their config, else the architecture's
            default, GELU for ``ViT-B-32``); true or false forces it.
    """

    weights: str | None = None
    architecture: str = "ViT-B-32"
    quick_gelu: bool | None = None


def build(
    *, path: str | None, device: torch.device, dtype: torch.dtype, architecture: str = "ViT-B-32", quick_gelu: bool | None = None
) -> torch.nn.Module:
    """Shared-model factory: an open_clip model with the weights file ``path`` loaded (see the module
    docstring), its tokenizer as ``model.tokenizer`` and ``model.quick_gelu`` saying which activation
    it runs; ``path="random"``: random weights (tests only)."""
    from pathlib import Path

    open_clip = _open_clip()
    if architecture not in open_clip.list_models():
        raise ConfigError(f"unknown CLIP architecture '{architecture}' (open_clip has e.g. ViT-B-32, RN50, ViT-L-14)")
    if path is None:
        raise ModelNotFoundError(
            f"CLIP {architecture} weights are needed: pass -o weights=PATH (OpenAI's {architecture}.pt, or open_clip_model.safetensors from the HF hub)"
        )
    state = None
    if path != "random":
        file = Path(path)
        if not file.is_file():
            raise ModelNotFoundError(f"CLIP weights file {path} not found (OpenAI's {architecture}.pt or open_clip_model.safetensors)")
        if is_torchscript(file):
            state, classes = read_torchscript(file)
            found = "QuickGELU" in classes or "GELU" not in classes  # OpenAI's releases name QuickGELU
        else:
            found = _hub_quick_gelu(file)
        quick_gelu = found if quick_gelu is None else quick_gelu
    if quick_gelu is None:
        quick_gelu = bool(open_clip.get_model_config(architecture).get("quick_gelu", False))
    pretrained = None if path == "random" or state is not None else str(path)  # open_clip: weights_only=True
    try:
        with _quiet(state is not None):
            model = open_clip.create_model(architecture, pretrained=pretrained, quick_gelu=quick_gelu)
        if state is not None:
            _load_fitting(model, state)
    except (RuntimeError, KeyError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"CLIP weights {path} do not load into {architecture}: {str(exc).strip().splitlines()[0]}") from None
    model.tokenizer = _tokenizer(architecture)
    model.quick_gelu = quick_gelu
    return model.to(device=device, dtype=dtype).eval()


def clip_model(metric: Any) -> torch.nn.Module:
    """The shared CLIP model of a CLIP metric (its ``weights``, ``architecture``, ``quick_gelu``)."""
    from facedefense.models import shared_model

    config = metric.config
    return shared_model(
        "clip", path=config.weights, device=metric.device, architecture=config.architecture, quick_gelu=config.quick_gelu
    )


def model_details(model: Any) -> dict[str, str]:
    """What a CLIP result records about its model: the activation its transformers ran."""
    return {"activation": "QuickGELU" if model.quick_gelu else "GELU"}


@contextlib.contextmanager
def _quiet(active: bool) -> Iterator[None]:
    """Hide open_clip's "initialized randomly" warning while a model whose weights load next is built."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    if active:
        root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


@functools.cache
def _tokenizer(architecture: str) -> Any:
    """open_clip's tokenizer of ``architecture``, built once per process and shared by its models (a
    build reads the 49,408-token BPE vocabulary, ~0.2 s; a tokenizer keeps no state between calls)."""
    return _open_clip().get_tokenizer(architecture)


def _open_clip():
    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    return open_clip


def _hub_quick_gelu(file: Path) -> bool | None:
    """``model_cfg.quick_gelu`` of the ``open_clip_config.json`` beside an open_clip hub file (None: no config)."""
    import json

    config = file.parent / "open_clip_config.json"
    if not config.is_file():
        return None
    return bool(json.loads(config.read_text()).get("model_cfg", {}).get("quick_gelu", False))


def _load_fitting(model: torch.nn.Module, state: dict[str, Tensor]) -> None:
    """Load the archive's tensors that are the model's weights (an archive also keeps settings and
    non-weight attributes such as attention masks); every weight must be there."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        raise RuntimeError(f"the archive lacks {len(missing)} of the model's weights (e.g. {missing[0]})")
    model.load_state_dict({key: state[key] for key in expected})


# -- TorchScript archives, read without running them ----------------------------------------------


def is_torchscript(file: str | Path) -> bool:
    """Whether ``file`` is a TorchScript archive (a zip with ``<name>/code/`` or ``<name>/constants.pkl``)."""
    import zipfile

    if not zipfile.is_zipfile(file):
        return False
    with zipfile.ZipFile(file) as archive:
        return any(name.count("/") >= 1 and name.split("/")[1] in ("code", "constants.pkl") for name in archive.namelist())


class _ScriptObject:
    """Stands in for a class the archive names (a scripted module): keeps its attributes, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` allowing only tensors, their storages, plain containers and placeholder
    objects for TorchScript classes: any other global (a function, a class to run) is refused."""

    def __init__(self, archive: Any, prefix: str) -> None:
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self.archive, self.prefix = archive, prefix
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        import collections

        import torch

        if module == "__torch__" or module.startswith("__torch__."):
            return self.classes.setdefault(name if module == "__torch__" else f"{module}.{name}", type(name, (_ScriptObject,), {}))
        if module == "torch" and name in _STORAGE_DTYPES:
            return getattr(torch, _STORAGE_DTYPES[name])
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, requires_grad, hooks: data
        if module == "torch.jit._pickle" and name.startswith("build_") and name.endswith("list"):
            return list
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, type_name: value
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"the archive needs {module}.{name}, which a weights file has no use for (refused)")

    def persistent_load(self, pid: Any) -> Tensor:
        import torch

        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unexpected storage reference {pid!r:.80}")
        _, dtype, key, _location, _numel = pid
        data = self.archive.read(f"{self.prefix}data/{key}")
        return torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> Tensor:
    import torch

    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def read_torchscript(file: str | Path) -> tuple[dict[str, Tensor], set[str]]:
    """The tensors of a TorchScript archive by attribute path (``visual.conv1.weight``, ...) and the
    short names of the classes it names (``CLIP``, ``QuickGELU``, ...). No code in the archive runs."""
    import sys
    import zipfile

    with zipfile.ZipFile(file) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ConfigError(f"{file} is not a TorchScript archive with one data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").decode().strip() != sys.byteorder:
            raise ConfigError(f"{file} was saved on a machine of another byte order")
        unpickler = _ArchiveUnpickler(archive, prefix)
        try:
            root = unpickler.load()
        except Exception as exc:  # a malformed or hostile pickle: say what, run nothing more
            raise ConfigError(f"{file}: {str(exc).strip().splitlines()[0]}") from None
    tensors: dict[str, Tensor] = {}
    _collect(root, "", tensors)
    for key in _SETTINGS:
        tensors.pop(key, None)
    return tensors, {name.rsplit(".", 1)[-1] for name in unpickler.classes}


def _collect(node: Any, prefix: str, tensors: dict[str, Tensor]) -> None:
    import torch

    for name, value in getattr(node, "attributes", {}).items():
        if isinstance(value, torch.Tensor):
            tensors[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", tensors)


# -- features ---------------------------------------------------------------------------------------


def normalize_pixels(batch: Tensor) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> standardized with CLIP's mean and std."""
    import torch

    mean = torch.tensor(CLIP_MEAN, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1)
    return (batch - mean) / std


def preprocess(batch: Tensor, size: int) -> Tensor:
    """CLIP's preprocessing of (N, 3, H, W) in [0, 1]: the short side resized to ``size`` (bicubic,
    antialiased; the long side ``int(size * long / short)``), a centered ``size`` x ``size`` crop,
    CLIP's mean and std (as OpenAI's ``clip.load`` transform and HF's ``CLIPProcessor``)."""
    import torch.nn.functional as F

    height, width = batch.shape[-2:]
    short = min(height, width)
    resized = (size, int(size * width / short)) if height <= width else (int(size * height / short), size)
    x = F.interpolate(batch, size=resized, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = round((resized[0] - size) / 2), round((resized[1] - size) / 2)
    return normalize_pixels(x[..., top : top + size, left : left + size])


def image_features(model, batch: Tensor, *, normalize: bool = True) -> Tensor:
    """CLIP embeddings (N, D) float32 of (N, 3, H, W) in [0, 1] after ``preprocess``; unit norm
    unless ``normalize=False`` (the raw projections, as HF's ``get_image_features``)."""
    import torch.nn.functional as F

    size = model.visual.image_size
    x = preprocess(batch, min(size) if isinstance(size, (tuple, list)) else size)
    features = model.encode_image(x.to(next(model.parameters()).dtype)).float()
    return F.normalize(features, dim=-1) if normalize else features


def text_features(model, prompts: list[str], device, *, normalize: bool = True) -> Tensor:
    """CLIP embeddings (N, D) float32 of the prompts (open_clip's tokenizer, OpenAI's BPE); unit norm
    unless ``normalize=False`` (the raw projections, as HF's ``get_text_features``)."""
    import torch.nn.functional as F

    features = model.encode_text(model.tokenizer(prompts).to(device)).float()
    return F.normalize(features, dim=-1) if normalize else features
