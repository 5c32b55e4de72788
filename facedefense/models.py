"""Networks shared between methods (face embedders, CLIP, LPIPS): one place to build and cache them.

Plugins register factories through the ``register_models`` hook; methods and metrics ask for them
by name::

    embedder = shared_model("dlib_torch", device="cuda")          # built once per process
    features = embedder(faces)                                      # differentiable w.r.t. faces

A shared model is built once per (name, path, device, dtype, options), put in eval mode with its
parameters frozen: gradients still flow to its *inputs* (FaceLock optimizes an image through a
face embedder) and a metric calls it under ``torch.no_grad``. Nothing here imports torch at start-up.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from facedefense.runtime import resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch

_CACHE: dict[tuple[Any, ...], torch.nn.Module] = {}
_LOCK = threading.Lock()


def shared_model(
    name: str, *, path: str | None = None, device: str | torch.device = "auto", dtype: str = "float32", **options: Any
) -> torch.nn.Module:
    """The shared network registered as ``name``, built on first use.

    Args:
        name: registry name (``facedefense list models``).
        path: weights file or folder; None for the factory's default (e.g. weights shipped in a wheel).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... or a ``torch.device``.
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"`` or ``"auto"``.
        options: passed to the factory; part of the cache key.

    Raises:
        UnknownMethodError: no model of that name (the message suggests close names).
        ModelNotFoundError / MissingDependencyError: raised by the factory (missing weights, package).
    """
    import torch

    from facedefense.registry import get_registry

    resolved_device = device if isinstance(device, torch.device) else resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    key = (name, str(path) if path is not None else None, str(resolved_device), str(resolved_dtype), tuple(sorted(options.items())))
    with _LOCK:
        if key not in _CACHE:
            factory = get_registry().load("model", name)
            module = factory(path=path, device=resolved_device, dtype=resolved_dtype, **options)
            module.eval().requires_grad_(False)
            _CACHE[key] = module
        return _CACHE[key]


def clear_shared_models() -> None:
    """Forget every cached shared model (frees their memory once nothing else holds them)."""
    with _LOCK:
        _CACHE.clear()
