"""Defenders: add an imperceptible, budget-bounded perturbation that hinders diffusion models."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from facedefense.budget import check_budget, project_linf, quantize_within_budget
from facedefense.config import MethodConfig
from facedefense.errors import ConfigError
from facedefense.imaging import check_image_batch, group_by_size
from facedefense.interfaces.base import Method
from facedefense.interfaces.identity import IdentitySet

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
    """What [`Defender.protect`][facedefense.interfaces.defender.Defender.protect] returns for a batch.

    Attributes:
        images: protected batch, (N, 3, H, W) float32 in [0, 1], already on the uint8 grid, so that
            saving it writes exactly these values.
        eps: the budget respected, in [0, 1] units.
        linf: per-image ``max |protected - original|`` in gray levels (0-255), measured on the
            quantized values.
        stats: per-image statistics reported by the method (e.g. the final objective value).
        artifacts: by-products of the run (e.g. the path of a fine-tuned surrogate).
    """

    images: Tensor
    eps: float
    linf: list[float]
    stats: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IdentityProtection:
    """What [`Defender.protect_identity`][facedefense.interfaces.defender.Defender.protect_identity] returns.

    Attributes:
        images: protected photos, each (3, H, W) float32 on the uint8 grid, in the identity's order.
        names: their names.
        eps: the budget respected, in [0, 1] units.
        linf: per-image distance in gray levels, measured on the quantized values.
        stats: per-image statistics reported by the method.
        artifacts: by-products (paths), recorded in the manifest.
    """

    images: list[Tensor]
    names: list[str]
    eps: float
    linf: list[float]
    stats: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Perturbation:
    """What an identity-scoped hook may return: adversarial photos plus stats and by-products."""

    images: list[Tensor]
    stats: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)


class Defender(Method, abc.ABC):
    """Base class of all protections.

    [`protect`][facedefense.interfaces.defender.Defender.protect] (a batch) and
    [`protect_identity`][facedefense.interfaces.defender.Defender.protect_identity] (one person's photos of
    any sizes, with references) are template methods: they check and copy the inputs (never modified), call
    the subclass hook, project onto the eps-ball and [0, 1], snap to the uint8 grid inside the budget
    and verify the budget, image by image. A subclass writes one hook, according to its scope:

    - ``scope = "image"``: ``_perturb`` sees a same-size batch; images are independent.
    - ``scope = "identity"``: ``_perturb_identity`` sees an
      [`IdentitySet`][facedefense.interfaces.identity.IdentitySet] (the photos, the clean references, the
      prompts) and may leave by-products in ``workdir``.

    Attributes:
        kind: ``"iterative"`` (per-image optimization) or ``"amortized"`` (a trained network).
        scope: ``"image"`` or ``"identity"``.
    """

    Config: ClassVar[type[DefenderConfig]] = DefenderConfig
    kind: ClassVar[str] = "iterative"
    scope: ClassVar[Literal["image", "identity"]] = "image"

    def protect(self, images: Tensor, *, generator: torch.Generator | None = None) -> ProtectionResult:
        """Protect a batch of images.

        An identity-scoped defender protects the batch as one identity without references (the
        photos serve as the clean set).

        Args:
            images: (N, 3, H, W) float tensor in [0, 1], RGB.
            generator: source of randomness; defaults to one seeded with ``config.seed``, so two
                calls with the same seed give the same result.

        Returns:
            A [`ProtectionResult`][facedefense.interfaces.defender.ProtectionResult] whose images respect
            ``config.eps`` after 8-bit quantization.
        """
        import torch

        original = check_image_batch(images).detach().clone()
        if self.scope == "identity":
            outcome = self.protect_identity(IdentitySet.from_images(original), generator=generator)
            return ProtectionResult(
                torch.stack(outcome.images), outcome.eps, outcome.linf, outcome.stats, outcome.artifacts
            )
        result = self._perturb(self._to_device(original), self.make_generator(generator))
        adversarial, stats = result if isinstance(result, tuple) else (result, [])
        protected, linf = self._finish(self._check_output(adversarial, original, "_perturb"), original)
        return ProtectionResult(images=protected, eps=self.config.eps, linf=linf, stats=list(stats))

    def protect_identity(
        self,
        identity: IdentitySet,
        *,
        generator: torch.Generator | None = None,
        workdir: str | Path | None = None,
        batch_size: int | None = None,
    ) -> IdentityProtection:
        """Protect one person's photos (any sizes), learning from their clean references.

        Args:
            identity: the photos, names, references and prompts.
            generator: source of randomness (default: seeded with ``config.seed``).
            workdir: a private folder for by-products and resumable state (identity scope).
            batch_size: image scope only: at most this many same-size photos per
                [`protect`][facedefense.interfaces.defender.Defender.protect] call (default: all of a size at
                once).

        Returns:
            An [`IdentityProtection`][facedefense.interfaces.defender.IdentityProtection] in the identity's
            order, each image within the budget.
        """
        originals = [image.detach().clone() for image in identity.images]
        generator = self.make_generator(generator)
        if self.scope == "image":
            protected: list[Tensor | None] = [None] * len(originals)
            linf: list[float] = [0.0] * len(originals)
            stats: list[dict[str, Any]] = [{} for _ in originals]
            for indices, batch in group_by_size(originals, batch_size):
                result = self.protect(batch, generator=generator)
                for position, index in enumerate(indices):
                    protected[index] = result.images[position]
                    linf[index] = result.linf[position]
                    stats[index] = result.stats[position] if position < len(result.stats) else {}
            return IdentityProtection(list(protected), list(identity.names), self.config.eps, linf, stats)
        work = Path(workdir) if workdir is not None else None
        if work is not None:
            work.mkdir(parents=True, exist_ok=True)
        private = IdentitySet(
            [self._to_device(image[None])[0] for image in originals],
            list(identity.names),
            [self._to_device(image[None])[0] for image in identity.references],
            identity.name,
            identity.instance_prompt,
            identity.class_prompt,
        )
        outcome = self._perturb_identity(private, generator, work)
        if not isinstance(outcome, Perturbation):
            outcome = Perturbation(list(outcome))
        if len(outcome.images) != len(originals):
            raise RuntimeError(
                f"{type(self).__name__}._perturb_identity returned {len(outcome.images)} image(s) for {len(originals)}"
            )
        images, linf = [], []
        for adversarial, original in zip(outcome.images, originals):
            checked = self._check_output(adversarial[None] if adversarial.ndim == 3 else adversarial, original[None], "_perturb_identity")
            image, levels = self._finish(checked, original[None])
            images.append(image[0])
            linf.append(levels[0])
        return IdentityProtection(images, list(identity.names), self.config.eps, linf, list(outcome.stats), dict(outcome.artifacts))

    def _finish(self, adversarial: Tensor, original: Tensor) -> tuple[Tensor, list[float]]:
        """Project, snap onto the uint8 grid inside the budget, and verify it."""
        eps = self.config.eps
        protected = quantize_within_budget(project_linf(adversarial, original, eps), original, eps)
        return protected, check_budget(protected, original, eps)

    def _perturb(
        self, images: Tensor, generator: torch.Generator
    ) -> Tensor | tuple[Tensor, list[dict[str, Any]]]:
        """Image scope: return the adversarial images for ``images`` (a private copy on ``self.device``).

        The result may stray outside the budget slightly (the base projects it), but should not rely
        on that. Optionally return ``(images, per_image_stats)``.
        """
        raise NotImplementedError(f"{type(self).__name__} (scope 'image') must implement _perturb")

    def _perturb_identity(
        self, identity: IdentitySet, generator: torch.Generator, workdir: Path | None
    ) -> list[Tensor] | Perturbation:
        """Identity scope: return one adversarial (3, H, W) image per photo of ``identity``
        (private copies on ``self.device``), or a
        [`Perturbation`][facedefense.interfaces.defender.Perturbation] with stats and by-products."""
        raise NotImplementedError(f"{type(self).__name__} (scope 'identity') must implement _perturb_identity")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.scope not in ("image", "identity"):
            raise TypeError(f"{cls.__name__}.scope must be 'image' or 'identity', got {cls.scope!r}")


@dataclass
class AmortizedDefenderConfig(DefenderConfig):
    """Options of defenders that are trained networks.

    Attributes:
        checkpoint: path of the network weights.
        eps: L-infinity budget in [0, 1] units. Default None: the budget the checkpoint was trained
            for (the network's output is scaled by it), read from its metadata or official name; the
            defender's config then carries the resolved value.
    """

    checkpoint: str = ""
    eps: float | None = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.eps is not None:
            super().__post_init__()


class AmortizedDefender(Defender):
    """A defender that is a trained network: protection is one forward pass.

    Subclasses load their network once (in ``__init__``), keep the trainable module as
    ``self.network`` and the fastest inference path as ``self.engine`` (they may be the same
    object), and implement ``_perturb`` as a batched forward pass.
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
