"""What RID and GAP-Diff share beyond the core: the choice of runtime (PyTorch or ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from facedefense.errors import ConfigError

if TYPE_CHECKING:
    from facedefense_amortized.onnx_io import OnnxEngine

RUNTIMES = ("auto", "torch", "onnx")


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


def uses_onnx(runtime: str, checkpoint: str) -> bool:
    """``onnx`` asked for, or ``auto`` with an ``.onnx`` checkpoint."""
    is_onnx = Path(checkpoint).suffix.lower() == ".onnx"
    if runtime == "onnx" and checkpoint and not is_onnx:
        raise ConfigError(
            f"--runtime onnx needs an .onnx checkpoint; export {Path(checkpoint).name} first with "
            "`facedefense export --method ... --checkpoint ... --output model.onnx`"
        )
    if runtime == "torch" and is_onnx:
        raise ConfigError("an .onnx checkpoint runs with --runtime onnx (or auto), not torch")
    return is_onnx and runtime != "torch"


def onnx_engine(method: str, checkpoint: str, eps: float | None, device_type: str) -> tuple[OnnxEngine, float]:
    """The ONNX Runtime engine of an exported network and its budget (checked against ``eps``)."""
    from facedefense_amortized.onnx_io import OnnxEngine, onnx_budget

    if device_type != "cpu":
        raise ConfigError("--runtime onnx runs on the CPU here (onnxruntime's CPU provider); use --device cpu")
    engine = OnnxEngine(checkpoint, method=method)
    return engine, onnx_budget(method, checkpoint, eps, engine)
