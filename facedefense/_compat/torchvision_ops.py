"""Make a torchvision whose compiled ops cannot load importable anyway.

On a CPU-only torch, the only torchvision wheels on PyPI are CUDA builds whose ``_C`` extension
fails to load; ``import torchvision`` then raises ``operator torchvision::nms does not exist``
(pytorch/vision#9085), and ``transformers`` (hence diffusers pipelines), lpips, open_clip and
facexlib fail with it. ``ensure_torchvision_importable`` defines the ``nms`` operator schema
with a pure-torch CPU kernel when, and only when, the real extension does not load. It does nothing
on a working install (e.g. CUDA torch on a GPU machine).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_library = None


def _nms(boxes, scores, iou_threshold: float):
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True)
    removed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep = []
    for index in order.tolist():
        if removed[index]:
            continue
        keep.append(index)
        width = (torch.minimum(x2[index], x2) - torch.maximum(x1[index], x1)).clamp(min=0)
        height = (torch.minimum(y2[index], y2) - torch.maximum(y1[index], y1)).clamp(min=0)
        overlap = width * height
        removed |= overlap / (areas[index] + areas - overlap) > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _extension_loads(package_dir: Path) -> bool:
    import torch

    libraries = [p for p in package_dir.iterdir() if p.name.startswith("_C") and p.suffix in (".so", ".pyd")]
    if not libraries:
        return False
    try:
        torch.ops.load_library(str(libraries[0]))
    except (OSError, RuntimeError):
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Register a CPU ``torchvision::nms`` if torchvision is installed but its ops do not load.

    Call before anything imports torchvision, transformers or diffusers. Returns True when the
    fallback was installed.
    """
    global _library
    if _library is not None:
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    if _extension_loads(Path(next(iter(spec.submodule_search_locations)))):
        return False
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.impl("nms", _nms, "CPU")
    import torchvision.extension

    torchvision.extension._has_ops = lambda: True
    return True
