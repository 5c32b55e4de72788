"""The abstract interfaces every plugin implements."""

from facedefense.interfaces.base import Method
from facedefense.interfaces.defender import (
    AmortizedDefender,
    AmortizedDefenderConfig,
    Defender,
    DefenderConfig,
    IdentityProtection,
    IterativeDefenderConfig,
    Perturbation,
    ProtectionResult,
)
from facedefense.interfaces.editor import Editor, EditorConfig
from facedefense.interfaces.identity import IdentitySet
from facedefense.interfaces.metric import Metric, MetricConfig, MetricResult, MetricScores, PairedMetric
from facedefense.interfaces.personalizer import (
    PersonalizedModel,
    Personalizer,
    PersonalizerConfig,
    load_personalized,
)
from facedefense.interfaces.purifier import Purifier, PurifierConfig

__all__ = [
    "AmortizedDefender",
    "AmortizedDefenderConfig",
    "Defender",
    "DefenderConfig",
    "Editor",
    "EditorConfig",
    "IdentityProtection",
    "IdentitySet",
    "IterativeDefenderConfig",
    "Method",
    "Metric",
    "MetricConfig",
    "MetricResult",
    "MetricScores",
    "PairedMetric",
    "PersonalizedModel",
    "Personalizer",
    "PersonalizerConfig",
    "Perturbation",
    "ProtectionResult",
    "Purifier",
    "PurifierConfig",
    "load_personalized",
]
