"""VGG-Face (Parkhi, Vedaldi and Zisserman, "Deep Face Recognition", BMVC 2015) as deepface 0.0.79
runs it: the identity model of MetaCloak's IMS (``robust_facecloak/eval_score.py``, through
``deepface==0.0.79``) and of DiffAdvPerturbationBench (``eval/eval_score.py``, same code).

deepface's network is VGG-16's thirteen 3x3 convolutions (64, 64 | 128, 128 | 256 x3 | 512 x3 |
512 x3, a 2x2 max-pool after each group) on a 224x224 input, then fc6 as a 7x7 convolution to
4096, fc7 (1x1, 4096) and fc8 (1x1, 2622 identities); deepface 0.0.79 embeds with fc8's output
before the softmax (2622-D; deepface >= 0.0.86 switched to fc7's 4096-D). Its input is the face
crop in BGR order scaled to [0, 1] with no mean subtracted (``normalization="base"``), resized
keeping its aspect ratio and zero-padded to 224x224.

Weights by path: deepface's ``vgg_face_weights.h5`` (github.com/serengil/deepface_models releases;
read with h5py) or a ``.pth`` state dict of ``VGGFace``; ``"random"``: random weights (tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import MissingDependencyError, ModelNotFoundError
from facedefense_metrics.faces.base import Face, to_uint8_hwc
from facedefense_metrics.faces.retinaface import RetinaFaceEmbedder

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor

WEIGHTS_FILE = "vgg_face_weights.h5"
INPUT_SIZE = 224
#: Output channels of the thirteen 3x3 convolutions; "M" is a 2x2 max-pool.
LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
IDENTITIES = 2622


def VGGFace() -> torch.nn.Module:
    """deepface's VGG-Face as a torch ``Sequential`` whose weight layers are, in order, the sixteen
    weight layers of deepface's Keras model: (N, 3, 224, 224) BGR in [0, 1] -> (N, 2622) fc8 logits."""
    import torch.nn as nn

    layers: list[nn.Module] = []
    channels = 3
    for item in LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
            channels = item
    layers += [nn.Conv2d(512, 4096, 7), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(4096, 4096, 1), nn.ReLU(), nn.Dropout(0.5)]
    layers += [nn.Conv2d(4096, IDENTITIES, 1), nn.Flatten()]
    return nn.Sequential(*layers)


