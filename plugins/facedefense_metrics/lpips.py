"""LPIPS: Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric",
CVPR 2018; the ``lpips`` package (v0.1 linear heads, which ship in its wheel)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError, MissingDependencyError, ModelNotFoundError
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
ORIGIN = "https://download.pytorch.org/models/"


def backbone_file(weights: str | None, net: str, who: str = "lpips", option: str = "weights") -> Path | None:
    """The torchvision checkpoint of LPIPS's ``net`` backbone: ``weights`` if given, else
    torch.hub's cache (``$TORCH_HOME/hub/checkpoints/<file>``, where the ``lpips`` package's own
    download would put it); None for ``"random"``. Nothing is downloaded.

    Raises:
        ConfigError: an unknown ``net``.
        ModelNotFoundError: one line naming the file and where to put it (``who`` and ``option``
            name the method and its option in the message).
    """
    from facedefense_metrics._weights import resolve_weights

    if net not in BACKBONES:
        raise ConfigError(f"{who}: LPIPS net must be one of {', '.join(BACKBONES)}, got '{net}'")
    return resolve_weights(weights, BACKBONES[net], ORIGIN, who, option=option)


def build(*, path: str | None, device: torch.device, dtype: torch.dtype, net: str = "alex") -> torch.nn.Module:
    """Shared-model factory: ``lpips.LPIPS(net=net)`` (v0.1 linear heads from the wheel) with its
    backbone from ``path`` (a torchvision checkpoint, ``.pth`` or ``.safetensors``), else from
    torch.hub's cache; ``"random"``: a seeded random backbone (tests only).

    The module maps two (N, 3, H, W) batches in [-1, 1] to (N, 1, 1, 1) distances.
    """
    import warnings

    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable
    from facedefense.checkpoints import read_state_dict, skipped_init

    weights = backbone_file(path, net)
    try:
        ensure_torchvision_importable()
        import lpips
    except ImportError as exc:
        raise MissingDependencyError("LPIPS needs the lpips package: pip install 'facedefense[metrics]'") from exc

    with skipped_init(), warnings.catch_warnings():  # the backbone is replaced below: skip its init
        warnings.simplefilter("ignore")  # torchvision's deprecation of `pretrained=`, used by lpips
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    # lpips splits torchvision's `features` into slices that keep the original layer indices.
    own = {name: "features." + name.split(".", 1)[1] for name in model.net.state_dict()}
    if weights is None:
        generator = torch.Generator().manual_seed(0)
        state = {own[name]: _random_like(tensor, generator) for name, tensor in model.net.state_dict().items()}
    else:
        state = read_state_dict(weights)
    foreign = f"lpips: {weights} is not torchvision's {net} checkpoint {BACKBONES[net]}"
    missing = [key for key in own.values() if key not in state]
    if missing:
        raise ModelNotFoundError(f"{foreign} (no {missing[0]})")
    try:
        model.net.load_state_dict({name: state[key] for name, key in own.items()})
    except RuntimeError as exc:  # right names, wrong shapes
        raise ModelNotFoundError(f"{foreign} (wrong shapes)") from exc
    return model.to(device=device, dtype=dtype).eval()


def _random_like(tensor: Tensor, generator: torch.Generator) -> Tensor:
    """He-normal weights and zero biases (the backbone of ``weights="random"``)."""
    import torch

    if tensor.dim() == 1:
        return torch.zeros_like(tensor)
    fan_in = tensor[0].numel()
    return torch.randn(tensor.shape, generator=generator, device=generator.device) * (2.0 / fan_in) ** 0.5


@dataclass
class LPIPSConfig(MetricConfig):
    """Options of `LPIPS`.

    Attributes:
        net: backbone, ``"alex"`` (default: the ``lpips`` package's default, used by Diff-Protect's
            and DiffAdvPerturbationBench's evaluations), ``"vgg"`` (FaceLock's ``eval_lpips.py``,
            IMPRESS) or ``"squeeze"``.
        weights: the torchvision backbone checkpoint (e.g. ``alexnet-owt-7be5be79.pth``); default:
            looked for in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``); ``"random"`` for a
            seeded random backbone (tests only).
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

    Examples:
        >>> LPIPS(weights="alexnet-owt-7be5be79.pth").compute(protected, originals).value
        0.05

    Differences from the reference code: none in the computation (``lpips.LPIPS``, v0.1, inputs
    scaled to [-1, 1]); the backbone is read from a file or torch.hub's cache, never downloaded.
    """

    name: ClassVar[str] = "lpips"
    measures: ClassVar[str] = "perceptual distance to the reference"
    visibility: ClassVar[bool] = True
    Config: ClassVar[type[LPIPSConfig]] = LPIPSConfig
    higher_is_better: ClassVar[bool] = False

    def _pairs(self, images: Tensor, references: Tensor) -> Tensor:
        from facedefense.models import shared_model

        found = backbone_file(self.config.weights, self.config.net)  # the file itself keys the shared model
        path = "random" if found is None else str(found)
        model = shared_model("lpips", path=path, device=self.device, net=self.config.net)
        return model(images * 2 - 1, references * 2 - 1).flatten()
