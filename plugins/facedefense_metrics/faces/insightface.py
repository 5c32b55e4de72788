"""insightface's released face-recognition models, given by path: antelopev2 ``glintr100.onnx``
(IResNet-100 trained on Glint360K; InstantID's and PuLID's face encoder) and buffalo_l
``w600k_r50.onnx`` (IResNet-50 on WebFace600K; IP-Adapter-FaceID's and PhotoMaker v2's). Licence:
insightface's pretrained models are for non-commercial research only. They cannot be downloaded
automatically (InstantID issues 38, 60; insightface issue 2517), and nothing here downloads them.

Two forms of the same file:

- ``runtime="onnxruntime"`` (default): the file in an ONNX Runtime session, as insightface's
  ``ArcFaceONNX`` runs it: what the zero-shot attacks embed with.
- ``runtime="torch"``: the differentiable `IResNet` whose weights `load_iresnet` reads from the
  file (what a defender optimizes through; registered for them as the shared model ``insightface``).
  The two agree within 1e-4 cosine distance (tests/plugins/test_insightface_encoder.py).

Faces are found by RetinaFace and aligned to insightface's 112x112 five-point template (``align_112``;
insightface's own detector is SCRFD, with the same five points); the chip is mapped as insightface
maps it, ``(x/255 - 0.5)/0.5`` on RGB.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError, MissingDependencyError, ModelNotFoundError
from facedefense_metrics.faces.arcface import ArcFaceBackend

if TYPE_CHECKING:
    from torch import Tensor

RUNTIMES = ("onnxruntime", "torch")
ORIGIN = (
    "antelopev2 glintr100.onnx or buffalo_l w600k_r50.onnx from insightface's model zoo "
    "(non-commercial research use only; never downloaded here)"
)


class OnnxRuntimeEncoder:
    """An insightface recognition ONNX file in an ONNX Runtime session.

    Args:
        path: the ``.onnx`` file.
        device: ``cuda...`` uses ONNX Runtime's CUDA provider when the installed build has it,
            anything else the CPU provider.

    Shape:
        ``encoder(chips)``: (N, 3, S, S) aligned chips in [-1, 1] (S: the file's input side, 112) ->
        (N, D) float32 on the chips' device, no gradient. A file with a fixed batch of 1 runs one chip at a time.
    """

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise MissingDependencyError("running an ONNX face model needs onnxruntime: pip install 'facedefense[onnx]'") from error
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise ConfigError(f"{path} cannot be loaded by ONNX Runtime ({str(exc).strip().splitlines()[0][:160]})") from exc
        (feed,) = self.session.get_inputs()
        self.input_name = feed.name
        self.single = feed.shape[0] == 1
        self.chip = int(feed.shape[-1]) if isinstance(feed.shape[-1], int) else 112

    def __call__(self, chips: Tensor) -> Tensor:
        import numpy as np
        import torch

        array = chips.detach().float().cpu().numpy()
        batches = np.split(array, len(array)) if self.single else [array]
        out = [self.session.run(None, {self.input_name: batch})[0] for batch in batches]
        return torch.from_numpy(np.concatenate(out)).to(chips.device)


@lru_cache(maxsize=4)
def load_encoder(path: str, runtime: str, device: str) -> Any:
    """The encoder of ``path`` in ``runtime`` on ``device`` (cached): see the module docs.

    Raises:
        ModelNotFoundError: the file does not exist. ConfigError: an unknown runtime, or not an IResNet file.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"insightface runtime must be one of {', '.join(RUNTIMES)}, got '{runtime}'")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelNotFoundError(f"insightface: model file {file} not found (expected {ORIGIN})")
    if runtime == "onnxruntime":
        return OnnxRuntimeEncoder(file, device)
    from facedefense_metrics.faces.iresnet import load_iresnet

    return load_iresnet(file).to(device)


class InsightFaceBackend(ArcFaceBackend):
    """RetinaFace detection + an insightface recognition model (512-D for the released files).

    Args:
        weights: the ``.onnx`` file (required: ``glintr100.onnx`` or ``w600k_r50.onnx``).
        runtime: ``"onnxruntime"`` (default, as insightface runs it) or ``"torch"`` (the IResNet read
            from the same file).
        detector_weights, threshold: RetinaFace weights and minimum face confidence (see `RetinaFaceBackend`).
        device: where the networks run.

    Examples:
        >>> backend = InsightFaceBackend(weights="antelopev2/glintr100.onnx",
        ...                              detector_weights="detection_Resnet50_Final.pth")
        >>> backend.embed_largest([photo])[0].shape
        torch.Size([512])
    """

    name: ClassVar[str] = "insightface"

    def __init__(
        self, weights: str | None = None, runtime: str = "onnxruntime", detector_weights: str | None = None,
        threshold: float = 0.9, device: str = "cpu",
    ) -> None:
        if not weights or weights == "random":
            raise ModelNotFoundError(f"the insightface face backend needs its model file: {ORIGIN}; pass its path as the weights")
        self.runtime = runtime
        super().__init__(weights=weights, detector_weights=detector_weights, threshold=threshold, device=device)

    def load_network(self, weights: str | None, device: str) -> Any:  # type: ignore[override]
        encoder = load_encoder(str(weights), self.runtime, device)
        side = encoder.chip
        if side != 112:
            raise ConfigError(f"insightface: {weights} takes {side}x{side} chips; the 112x112 template aligns faces")
        return encoder

