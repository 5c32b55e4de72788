"""dlib's face-recognition ResNet in torch: batched, GPU-ready and differentiable, with no dlib at
run time.

The weights are read from ``dlib_face_recognition_resnet_model_v1.dat`` (shipped in the
``face-recognition-models`` wheel) by a small parser of dlib's serialization format; the network is
dlib's ``anet_type`` (dnn_face_recognition_ex.cpp): a 29-layer ResNet on 150x150 face chips giving a
128-D descriptor, trained by D. E. King (99.38% on LFW). ``face_chip`` is a differentiable
re-implementation of ``dlib.get_face_chip`` (5-point similarity alignment, the image pyramid dlib
uses for large faces, bilinear sampling), so ``embedder(images, landmarks)`` gives the descriptors
dlib gives, with gradients with respect to the images.

Input/output contract of the shared model ``facedefense.models.shared_model("dlib_torch")``
(a ``DlibFaceEmbedder``):

* ``embedder(chips)``: chips (N, 3, 150, 150) float in [0, 1], faces aligned as ``dlib.get_face_chip``
  aligns them (other sizes are resized bilinearly) -> (N, 128) descriptors (dlib's scale, not unit
  norm: the same person is usually closer than 0.6 in L2; use cosine for ISM-style scores).
* ``embedder(images, landmarks)``: whole photos (N, 3, H, W) float in [0, 1] and dlib 5-point
  landmarks (N, 5, 2) in pixels (x, y) of those photos -> (N, 128). The chip is cut out inside the
  graph, so gradients reach ``images``. Landmarks are not differentiated (compute them once on the
  clean photo, e.g. with ``detect_landmarks``, then optimise the pixels).
* Parameters are frozen by ``shared_model``; the module is deterministic (no dropout, no batch norm:
  dlib's batch norms are folded into per-channel affines).

Shape:
    chips (N, 3, 150, 150) or images (N, 3, H, W) + landmarks (N, 5, 2) -> (N, 128).

Examples:
    >>> from facedefense.models import shared_model
    >>> embedder = shared_model("dlib_torch", device="cuda")
    >>> landmarks = detect_landmarks(photos)              # (N, 5, 2), dlib on the CPU
    >>> descriptors = embedder(photos, landmarks)         # (N, 128), differentiable

Differences from the reference code: dlib rounds every intermediate image (pyramid levels and the
chip) to 8 bits; with ``exact=True`` (default) this module does the same in the forward pass and
passes gradients straight through the rounding, so descriptors match dlib's within about 2e-4 (L2)
while staying differentiable; ``exact=False`` skips the rounding (smoother gradients, 2e-3 to 5e-3 from dlib).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ModelNotFoundError
from facedefense_metrics.faces.base import Face, FaceBackend

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: dlib's 5-point face template (part order of shape_predictor_5_face_landmarks), unpadded, in [0, 1].
TEMPLATE_5 = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)
#: Mean pixel subtracted by dlib's input_rgb_image layer (0-255 scale); the result is divided by 256.
INPUT_MEAN = (122.782, 117.001, 104.298)
CHIP_SIZE = 150

# --------------------------------------------------------------------------------------------
# dlib serialization


class _Reader:
    """Reads dlib's serialized primitives from a bytes buffer."""

    def __init__(self, data: bytes, position: int = 0) -> None:
        self.data, self.pos = data, position

    def int(self) -> int:
        control = self.data[self.pos]
        size = control & 0x0F
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if control & 0x80 else value

    def string(self) -> str:
        length = self.int()
        text = self.data[self.pos : self.pos + length].decode("ascii")
        self.pos += length
        return text

    def real(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        return math.ldexp(mantissa, exponent)

    def tensor(self):
        import numpy as np

        if self.int() != 2:
            raise ValueError("unexpected tensor version")
        shape = tuple(self.int() for _ in range(4))
        count = shape[0] * shape[1] * shape[2] * shape[3]
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.pos)
        self.pos += 4 * count
        return values.astype(np.float32), shape

    def alias(self) -> tuple[int, ...]:
        if self.int() != 1:
            raise ValueError("unexpected alias_tensor version")
        return tuple(self.int() for _ in range(4))


