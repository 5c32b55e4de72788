"""CIEDE2000 colour difference between each image and its reference (Sharma, Wu and Dalal, "The
CIEDE2000 color-difference formula: implementation notes, supplementary test data, and
mathematical observations", Color Research & Application 30(1), 2005), on sRGB converted to CIELAB
(D65). DiffAdvPerturbationBench (arXiv 2507.03953) reports it for protected vs clean photos."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces import PairedMetric
from facedefense.interfaces.metric import MetricConfig

if TYPE_CHECKING:
    from torch import Tensor

REDUCTIONS = ("mean", "norm")

#: Linear sRGB -> CIE XYZ (D65), IEC 61966-2-1 primaries (the matrix scikit-image uses).
SRGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
#: CIE D65 white point, 2-degree observer, Y = 1.
D65_WHITE = (0.95047, 1.0, 1.08883)


def srgb_to_lab(rgb: Tensor) -> Tensor:
    """CIELAB (D65) of sRGB values.

    Args:
        rgb: (..., 3, H, W) sRGB in [0, 1].

    Returns:
        (..., 3, H, W) float64: L in [0, 100], a and b roughly in [-128, 128].
    """
    import torch

    rgb = rgb.double()
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    matrix = torch.tensor(SRGB_TO_XYZ, dtype=torch.float64, device=rgb.device)
    white = torch.tensor(D65_WHITE, dtype=torch.float64, device=rgb.device)
    xyz = torch.einsum("ij,...jhw->...ihw", matrix, linear) / white[:, None, None]
    epsilon = (6 / 29) ** 3
    f = torch.where(xyz > epsilon, xyz.clamp_min(epsilon) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def ciede2000(lab1: Tensor, lab2: Tensor) -> Tensor:
    """CIEDE2000 difference of CIELAB colours (kL = kC = kH = 1), Sharma et al. 2005, eqs. (1)-(20).

    Args:
        lab1, lab2: (..., 3, ...) CIELAB along dim -3 (images (N, 3, H, W) or colours (N, 3, 1, 1)).

    Returns:
        the colour differences, the shape without dim -3.
    """
    import math

    import torch

    L1, a1, b1 = lab1.double().unbind(-3)
    L2, a2, b2 = lab2.double().unbind(-3)
    c_mean = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    g = 0.5 * (1 - torch.sqrt(c_mean**7 / (c_mean**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p = torch.rad2deg(torch.atan2(b1, a1p)) % 360  # atan2(0, 0) = 0, eq. (4)'s convention
    h2p = torch.rad2deg(torch.atan2(b2, a2p)) % 360
    chroma_zero = c1p * c2p == 0

    delta_h = h2p - h1p
    delta_h = torch.where(delta_h > 180, delta_h - 360, torch.where(delta_h < -180, delta_h + 360, delta_h))
    delta_h = torch.where(chroma_zero, torch.zeros_like(delta_h), delta_h)
    delta_L = L2 - L1
    delta_C = c2p - c1p
    delta_H = 2 * torch.sqrt(c1p * c2p) * torch.sin(torch.deg2rad(delta_h) / 2)

    L_mean = (L1 + L2) / 2
    cp_mean = (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_mean = torch.where(
        (h1p - h2p).abs() <= 180, h_sum / 2, torch.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)
    )
    h_mean = torch.where(chroma_zero, h_sum, h_mean)

    def cos(degrees: Tensor) -> Tensor:
        return torch.cos(torch.deg2rad(degrees))

    t = 1 - 0.17 * cos(h_mean - 30) + 0.24 * cos(2 * h_mean) + 0.32 * cos(3 * h_mean + 6) - 0.20 * cos(4 * h_mean - 63)
    delta_theta = 30 * torch.exp(-(((h_mean - 275) / 25) ** 2))
    r_c = 2 * torch.sqrt(cp_mean**7 / (cp_mean**7 + 25.0**7))
    s_l = 1 + 0.015 * (L_mean - 50) ** 2 / torch.sqrt(20 + (L_mean - 50) ** 2)
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    r_t = -torch.sin(2 * delta_theta * math.pi / 180) * r_c
    lightness, chroma, hue = delta_L / s_l, delta_C / s_c, delta_H / s_h
    return torch.sqrt((lightness**2 + chroma**2 + hue**2 + r_t * chroma * hue).clamp_min(0))


@dataclass
class CIEDE2000Config(MetricConfig):
    """Options of `CIEDE2000`.

    Attributes:
        reduction: how an image's per-pixel differences become one value: ``"mean"`` (default: the
            mean colour difference, in CIEDE2000 units, where 1 is about a just-noticeable
            difference) or ``"norm"`` (their L2 norm over the pixels, the ``ciede2000_score`` of
            DiffAdvPerturbationBench's ``eval/eval_genpics_batch.py`` and PerC-AL's loss; it grows
            with the image's size).
    """

    reduction: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, got '{self.reduction}'")


class CIEDE2000(PairedMetric):
    """CIEDE2000 colour difference of each pixel from the reference's, on sRGB -> CIELAB (D65),
    reduced per image (mean by default).

    Shape:
        images, references: N pairs of equal sizes, (3, H, W) sRGB in [0, 1] -> N values >= 0.

    Examples:
        >>> CIEDE2000().compute(protected, originals).value
        1.9
    """

    name: ClassVar[str] = "ciede2000"
    Config: ClassVar[type[CIEDE2000Config]] = CIEDE2000Config
    measures: ClassVar[str] = "colour difference from the reference"
    visibility: ClassVar[bool] = True
    higher_is_better: ClassVar[bool] = False
    protected_if: ClassVar[str | None] = None
    unit: ClassVar[str] = "dE00"

    def _pairs(self, images: Tensor, references: Tensor) -> Tensor:
        differences = ciede2000(srgb_to_lab(references), srgb_to_lab(images)).flatten(1)
        if self.config.reduction == "norm":
            return differences.norm(dim=1)
        return differences.mean(dim=1)
