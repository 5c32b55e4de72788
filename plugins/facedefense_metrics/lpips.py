"""LPIPS: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
CVPR 2018; the ``lpips`` package (v0.1 linear heads, which ship in its wheel)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces import PairedMetric
from facedefense.interfaces.metric import MetricConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: torchvision checkpoint of each LPIPS backbone (what lpips would download).
BACKBONES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


def build(*, path: str | None, device: torch.device, dtype: torch.dtype, net: str = "alex") -> torch.nn.Module:
    """Shared-model factory: ``lpips.LPIPS`` with its backbone from ``path`` (``"random"``: random backbone).

    The module maps two (N, 3, H, W) batches in [-1, 1] to (N, 1, 1, 1) distances.
    """
    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable
    from facedefense_metrics._weights import resolve_weights

    if net not in BACKBONES:
        raise ConfigError(f"lpips: net must be one of {', '.join(BACKBONES)}, got '{net}'")
    weights = resolve_weights(path, BACKBONES[net], "https://download.pytorch.org/models/", "lpips")
    ensure_torchvision_importable()
    import lpips

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        # lpips splits torchvision's `features` into slices that keep the original layer indices.
        own = {name: "features." + name.split(".", 1)[1] for name in model.net.state_dict()}
        missing = [key for key in own.values() if key not in state]
        if missing:
            raise ConfigError(f"lpips: {weights} is not a torchvision {net} checkpoint (no {missing[0]})")
        model.net.load_state_dict({name: state[key] for name, key in own.items()})
    return model.to(device=device, dtype=dtype).eval()


@dataclass
class LPIPSConfig(MetricConfig):
    """Options of :class:`LPIPS`.

    Attributes:
        net: backbone, ``"alex"`` (default, as the papers), ``"vgg"`` or ``"squeeze"``.
        weights: the torchvision backbone checkpoint (e.g. ``alexnet-owt-7be5be79.pth``); default:
            looked for in torch's hub cache; ``"random"`` for a random backbone (tests only).
    """

    net: str = "alex"
    weights: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.net not in BACKBONES:
            raise ConfigError(f"net must be one of {', '.join(BACKBONES)}, got '{self.net}'")


class LPIPS(PairedMetric):
    """Learned perceptual distance between each image and its reference (0 = identical).

    For imperceptibility (protected vs clean photo) lower is better; on an attacker's outputs a
    larger distance from the clean result means the protection worked.

    Shape:
        images, references: N pairs of equal sizes, (3, H, W) in [0, 1] -> N distances.

    Example:
        >>> LPIPS(weights="alexnet-owt-7be5be79.pth").compute(protected, originals).value
        0.05

    Differences from the reference code: none in the computation (``lpips.LPIPS``, inputs scaled
    to [-1, 1]); the backbone is loaded from a file instead of downloaded.
    """

    name: ClassVar[str] = "lpips"
    Config: ClassVar[type[LPIPSConfig]] = LPIPSConfig
    higher_is_better: ClassVar[bool] = False

    def _pairs(self, images: Tensor, references: Tensor) -> Tensor:
        from facedefense.models import shared_model

        model = shared_model("lpips", path=self.config.weights, device=self.device, net=self.config.net)
        return model(images * 2 - 1, references * 2 - 1).flatten()
