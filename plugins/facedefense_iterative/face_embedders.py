"""Face-recognition networks for defenders that optimize through an identity (FaceLock), registered
with ``register_models`` and used through ``facedefense.models.shared_model``.

Contract of a face embedder (the same as the metrics plugin's ``dlib_torch``): ``embedder(images)``
maps (N, 3, H, W) float images in [0, 1] of any size (resized to the network's input inside) to
(N, D) embeddings, differentiably with respect to the images; compare them with cosine similarity.
``embedder(images, landmarks)`` first aligns each face to the network's template with a
differentiable similarity warp from 5 landmarks (N, 5, 2), (x, y) pixels of ``images``, in the
convention its ``landmark_convention`` attribute names (a key of ``LANDMARK_DETECTORS``).

- ``arcface``: facexlib's ArcFace IR-SE50 (``recognition_arcface_ir_se50.pth``, 112x112 input,
  512-D); the weights are given by path (they ship in no wheel; never downloaded here).
- ``insightface``: insightface's released recognition models (antelopev2 ``glintr100.onnx``,
  buffalo_l ``w600k_r50.onnx``; 112x112, 512-D) as a torch IResNet whose weights are read from the
  ONNX file given by path (``facedefense_metrics.faces.iresnet``); non-commercial research licence.
- ``random_face_embedder``: a small seeded random CNN with the same contract, for tests and plumbing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.errors import ModelNotFoundError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: Landmark convention -> the face backends (``facedefense_metrics.faces``) that detect those 5 points,
#: the default first. ``five_point``: eye centres, nose tip, mouth corners (RetinaFace, MTCNN; the
#: insightface 112x112 template); ``dlib``: dlib's 5-point shape predictor (eye corners, nose).
LANDMARK_DETECTORS = {"five_point": ("retinaface", "mtcnn"), "dlib": ("dlib", "dlib_torch")}

ARCFACE_FILE = "recognition_arcface_ir_se50.pth"
ARCFACE_ORIGIN = "facexlib's GitHub release v0.1.0 (xinntao/facexlib)"


def landmark_detector(
    embedder: Any, *, face_model: str, face_detector: str | None, weights: str | None, device: Any, method: str
) -> Any:
    """The face backend (``facedefense_metrics.faces``) giving the 5 landmarks ``embedder`` (the shared
    model ``face_model``) is aligned with: ``face_detector``, or the first of its convention's
    detectors (``LANDMARK_DETECTORS``); ``weights`` are the detector's.

    Raises:
        ConfigError: the embedder names no convention, or the detector does not give its landmarks
            (one line, beginning with ``method``).
    """
    from facedefense.errors import ConfigError
    from facedefense_metrics.faces import get_backend

    convention = getattr(embedder, "landmark_convention", None)
    if convention not in LANDMARK_DETECTORS:
        raise ConfigError(
            f"{method}: face model '{face_model}' does not say which landmarks align it "
            f"(its `landmark_convention` must be one of {', '.join(LANDMARK_DETECTORS)})"
        )
    detectors = LANDMARK_DETECTORS[convention]
    name = face_detector or detectors[0]
    if name not in detectors:
        raise ConfigError(
            f"{method}: face model '{face_model}' is aligned with {convention} landmarks, which "
            f"face_detector '{name}' does not give; use one of: {', '.join(detectors)}"
        )
    return get_backend(name, detector_weights=weights, device=str(device))


def find_landmarks(detector: Any, images: Tensor, size: tuple[int, int]) -> Tensor:
    """5 landmarks (N, 5, 2) of the largest face of each photo found by ``detector``, (x, y) in pixels
    of the photo resized to ``size``; NaN where no face is found. Detected on the photos themselves."""
    import torch

    height, width = images.shape[-2:]
    scale = torch.tensor([size[1] / width, size[0] / height])
    out = torch.full((images.shape[0], 5, 2), float("nan"))
    for index, image in enumerate(images):
        faces = detector.detect(image.detach().float())
        if faces and faces[0].landmarks is not None:
            out[index] = (faces[0].landmarks.float().cpu() + 0.5) * scale - 0.5  # pixel centres
    return out


def _embedder_class() -> type:
    import torch

    class FaceEmbedder(torch.nn.Module):
        """Align (with landmarks) or resize to ``size`` (112), map [0, 1] to [-1, 1], run ``network``."""

        landmark_convention = "five_point"

        def __init__(self, network: torch.nn.Module, size: int) -> None:
            super().__init__()
            self.network, self.size = network, size

        def forward(self, images: Tensor, landmarks: Tensor | None = None) -> Tensor:
            import torch.nn.functional as F

            if landmarks is not None:  # insightface's 112x112 template, as the arcface metric aligns
                from facedefense_metrics.faces.arcface import align_112

                images = torch.stack([align_112(image, marks) for image, marks in zip(images, landmarks)])
            if images.shape[-2:] != (self.size, self.size):
                images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                       antialias=images.shape[-1] > self.size)
            return self.network(images * 2 - 1).flatten(1)

    return FaceEmbedder


def build_arcface(*, path: str | None, device: torch.device, dtype: torch.dtype, **options: Any) -> torch.nn.Module:
    """facexlib's ArcFace IR-SE50 with weights from ``path`` (required), built on the meta device and
    then given the checkpoint's values (all of its weights, strictly: missing or extra keys refuse).

    Raises:
        ModelNotFoundError: no path, or the file is missing (one line naming the file and its origin).
    """
    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    if path is None:
        raise ModelNotFoundError(
            f"arcface needs its weights file {ARCFACE_FILE} (from {ARCFACE_ORIGIN}): pass its path "
            "(facelock: -o face_model_path=PATH)"
        )
    weights = Path(path).expanduser()
    if not weights.is_file():
        raise ModelNotFoundError(f"arcface: weights file {weights} not found (expected {ARCFACE_FILE}, from {ARCFACE_ORIGIN})")
    ensure_torchvision_importable()
    from facexlib.recognition.arcface_arch import Backbone

    with torch.device("meta"):  # every weight comes from the checkpoint: no random initialization
        network = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
    network = network.to_empty(device="cpu")
    try:
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelNotFoundError(f"arcface: {weights} is not an ArcFace IR-SE50 checkpoint ({ARCFACE_FILE})") from exc
    return _embedder_class()(network, 112).to(device=device, dtype=dtype)


def build_insightface(*, path: str | None, device: torch.device, dtype: torch.dtype, **options: Any) -> torch.nn.Module:
    """insightface's IResNet with the weights of the ONNX file ``path`` (required).

    Raises:
        ModelNotFoundError: no path, or the file is missing. ConfigError: the file is not an IResNet.
    """
    from facedefense_metrics.faces.insightface import ORIGIN
    from facedefense_metrics.faces.iresnet import load_iresnet

    if path is None:
        raise ModelNotFoundError(f"insightface needs its model file, {ORIGIN}: pass its path (-o face_model_path=PATH)")
    network = load_iresnet(path)
    return _embedder_class()(network, network.chip).to(device=device, dtype=dtype)


def build_random(
    *, path: str | None, device: torch.device, dtype: torch.dtype, seed: int = 0, dim: int = 128, **options: Any
) -> torch.nn.Module:
    """A random face embedder (3 strided convolutions, global pooling, a linear layer; 112x112
    input), seeded so every build is identical. ``path`` is ignored. Tests and plumbing only."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(256, dim),
        )
    return _embedder_class()(network, 112).to(device=device, dtype=dtype)
