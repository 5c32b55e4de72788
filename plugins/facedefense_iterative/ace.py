"""ACE / Mist v2 (Zheng et al., "Understanding and Improving Adversarial Attacks on Latent
Diffusion Model", arXiv:2310.04687; reference code psyker-team/mist-v2, ``attacks/mist.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.config import option
from facedefense.errors import ConfigError
from facedefense.interfaces import Perturbation
from facedefense.runtime import module_dtype
from facedefense_iterative.aspl import DreamBoothAttack, DreamBoothAttackConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from facedefense.interfaces import IdentitySet


@dataclass
class ACEConfig(DreamBoothAttackConfig):
    """ACE options (defaults: ``attacks/mist.py``'s arguments, budgets converted to [0, 1]).

    Attributes:
        eps: L-infinity budget in [0, 1] units. Default 4/255 (the reference's ``pgd_eps`` 8/255,
            which is in [-1, 1]).
        step_size: sign step in [0, 1] units. Default 0.0025 (``pgd_alpha`` 0.005 in [-1, 1]).
        steps: rounds (``max_train_steps``): PGD on the photos, then LoRA training on them. Default 5.
        pgd_steps: PGD steps per round (``max_adv_train_steps``). Default 30.
        surrogate_steps: LoRA steps per round (``max_f_train_steps``). Default 10.
        lora_rank: rank of the surrogate's LoRA adapters (``lora_rank``). Default 4; 0 fine-tunes the
            whole UNet instead.
        learning_rate: AdamW learning rate of the adapters. Default 1e-4.
        prior_loss_weight: prior-preservation weight. Default 0.1.
        num_class_images: class images for prior preservation. Default 50.
        train_text_encoder: must stay false (the reference's default; only the UNet adapts).
        target: the pattern the score function is pulled toward: ``"pattern"`` (the built-in
            texture standing in for the reference's ``data/MIST.png``) or an image path.
    """

    eps: float = 4 / 255
    steps: int = 5
    pgd_steps: int = option(30, min=1)
    surrogate_steps: int = option(10, min=0)
    lora_rank: int = 4
    prior_loss_weight: float = 0.1
    num_class_images: int = 50
    train_text_encoder: bool = False
    target: str = "pattern"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_image:
            raise ConfigError("ace takes its target as option 'target' (an image path or 'pattern'), not target_image")
        if self.train_text_encoder:
            raise ConfigError("ace adapts only the UNet (the reference's default): train_text_encoder must be false")
        if len([m for m in self.model.split(",") if m.strip()]) > 1:
            raise ConfigError("ace takes one surrogate model (no ensemble)")

    @staticmethod
    def unset_defaults(lora: bool) -> dict[str, Any]:
        """``attacks/mist.py``'s LoRA learning rate and PGD step (in [0, 1] units)."""
        return {"learning_rate": 1e-4, "step_size": 0.0025}


def score_error(
    unet: Any,
    scheduler: Any,
    latents: Tensor,
    states: Tensor,
    target: Tensor,
    *,
    generator: torch.Generator | None,
) -> Tensor:
    """ACE's loss per image: ``mean || eps_theta(z_t, t, c) - z_target ||^2`` (N,).

    ``z_t = sqrt(a_t) z + sqrt(1 - a_t) eps`` with t ~ U{0..T-1} and eps ~ N(0, I), drawn from
    ``generator`` in that order (as ``facedefense.diffusion.denoising_loss`` draws them). The
    model's prediction (eps, or v for a v-prediction model) is compared with the target pattern's
    latent instead of the noise: a model fine-tuned on the photos learns to predict that pattern,
    which it then paints into every sample.

    Args:
        unet: the surrogate's UNet.
        scheduler: its noise scheduler.
        latents: scaled latents (N, 4, h, w), differentiable.
        states: text embedding (1 or N, L, D).
        target: the pattern's scaled latent (1 or N, 4, h, w).
        generator: randomness of t and eps.
    """
    from facedefense.diffusion import sample_timesteps
    from facedefense_iterative.frozen_model import draw_noise

    count = latents.shape[0]
    timesteps = sample_timesteps(scheduler, count, generator=generator, device=latents.device)
    noise = draw_noise(latents, generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    states = states.expand(count, -1, -1) if states.shape[0] == 1 else states
    dtype = module_dtype(unet)
    prediction = unet(noisy.to(dtype), timesteps, states.to(dtype)).sample.float()
    return (prediction - target.float()).pow(2).flatten(1).mean(1)


class ACE(DreamBoothAttack):
    """Mist v2: make a LoRA fine-tuned on the photos predict a target pattern at every timestep.

    Each round: (1) ``pgd_steps`` L-infinity sign-DESCENT steps on all photos, minimizing
    `score_error` (the surrogate's predicted noise against the target pattern's latent, at a
    random t; the photos' latents are the VAE posterior mean, as the reference's); (2) the
    surrogate's LoRA adapters train ``surrogate_steps`` DreamBooth steps (prior preservation) on
    the PERTURBED photos, so the next round attacks the model an attacker's LoRA becomes. The
    adapters start at zero, so the first round attacks the base model.

    Args:
        See ``ACEConfig`` and ``DreamBoothAttackConfig``.

    Shape:
        an ``IdentitySet``: photos of any sizes (seen with their short side at ``resolution``, the
        perturbation kept at the original resolution); references are not used.

    Examples:
        >>> ace = ACE(model="stable-diffusion-v1-5/stable-diffusion-v1-5")
        >>> out = ace.protect_identity(IdentitySet.from_images(photos))

    Differences from the reference code (with their reasons: ``docs/methods/ace.md``, Fidelity):
        budgets in [0, 1] units; all photos in one PGD batch (the reference loops over them, each
        with its own draws); the target's latent is its posterior mean (the reference draws one
        sample); no LoRA training after the last round (it cannot change the output); photos of
        any sizes; rounding to 8 bits inside the budget; resumable rounds; optional EOT, momentum.
    """

    name: ClassVar[str] = "ace"
    Config: ClassVar[type[ACEConfig]] = ACEConfig

    def __init__(self, config: ACEConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        from facedefense_iterative.targets import TargetLatents, load_target

        self.target_latents = TargetLatents(load_target(self.config.target, method=self.name),
                                            self.surrogates[0].vae, self.device)

    def objective(self, index: int, photos: Any, identity: IdentitySet, generator: torch.Generator) -> Any:
        """The PGD objective: `score_error` of each photo (N,) against the surrogate as it stands."""
        import torch

        from facedefense.diffusion import encode_latents

        surrogate = self.surrogates[index]
        with torch.no_grad():
            states = surrogate.embed([identity.instance_prompt], grad=False)  # once per PGD phase

        def loss(padded: Tensor) -> Tensor:
            values = torch.zeros(len(photos.sizes), device=padded.device)
            for indices, batch in photos.working(padded):
                latents = encode_latents(surrogate.vae, batch).float()
                target = self.target_latents(tuple(batch.shape[-2:]))
                with surrogate.autocast():
                    values[indices] = score_error(surrogate.unet, surrogate.scheduler, latents, states, target,
                                                  generator=generator)
            return values

        return loss

    def _perturb_identity(self, identity: IdentitySet, generator: torch.Generator, workdir: Path | None) -> Any:
        import torch

        from facedefense.optim import PGDState, generator_state, restore_generator
        from facedefense.progress import bar as progress_bar
        from facedefense_iterative.surrogate import PhotoBatch

        c = self.config
        surrogate = self.surrogates[0]
        photos = PhotoBatch.pack(identity.images, c.resolution, device=self.device)
        pgd = self.make_pgd(c.steps * c.pgd_steps, minimize=True)
        checkpoint = self.checkpoint(workdir, identity)
        self.reset_surrogates()
        self.class_images_for(0, identity.class_prompt)  # generated before the run's randomness
        saved = checkpoint.load()
        first_round = 0
        if saved is None:
            state = pgd.start(photos.padded, generator)
        else:
            first_round = saved["round"]
            state = PGDState.from_state_dict(saved["pgd"], self.device)
            surrogate.restore({k: v.to(self.device) for k, v in saved["surrogate"].items()})
            restore_generator(generator, saved["generator"])
        per_round = c.pgd_steps + c.surrogate_steps
        total = c.steps * per_round - c.surrogate_steps
        with progress_bar(total=total, initial=first_round * per_round, desc=f"{self.name} ({identity.name})") as bar:
            for number in range(first_round, c.steps):
                bar.set_description(f"{self.name} ({identity.name}) round {number + 1}/{c.steps}", refresh=False)
                with surrogate.frozen():
                    state = pgd.run(photos.padded, self.objective(0, photos, identity, generator), state,
                                    steps=c.pgd_steps, generator=generator, bar=bar)
                if number + 1 < c.steps:  # the LoRA follows the perturbed photos, as an attacker's would
                    self.train(0, photos.square(state.adversarial, c.resolution), identity, generator,
                               c.surrogate_steps, bar=bar)
                checkpoint.save({"round": number + 1, "pgd": state.state_dict(), "surrogate": surrogate.state_dict(),
                                 "generator": generator_state(generator)})
        values = state.objective if state.objective is not None else torch.zeros(len(photos.sizes))
        stats = [{"rounds": c.steps, "score_error_last": float(v)} for v in values]
        return Perturbation(photos.unpack(state.adversarial), stats)
