"""Network weights read and written safely, with the facts that travel with them (the core's
checkpoint code: amortized defenders, training and export all use it).

Weights are read without unpickling code: safetensors, or a legacy ``.bin``/``.pth`` through
``torch.load(weights_only=True)``. The budget a network was trained for is part of the network (it
scales a tanh), so it travels with the weights: in a sidecar ``<checkpoint>.json`` written by
[`save_checkpoint`][facedefense.checkpoints.save_checkpoint], or, for the official releases, in the file name
(``ASDS-eps-12_255.bin``, ``G_per16_pretrain.pth``), whose numbers are in the reference's [-1, 1] units.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.errors import ConfigError, FaceDefenseError, ModelNotFoundError, OutputError

if TYPE_CHECKING:
    from torch import Tensor, nn

SIDECAR_SUFFIX = ".json"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (manifests record it so a run names exactly its weights)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def load_torch_file(path: str | Path, *, what: str = "checkpoint", error: type[FaceDefenseError] = ModelNotFoundError) -> Any:
    """``torch.load(weights_only=True)`` of a file from elsewhere: tensors and plain containers only,
    no code. Every way the file can be bad (a pickle that holds Python objects, corrupt or
    truncated bytes, another format) becomes one line naming it.

    Args:
        path: the file (``.pt``, ``.pth``, ``.bin``: a torch zip archive or a legacy pickle).
        what: how the message names it (``"checkpoint"``, ``"training state"``, ...).
        error: the exception class raised (`ModelNotFoundError`, `ResumeError`, ...).

    Raises:
        error: the file holds more than tensors and containers, or cannot be read.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc):
            # torch suggests weights_only=False: never do that with a file from elsewhere.
            raise error(f"{what} {path} holds Python objects besides tensors; only plain tensors and containers are loaded") from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in first:
            first = type(exc).__name__
        raise error(f"{what} {path} is corrupt or truncated ({first.split('. ')[0][:160]})") from exc


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a flat ``name -> tensor`` dict from safetensors or a weights-only torch pickle.

    Raises:
        ModelNotFoundError: missing, unreadable, or not a state dict of tensors.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"checkpoint {path} does not exist")
    kind = _weights_format(path)
    if kind is None:
        raise ModelNotFoundError(
            f"checkpoint {path} is not a weights file (expected safetensors or a torch state dict, .pt/.pth/.bin)"
        )
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # corrupt or truncated
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotFoundError(f"checkpoint {path} is corrupt or truncated ({first[:160]})") from exc
    else:
        state = load_torch_file(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelNotFoundError(f"checkpoint {path} is not a state dict of tensors")
    return state


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]] | None:
    """The tensor shapes a safetensors file declares in its header, read without loading a tensor;
    None for a file that is not safetensors or whose header cannot be read (loading it then says why)."""
    path = Path(path)
    try:
        if not path.is_file() or _weights_format(path) != "safetensors":
            return None
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        return {
            name: tuple(int(n) for n in entry["shape"])
            for name, entry in header.items()
            if name != "__metadata__"
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _weights_format(path: Path) -> str | None:
    """``"safetensors"``, ``"torch"`` (zip archive or legacy pickle) or None, from the file's first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PK") or head[:1] == b"\x80":
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    return None


def sidecar_path(checkpoint: str | Path) -> Path:
    """``weights.safetensors`` -> ``weights.safetensors.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + SIDECAR_SUFFIX)


