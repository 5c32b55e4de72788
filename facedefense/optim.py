"""The optimization engine shared by the iterative defenders (and open to third-party ones).

Three pieces, each usable alone:

- [`LinfPGD`][facedefense.optim.LinfPGD]: L-infinity projected sign-gradient ascent or descent on a per-image
  objective, with random start, constant or decaying steps, momentum (MI-FGSM), expectation over
  transformations, a progress bar that shows the objective, and a state that can be saved and
  resumed. [`linf_pgd`][facedefense.optim.linf_pgd] is its one-call form.
- [`EOT`][facedefense.optim.EOT]: expectation over transformations through registered purifiers'
  ``purify_differentiable`` (``EOT.from_names("jpeg,blur")``; ``none`` is the identity).
- [`RunCheckpoint`][facedefense.optim.RunCheckpoint]: atomic save/restore of a long run's state (rounds of an
  outer loop) in a work folder, keyed by what defines the run, so ``--resume`` continues it bit for bit and
  refuses a folder made by another method or budget.

All randomness comes from the ``torch.Generator`` passed in; resuming restores its state too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from facedefense.budget import project_linf
from facedefense.errors import ConfigError, ResumeError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

Schedule = Literal["constant", "linear", "cosine"]
SCHEDULES = ("constant", "linear", "cosine")


def step_size_at(step_size: float, step: int, total: int, schedule: Schedule = "constant") -> float:
    """Size of step ``step`` (0-based) of ``total``: constant, linear or cosine decay to 1/100.

    Examples:
        >>> [round(step_size_at(1.0, i, 3, "linear"), 2) for i in range(3)]
        [1.0, 0.67, 0.34]
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown step schedule '{schedule}'; expected one of {', '.join(SCHEDULES)}")
    final = step_size / 100
    if schedule == "constant" or total <= 0:
        return step_size
    if schedule == "linear":
        return step_size - (step_size - final) * step / total
    return final + (step_size - final) * 0.5 * (1 + math.cos(math.pi * step / total))


def step_sizes(step_size: float, steps: int, schedule: Schedule = "constant") -> list[float]:
    """Per-step sizes: constant, or a linear (PhotoGuard's) or cosine decay to ``step_size / 100``.

    Examples:
        ``step_sizes(1.0, 3, "linear")`` gives ``[1.0, 0.67, 0.34]``.
    """
    return [step_size_at(step_size, i, steps, schedule) for i in range(steps)]


# ----------------------------------------------------------------------------------------------
# Expectation over transformations


class EOT:
    """Expectation over transformations: the objective is averaged over random transforms.

    Each of ``samples`` draws picks one transform uniformly at random (with the run's generator)
    and applies it before the objective; gradients flow through the transform
    (a purifier's ``purify_differentiable``: a differentiable approximation, or straight-through).

    Args:
        transforms: (name, callable) pairs; a callable maps ``(images, generator)`` to images of
            the same shape.
        samples: draws per optimization step (the objective is averaged over them).

    Examples:
        >>> eot = EOT.from_names("none,jpeg", device="cpu", samples=2)
        >>> pgd = LinfPGD(eps=8 / 255, step_size=1 / 255, eot=eot)
    """

    def __init__(self, transforms: Sequence[tuple[str, Callable[..., Tensor]]], *, samples: int = 1) -> None:
        if not transforms:
            raise ConfigError("EOT needs at least one transform")
        if samples < 1:
            raise ConfigError(f"eot samples must be at least 1, got {samples}")
        self.transforms = list(transforms)
        self.samples = samples

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.transforms]

    @classmethod
    def from_names(
        cls,
        spec: str | Sequence[str] | None,
        *,
        device: torch.device | str = "cpu",
        samples: int = 1,
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> EOT | None:
        """Build from purifier names (``"jpeg,blur"`` or a list); ``none`` is the identity.

        Names resolve through the registry, so any installed purifier works. Returns None for an
        empty spec. ``options`` gives per-purifier constructor options (``{"jpeg": {"quality": 50}}``).

        Raises:
            UnknownMethodError: a name that is not a registered purifier.
        """
        names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else (spec or [])) if n.strip()]
        if not names:
            return None
        from facedefense.registry import get_registry

        transforms: list[tuple[str, Callable[..., Tensor]]] = []
        for name in names:
            if name in ("none", "identity"):
                transforms.append((name, lambda images, generator: images))
                continue
            purifier = get_registry().load("purifier", name)(device=str(device), **dict((options or {}).get(name, {})))

            def apply(images: Tensor, generator: torch.Generator, _p: Any = purifier) -> Tensor:
                return _p.purify_differentiable(images, generator=generator)

            transforms.append((purifier.name or name, apply))
        return cls(transforms, samples=samples)

    def draw(self, generator: torch.Generator | None) -> list[tuple[str, Callable[..., Tensor]]]:
        """The transforms of one step: ``samples`` uniform draws."""
        import torch

        if len(self.transforms) == 1:
            return self.transforms * self.samples
        device = generator.device if generator is not None else "cpu"
        picks = torch.randint(len(self.transforms), (self.samples,), generator=generator, device=device)
        return [self.transforms[int(i)] for i in picks]