def keras_weights(path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel (kh, kw, in, out), bias) of each layer with weights of a Keras HDF5 weights file, in order."""
    try:
        import h5py
    except ImportError as error:
        raise MissingDependencyError("reading deepface's vgg_face_weights.h5 needs h5py: pip install h5py") from error
    import numpy as np

    with h5py.File(path, "r") as file:
        root = file["model_weights"] if "model_weights" in file else file
        out = []
        for layer in root.attrs["layer_names"]:
            group = root[layer.decode() if isinstance(layer, bytes) else layer]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs.get("weight_names", [])]
            if names:
                kernel = next(n for n in names if "kernel" in n)
                bias = next(n for n in names if "bias" in n)
                out.append((np.asarray(group[kernel]), np.asarray(group[bias])))
    return out


def load_keras_weights(model: torch.nn.Module, weights: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    """Copy Keras (kernel, bias) pairs into the convolutions of ``model`` in order (kernels
    (kh, kw, in, out) -> (out, in, kh, kw); both frameworks cross-correlate, so no flip).

    Raises:
        ModelNotFoundError: the count or a shape does not match VGG-Face's.
    """
    import torch

    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if len(weights) != len(convolutions):
        raise ModelNotFoundError(f"vgg_face: the weights file has {len(weights)} weight layers, VGG-Face has {len(convolutions)}")
    for index, (conv, (kernel, bias)) in enumerate(zip(convolutions, weights)):
        tensor = torch.from_numpy(kernel).permute(3, 2, 0, 1)
        if tensor.shape != conv.weight.shape:
            raise ModelNotFoundError(f"vgg_face: weight layer {index} is {tuple(kernel.shape)}, expected (kh, kw, in, out) of {tuple(conv.weight.shape)}")
        conv.weight.data.copy_(tensor)
        conv.bias.data.copy_(torch.from_numpy(bias))


@lru_cache(maxsize=2)
def _network(weights: str | None, device: str):
    import torch

    from facedefense_metrics._weights import resolve_weights

    path = resolve_weights(weights, WEIGHTS_FILE, "deepface (github.com/serengil/deepface_models releases)", "vgg_face")
    model = VGGFace()
    if path is not None and path.suffix == ".h5":
        load_keras_weights(model, keras_weights(path))
    elif path is not None:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def deepface_crop(image: Tensor, face: Face | None) -> np.ndarray:
    """deepface 0.0.79's input for one face: (224, 224, 3) float32 BGR in [0, 1].

    The box is cut out (integer pixels), rotated about its centre so that the eyes are level
    (``alignment_procedure``: PIL rotate, nearest neighbour, black corners), resized with its aspect
    ratio kept (``cv2.resize``, bilinear) and zero-padded to 224x224 around the centre. ``face``
    None (no face found; deepface with ``enforce_detection=False``) uses the whole image.
    """
    import math

    import cv2
    import numpy as np
    from PIL import Image

    bgr = to_uint8_hwc(image)[:, :, ::-1]
    if face is not None:
        left, top, right, bottom = (max(0, int(v)) for v in face.box)
        bgr = bgr[top:bottom, left:right]
        if face.landmarks is not None and bgr.size:
            (left_x, left_y), (right_x, right_y) = face.landmarks[:2].tolist()  # image-left eye, image-right eye
            if right_x != left_x or right_y != left_y:
                angle = math.degrees(math.atan2(right_y - left_y, abs(right_x - left_x)))
                bgr = np.asarray(Image.fromarray(np.ascontiguousarray(bgr)).rotate(angle))
    bgr = np.ascontiguousarray(bgr)
    height, width = bgr.shape[:2]
    factor = min(INPUT_SIZE / height, INPUT_SIZE / width)
    bgr = cv2.resize(bgr, (int(width * factor), int(height * factor)))
    pad_h, pad_w = INPUT_SIZE - bgr.shape[0], INPUT_SIZE - bgr.shape[1]
    bgr = np.pad(bgr, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    if bgr.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
        bgr = cv2.resize(bgr, (INPUT_SIZE, INPUT_SIZE))
    return bgr.astype(np.float32) / 255


class VGGFaceBackend(RetinaFaceEmbedder):
    """RetinaFace detection + deepface 0.0.79's VGG-Face 2622-D embedding (fc8, before the softmax).

    Args:
        weights: ``vgg_face_weights.h5`` (deepface's; needs h5py) or a ``.pth`` state dict of
            ``VGGFace`` (default: torch's hub cache; ``"random"``: tests).
        detector_weights, threshold: RetinaFace weights and minimum face confidence (see `RetinaFaceBackend`).
        device: where both networks run.

    Examples:
        >>> VGGFaceBackend(weights="vgg_face_weights.h5").embed_largest([photo])[0].shape
        torch.Size([2622])
    """

    name: ClassVar[str] = "vgg_face"

    @staticmethod
    def load_network(weights: str | None, device: str) -> torch.nn.Module:
        return _network(weights, device)

    def _embed(self, crops: list[np.ndarray]) -> list[Tensor]:
        import numpy as np
        import torch

        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).to(self.device)
        with torch.no_grad():
            return list(self.model(batch).float().cpu())

    def embed_largest(self, images: Sequence[Tensor]) -> list[Tensor | None]:
        found = [(i, faces[0]) for i, faces in enumerate(map(self.detect, images)) if faces]
        out: list[Tensor | None] = [None] * len(images)
        if found:
            for (index, _), embedding in zip(found, self._embed([deepface_crop(images[i], face) for i, face in found])):
                out[index] = embedding
        return out

    def embed_whole(self, images: Sequence[Tensor]) -> list[Tensor]:
        return self._embed([deepface_crop(image, None) for image in images]) if images else []