def read_sidecar(checkpoint: str | Path) -> dict[str, Any] | None:
    """The sidecar metadata of a checkpoint, or None when there is none.

    Raises:
        ModelNotFoundError: the sidecar is not a JSON object, or its ``method``, ``eps`` (a number in
            (0, 1]) or ``architecture`` (an object) has the wrong type.
    """
    import math

    path = sidecar_path(checkpoint)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"checkpoint metadata {path} is not valid JSON: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ModelNotFoundError(f"checkpoint metadata {path} is not a JSON object")
    eps = data.get("eps", 0.5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (math.isfinite(eps) and 0 < eps <= 1):
        raise ModelNotFoundError(f"checkpoint metadata {path}: eps must be a number in (0, 1], got {eps!r}")
    if not isinstance(data.get("method", ""), str) or not isinstance(data.get("architecture", {}), dict):
        raise ModelNotFoundError(f"checkpoint metadata {path}: method must be a name and architecture an object")
    return data


def budget_from_name(checkpoint: str | Path, pattern: str) -> float | None:
    """Budget in [0, 1] units read from an official file name, whose number is /255 in [-1, 1].

    Examples:
        >>> round(budget_from_name("ASDS-eps-12_255.bin", r"eps-?(\\d+(?:\\.\\d+)?)_255") * 255, 6)
        6.0
    """
    match = re.search(pattern, Path(checkpoint).name)
    return float(match.group(1)) / 255.0 / 2.0 if match else None


def resolve_budget(
    method: str, checkpoint: str | Path, requested: float | None, pattern: str
) -> tuple[float, str]:
    """The budget a checkpoint was trained for, checked against the one requested.

    Returns:
        ``(eps, source)`` with eps in [0, 1] units and a description of where it came from.

    Raises:
        ConfigError: the requested budget differs from the trained one, or neither is known.
    """
    sidecar = read_sidecar(checkpoint) or {}
    if "eps" in sidecar:
        trained, source = float(sidecar["eps"]), f"its metadata {sidecar_path(checkpoint).name}"
    else:
        trained = budget_from_name(checkpoint, pattern)
        source = f"its name ({Path(checkpoint).name})"
    if trained is None:
        if requested is None:
            raise ConfigError(
                f"{method}: cannot tell which budget {Path(checkpoint).name} was trained for (no metadata, "
                "no official file name); pass eps in [0, 1] units, e.g. 8/255"
            )
        return requested, "the eps option"
    if requested is not None and abs(requested - trained) > 1e-6:
        raise ConfigError(
            f"{method}: checkpoint {Path(checkpoint).name} was trained for {trained * 255:g}/255 in facedefense's "
            f"[0, 1] units ({trained * 510:g}/255 in the reference's [-1, 1] units), but eps is "
            f"{requested * 255:g}/255; leave eps unset or use {trained * 255:g}/255"
        )
    return trained, source


def save_checkpoint(
    network: nn.Module,
    path: str | Path,
    *,
    method: str,
    eps: float,
    architecture: dict[str, Any],
    **facts: Any,
) -> Path:
    """Save weights as safetensors plus the sidecar (method, budget in [0, 1] units, architecture,
    and any further ``facts``: training data, steps, ...).

    Both files are written to temporary files first and renamed into place once both are complete
    (`facedefense.io.atomic_path`: the umask's permissions, no temporary file left behind by
    a failure or Ctrl-C, an earlier checkpoint intact until then).
    """
    from safetensors.torch import save_file

    from facedefense.io import atomic_path

    path = Path(path)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in network.state_dict().items()}
    metadata = {"method": method, "eps": eps, "units": "[0,1]", "architecture": architecture, **facts}
    with atomic_path(sidecar_path(path)) as sidecar:
        sidecar.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        with atomic_path(path) as weights:  # renamed first, then the sidecar
            try:
                save_file(state, str(weights))
            except OSError:
                raise  # atomic_path names the file
            except Exception as exc:  # safetensors' SafetensorError: "Error while serializing: I/O error: ..."
                reason = re.sub(r"\s*at path .*$", "", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                raise OutputError(f"{path}: cannot be written ({reason.removeprefix('Error while serializing: ')})") from exc
    return path


@contextlib.contextmanager
def skipped_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s in-place initializers no-ops, for a network built on the meta device
    whose every tensor a checkpoint replaces: on meta tensors they run PyTorch's reference
    implementations, whose first use imports ``torch._dynamo`` (1 s of a 2-core CPU, more where
    nothing is byte-compiled yet)."""
    import torch.nn.init as init

    names = [name for name in dir(init) if name.endswith("_") and not name.startswith("_") and callable(getattr(init, name))]
    saved = {name: getattr(init, name) for name in names}
    for name in names:
        setattr(init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


def load_network(network: nn.Module, state: dict[str, Tensor], *, method: str, checkpoint: str | Path) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming what does not match.

    The tensors of ``state`` become the network's (``assign=True``): no second copy of the weights.
    """
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                details.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise ModelNotFoundError(f"{Path(checkpoint).name} is not a {method} checkpoint: {'; '.join(details)}")
    network.load_state_dict(state, strict=True, assign=True)


def sidecar_architecture(checkpoint: str | Path, network_class: type, *, method: str) -> dict[str, Any]:
    """Architecture keyword arguments from the sidecar, checked against ``network_class``.

    Raises:
        ModelNotFoundError: the sidecar belongs to another method or names unknown arguments.
    """
    import inspect

    sidecar = read_sidecar(checkpoint) or {}
    if sidecar.get("method", method) != method:
        raise ModelNotFoundError(f"{Path(checkpoint).name} is a {sidecar['method']} checkpoint, not {method}")
    architecture = dict(sidecar.get("architecture", {}))
    accepted = set(inspect.signature(network_class).parameters)
    unknown = sorted(set(architecture) - accepted)
    if unknown:
        raise ModelNotFoundError(
            f"{Path(checkpoint).name} is not a {method} checkpoint: its metadata names unknown architecture "
            f"argument(s) {', '.join(unknown)}"
        )
    return architecture


def check_architecture(
    network_class: type,
    architecture: dict[str, Any],
    shapes: dict[str, tuple[int, ...]] | None,
    *,
    method: str,
    checkpoint: str | Path,
) -> None:
    """Refuse, before anything is allocated, an architecture that ``network_class`` cannot build or
    that the checkpoint's tensors do not match (a sidecar naming ``hidden_size=1e8`` for a small file).

    A network class takes part through a classmethod ``architecture_shapes(architecture)`` that
    checks the values (types, bounds, divisibility; `ConfigError`) and returns the shapes of
    the tensors that pin the architecture down (None: a name that must be absent); without it only
    the strict load checks the weights.

    Args:
        network_class: the network the architecture's keyword arguments build.
        architecture: those keyword arguments.
        shapes: the checkpoint's tensor shapes (e.g. `safetensors_shapes`), None to check the
            values only.
        method: the method's name, for messages.
        checkpoint: the weights file, for messages.

    Raises:
        ModelNotFoundError: one line naming the first tensor that does not match, or the bad value.
    """
    expected_shapes = getattr(network_class, "architecture_shapes", None)
    if expected_shapes is None:
        return
    name = Path(checkpoint).name
    try:
        expected = expected_shapes(architecture)
    except ConfigError as exc:
        raise ModelNotFoundError(f"{name}: its metadata names an architecture {method} cannot build ({exc})") from None
    for key, shape in (expected.items() if shapes is not None else ()):
        found = shapes.get(key)
        if shape is None and found is None:
            continue
        if found != shape:
            described = "absent" if found is None else str(tuple(found))
            wanted = "absent" if shape is None else str(tuple(shape))
            raise ModelNotFoundError(
                f"{name} does not match the architecture its metadata names: {key} is {described} in the file, "
                f"{wanted} for {_short(architecture)}"
            )


def _short(architecture: dict[str, Any]) -> str:
    return ",".join(f"{key}={value!r}"[:40] for key, value in sorted(architecture.items()))[:300]


def _strip(mapping: dict[str, Any], prefix: str | None) -> dict[str, Any]:
    """``mapping`` with ``prefix`` removed from its keys (those without it dropped), when any key has it."""
    if prefix and any(key.startswith(prefix) for key in mapping):
        return {key[len(prefix) :]: value for key, value in mapping.items() if key.startswith(prefix)}
    return mapping


@dataclass
class LoadedNetwork:
    """A defender network loaded from a checkpoint, with the budget it was trained for."""

    network: nn.Module
    architecture: dict[str, Any]
    eps: float
    budget_source: str


def load_defender_network(
    method: str,
    checkpoint: str,
    network_class: type,
    *,
    eps: float | None,
    name_pattern: str,
    where_to_get: str,
    defaults: dict[str, Any] | None = None,
    strip_prefix: str | None = None,
) -> LoadedNetwork:
    """Everything an amortized defender needs from its ``--checkpoint``.

    Reads the weights safely, strips ``strip_prefix`` from their names, resolves the budget (sidecar
    or official name, checked against ``eps``), checks the architecture (``defaults`` overridden by
    the sidecar) against the tensors' shapes (`check_architecture`; for safetensors from the
    file's header, before the weights are read), builds ``network_class`` without allocating, and
    loads the weights strictly.

    Raises:
        ConfigError: no checkpoint given (the message says where to get one), or a budget mismatch.
        ModelNotFoundError: unreadable file, or weights that do not fit the architecture.
    """
    import torch

    if not checkpoint:
        raise ConfigError(where_to_get)
    path = Path(checkpoint)
    trained_eps = source = None
    architecture: dict[str, Any] = {}
    header = safetensors_shapes(path)
    if header is not None:  # refuse a mismatched sidecar before reading a single weight
        trained_eps, source = resolve_budget(method, path, eps, name_pattern)
        architecture = {**(defaults or {}), **sidecar_architecture(path, network_class, method=method)}
        check_architecture(network_class, architecture, _strip(header, strip_prefix), method=method, checkpoint=path)
    state = _strip(read_state_dict(path), strip_prefix)
    if header is None:
        trained_eps, source = resolve_budget(method, path, eps, name_pattern)
        architecture = {**(defaults or {}), **sidecar_architecture(path, network_class, method=method)}
        shapes = {key: tuple(value.shape) for key, value in state.items()}
        check_architecture(network_class, architecture, shapes, method=method, checkpoint=path)
    with torch.device("meta"), skipped_init():
        network = network_class(**architecture)
    load_network(network, state, method=method, checkpoint=path)
    return LoadedNetwork(network, architecture, trained_eps, source)
