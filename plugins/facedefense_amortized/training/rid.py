"""RID's training objective: adversarial score distillation (Adv-SDS) over an ensemble of diffusion
models, plus L1 regression to precomputed protected pairs (Guo et al., arXiv:2412.09844; the
reference script ``train_sd_ensemble_dmd.py`` of Guohanzhong/RID).

For every model k, with its own timestep t_k and noise e_k per image:
``z_t = sqrt(a_t) E_k(x + delta) + sqrt(1 - a_t) e``, ``g = -w(t) (UNet_k(z_t) - e)`` with
``w(t) = 1 - a_t``, and ``L_k = 1/2 mean((z_t - sg[z_t - g])^2)``, whose gradient with respect to
``z_t`` is ``g / numel``: descending it ascends the denoising error with the UNet's Jacobian skipped.
The UNet therefore runs without autograd; the gradient reaches the defender through the VAE encoder.

Total: ``sds_weight * mean_k L_k + reg_weight * L_reg`` with, for every image of the batch, its
regression pair ``(x_s, x_protected)`` (pair number ``index mod P`` for the data set's image number
``index``, as the reference's data set pairs them) and
``L_reg = mean |2 delta(x_s) - 2 (x_protected - x_s)|``: the L1 distance in the reference's [-1, 1]
image units, so ``reg_weight`` means what the reference's weight means. The reference's total is
``mean([lambda L1, 4/3 L_1, 4/3 L_2, 4/3 L_3]) = lambda/4 L1 + mean_k L_k``: ``sds_weight = 1``
and ``reg_weight = lambda / 4``.

The learning rate warms up linearly from 0 over ``warmup_steps`` and then decays linearly to 0 at
``decay_steps`` (default: the run's ``--steps``), diffusers' ``"linear"`` schedule as the reference
uses it. See docs/methods/rid.md (Fidelity) for every default beside the reference's.

Encoder term (facedefense's, IDProtector's idea on RID's network; off by default): with
``encoder_weight > 0`` the total gains ``encoder_weight * mean cos(E(A(x + delta)), E(A(x)))`` over
the images of the batch in which a face is found, ``E`` a face encoder (``anti_encoder``'s: by
default insightface's IResNet read from the zero-shot attacks' ONNX file) and ``A`` its 112x112
alignment from landmarks detected once per training image; descending it pulls the protected
photo's face embedding away from the clean one's. ``sds_weight=0`` trains on it alone.
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
        lr: AdamW peak learning rate. Default 3e-4 (reference).
        weight_decay: AdamW weight decay. Default 1e-2 (reference).
        warmup_steps: optimizer steps of the linear warm-up from 0. Default 500 (reference: 500 x
            processes scheduler steps, which accelerate advances processes times per optimizer
            step: 500 optimizer steps).
        decay_steps: optimizer step at which the linear decay reaches 0. Default 0: the run's
            ``--steps`` (the reference decays to 0 at the end of its ``--num_train_epochs``).
        sds_weight: weight of the ensemble's mean Adv-SDS loss. Default 1 (reference: 4/3 x 1/4 per
            model, summed over three models).
        reg_weight: weight of the L1 regression to the pairs (used with ``--pairs``), the L1 in
            [-1, 1] image units as in the reference. Default 2.5 (the reference's ``_10l1`` runs:
            10 x 1/4; its released script has 0).
        prompt: the surrogates' prompt. Default ``" "`` (reference).
        encoder_weight: weight of the face-encoder term (module docstring). Default 0 (off; ours).
        face_model, face_model_path, face_detector, face_detector_weights: the encoder term's face
            embedder, its weights, the landmark detector and its weights, as ``anti_encoder`` takes
            them (``insightface`` needs ``face_model_path``, e.g. ``glintr100.onnx``); "" for a default.
        architecture: JSON or ``key=value,...`` overrides of the DiT architecture (tests use a tiny one).
    """

    lr: float = 3e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 500
    decay_steps: int = 0
    sds_weight: float = 1.0
    reg_weight: float = 2.5
    prompt: str = PROMPT
    encoder_weight: float = 0.0
    face_model: str = "insightface"
    face_model_path: str = ""
    face_detector: str = ""
    face_detector_weights: str = ""
    architecture: str = ""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ConfigError("rid: warmup_steps and decay_steps must be at least 0")
        if not self.lr > 0 or min(self.weight_decay, self.sds_weight, self.reg_weight, self.encoder_weight) < 0:
            raise ConfigError("rid: lr must be positive; weight_decay, sds_weight, reg_weight and encoder_weight at least 0")
        if self.sds_weight == 0 and self.encoder_weight == 0:
            raise ConfigError("rid: sds_weight and encoder_weight are both 0: nothing to train on")