_LAYER = re.compile(rb"\x01[\x04-\x20](con_[456]|affine_2?|fc_[23]|input_rgb_image_sized|relu_|avg_pool_2|max_pool_2)")


def read_dlib_resnet(path: str | Path) -> dict[str, list]:
    """Weights of dlib's face-recognition ResNet, in network order (input side first).

    Returns:
        ``{"convs": [(weight (O, I, kh, kw), bias (O,), stride)], "affines": [(gamma (C,), beta (C,))],
        "fc": (128, 256) matrix, "mean": (r, g, b)}`` as numpy arrays.

    Raises:
        ModelNotFoundError: the file is missing or is not this network.
    """

    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing (dlib_face_recognition_resnet_model_v1.dat ships in the face-recognition-models wheel)")
    try:
        weights = _parse(path.read_bytes())
    except (ValueError, IndexError, UnicodeDecodeError) as error:
        raise ModelNotFoundError(f"{path} is not a dlib network file ({error})") from error
    convs, affines, fc = weights["convs"], weights["affines"], weights["fc"]
    if len(convs) != 29 or len(affines) != 29 or fc is None or fc.shape != (128, 256):
        raise ModelNotFoundError(f"{path} is not dlib_face_recognition_resnet_model_v1 (29 convolutions, 128-D output)")
    return weights


def _parse(data: bytes) -> dict:
    import numpy as np

    convs, affines, fc, mean = [], [], None, INPUT_MEAN
    for match in _LAYER.finditer(data):
        name = match.group(1).decode()
        if data[match.start() + 1] != len(name):
            continue
        reader = _Reader(data, match.end())
        if name.startswith("con_"):
            params, _ = reader.tensor()
            filters = reader.int()
            kh, kw = reader.int(), reader.int()
            stride = reader.int()
            reader.int(), reader.int(), reader.int()  # stride_x, padding_y, padding_x
            shape = reader.alias()
            weight = params[: np.prod(shape)].reshape(shape)
            bias = params[np.prod(shape) : np.prod(shape) + filters]
            if weight.shape[0] != filters or (kh, kw) != weight.shape[2:]:
                raise ValueError("unexpected convolution layout")
            convs.append((weight, bias, stride))
        elif name.startswith("affine_"):
            params, _ = reader.tensor()
            channels = reader.alias()[1]
            affines.append((params[:channels], params[channels : 2 * channels]))
        elif name.startswith("fc_"):
            outputs, inputs = reader.int(), reader.int()
            params, _ = reader.tensor()
            fc = params[: inputs * outputs].reshape(inputs, outputs).T.copy()
        elif name == "input_rgb_image_sized":
            mean = (reader.real(), reader.real(), reader.real())
    return {"convs": convs, "affines": affines, "fc": fc, "mean": mean}


# --------------------------------------------------------------------------------------------
# Network


def _pad_add(a: Tensor, b: Tensor) -> Tensor:
    """dlib's add_prev: the sum over the larger shape, missing channels/rows/columns counted as zero."""
    import torch.nn.functional as F

    shape = [max(x, y) for x, y in zip(a.shape[1:], b.shape[1:])]

    def grow(t):
        c, h, w = (s - t_ for s, t_ in zip(shape, t.shape[1:]))
        return F.pad(t, (0, w, 0, h, 0, c)) if c or h or w else t

    return grow(a) + grow(b)


