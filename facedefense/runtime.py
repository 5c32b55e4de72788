"""Device and dtype resolution (``--device auto``, ``--dtype auto``) and seeding."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

from facedefense.errors import ConfigError

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; anything else is checked and returned.

    Examples:
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


#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@functools.cache
def keep_freed_memory() -> bool:
    """Let the process reuse the memory of freed tensors instead of returning it to the OS (Linux, glibc).

    Work on 512x512 photos allocates and frees tensors of tens to hundreds of MB at every step.
    glibc serves each from a fresh ``mmap`` and gives it back on free, so the kernel zeroes every
    page again at the next step: on the 2-core development CPU an ``aspl`` round spent 57 s in the
    kernel for 81 s of user time, and took 31.7 s; with freed memory kept (mmap threshold 1 GiB,
    trim threshold 2 GiB) it took 14.9 s, with a 24% higher peak resident memory (2.7 -> 3.4 GiB).
    Called once by every method placed on the CPU (and by ``facedefense train``); process-wide.
    ``FACEDEFENSE_KEEP_FREED_MEMORY=0`` turns it off.

    Returns:
        Whether the allocator was tuned (False elsewhere than glibc, or when turned off).
    """
    import ctypes
    import os
    import platform

    if os.environ.get("FACEDEFENSE_KEEP_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    settings = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1), (_M_TOP_PAD, 64 << 20))
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix units (AMX-BF16). AVX512-BF16 alone measured slower than fp32."""
    from facedefense.autotune import cpu_info

    return "amx_bf16" in cpu_info()["flags"]


def cpu_runs_int8_exactly() -> bool:
    """Whether the CPU has int8 dot-product instructions (VNNI or AMX-INT8; ARM's are not oneDNN's x86 path).

    Without them oneDNN multiplies uint8 activations by int8 weights with ``vpmaddubsw``, whose
    pairwise sums saturate at 16 bits: measured on an AVX2-only AMD EPYC, RID's int8 engine drifted
    7 gray levels from the fp32 network (within 1 elsewhere). The int8 engines are left out there.
    """
    from facedefense.autotune import cpu_info

    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpu_info()["flags"]))


@functools.cache
def cpu_runs_onednn_bf16() -> bool:
    """Whether this CPU runs oneDNN's bf16 kernels (prepacked bf16 linear layers and convolutions).

    PyTorch refuses them ("bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and
    avx512dq") on CPUs with AVX2 only, such as many AMD EPYC and older Intel processors; the engines
    of the amortized defenders leave their bf16 paths out there.
    """
    import torch

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(torch.backends.mkldnn.is_available() and check is not None and check())
    except RuntimeError:
        return False


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


def module_dtype(network: torch.nn.Module) -> torch.dtype:
    """The dtype ``network`` computes in, for casting its inputs: that of its first floating-point
    parameter (then buffer), skipping the submodules a diffusers model keeps in float32.

    This is what diffusers' ``ModelMixin.dtype`` answers (facedefense attaches no layerwise-casting
    hooks), without that property's walk over every submodule on each call: 4.5 ms for SD 1.5's UNet
    on a CPU core, paid several times per attack step.

    Examples:
        >>> module_dtype(torch.nn.Linear(2, 2).to(torch.bfloat16))
        torch.bfloat16
    """
    import torch

    kept = getattr(network, "_keep_in_fp32_modules", None) or ()
    for name, parameter in network.named_parameters():
        if parameter.is_floating_point() and not any(part in name for part in kept):
            return parameter.dtype
    for buffer in network.buffers():
        if buffer.is_floating_point():
            return buffer.dtype
    return torch.get_default_dtype()


def module_device(network: torch.nn.Module) -> torch.device:
    """The device of ``network``'s first parameter (then buffer; CPU without either): diffusers'
    ``ModelMixin.device`` without its walk over every submodule (see `module_dtype`)."""
    import torch

    for tensor in network.parameters():
        return tensor.device
    for tensor in network.buffers():
        return tensor.device
    return torch.device("cpu")


def fused_adam(parameters: list[torch.Tensor]) -> bool | None:
    """The ``fused`` argument for torch's ``Adam`` / ``AdamW`` over ``parameters``: True where every
    one is a floating-point tensor on the CPU or a CUDA GPU, else None (torch's default).

    The fused step updates each tensor in one kernel; the default (``foreach``) makes several passes
    over the weights, their gradients and both moments. The update is the same to rounding (5e-13
    after 3 steps of lr 5e-7); on the 2-core development CPU a step over 40 M weights took 0.03 s
    against 0.11 s. Pass None, not False: ``fused=False`` also turns ``foreach`` off (the slowest,
    per-tensor loop).

    Examples:
        >>> params = list(unet.parameters())
        >>> torch.optim.AdamW(params, lr=5e-7, fused=fused_adam(params))
    """
    if parameters and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in parameters):
        return True
    return None


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``: the only source of randomness."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


@contextlib.contextmanager
def global_rng_from(generator: torch.Generator) -> Iterator[None]:
    """Seed torch's global random state from ``generator`` for the code inside, then put the caller's
    state back: the CPU's, and the CUDA device's when ``generator`` is on one (other GPUs are left
    alone: touching their state would start a CUDA context on each).

    For third-party code that draws from the global state (peft's LoRA initialization, dropout in
    train mode): ``--seed`` then fixes it too, and the caller's own draws are unchanged.

    Examples:
        >>> with global_rng_from(make_generator(0)):
        ...     weights = torch.nn.Linear(4, 4).weight  # the same for seed 0, every run
    """
    import torch

    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    device = generator.device
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
