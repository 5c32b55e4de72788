"""RetinaFace detector (Deng et al., "RetinaFace: Single-shot Multi-level Face Localisation in the
Wild", CVPR 2020), facexlib's architecture; weights by path (they do not ship in any wheel).

The detector of the Anti-DreamBooth protocol (through deepface) for FDFR and ISM.

Differences from the reference code: facexlib downloads ``detection_Resnet50_Final.pth`` from
GitHub at first use; here the file is given (``-o detector_weights=PATH``) or looked for in torch's
hub cache, else a one-line error names it. ``"random"`` builds random weights (tests only).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError, MissingDependencyError
from facedefense_metrics.faces.base import Face, FaceBackend, to_uint8_hwc

if TYPE_CHECKING:
    from torch import Tensor

#: facexlib's weight file of each RetinaFace network (github.com/xinntao/facexlib/releases, v0.1.0).
WEIGHTS = {"resnet50": "detection_Resnet50_Final.pth", "mobile0.25": "detection_mobilenet0.25_Final.pth"}


@lru_cache(maxsize=2)
def _network(network: str, weights: str | None, device: str):
    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable
    from facedefense_metrics._weights import resolve_weights

    path = resolve_weights(weights, WEIGHTS[network], "github.com/xinntao/facexlib/releases", "retinaface")
    ensure_torchvision_importable()
    try:
        from facexlib.detection.retinaface import RetinaFace
    except ImportError as error:
        raise MissingDependencyError("the retinaface backend needs facexlib: pip install facexlib") from error
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # "random" weights (tests): the same network in every process
        model = RetinaFace(network_name=network, device=torch.device(device))
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.to(device).eval()


class RetinaFaceBackend(FaceBackend):
    """RetinaFace detection with 5 landmarks (eyes, nose tip, mouth corners); no embedding.

    Args:
        detector_weights: the ``.pth`` file (default: torch's hub cache); ``"random"`` for tests.
        network: ``"resnet50"`` (default) or ``"mobile0.25"``.
        threshold: minimum face confidence (default 0.9, the Anti-DreamBooth protocol's: deepface's
            ``RetinaFaceWrapper`` calls ``detect_faces(..., threshold=0.9)``; facexlib's default is 0.8).
        device: where the network runs.

    Examples:
        >>> RetinaFaceBackend(detector_weights="detection_Resnet50_Final.pth").detect(photo)[0].box
    """

    name: ClassVar[str] = "retinaface"

    def __init__(self, detector_weights: str | None = None, network: str = "resnet50", threshold: float = 0.9, device: str = "cpu") -> None:
        if network not in WEIGHTS:
            raise ConfigError(f"retinaface network must be one of {', '.join(WEIGHTS)}, got '{network}'")
        self.model = _network(network, detector_weights, device)
        self.threshold = threshold

    def detect(self, image: Tensor) -> list[Face]:
        import torch

        bgr = to_uint8_hwc(image)[:, :, ::-1].copy()
        with torch.no_grad():
            found = self.model.detect_faces(bgr, conf_threshold=self.threshold)
        faces = [
            Face(tuple(float(v) for v in row[:4]), float(row[4]), torch.tensor(row[5:15], dtype=torch.float32).view(5, 2))
            for row in found
        ]
        return sorted(faces, key=lambda face: -face.area)


class RetinaFaceEmbedder(FaceBackend):
    """Base of the recognition backends that find faces with RetinaFace (ArcFace, VGG-Face): the
    subclass's network (`load_network`) and the detector, both on ``device``.

    Args:
        weights: the recognition network's weights file (default: torch's hub cache; ``"random"``: tests).
        detector_weights: RetinaFace weights (see `RetinaFaceBackend`).
        threshold: minimum face confidence.
        device: where both networks run.
    """

    can_embed: ClassVar[bool] = True

    def __init__(
        self, weights: str | None = None, detector_weights: str | None = None, threshold: float = 0.9, device: str = "cpu"
    ) -> None:
        self.model = self.load_network(weights, device)
        self.detector = RetinaFaceBackend(detector_weights=detector_weights, threshold=threshold, device=device)
        self.device = device

    @staticmethod
    def load_network(weights: str | None, device: str) -> Any:
        """The recognition network, in eval mode on ``device``."""
        raise NotImplementedError

    def detect(self, image: Tensor) -> list[Face]:
        return self.detector.detect(image)
