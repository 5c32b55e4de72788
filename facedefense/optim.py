"""Projected-gradient building blocks shared by the iterative defenders."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from facedefense.budget import project_linf

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def step_sizes(step_size: float, steps: int, schedule: Literal["constant", "linear"] = "constant") -> list[float]:
    """Per-step sizes: constant, or PhotoGuard's linear decay from ``step_size`` to ``step_size / 100``.

    Example:
        ``step_sizes(1.0, 3, "linear")`` gives ``[1.0, 0.67, 0.34]``.
    """
    if schedule == "constant":
        return [step_size] * steps
    return [step_size - (step_size - step_size / 100) * i / steps for i in range(steps)]


def linf_pgd(
    images: Tensor,
    objective: Callable[[Tensor], Tensor],
    *,
    eps: float,
    steps: int,
    step_size: float,
    minimize: bool,
    schedule: Literal["constant", "linear"] = "constant",
    random_start: bool = False,
    generator: torch.Generator | None = None,
    description: str = "PGD",
) -> tuple[Tensor, Tensor, Tensor]:
    """L-infinity projected sign-gradient descent (or ascent) on a per-image objective.

    Args:
        images: (N, 3, H, W) float32 in [0, 1]; not modified.
        objective: maps adversarial images to a per-image loss of shape (N,).
        eps: L-infinity budget in [0, 1] units.
        steps: number of steps.
        step_size: sign step in [0, 1] units (first step for a decaying schedule).
        minimize: descend the objective (targeted attacks) instead of ascending it.
        schedule: ``"constant"`` or ``"linear"`` decay to ``step_size / 100``.
        random_start: start from a uniform point of the eps-ball.
        generator: randomness of the start.
        description: label of the step-level progress bar (see :mod:`facedefense.progress`).

    Returns:
        The adversarial images, the objective at the start and at the last step (each (N,)).
    """
    import torch

    from facedefense.progress import bar

    adversarial = images.detach().clone()
    if random_start:
        noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        adversarial = project_linf(adversarial + (noise * 2 - 1) * eps, images, eps)
    direction = -1.0 if minimize else 1.0
    first = last = None
    for size in bar(step_sizes(step_size, steps, schedule), desc=description):
        adversarial.requires_grad_(True)
        loss = objective(adversarial)
        (gradient,) = torch.autograd.grad(loss.sum(), adversarial)
        with torch.no_grad():
            adversarial = project_linf(adversarial + direction * size * gradient.sign(), images, eps)
        last = loss.detach()
        first = last if first is None else first
    with torch.no_grad():
        final = objective(adversarial)
    return adversarial.detach(), first, final.detach()