def _build_resnet(weights: dict | None):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Affine(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

        def forward(self, x: Tensor) -> Tensor:
            return x * self.weight[:, None, None] + self.bias[:, None, None]

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, down: bool) -> None:
            super().__init__()
            self.down = down
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
            self.affine1 = Affine(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            self.affine2 = Affine(cout)

        def forward(self, x: Tensor) -> Tensor:
            y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
            return F.relu(_pad_add(y, F.avg_pool2d(x, 2, 2)) if self.down else y + x)

    class DlibResNet(nn.Module):
        """dlib's anet_type: conv 7x7/2, max-pool 3/2, 14 residual blocks (32-64-128-256-256), mean, fc."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 32, 7, stride=2)
            self.affine = Affine(32)
            plan = [(32, 32, False)] * 3 + [(32, 64, True)] + [(64, 64, False)] * 3
            plan += [(64, 128, True)] + [(128, 128, False)] * 2 + [(128, 256, True)] + [(256, 256, False)] * 2
            plan += [(256, 256, True)]
            self.blocks = nn.Sequential(*[Block(*step) for step in plan])
            self.fc = nn.Linear(256, 128, bias=False)

        def features(self, x: Tensor) -> Tensor:
            x = F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)
            return self.blocks(x).mean(dim=(2, 3))

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.features(x))

    net = DlibResNet()
    if weights is not None:
        convs = [net.conv] + [c for b in net.blocks for c in (b.conv1, b.conv2)]
        affines = [net.affine] + [a for b in net.blocks for a in (b.affine1, b.affine2)]
        with torch.no_grad():
            for module, (w, b, stride) in zip(convs, weights["convs"]):
                if tuple(module.weight.shape) != w.shape or module.stride[0] != stride:
                    raise ModelNotFoundError("dlib face ResNet: layer shapes differ from dlib's anet_type")
                module.weight.copy_(torch.from_numpy(w))
                module.bias.copy_(torch.from_numpy(b))
            for module, (g, b) in zip(affines, weights["affines"]):
                module.weight.copy_(torch.from_numpy(g))
                module.bias.copy_(torch.from_numpy(b))
            net.fc.weight.copy_(torch.from_numpy(weights["fc"]))
    return net


# --------------------------------------------------------------------------------------------
# Face chips


def _similarity(source, target):
    """Least-squares similarity transform (Umeyama 1991) mapping source (K, 2) onto target: (A, t)."""
    import numpy as np

    mu_s, mu_t = source.mean(0), target.mean(0)
    s, t = source - mu_s, target - mu_t
    covariance = t.T @ s / len(source)
    u, d, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(d) @ sign) / s.var(0).sum()
    matrix = scale * rotation
    return matrix, mu_t - matrix @ mu_s


def _rect_down(rect):
    left, top, right, bottom = rect
    return (left / 2 - 1.25, top / 2 - 0.75, right / 2 - 1.25, bottom / 2 - 0.75)


def _area(rect) -> float:
    left, top, right, bottom = rect
    return max(0.0, right - left + 1) * max(0.0, bottom - top + 1)


def _chip_plan(landmarks, height: int, width: int, size: int, padding: float):
    """dlib's geometry for one chip: crop box, pyramid level and the chip->level affine (2, 3)."""
    import numpy as np

    template = (np.array(TEMPLATE_5) + padding) / (2 * padding + 1) * size
    matrix, shift = _similarity(template, np.asarray(landmarks, dtype=np.float64))
    scale, angle = math.hypot(*matrix[:, 0]), math.atan2(matrix[1, 0], matrix[0, 0])
    cx, cy = matrix @ np.array([size / 2, size / 2]) + shift
    half = (size * scale - 1) / 2
    rect = (cx - half, cy - half, cx + half, cy + half)
    cos, sin = math.cos(angle), math.sin(angle)

    def rotate(center, point):
        dx, dy = point[0] - center[0], point[1] - center[1]
        return (center[0] + cos * dx - sin * dy, center[1] + sin * dx + cos * dy)

    area = size * size
    depth, grow, probe = 0, 2.0, _rect_down(rect)
    while _area(probe) > area:
        probe, depth, grow = _rect_down(probe), depth + 1, grow * 2 + 2
    corners = [rotate((cx, cy), p) for p in ((rect[0], rect[1]), (rect[2], rect[1]), (rect[0], rect[3]), (rect[2], rect[3]))]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    box = (max(min(xs) - grow, 0), max(min(ys) - grow, 0), min(max(xs) + grow, width - 1), min(max(ys) + grow, height - 1))
    box = tuple(int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5)) for v in box)  # std::lround
    local = (rect[0] - box[0], rect[1] - box[1], rect[2] - box[0], rect[3] - box[1])
    level = -1
    while _area(_rect_down(local)) > area:
        level, local = level + 1, _rect_down(local)
    center = ((local[0] + local[2]) / 2, (local[1] + local[3]) / 2)
    tl, tr, bl = (rotate(center, p) for p in ((local[0], local[1]), (local[2], local[1]), (local[0], local[3])))
    last = size - 1
    affine = np.array([[(tr[0] - tl[0]) / last, (bl[0] - tl[0]) / last, tl[0]], [(tr[1] - tl[1]) / last, (bl[1] - tl[1]) / last, tl[1]]])
    return box, level, affine


