"""RID's training objective: adversarial score distillation (Adv-SDS) over an ensemble of diffusion
models, plus L1 regression to precomputed protected pairs (Guo et al., arXiv:2412.09844; the
reference script ``train_sd_ensemble_dmd.py`` of Guohanzhong/RID).

For every model k, with its own timestep t_k and noise e_k per image:
``z_t = sqrt(a_t) E_k(x + delta) + sqrt(1 - a_t) e``, ``g = -w(t) (UNet_k(z_t) - e)`` with
``w(t) = 1 - a_t``, and ``L_k = 1/2 mean((z_t - sg[z_t - g])^2)``, whose gradient with respect to
``z_t`` is ``g / numel``: descending it ascends the denoising error with the UNet's Jacobian skipped.
The UNet therefore runs without autograd; the gradient reaches the defender through the VAE encoder.

Total: ``sds_weight * mean_k L_k + reg_weight * L1(delta_s, x_protected - x_s)``.

Differences from the reference code: any number of models (the reference hard-codes three, and
weighs ``1/4 L_reg + 1/3 sum_k L_k``, i.e. the mean over its three models); each model encodes the
prompt ``" "`` with its own tokenizer (the reference uses the first model's tokens for all three);
budgets in [0, 1] units (the reference's 12/255 is 6/255 here); the regression weight defaults to
2.5 (the reference's released script has 0, its ``_10l1`` runs 10 x 1/4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from facedefense.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from facedefense_amortized.training.surrogates import Surrogate

PROMPT = " "


@dataclass
class RIDTrainingOptions:
    """``-o`` options of ``facedefense train --method rid``.

    Attributes:
        lr: AdamW learning rate. Default 3e-4 (reference).
        weight_decay: AdamW weight decay. Default 1e-2 (reference).
        warmup_steps: linear learning-rate warm-up. Default 500 (reference, one process).
        sds_weight: weight of the ensemble's mean Adv-SDS loss. Default 1.
        reg_weight: weight of the L1 regression to the pairs (used with ``--pairs``). Default 2.5.
        prompt: the surrogates' prompt. Default ``" "`` (reference).
        architecture: JSON or ``key=value,...`` overrides of the DiT architecture (tests use a tiny one).
    """

    lr: float = 3e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 500
    sds_weight: float = 1.0
    reg_weight: float = 2.5
    prompt: str = PROMPT
    architecture: str = ""


class RIDObjective:
    """Computes RID's loss terms for one batch (see the module docstring).

    Args:
        network: the :class:`PerturbationDiT` being trained.
        surrogates: the frozen ensemble.
        eps: budget in [0, 1] units (``delta = eps * tanh(network(x))``).
        options: :class:`RIDTrainingOptions`.
        pairs: (clean, protected) tensors (P, 3, S, S) in [0, 1], or None.
    """

    def __init__(
        self,
        network: Any,
        surrogates: list[Surrogate],
        eps: float,
        options: RIDTrainingOptions,
        pairs: tuple[Tensor, Tensor] | None,
    ) -> None:
        self.network, self.surrogates, self.eps, self.options, self.pairs = network, surrogates, eps, options, pairs

    def delta(self, images: Tensor) -> Tensor:
        import torch

        return self.eps * torch.tanh(self.network(images * 2 - 1).float())

    def __call__(self, images: Tensor, step: int, generator: torch.Generator, autocast: Any) -> dict[str, Tensor]:
        import torch
        import torch.nn.functional as F

        from facedefense_amortized.training.surrogates import draw, encode, predict_noise

        batch = images.shape[0]
        inputs = images
        if self.pairs is not None:
            index = torch.randint(0, len(self.pairs[0]), (1,), generator=generator, device=generator.device).item()
            inputs = torch.cat([images, self.pairs[0][index : index + 1].to(images.device)])
        with autocast():
            delta = self.delta(inputs)
        adversarial = (images + delta[:batch]) * 2 - 1  # no clamp while training (reference)
        terms: dict[str, Tensor] = {}
        sds = []
        for k, surrogate in enumerate(self.surrogates):
            with autocast():
                latents = encode(surrogate, adversarial, generator)
            timesteps, noise = draw(surrogate, latents, generator)
            noisy = surrogate.scheduler.add_noise(latents, noise, timesteps)
            with torch.no_grad():
                predicted = predict_noise(surrogate, noisy, timesteps)
                alphas = surrogate.scheduler.alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, 1, 1, 1)
                gradient = torch.nan_to_num(-(1 - alphas) * (predicted - noise))
            terms[f"sds_{k}"] = 0.5 * F.mse_loss(noisy.float(), (noisy.float() - gradient).detach())
            sds.append(terms[f"sds_{k}"])
        total = self.options.sds_weight * torch.stack(sds).mean()
        if self.pairs is not None:
            target = (self.pairs[1][index : index + 1] - self.pairs[0][index : index + 1]).to(images.device)
            terms["reg"] = F.l1_loss(delta[batch:], target)
            total = total + self.options.reg_weight * terms["reg"]
        terms["loss"] = total
        return terms


def build_network(architecture: dict[str, Any]) -> Any:
    from facedefense_amortized.networks import PerturbationDiT

    try:
        return PerturbationDiT(**architecture)
    except TypeError as exc:
        raise ConfigError(f"rid: bad architecture {architecture}: {exc}") from None


#: Steps when ``--steps`` is not given (the reference trains for days on 8 GPUs; pick your own).
DEFAULT_STEPS = 20_000


class RIDTrainer:
    """AdamW with a linear warm-up on :class:`RIDObjective` (the loop's :class:`Trainer`)."""

    def __init__(self, network, surrogates, eps, options: RIDTrainingOptions, pairs, accelerator, settings) -> None:
        import torch

        from facedefense_amortized.training.loop import autocast_for

        optimizer = torch.optim.AdamW(network.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        warmup = max(0, options.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        self.network, self.optimizer = accelerator.prepare(network, optimizer)
        self.objective = RIDObjective(self.network, surrogates, eps, options, pairs)
        self.accelerator, self.autocast = accelerator, autocast_for(accelerator)

    def step(self, images, step: int, epoch: int, generator) -> dict[str, float]:
        terms = self.objective(images, step, generator, self.autocast)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(terms["loss"])
        self.optimizer.step()
        self.scheduler.step()
        return {**{name: float(value.detach()) for name, value in terms.items()}, "lr": self.scheduler.get_last_lr()[0]}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _recipe():
    from facedefense_amortized.networks import RID_ARCHITECTURE
    from facedefense_amortized.training.loop import Recipe

    return Recipe(
        method="rid",
        Options=RIDTrainingOptions,
        default_architecture=dict(RID_ARCHITECTURE),
        build_network=build_network,
        image_size=lambda architecture, options: int(architecture.get("input_size", 512)),
        default_steps=lambda options, steps_per_epoch: DEFAULT_STEPS,
        build_trainer=RIDTrainer,
        prompt=lambda options: options.prompt,
        uses_pairs=True,
    )