# ----------------------------------------------------------------------------------------------
# Projected sign-gradient optimization


@dataclass
class PGDState:
    """Where an optimization stands; everything needed to continue it exactly.

    Attributes:
        adversarial: current images, (N, 3, H, W) in [0, 1].
        step: steps taken so far (the step schedule continues from here).
        momentum: accumulated gradient direction (None without momentum).
        objective: the per-image objective at the last step (None before the first).
    """

    adversarial: Tensor
    step: int = 0
    momentum: Tensor | None = None
    objective: Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        """Tensors on the CPU, for [`RunCheckpoint`][facedefense.optim.RunCheckpoint]."""
        return {
            "adversarial": self.adversarial.detach().cpu(),
            "step": self.step,
            "momentum": None if self.momentum is None else self.momentum.detach().cpu(),
            "objective": None if self.objective is None else self.objective.detach().cpu(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], device: torch.device | str = "cpu") -> PGDState:
        def move(value: Any) -> Any:
            return None if value is None else value.to(device)

        return cls(move(state["adversarial"]), int(state["step"]), move(state["momentum"]), move(state["objective"]))


class LinfPGD:
    """L-infinity projected sign-gradient optimizer of a per-image objective.

    One step: ``x <- Proj_{B(x0, eps) ∩ [0,1]}(x ± a_k * sign(g))`` where ``g`` is the gradient of
    the (EOT-averaged) objective, or with ``momentum = mu > 0`` the MI-FGSM direction
    ``g_k = mu * g_{k-1} + grad / mean|grad|`` (per image).

    Args:
        eps: L-infinity budget in [0, 1] units.
        step_size: sign step in [0, 1] units (first step of a decaying schedule).
        minimize: descend the objective (targeted attacks); ascend it otherwise.
        schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` decay to ``step_size / 100`` over
            ``total_steps``.
        total_steps: length of the schedule (the sum of all [`run`][facedefense.optim.LinfPGD.run] calls of
            one optimization, e.g. rounds x steps per round); default: the ``steps`` of each call.
        momentum: MI-FGSM decay ``mu`` (0 = plain sign steps).
        random_start: [`start`][facedefense.optim.LinfPGD.start] draws a uniform point of the eps-ball.
        eot: expectation over transformations ([`EOT`][facedefense.optim.EOT]), or None.
        description: label of the progress bar.
        progress: show a progress bar (None: the library's setting,
            [`facedefense.progress`][facedefense.progress]).

    Examples:
        >>> pgd = LinfPGD(eps=8 / 255, step_size=1 / 255, random_start=True)
        >>> state = pgd.start(images, generator)
        >>> state = pgd.run(images, lambda x: loss_per_image(x), state, steps=50, generator=generator)
        >>> protected = state.adversarial
    """

    def __init__(
        self,
        *,
        eps: float,
        step_size: float,
        minimize: bool = False,
        schedule: Schedule = "constant",
        total_steps: int | None = None,
        momentum: float = 0.0,
        random_start: bool = False,
        eot: EOT | None = None,
        description: str = "PGD",
        progress: bool | None = None,
    ) -> None:
        if not 0.0 < eps <= 1.0:
            raise ConfigError(f"eps {eps} is outside (0, 1] ([0, 1] pixel units)")
        if step_size <= 0:
            raise ConfigError(f"step_size must be positive, got {step_size}")
        if schedule not in SCHEDULES:
            raise ConfigError(f"unknown step schedule '{schedule}'; expected one of {', '.join(SCHEDULES)}")
        if not 0.0 <= momentum:
            raise ConfigError(f"momentum must be >= 0, got {momentum}")
        self.eps = eps
        self.step_size = step_size
        self.minimize = minimize
        self.schedule = schedule
        self.total_steps = total_steps
        self.momentum = momentum
        self.random_start = random_start
        self.eot = eot
        self.description = description
        self.progress = progress

    def start(self, images: Tensor, generator: torch.Generator | None = None) -> PGDState:
        """The initial state: the images themselves, or a uniform point of the eps-ball."""
        import torch

        adversarial = images.detach().clone()
        if self.random_start:
            device = generator.device if generator is not None else "cpu"
            noise = torch.rand(images.shape, generator=generator, device=device).to(images.device, images.dtype)
            adversarial = project_linf(adversarial + (noise * 2 - 1) * self.eps, images, self.eps)
        return PGDState(adversarial)

    def evaluate(self, objective: Callable[[Tensor], Tensor], images: Tensor, generator: torch.Generator | None) -> Tensor:
        """The objective of ``images`` averaged over the EOT draws (per image, (N,))."""
        if self.eot is None:
            return objective(images)
        values = [transform(images, generator) for _, transform in self.eot.draw(generator)]
        return sum(objective(value) for value in values) / len(values)

    def step(
        self,
        images: Tensor,
        objective: Callable[[Tensor], Tensor],
        state: PGDState,
        *,
        generator: torch.Generator | None = None,
        total: int | None = None,
        parameters: Sequence[Tensor] = (),
    ) -> PGDState:
        """One projected sign step from ``state``; ``images`` are the originals (the ball's centre).

        ``parameters``: tensors (a surrogate's trainable weights) whose gradients of the same
        objective's sum come out of the same backward pass and are added to their ``.grad``, so a
        method that also trains its surrogate on this loss (CAAT) needs no second backward pass.
        """
        import torch

        adversarial = state.adversarial.detach().requires_grad_(True)
        loss = self.evaluate(objective, adversarial, generator)
        gradient, *others = torch.autograd.grad(loss.sum(), [adversarial, *parameters], allow_unused=bool(parameters))
        with torch.no_grad():
            for parameter, grad in zip(parameters, others):
                if grad is not None:
                    parameter.grad = grad if parameter.grad is None else parameter.grad + grad
            direction = gradient
            momentum = state.momentum
            if self.momentum > 0:
                scale = gradient.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *[1] * (gradient.ndim - 1))
                momentum = gradient / scale if momentum is None else self.momentum * momentum + gradient / scale
                direction = momentum
            size = step_size_at(self.step_size, state.step, total or self.total_steps or state.step + 1, self.schedule)
            sign = -1.0 if self.minimize else 1.0
            moved = project_linf(adversarial + sign * size * direction.sign(), images, self.eps)
        return PGDState(moved.detach(), state.step + 1, momentum, loss.detach())

    def run(
        self,
        images: Tensor,
        objective: Callable[[Tensor], Tensor],
        state: PGDState | None = None,
        *,
        steps: int,
        generator: torch.Generator | None = None,
        bar: Any = None,
        on_step: Callable[[PGDState], None] | None = None,
    ) -> PGDState:
        """Take ``steps`` steps from ``state`` (default [`start`][facedefense.optim.LinfPGD.start]).

        Args:
            images: the originals, (N, 3, H, W) in [0, 1]; not modified.
            objective: adversarial images -> per-image objective (N,); it may draw its own randomness
                (timesteps, noise) from the same generator.
            state: where to continue from.
            steps: steps of this call.
            generator: randomness of the start and of EOT draws.
            bar: an existing tqdm bar to advance (its postfix shows the objective); else one is made.
            on_step: called with the new state after every step (checkpointing, logging).
        """
        from facedefense.progress import bar as progress_bar
        from facedefense.progress import progress_enabled_as

        state = self.start(images, generator) if state is None else state
        total = self.total_steps or (state.step + steps)
        own = bar is None
        if own:
            with progress_enabled_as(self.progress):
                bar = progress_bar(total=steps, desc=self.description)
        try:
            for _ in range(steps):
                state = self.step(images, objective, state, generator=generator, total=total)
                bar.update(1)
                bar.set_postfix(objective=f"{state.objective.mean().item():.4g}", refresh=False)
                if on_step is not None:
                    on_step(state)
        finally:
            if own:
                bar.close()
        return state


