"""facedefense: protect portrait photos against diffusion-model personalization and editing.

The package imports no torch at start-up; the interfaces, I/O and toolkit resolve lazily::

    import facedefense
    defender = facedefense.create("defender", "photoguard", model="path/to/sd", eps=8 / 255)
    result = defender.protect(images)          # images: (N, 3, H, W) float in [0, 1]
"""

from __future__ import annotations

import importlib
from typing import Any

from facedefense.errors import (
    BudgetViolationError,
    ConfigError,
    DuplicateMethodError,
    FaceDefenseError,
    ImageError,
    MissingDependencyError,
    ModelNotFoundError,
    OutputError,
    PluginLoadError,
    UnknownMethodError,
)
from facedefense.hookspecs import hookimpl
from facedefense.registry import get_registry

__version__ = "0.1.0"

_LAZY = {
    "Method": "facedefense.interfaces",
    "Defender": "facedefense.interfaces",
    "AmortizedDefender": "facedefense.interfaces",
    "AmortizedDefenderConfig": "facedefense.interfaces",
    "DefenderConfig": "facedefense.interfaces",
    "IterativeDefenderConfig": "facedefense.interfaces",
    "ProtectionResult": "facedefense.interfaces",
    "Purifier": "facedefense.interfaces",
    "PurifierConfig": "facedefense.interfaces",
    "Personalizer": "facedefense.interfaces",
    "PersonalizerConfig": "facedefense.interfaces",
    "PersonalizedModel": "facedefense.interfaces",
    "Editor": "facedefense.interfaces",
    "EditorConfig": "facedefense.interfaces",
    "Metric": "facedefense.interfaces",
    "MetricConfig": "facedefense.interfaces",
    "MetricResult": "facedefense.interfaces",
    "MetricScores": "facedefense.interfaces",
    "PairedMetric": "facedefense.interfaces",
    "IdentitySet": "facedefense.interfaces",
    "IdentityProtection": "facedefense.interfaces",
    "Perturbation": "facedefense.interfaces",
    "load_personalized": "facedefense.interfaces",
    "shared_model": "facedefense.models",
    "load_image": "facedefense.io",
    "load_images": "facedefense.io",
    "save_image": "facedefense.io",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facedefense' has no attribute '{name}'")


def create(kind: str, name: str, **options: Any) -> Any:
    """Build a registered method by name, recording the plugin that supplies it (the one
    construction path; the CLI uses it too): ``create("defender", "photoguard", eps=8/255)``."""
    return get_registry().create(kind, name, **options)


__all__ = [
    "BudgetViolationError",
    "ConfigError",
    "DuplicateMethodError",
    "FaceDefenseError",
    "ImageError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "OutputError",
    "PluginLoadError",
    "UnknownMethodError",
    "create",
    "get_registry",
    "hookimpl",
    *_LAZY,
]
