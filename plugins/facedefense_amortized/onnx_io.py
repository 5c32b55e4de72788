"""ONNX export of the amortized defenders' networks, and an ONNX Runtime inference engine.

``facedefense export --method rid --checkpoint C --output rid.onnx`` writes the network (batch
dynamic; for GAP-Diff height and width too) with the facts a runtime needs in the file's metadata:
``facedefense_method``, ``eps`` (the budget in [0, 1] units), ``architecture`` (JSON),
``input`` and ``output``. The graph maps an image in [-1, 1] to the network's own output, exactly
what the PyTorch module computes; the protected image is then

- RID: ``x + eps * tanh(y)`` with the photo resized to the network's side (512) and the
  perturbation resized back;
- GAP-Diff: ``x + eps * y`` (``y`` already ends in tanh), the photo padded to multiples of 256.

``facedefense protect --method rid --checkpoint rid.onnx`` (``--runtime onnx``, chosen
automatically for ``.onnx`` files) runs it through ONNX Runtime: install the ``onnx`` extra
(``pip install facedefense[onnx]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.errors import ConfigError, FaceDefenseError, ModelNotFoundError

if TYPE_CHECKING:
    import torch
    from torch import nn

#: What the graph's output is, per method (stored in the metadata for other runtimes).
OUTPUTS = {
    "rid": "raw logits y: delta = eps * tanh(y), in [0, 1] pixel units",
    "gap_diff": "direction y in [-1, 1]: delta = eps * y, in [0, 1] pixel units",
}
OPSET = 18


def require_onnx():
    """The ``onnx`` package (export needs it), or a one-line error saying how to install it."""
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError("export needs the onnx package: pip install 'facedefense[onnx]'") from exc
    return onnx


def exported_by_facedefense(path: str | Path) -> bool:
    """Whether ``path`` is an ONNX file ``facedefense export`` wrote (its metadata names the
    method): the proof `facedefense.outputs.claim_file` needs before replacing it."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX (a photo, a user's file), unreadable, or no onnx package
        return False
    return any(entry.key == "facedefense_method" for entry in model.metadata_props)


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            "running an .onnx checkpoint needs ONNX Runtime: pip install 'facedefense[onnx]' (or onnxruntime)"
        ) from exc
    return onnxruntime


def export_onnx(
    network: nn.Module,
    output: str | Path,
    *,
    method: str,
    eps: float,
    architecture: dict[str, Any],
    example: torch.Tensor,
    dynamic_size: bool,
) -> Path:
    """Write ``network`` (eval mode, float32) to ``output`` as ONNX with the metadata above.

    Args:
        network: the trainable module (not modified; exported in eval mode).
        output: the ``.onnx`` path (written atomically with the umask's permissions: a partial
            file never stays; its folder must exist). Callers check it first (``facedefense
            export`` claims it: never an input, never a file another program wrote).
        method, eps, architecture: recorded in the metadata (eps in [0, 1] units).
        example: an input of the network's geometry, (1, 3, H, W) in [-1, 1].
        dynamic_size: height and width dynamic too (fully convolutional networks); the batch always is.
    """
    import warnings

    import torch

    from facedefense.io import atomic_path

    onnx = require_onnx()
    output = Path(output)
    if output.suffix != ".onnx":
        raise ConfigError(f"--output must end in .onnx, got {output.name}")
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    was_training = network.training
    network = network.float().eval()
    try:
        with atomic_path(output) as temporary, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The TorchScript-based exporter: seconds instead of the dynamo exporter's tens of seconds,
            # and it keeps dynamic spatial axes through the generator's padding.
            torch.onnx.export(
                network, (example.float(),), str(temporary), input_names=["images"], output_names=["output"],
                dynamic_axes={"images": axes, "output": axes}, opset_version=OPSET, dynamo=False,
            )
            model = onnx.load(str(temporary))
            metadata = {
                "facedefense_method": method,
                "eps": repr(float(eps)),
                "units": "[0,1]",
                "architecture": json.dumps(architecture, sort_keys=True),
                "input": f"images: (N, 3, {'H, W' if dynamic_size else f'{example.shape[-2]}, {example.shape[-1]}'}) "
                "RGB float32 in [-1, 1]",
                "output": OUTPUTS.get(method, "network output"),
            }
            for key, value in metadata.items():
                entry = model.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.save(model, str(temporary))
    finally:
        network.train(was_training)
    return output


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``facedefense_*`` metadata of an exported ONNX file (through ONNX Runtime)."""
    onnxruntime = _require_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"checkpoint {path} does not exist")
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # not an ONNX file, truncated, unsupported operator
        raise ModelNotFoundError(f"checkpoint {path} cannot be read as an ONNX model: {str(exc).splitlines()[0][:200]}") from exc
    return dict(session.get_modelmeta().custom_metadata_map)


class OnnxEngine:
    """Runs an exported network through ONNX Runtime, as a drop-in for the PyTorch engines.

    Args:
        path: the ``.onnx`` file.
        method: the defender asking (checked against the file's metadata).
        threads: intra-op threads (default: torch's thread count).

    Attributes:
        metadata: the file's metadata (``eps``, ``architecture``, ...).

    Shape:
        (N, 3, H, W) float32 tensor in [-1, 1] -> the network's output, float32 tensor.
    """

    def __init__(self, path: str | Path, *, method: str, threads: int | None = None) -> None:
        import torch

        onnxruntime = _require_onnxruntime()
        self.metadata = read_metadata(path)
        found = self.metadata.get("facedefense_method")
        if found is None:
            raise ModelNotFoundError(f"{Path(path).name} was not exported by facedefense (no facedefense_method metadata)")
        if found != method:
            raise ModelNotFoundError(f"{Path(path).name} is a {found} network, not {method}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    @property
    def eps(self) -> float:
        return float(self.metadata["eps"])

    @property
    def architecture(self) -> dict[str, Any]:
        return json.loads(self.metadata.get("architecture", "{}"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        try:
            (output,) = self.session.run(None, {"images": x.detach().float().cpu().contiguous().numpy()})
        except Exception as exc:  # e.g. an input size the graph does not accept
            raise FaceDefenseError(f"ONNX Runtime failed: {str(exc).splitlines()[0][:200]}") from exc
        return torch.from_numpy(output)


def onnx_budget(method: str, path: str | Path, requested: float | None, engine: OnnxEngine) -> float:
    """The budget stored in the file, checked against ``--eps`` (one-line error on a mismatch)."""
    trained = engine.eps
    if requested is not None and abs(requested - trained) > 1e-6:
        raise ConfigError(
            f"{method}: {Path(path).name} was exported for {trained * 255:g}/255 ([0, 1] units), but --eps is "
            f"{requested * 255:g}/255; drop --eps or use {trained * 255:g}/255"
        )
    return trained
