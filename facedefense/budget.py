"""L-infinity budgets, in [0, 1] pixel units, and the 8-bit honesty check.

A budget ``eps`` bounds ``max |protected - original|`` over every pixel and channel. Reference code
often works in [-1, 1], where the same number means twice as much: Anti-DreamBooth's 0.05 is
6.4/255 here. A protected image is only honest if the budget still holds *after* it is written as
8-bit: [`quantize_within_budget`][facedefense.budget.quantize_within_budget] snaps to the uint8 grid inside
the budget and [`linf_gray_levels`][facedefense.budget.linf_gray_levels] measures what was written.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from facedefense.errors import BudgetViolationError, ConfigError

if TYPE_CHECKING:
    from torch import Tensor

_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*$")
#: Slack for float round-off when comparing on the 0-255 scale (far below one gray level).
_TOLERANCE = 1e-4


def parse_fraction(value: str, key: str = "value") -> float:
    """Parse ``"8/255"`` or ``"0.0314"`` into a float (the one number parser of every option).

    Raises:
        ConfigError: neither a number nor a fraction ``a/b``.

    Examples:
        >>> parse_fraction("1/4")
        0.25
    """
    match = _FRACTION.match(value)
    try:
        number = float(match.group(1)) / float(match.group(2)) if match else float(value)
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"option '{key}' must be a number or a fraction like 8/255, got {value!r}") from exc
    if not math.isfinite(number):
        raise ConfigError(f"option '{key}' must be a finite number, got {value!r}")
    return number


def parse_budget(value: str | float) -> float:
    """Parse a budget given as ``"8/255"``, ``"0.0314"`` or a float, in [0, 1] units.

    Raises:
        ConfigError: not a number, or outside (0, 1].

    Examples:
        >>> round(parse_budget("8/255") * 255, 6)
        8.0
    """
    if isinstance(value, (int, float)):
        eps = float(value)
    else:
        try:
            eps = parse_fraction(value, "eps")
        except ConfigError as exc:
            raise ConfigError(f"bad budget '{value}': use a fraction like 8/255 or a number like 0.0314") from exc
    if not math.isfinite(eps) or not 0.0 < eps <= 1.0:
        raise ConfigError(f"budget {value} is outside (0, 1]; in [0, 1] pixel units 8/255 is typical")
    return eps


def project_linf(adversarial: Tensor, original: Tensor, eps: float) -> Tensor:
    """Project onto the L-infinity ball of radius ``eps`` around ``original`` and onto [0, 1]."""
    delta = (adversarial - original).clamp(-eps, eps)
    return (original + delta).clamp(0.0, 1.0)


def quantize_within_budget(adversarial: Tensor, original: Tensor, eps: float) -> Tensor:
    """Round to the uint8 grid while keeping ``|q - original| <= eps`` and q in [0, 1].

    Each value is rounded to the nearest multiple of 1/255 that lies inside
    ``[original - eps, original + eps]``, so the image written to disk respects the budget exactly,
    also when ``eps * 255`` is not an integer or the original is not 8-bit. An 8-bit original (the
    usual case) is handled in float32 integer arithmetic, exactly; any other in float64.

    Raises:
        BudgetViolationError: the budget is below half a gray level around an off-grid original.
    """
    import torch

    e255 = eps * 255.0
    grid = _grid_levels(original)
    if grid is not None:  # integer levels: the window is [x - reach, x + reach] within [0, 255]
        reach = float(math.floor(e255 + _TOLERANCE))
        q = torch.round(adversarial.float() * 255.0).sub_(grid).clamp_(-reach, reach).add_(grid).clamp_(0.0, 255.0)
        return q.div_(255.0).to(adversarial.dtype)
    x255 = _gray_levels(original)
    low = torch.ceil(x255 - e255 - _TOLERANCE).clamp(0, 255)
    high = torch.floor(x255 + e255 + _TOLERANCE).clamp(0, 255)
    if bool((low > high).any()):
        raise BudgetViolationError(
            f"budget {eps:.6f} is too small to represent in 8 bits around this image; use at least 1/255"
        )
    q = torch.round(adversarial.double() * 255.0).clamp(low, high)
    return (q / 255.0).to(adversarial.dtype)


def _grid_levels(images: Tensor) -> Tensor | None:
    """The 0-255 integer levels (float32) of an image lying on the 8-bit grid, else None."""
    import torch

    levels = images.float() * 255.0
    snapped = torch.round(levels)
    if float(levels.sub_(snapped).abs_().amax()) < _TOLERANCE:
        return snapped
    return None


def _gray_levels(images: Tensor) -> Tensor:
    """Values on the 0-255 scale in float64; float32 round-off of 8-bit values is snapped away."""
    import torch

    levels = images.double() * 255.0
    snapped = torch.round(levels)
    return torch.where((levels - snapped).abs() < _TOLERANCE, snapped, levels)


def linf_gray_levels(protected: Tensor, original: Tensor) -> list[float]:
    """Per-image ``max |protected - original|`` in gray levels (0-255 scale).

    Computed in float32 (its round-off is below 2e-5 gray levels); a maximum within round-off of a
    whole number of levels is reported as that number.
    """
    import torch

    diff = torch.sub(protected.float(), original.float()).abs_().flatten(1).amax(dim=1).double() * 255.0
    levels = []
    for value in diff.tolist():
        whole = round(value)
        levels.append(float(whole) if abs(value - whole) < _TOLERANCE else value)
    return levels


def check_budget(protected: Tensor, original: Tensor, eps: float) -> list[float]:
    """Measure each image's L-infinity distance and raise if any exceeds ``eps``.

    Returns:
        Per-image distances in gray levels.

    Raises:
        BudgetViolationError: an image exceeds its budget (beyond float round-off).
    """
    levels = linf_gray_levels(protected, original)
    limit = eps * 255.0 + _TOLERANCE
    for index, level in enumerate(levels):
        if level > limit:
            raise BudgetViolationError(
                f"image {index} differs by {level:.3f} gray levels, over its budget of {eps * 255:.3f}"
            )
    return levels