def linf_pgd(
    images: Tensor,
    objective: Callable[[Tensor], Tensor],
    *,
    eps: float,
    steps: int,
    step_size: float,
    minimize: bool,
    schedule: Schedule = "constant",
    random_start: bool = False,
    momentum: float = 0.0,
    eot: EOT | None = None,
    generator: torch.Generator | None = None,
    checkpoint: RunCheckpoint | None = None,
    checkpoint_every: int = 10,
    description: str = "PGD",
    progress: bool | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """L-infinity projected sign-gradient descent (or ascent) on a per-image objective, in one call.

    Args:
        images: (N, 3, H, W) float32 in [0, 1]; not modified.
        objective: maps adversarial images to a per-image loss of shape (N,).
        eps: L-infinity budget in [0, 1] units.
        steps: number of steps.
        step_size: sign step in [0, 1] units (first step of a decaying schedule).
        minimize: descend the objective (targeted attacks) instead of ascending it.
        schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` decay to ``step_size / 100``.
        random_start: start from a uniform point of the eps-ball.
        momentum: MI-FGSM momentum (0 = none).
        eot: expectation over transformations ([`EOT`][facedefense.optim.EOT]).
        generator: randomness of the start and EOT draws.
        checkpoint: save the state every ``checkpoint_every`` steps and continue from a saved one.
        description: label of the progress bar.
        progress: show the bar (None: the library's setting, [`facedefense.progress`][facedefense.progress]).

    Returns:
        The adversarial images, the objective at the first step and after the last step (each (N,)).

    Examples:
        >>> adversarial, start, end = linf_pgd(x, loss, eps=8 / 255, steps=50, step_size=1 / 255, minimize=False)
    """
    import torch

    pgd = LinfPGD(
        eps=eps, step_size=step_size, minimize=minimize, schedule=schedule, total_steps=steps, momentum=momentum,
        random_start=random_start, eot=eot, description=description, progress=progress,
    )
    state: PGDState | None = None
    first: Tensor | None = None
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        state = PGDState.from_state_dict(saved["pgd"], images.device)
        first = saved["first"].to(images.device)
        restore_generator(generator, saved["generator"])

    def on_step(current: PGDState) -> None:
        nonlocal first
        first = current.objective if first is None else first
        if checkpoint is not None and (current.step % max(1, checkpoint_every) == 0 or current.step == steps):
            checkpoint.save({"pgd": current.state_dict(), "first": first.cpu(), "generator": generator_state(generator)})

    state = pgd.run(images, objective, state, steps=steps - (state.step if state else 0), generator=generator, on_step=on_step)
    with torch.no_grad():
        final = objective(state.adversarial)
    first = final if first is None else first
    return state.adversarial.detach(), first, final.detach()


# ----------------------------------------------------------------------------------------------
# Checkpoint / resume


def generator_state(generator: torch.Generator | None) -> Tensor | None:
    """The generator's state (a CPU byte tensor), or None."""
    return None if generator is None else generator.get_state().cpu()


def restore_generator(generator: torch.Generator | None, state: Tensor | None) -> None:
    """Put a generator back where [`generator_state`][facedefense.optim.generator_state] found it."""
    if generator is not None and state is not None:
        generator.set_state(state)


class RunCheckpoint:
    """Atomic save/restore of a long run's state in a work folder.

    ``key`` names what defines the run (method, budget, steps, seed, inputs, ...): JSON-able values.
    ``load`` returns the last saved state, or None when there is none; a state saved under
    another key raises [`ResumeError`][facedefense.errors.ResumeError] naming the first difference (a
    folder from another method or budget is never silently continued). ``save`` writes to a
    temporary file then renames it, so an interrupted save leaves the previous state intact.

    Args:
        workdir: the folder (created); None disables checkpointing (load gives None, save nothing).
        key: what must match to resume.
        name: file name inside ``workdir``.

    Examples:
        >>> ckpt = RunCheckpoint(workdir, {"method": "aspl", "eps": 0.025, "rounds": 50})
        >>> saved = ckpt.load()                     # None on a fresh run
        >>> for round in range(saved["round"] if saved else 0, 50):
        ...     ...
        ...     ckpt.save({"round": round + 1, "images": delta, "generator": generator_state(g)})
    """

    def __init__(self, workdir: str | Path | None, key: Mapping[str, Any], *, name: str = "state.pt") -> None:
        self.workdir = None if workdir is None else Path(workdir)
        self.key = _jsonable(dict(key))
        self.name = name

    @property
    def path(self) -> Path | None:
        return None if self.workdir is None else self.workdir / self.name

    def load(self) -> dict[str, Any] | None:
        import torch

        if self.path is None or not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
            raise ResumeError(f"cannot resume from {self.path}: unreadable state ({type(exc).__name__})") from exc
        if not (isinstance(saved, dict) and isinstance(saved.get("key", {}), dict) and isinstance(saved.get("state"), dict)):
            raise ResumeError(f"cannot resume from {self.path}: not a saved run state (an object with a key and a state)")
        key = saved.get("key", {})
        if key != self.key:
            field = next((k for k in sorted(set(key) | set(self.key)) if key.get(k) != self.key.get(k)), "?")
            raise ResumeError(
                f"cannot resume from {self.workdir}: it was made with {field}={key.get(field)!r}, "
                f"this run has {field}={self.key.get(field)!r}"
            )
        return saved["state"]

    def save(self, state: Mapping[str, Any]) -> None:
        import torch

        if self.path is None:
            return
        from facedefense.io import atomic_path

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as temporary, open(temporary, "wb") as handle:
            torch.save({"key": self.key, "state": dict(state)}, handle)

    def clear(self) -> None:
        """Forget the saved state (a fresh run)."""
        if self.path is not None and self.path.is_file():
            self.path.unlink()


def _jsonable(value: Any) -> Any:
    """Normalise a key so a saved one compares equal after torch.save/load (tuples -> lists)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
