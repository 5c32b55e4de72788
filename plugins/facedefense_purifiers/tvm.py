"""Total-variation minimization (Guo et al., "Countering Adversarial Images using Input
Transformations", ICLR 2018), as the adversarial-robustness-toolbox's ``TotalVarMin`` and
CopyrightMeter's ``attacks/noise_purification/tvm.py`` compute it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError, MissingDependencyError
from facedefense.interfaces import Purifier, PurifierConfig

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor


@dataclass
class TVMConfig(PurifierConfig):
    """TVM options (the reference's names and defaults).

    Attributes:
        prob: probability that a pixel value takes part in the data term (a Bernoulli mask drawn
            per pixel and channel from the seed). Default 0.3.
        norm: the norm of the variation terms, 1 or 2. Default 2.
        lamb: weight of the variation terms. Default 0.5.
        max_iter: L-BFGS-B iterations per channel. Default 10.
    """

    prob: float = 0.3
    norm: int = 2
    lamb: float = 0.5
    max_iter: int = 10

    def __post_init__(self) -> None:
        if not 0 < self.prob <= 1:
            raise ConfigError(f"tvm prob must lie in (0, 1], got {self.prob}")
        if self.norm not in (1, 2):
            raise ConfigError(f"tvm norm must be 1 or 2, got {self.norm}")
        if self.lamb < 0 or self.max_iter < 1:
            raise ConfigError("tvm lamb must be at least 0 and max_iter at least 1")


def tv_objective(z: np.ndarray, x: np.ndarray, mask: np.ndarray, norm: int, lamb: float) -> tuple[float, np.ndarray]:
    """The objective and its gradient for one channel.

    ``||mask * (z - x)||_2 + lamb * (sum_i ||z[i+1, :] - z[i, :]||_p + sum_j ||z[:, j+1] - z[:, j]||_p)``:
    the distance to the kept pixel values, plus the variation between neighbouring rows and between
    neighbouring columns, each row (column) difference taken as one vector.

    Args:
        z: (H, W) float64, the estimate.
        x: (H, W), the channel being purified.
        mask: (H, W) of 0 and 1, the pixel values the data term keeps.
        norm: p, 1 or 2.
        lamb: weight of the variation terms.

    Returns:
        The value and the (H, W) gradient.
    """
    import numpy as np

    residual = mask * (z - x)
    distance = float(np.sqrt((residual * (z - x)).sum()))
    gradient = residual / max(distance, 1e-6)
    value = distance
    for axis in (0, 1):
        difference = np.diff(z, axis=axis)  # rows: (H-1, W); columns: (H, W-1)
        lengths = np.linalg.norm(difference, ord=norm, axis=1 - axis)  # one per row (column) pair
        value += lamb * float(lengths.sum())
        if norm == 1:
            slope = np.sign(difference)
        else:
            slope = difference / np.expand_dims(np.maximum(lengths, 1e-6), 1 - axis)
        step = np.zeros_like(z)
        if axis == 0:
            step[1:, :] += slope
            step[:-1, :] -= slope
        else:
            step[:, 1:] += slope
            step[:, :-1] -= slope
        gradient = gradient + lamb * step
    return value, gradient


class TVM(Purifier):
    """Rebuild each channel as the image of least variation that stays close to a random 30% of
    its pixel values: the perturbation, which lives in fine variations, is not rebuilt.

    Each channel is solved with scipy's L-BFGS-B from the photo itself, on 0-255 values as the
    reference (the objective is scale-free; the solver's tolerances are not). Not differentiable:
    EOT through it uses the straight-through estimator.

    Shape:
        (N, 3, H, W) float in [0, 1] -> same.

    Examples:
        >>> purified = TVM(lamb=0.5, seed=0).purify(images)
    """

    name: ClassVar[str] = "tvm"
    Config: ClassVar[type[TVMConfig]] = TVMConfig

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import numpy as np
        import torch

        try:
            from scipy.optimize import minimize
        except ImportError as exc:
            raise MissingDependencyError("tvm needs scipy: pip install 'facedefense[purifiers]'") from exc
        c = self.config
        draws = torch.rand(images.shape, generator=generator, device=generator.device).cpu().numpy()
        photos = images.detach().double().cpu().numpy() * 255.0
        purified = np.empty_like(photos)
        for index, photo in enumerate(photos):
            for channel, x in enumerate(photo):
                mask = (draws[index, channel] < c.prob).astype(np.float64)
                solved = minimize(
                    lambda flat, x=x, mask=mask: _flat(tv_objective(flat.reshape(x.shape), x, mask, c.norm, c.lamb)),
                    x.ravel(), jac=True, method="L-BFGS-B", options={"maxiter": c.max_iter},
                )
                purified[index, channel] = solved.x.reshape(x.shape)
        return torch.from_numpy(np.clip(purified, 0, 255) / 255.0).to(images.device, images.dtype)


def _flat(result: tuple[float, np.ndarray]) -> tuple[float, np.ndarray]:
    return result[0], result[1].ravel()
