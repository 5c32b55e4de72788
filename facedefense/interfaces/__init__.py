"""The abstract interfaces every plugin implements."""

from facedefense.interfaces.base import Method
from facedefense.interfaces.defender import (
    AmortizedDefender,
    Defender,
    DefenderConfig,
    IterativeDefenderConfig,
    ProtectionResult,
)
from facedefense.interfaces.editor import Editor, EditorConfig
from facedefense.interfaces.metric import Metric, MetricConfig, MetricResult
from facedefense.interfaces.personalizer import PersonalizedModel, Personalizer, PersonalizerConfig
from facedefense.interfaces.purifier import Purifier, PurifierConfig

__all__ = [
    "AmortizedDefender",
    "Defender",
    "DefenderConfig",
    "Editor",
    "EditorConfig",
    "IterativeDefenderConfig",
    "Method",
    "Metric",
    "MetricConfig",
    "MetricResult",
    "PersonalizedModel",
    "Personalizer",
    "PersonalizerConfig",
    "ProtectionResult",
    "Purifier",
    "PurifierConfig",
]
