"""Device and dtype resolution (``--device auto``, ``--dtype auto``) and seeding."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from facedefense.errors import ConfigError

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; anything else is checked and returned.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device '{device}' (use auto, cpu, cuda, cuda:N or mps)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available; use device 'cpu'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{device}' requested but MPS is not available; use device 'cpu'")
    return resolved


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix units (AMX-BF16). AVX512-BF16 alone measured slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "amx_bf16" in flags


def resolve_dtype(dtype: str, device: torch.device, *, cpu_bf16: bool = True) -> torch.dtype:
    """Resolve ``"auto"``/``"float32"``/``"bfloat16"``/``"float16"`` for ``device``.

    ``"auto"`` gives bf16 on CUDA when supported (else fp16), fp16 on MPS, and on CPU bf16 where the
    processor has native bf16 units and ``cpu_bf16`` is true (a method whose numerics need fp32 passes
    ``cpu_bf16=False``), else fp32.
    """
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; expected one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_bf16 and cpu_has_fast_bf16() else torch.float32


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``: the only source of randomness."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