class EncoderTerm:
    """``cos(E(A(x + delta)), E(A(x)))`` per image of a training batch, through ``anti_encoder``'s
    face embedder and alignment; the landmarks of data-set image ``i`` are detected once (the
    training images are fixed squares) and kept.

    Args:
        options: ``RIDTrainingOptions`` (its face_* fields).
        device: where the embedder runs.
    """

    def __init__(self, options: RIDTrainingOptions, device: Any) -> None:
        from facedefense_iterative.anti_encoder import AntiEncoder

        self.encoder = AntiEncoder(
            face_model=options.face_model, face_model_path=options.face_model_path or None,
            face_detector=options.face_detector or None, face_detector_weights=options.face_detector_weights or None,
            device=str(device), dtype="float32",
        )
        self.landmarks: dict[int, Tensor] = {}

    def __call__(self, protected: Tensor, clean: Tensor, indices: Tensor) -> Tensor:
        """Mean similarity over the images with a face (0 and no gradient when none has one)."""
        import torch

        missing = [i for i, index in enumerate(indices.tolist()) if index not in self.landmarks]
        if missing:
            found = self.encoder.find_landmarks(clean[missing], tuple(clean.shape[-2:]))
            self.landmarks.update({int(indices[i]): marks for i, marks in zip(missing, found)})
        marks = torch.stack([self.landmarks[int(index)] for index in indices.tolist()])
        similarity = self.encoder.identity_similarity(protected, clean, marks)
        with_face = ~similarity.isnan()
        return similarity[with_face].mean() if with_face.any() else protected.sum() * 0


class RIDObjective:
    """Computes RID's loss terms for one batch (see the module docstring).

    Args:
        network: the ``PerturbationDiT`` being trained.
        surrogates: the frozen ensemble.
        eps: budget in [0, 1] units (``delta = eps * tanh(network(x))``).
        options: ``RIDTrainingOptions``.
        pairs: (clean, protected) tensors (P, 3, S, S) in [0, 1], or None.

    Calling it with a batch ``images`` (B, 3, S, S) in [0, 1] and the data set's ``indices`` (B,) of
    those images returns the loss terms (``sds_k`` per model, ``reg`` with pairs, ``loss``).
    """

    def __init__(
        self,
        network: Any,
        surrogates: list[Surrogate],
        eps: float,
        options: RIDTrainingOptions,
        pairs: tuple[Tensor, Tensor] | None,
        encoder: EncoderTerm | None = None,
    ) -> None:
        self.network, self.surrogates, self.eps, self.options, self.pairs = network, surrogates, eps, options, pairs
        self.encoder = encoder

    def delta(self, images: Tensor) -> Tensor:
        import torch

        return self.eps * torch.tanh(self.network(images * 2 - 1).float())

    def __call__(
        self, images: Tensor, indices: Tensor, generator: torch.Generator, autocast: Any
    ) -> dict[str, Tensor]:
        import torch
        import torch.nn.functional as F

        from facedefense_amortized.training.surrogates import draw, encode, predict_noise

        batch = images.shape[0]
        inputs = images
        if self.pairs is not None:
            chosen = indices.cpu() % len(self.pairs[0])
            clean, protected = (part[chosen].to(images.device) for part in self.pairs)
            inputs = torch.cat([images, clean])
        with autocast():
            delta = self.delta(inputs)
        adversarial = (images + delta[:batch]) * 2 - 1  # no clamp while training (reference)
        terms: dict[str, Tensor] = {}
        sds = []
        for k, surrogate in enumerate(self.surrogates if self.options.sds_weight > 0 else []):
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
        total = self.options.sds_weight * torch.stack(sds).mean() if sds else delta.sum() * 0
        if self.encoder is not None:
            terms["encoder"] = self.encoder(images + delta[:batch], images, indices)
            total = total + self.options.encoder_weight * terms["encoder"]
        if self.pairs is not None:  # in [-1, 1] units, as the reference's weights
            terms["reg"] = F.l1_loss(2 * delta[batch:], 2 * (protected - clean))
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
    """AdamW on ``RIDObjective`` with diffusers' linear schedule: warm-up from 0 over
    ``warmup_steps``, then linear decay to 0 at ``decay_steps`` (0: ``settings.steps``), stepped
    once per optimizer step (the loop's ``Trainer``)."""

    def __init__(self, network, surrogates, eps, options: RIDTrainingOptions, pairs, accelerator, settings) -> None:
        import torch
        from diffusers.optimization import get_linear_schedule_with_warmup

        from facedefense.runtime import fused_adam
        from facedefense_amortized.training.loop import autocast_for

        weights = list(network.parameters())
        optimizer = torch.optim.AdamW(weights, lr=options.lr, weight_decay=options.weight_decay, fused=fused_adam(weights))
        self.scheduler = get_linear_schedule_with_warmup(optimizer, options.warmup_steps, options.decay_steps or settings.steps)
        self.network, self.optimizer = accelerator.prepare(network, optimizer)
        encoder = EncoderTerm(options, accelerator.device) if options.encoder_weight > 0 else None
        self.objective = RIDObjective(self.network, surrogates, eps, options, pairs, encoder)
        self.accelerator, self.autocast = accelerator, autocast_for(accelerator)

    def step(self, images, step: int, epoch: int, generator, *, indices) -> dict[str, float]:
        """One AdamW step; the logged ``lr`` is the one this step used."""
        terms = self.objective(images, indices, generator, self.autocast)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(terms["loss"])
        self.optimizer.step()
        self.scheduler.step()
        return {**{name: float(value.detach()) for name, value in terms.items()}, "lr": lr}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def _recipe():
    from facedefense_amortized.networks import RID_ARCHITECTURE, PerturbationDiT
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
        network_class=PerturbationDiT,
    )
