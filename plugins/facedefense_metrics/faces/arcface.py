"""ArcFace embeddings (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019): facexlib's IR-SE50 architecture on RetinaFace detections aligned to the
standard 112x112 five-point template; weights by path (they do not ship in any wheel).

The embedding of the Anti-DreamBooth ISM protocol (deepface's ArcFace is a different training
run; values are on the same cosine scale but not digit for digit).

Differences from the reference code: facexlib's ``init_recognition_model`` downloads
``recognition_arcface_ir_se50.pth`` and moves the network to CUDA unconditionally; here the file is
given (``-o weights=PATH``) or looked for in torch's hub cache, any device works, and the face is
aligned by a differentiable bilinear warp instead of ``cv2.warpAffine``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

from facedefense_metrics.faces.retinaface import RetinaFaceEmbedder

if TYPE_CHECKING:
    import torch
    from torch import Tensor

WEIGHTS_FILE = "recognition_arcface_ir_se50.pth"
#: insightface's 112x112 alignment template (left eye, right eye, nose, mouth left, mouth right).
TEMPLATE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041))


@lru_cache(maxsize=2)
def _network(weights: str | None, device: str):
    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable
    from facedefense_metrics._weights import resolve_weights

    path = resolve_weights(weights, WEIGHTS_FILE, "github.com/xinntao/facexlib/releases", "arcface")
    ensure_torchvision_importable()
    from facexlib.recognition.arcface_arch import Backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # "random" weights (tests): the same network in every process
        model = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
    if path is not None:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def align_112(image: Tensor, landmarks: Tensor) -> Tensor:
    """(3, H, W) in [0, 1] + (5, 2) RetinaFace landmarks -> (3, 112, 112) aligned crop (differentiable in the image)."""
    import numpy as np

    from facedefense_metrics.faces.dlib_torch import _sample, _similarity

    matrix, shift = _similarity(np.asarray(TEMPLATE_112), landmarks.detach().double().cpu().numpy())
    affine = np.concatenate([matrix, shift[:, None]], axis=1)  # crop pixel -> image pixel
    return _sample(image, affine, 112)


class ArcFaceBackend(RetinaFaceEmbedder):
    """RetinaFace detection + ArcFace IR-SE50 512-D unit embedding.

    Args:
        weights: ArcFace ``recognition_arcface_ir_se50.pth`` (default: torch's hub cache; ``"random"``: tests).
        detector_weights, threshold: RetinaFace weights and minimum face confidence (see `RetinaFaceBackend`).
        device: where both networks run.
    """

    name: ClassVar[str] = "arcface"

    @staticmethod
    def load_network(weights: str | None, device: str) -> torch.nn.Module:
        return _network(weights, device)

    def embed_largest(self, images: Sequence[Tensor]) -> list[Tensor | None]:
        import torch

        found = [(i, faces[0].landmarks) for i, faces in enumerate(map(self.detect, images)) if faces]
        out: list[Tensor | None] = [None] * len(images)
        if not found:
            return out
        crops = torch.stack([align_112(images[i].to(self.device), marks) for i, marks in found])
        with torch.no_grad():
            embeddings = self.model(crops * 2 - 1).cpu()
        for (index, _), embedding in zip(found, embeddings):
            out[index] = embedding
        return out

    def embed_whole(self, images: Sequence[Tensor]) -> list[Tensor]:
        import torch

        from facedefense.imaging import resize

        crops = torch.cat([resize(image[None], (112, 112)) for image in images]).to(self.device)
        with torch.no_grad():
            return list(self.model(crops * 2 - 1).cpu())