def _straight_through(x: Tensor, quantized: Tensor) -> Tensor:
    return x + (quantized - x).detach()


def _pyramid_down(image: Tensor, exact: bool) -> Tensor:
    """dlib's pyramid_down<2>: 5x5 binomial filter, valid, stride 2 (0-255 scale, (C, H, W))."""
    import torch
    import torch.nn.functional as F

    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=image.dtype, device=image.device)
    kernel = (taps[:, None] * taps[None, :] / 256.0).expand(image.shape[0], 1, 5, 5)
    out = F.conv2d(image[None], kernel, stride=2, groups=image.shape[0])[0]
    out = out[:, : (image.shape[1] - 3) // 2, : (image.shape[2] - 3) // 2]
    return _straight_through(out, torch.floor(out + 1e-4)) if exact else out


def _sample(image: Tensor, affine, size: int) -> Tensor:
    """Bilinear samples of (C, H, W) at chip pixel (c, r) -> affine @ (c, r, 1); 0 where any neighbour is outside."""
    import torch
    import torch.nn.functional as F

    _, height, width = image.shape
    rows, cols = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    a = torch.as_tensor(affine, dtype=torch.float64)
    x = a[0, 0] * cols + a[0, 1] * rows + a[0, 2]
    y = a[1, 0] * cols + a[1, 1] * rows + a[1, 2]
    inside = (x.floor() >= 0) & (y.floor() >= 0) & (x.floor() + 1 < width) & (y.floor() + 1 < height)
    grid = torch.stack([2 * x / max(width - 1, 1) - 1, 2 * y / max(height - 1, 1) - 1], dim=-1)
    grid = grid.to(device=image.device, dtype=image.dtype)[None]
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    return out * inside.to(device=image.device, dtype=image.dtype)


def face_chip(
    images: Tensor, landmarks: Tensor, *, size: int = CHIP_SIZE, padding: float = 0.25, exact: bool = True
) -> Tensor:
    """Differentiable ``dlib.get_face_chip``: aligned face chips of ``images`` from 5-point landmarks.

    Args:
        images: (N, 3, H, W) float in [0, 1].
        landmarks: (N, 5, 2) dlib 5-point landmarks, (x, y) pixels (not differentiated).
        size: chip side in pixels (dlib's face descriptor uses 150).
        padding: border around the template face, as a fraction of its size (dlib default 0.25).
        exact: round intermediate images to 8 bits as dlib does (straight-through gradient).

    Returns:
        (N, 3, size, size) float in [0, 1].
    """
    import torch

    chips = []
    points = landmarks.detach().double().cpu().numpy()
    for image, marks in zip(images, points):
        box, level, affine = _chip_plan(marks, image.shape[1], image.shape[2], size, padding)
        source = image[:, box[1] : box[3] + 1, box[0] : box[2] + 1] * 255.0
        if exact:
            source = _straight_through(source, torch.round(source))
        for _ in range(level + 1):
            source = _pyramid_down(source, exact)
        chip = _sample(source, affine, size)
        if exact:
            chip = _straight_through(chip, torch.floor(chip + 1e-4))
        chips.append(chip / 255.0)
    return torch.stack(chips)


def _nn_module():
    from torch import nn

    return nn.Module


class DlibFaceEmbedder(_nn_module()):  # type: ignore[misc]
    """dlib's 128-D face descriptor as a torch module; see the module docstring for the contract.

    Args:
        path: the ``.dat`` file (default: the one in the face-recognition-models wheel).
        exact: emulate dlib's 8-bit rounding of chips (straight-through gradients).
        padding: face-chip padding (dlib default 0.25).
    """

    #: The landmarks ``forward(images, landmarks)`` takes: dlib's 5-point shape predictor's.
    landmark_convention: ClassVar[str] = "dlib"

    def __init__(self, path: str | Path | None = None, *, exact: bool = True, padding: float = 0.25) -> None:
        super().__init__()
        import torch

        if path is None:
            from facedefense_metrics.faces.dlib import RECOGNITION_FILE, model_file

            path = model_file(RECOGNITION_FILE)
        weights = read_dlib_resnet(path)
        self.net = _build_resnet(weights)
        self.exact, self.padding = exact, padding
        self.register_buffer("mean", torch.tensor(weights["mean"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, landmarks: Tensor | None = None) -> Tensor:
        return self.net.fc(self.pooled(images, landmarks))

    def pooled(self, images: Tensor, landmarks: Tensor | None = None) -> Tensor:
        """The 256-D mean-pooled features before the last linear layer (``net.fc``): (N, 256)."""
        import torch
        import torch.nn.functional as F

        if landmarks is not None:
            chips = face_chip(images, landmarks, size=CHIP_SIZE, padding=self.padding, exact=self.exact)
        elif images.shape[-2:] != (CHIP_SIZE, CHIP_SIZE):
            chips = F.interpolate(images, size=(CHIP_SIZE, CHIP_SIZE), mode="bilinear", align_corners=False)
        else:
            chips = images
        pixels = chips * 255.0
        if self.exact and landmarks is None:
            pixels = pixels + (torch.round(pixels) - pixels).detach()
        return self.net.features((pixels - self.mean.to(pixels.dtype)) / 256.0)


def build(*, path: str | None = None, device: torch.device, dtype: torch.dtype, **options) -> DlibFaceEmbedder:
    """Shared-model factory (``register_models``): the dlib face embedder on ``device`` in ``dtype``."""
    return DlibFaceEmbedder(path, **options).to(device=device, dtype=dtype).eval()


def detect_landmarks(images: Tensor | Sequence[Tensor], *, detector: str = "hog", upsample: int = 0) -> Tensor:
    """dlib 5-point landmarks of the largest face of each image: (N, 5, 2), NaN where no face (needs dlib)."""
    import torch

    from facedefense_metrics.faces.dlib import DlibBackend

    backend = DlibBackend(detector=detector, upsample=upsample)
    out = torch.full((len(images), 5, 2), float("nan"))
    for index, image in enumerate(images):
        faces = backend.detect(image)
        if faces:
            out[index] = faces[0].landmarks
    return out


class DlibTorchBackend(FaceBackend):
    """Face backend: dlib's detector and landmarks (CPU), embeddings by the torch port (batched, any device).

    Args:
        detector, upsample: as ``DlibBackend``.
        device: device of the embedding network.
        path: the ``.dat`` weights (default: from the face-recognition-models wheel).
    """

    name: ClassVar[str] = "dlib_torch"
    can_embed: ClassVar[bool] = True

    def __init__(self, detector: str = "hog", upsample: int = 0, device: str = "cpu", path: str | None = None) -> None:
        from facedefense_metrics.faces.dlib import DlibBackend

        self.detector = DlibBackend(detector=detector, upsample=upsample)
        self.device, self.path = device, path

    def detect(self, image: Tensor) -> list[Face]:
        return self.detector.detect(image)

    def embed_largest(self, images: Sequence[Tensor], batch_size: int = 16) -> list[Tensor | None]:
        import torch

        from facedefense.models import shared_model

        embedder = shared_model("dlib_torch", path=self.path, device=self.device)
        device = embedder.mean.device
        found = [(i, faces[0].landmarks) for i, faces in enumerate(map(self.detect, images)) if faces]
        out: list[Tensor | None] = [None] * len(images)
        with torch.no_grad():
            chips = [face_chip(images[i][None].to(device), marks[None], padding=embedder.padding, exact=embedder.exact) for i, marks in found]
            for start in range(0, len(chips), batch_size):
                descriptors = embedder(torch.cat(chips[start : start + batch_size])).cpu()
                for (index, _), descriptor in zip(found[start : start + batch_size], descriptors):
                    out[index] = descriptor
        return out

    def embed_whole(self, images: Sequence[Tensor]) -> list[Tensor]:
        import torch

        from facedefense.imaging import resize
        from facedefense.models import shared_model

        embedder = shared_model("dlib_torch", path=self.path, device=self.device)
        chips = torch.cat([resize(image[None], (CHIP_SIZE, CHIP_SIZE)) for image in images]).to(embedder.mean.device)
        with torch.no_grad():
            return list(embedder(chips).cpu())
