"""Architecture checks: a sidecar's ``architecture`` and ``train -o architecture=...`` are user
input, checked (types, bounds, divisibility) before a network is built or a tensor allocated."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from facedefense.errors import ConfigError


def checked_values(
    network_class: type, architecture: Mapping[str, Any], limits: Mapping[str, tuple[float, float]]
) -> dict[str, Any]:
    """``network_class``'s keyword arguments: its defaults overridden by ``architecture``, every
    value of ``limits`` a number within its ``(low, high)`` bounds (an integer where the default is).

    Raises:
        ConfigError: an unknown argument, a value of the wrong type or out of bounds (one line).
    """
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(network_class).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    unknown = sorted(set(architecture) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown architecture argument(s) {', '.join(map(str, unknown))} (known: {', '.join(defaults)})")
    values = {**defaults, **architecture}
    for key, (low, high) in limits.items():
        value, integer = values[key], isinstance(defaults[key], int)
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise ConfigError(f"architecture {key} must be {kind}, got {value!r}")
        if not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"architecture {key}={value!r} is outside [{low:g}, {high:g}]")
    return values
