"""The exceptions facedefense raises.

Every error a user can fix derives from [`FaceDefenseError`][facedefense.errors.FaceDefenseError]; the CLI
prints its message on one line and exits with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FaceDefenseError(Exception):
    """Base class of every error a user can fix."""


class UnknownMethodError(FaceDefenseError, KeyError):
    """No method of that kind and name is registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateMethodError(FaceDefenseError):
    """Two plugins registered the same name (or alias) for the same kind of method."""


class PluginLoadError(FaceDefenseError):
    """A plugin could not be imported or registered."""


class MissingDependencyError(FaceDefenseError, ImportError):
    """An optional dependency of a method is not installed."""


class ConfigError(FaceDefenseError, ValueError):
    """A method option is unknown or has a bad value."""


class ImageError(FaceDefenseError, ValueError):
    """An input image cannot be read, or a tensor breaks the image-batch contract."""


class BudgetViolationError(FaceDefenseError):
    """A protected image exceeds its L-infinity budget after 8-bit quantization."""


class ModelNotFoundError(FaceDefenseError, OSError):
    """A diffusion model or checkpoint cannot be found or read."""


class OutputError(FaceDefenseError, OSError):
    """The output location is unusable (not writable, or it would overwrite an input)."""


class ResumeError(FaceDefenseError):
    """A run cannot be resumed: its saved state belongs to another method, budget or input."""
