"""Defenders: add an imperceptible, budget-bounded perturbation that hinders diffusion models."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.budget import check_budget, project_linf, quantize_within_budget
from facedefense.config import MethodConfig
from facedefense.errors import ConfigError
from facedefense.imaging import check_image_batch
from facedefense.interfaces.base import Method

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class DefenderConfig(MethodConfig):
    """Options of every defender.

    Attributes:
        eps: L-infinity budget in [0, 1] pixel units (8/255 is 8 gray levels). Default: 8/255.
    """

    eps: float = 8 / 255

    def __post_init__(self) -> None:
        if not 0.0 < self.eps <= 1.0:
            raise ConfigError(f"eps {self.eps} is outside (0, 1] (it is in [0, 1] pixel units, e.g. 8/255)")


@dataclass(frozen=True)
class ProtectionResult:
    """What :meth:`Defender.protect` returns.

    Attributes:
        images: protected batch, (N, 3, H, W) float32 in [0, 1], already on the uint8 grid, so that
            saving it writes exactly these values.
        eps: the budget respected, in [0, 1] units.
        linf: per-image ``max |protected - original|`` in gray levels (0-255), measured on the
            quantized values.
        stats: per-image statistics reported by the method (e.g. the final objective value).
    """

    images: Tensor
    eps: float
    linf: list[float]
    stats: list[dict[str, Any]] = field(default_factory=list)


class Defender(Method, abc.ABC):
    """Base class of all protections.

    :meth:`protect` is a template method: it checks the batch, copies it (the input is never
    modified), calls the subclass hook :meth:`_perturb`, projects the result onto the eps-ball and
    [0, 1], snaps it to the uint8 grid inside the budget and verifies the budget. A subclass only
    writes :meth:`_perturb`.

    Attributes:
        kind: ``"iterative"`` (per-image optimization) or ``"amortized"`` (one forward pass of a
            trained network).
    """

    Config: ClassVar[type[DefenderConfig]] = DefenderConfig
    kind: ClassVar[str] = "iterative"

    def protect(self, images: Tensor, *, generator: torch.Generator | None = None) -> ProtectionResult:
        """Protect a batch of images.

        Args:
            images: (N, 3, H, W) float tensor in [0, 1], RGB.
            generator: source of randomness; defaults to one seeded with ``config.seed``, so two
                calls with the same seed give the same result.

        Returns:
            A :class:`ProtectionResult` whose images respect ``config.eps`` after 8-bit quantization.
        """
        import torch

        original = check_image_batch(images).detach().clone()
        eps = self.config.eps
        outcome = self._perturb(original.clone().to(self.device), self.make_generator(generator))
        adversarial, stats = outcome if isinstance(outcome, tuple) else (outcome, [])
        adversarial = adversarial.detach().to(device=original.device, dtype=torch.float32)
        if adversarial.shape != original.shape:
            raise RuntimeError(
                f"{type(self).__name__}._perturb returned shape {tuple(adversarial.shape)}, "
                f"expected {tuple(original.shape)}"
            )
        adversarial = torch.nan_to_num(adversarial, nan=0.0).clamp(0.0, 1.0)
        protected = quantize_within_budget(project_linf(adversarial, original, eps), original, eps)
        linf = check_budget(protected, original, eps)
        return ProtectionResult(images=protected, eps=eps, linf=linf, stats=list(stats))

    @abc.abstractmethod
    def _perturb(
        self, images: Tensor, generator: torch.Generator
    ) -> Tensor | tuple[Tensor, list[dict[str, Any]]]:
        """Return the adversarial images for ``images`` (a private copy, on ``self.device``).

        The result may stray outside the budget slightly (the base projects it), but should not rely
        on that. Optionally return ``(images, per_image_stats)``.
        """


class AmortizedDefender(Defender):
    """A defender that is a trained network: protection is one forward pass.

    Subclasses load their network once (in ``__init__``) and implement :meth:`_perturb` as a batched
    forward pass.
    """

    kind: ClassVar[str] = "amortized"


@dataclass
class IterativeDefenderConfig(DefenderConfig):
    """Options of defenders that optimize each image against a surrogate diffusion model.

    Attributes:
        model: diffusers folder or Hugging Face id of the surrogate (e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``).
        steps: optimization steps per image.
        step_size: signed-gradient step in [0, 1] pixel units.
        resolution: the surrogate sees each image resized so its short side is this many pixels
            (aspect kept, rounded to a multiple of 8); the perturbation itself lives at the original
            resolution and is optimized through the resize. ``None`` feeds the image as it is.
    """

    model: str = ""
    steps: int = 100
    step_size: float = 1 / 255
    resolution: int | None = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if not 0.0 < self.step_size <= 1.0:
            raise ConfigError(f"step_size {self.step_size} is outside (0, 1] ([0, 1] pixel units)")
        if self.resolution is not None and self.resolution < 8:
            raise ConfigError(f"resolution must be at least 8 pixels, got {self.resolution}")
