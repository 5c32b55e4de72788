"""MetaCloak: meta-learned perturbations over a pool of surrogate states, robust to the training
pipeline's transformations (Liu et al., "MetaCloak: Preventing Unauthorized Subject-driven
Text-to-image Diffusion-based Synthesis via Meta-learning", CVPR 2024, arXiv:2311.13127)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.config import option
from facedefense.errors import ConfigError
from facedefense.interfaces import Perturbation
from facedefense_iterative.aspl import DreamBoothAttack, DreamBoothAttackConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from facedefense.interfaces import IdentitySet
    from facedefense_iterative.surrogate import PhotoBatch, Surrogate

#: The range of the Gaussian blur's standard deviation, drawn uniformly per call (in pixels of the
#: surrogate's view): torchvision's ``GaussianBlur`` default, which the reference leaves unset.
BLUR_SIGMA = (0.1, 2.0)


@dataclass
class MetaCloakConfig(DreamBoothAttackConfig):
    """MetaCloak options (defaults: the reference's ``script/``; sources in ``docs/methods/metacloak.md``).

    Attributes:
        eps: L-infinity budget in [0, 1] units. Default 11/255 (the script's ``r=11`` on 0-255).
        step_size: sign step in [0, 1] units. Default 1.1/255 (``r/10``).
        steps: rounds over the whole pool (``total_trail_num``). Default 4.
        train_steps: DreamBooth steps that build the pool (``total_train_steps``). Default 1000.
        interval: a pool state is kept before the first step and after every ``interval``-th
            step minus one (steps 0, 199, 399, ..., 999 of 1000: six states). Default 200.
        iterations: iterations per pool state and round, each PGD then surrogate steps.
            Default None: ``interval // advance_steps`` (100).
        pgd_steps: PGD steps per iteration. Default 6.
        advance_steps: DreamBooth steps of the surrogate on the perturbed photos per iteration.
            Default 2.
        blur_kernel: kernel of the random Gaussian blur applied inside the loss (odd; 0 = none).
            Default 7.
        flip: random horizontal flip inside the loss. Default True.
        transform_samples: transformation draws averaged per PGD step (``defense_sample_num``). Default 1.
    """

    eps: float = 11 / 255
    steps: int = 4
    train_steps: int = option(1000, min=0)
    interval: int = option(200, min=1)
    iterations: int | None = option(None, min=1)
    pgd_steps: int = option(6, min=1)
    advance_steps: int = option(2, min=0)
    blur_kernel: int = option(7, min=0)
    flip: bool = True
    transform_samples: int = option(1, min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations is None:
            self.iterations = max(1, self.interval // max(1, self.advance_steps))
        if self.blur_kernel and (self.blur_kernel < 3 or self.blur_kernel % 2 == 0):
            raise ConfigError(f"blur_kernel must be 0 (no blur) or odd and at least 3, got {self.blur_kernel}")

    @staticmethod
    def unset_defaults(lora: bool) -> dict[str, Any]:
        """``metacloak.sh``'s learning rate (LoRA: ASPL's 5e-6, its adapters start at zero) and ``r/10``."""
        return {"learning_rate": 5e-6 if lora else 5e-7, "step_size": 1.1 / 255}


def pool_steps(train_steps: int, interval: int) -> list[int]:
    """The training steps whose states form the pool: the state before step ``s`` is kept when
    ``s == 0`` or ``(s + 1) % interval == 0`` (``train_few_step`` with ``step_wise_save``).

    Examples:
        >>> pool_steps(1000, 200)
        [0, 199, 399, 599, 799, 999]
    """
    return sorted({0, *(s for s in range(train_steps) if (s + 1) % interval == 0)})


def training_transform(images: Tensor, generator: torch.Generator, *, blur_kernel: int, flip: bool) -> Tensor:
    """The training pipeline's random transformations (differentiable): a Gaussian blur of
    ``blur_kernel`` (0 = none) with sigma drawn from ``BLUR_SIGMA``, then a horizontal flip with
    probability 1/2, each drawn once per call for the whole batch (torchvision's transforms on a
    batch tensor).

    Args:
        images: (N, 3, H, W) in [0, 1], the surrogate's view.
        generator: the draws' randomness.
    """
    import torch

    device = generator.device
    if blur_kernel:
        from kornia.filters import gaussian_blur2d

        low, high = BLUR_SIGMA
        sigma = low + (high - low) * float(torch.rand(1, generator=generator, device=device))
        images = gaussian_blur2d(images, (blur_kernel, blur_kernel), (sigma, sigma), border_type="reflect")
    if flip and float(torch.rand(1, generator=generator, device=device)) < 0.5:
        images = images.flip(-1)
    return images


def metacloak_loss(
    surrogate: Surrogate,
    photos: PhotoBatch,
    padded: Tensor,
    states: Tensor,
    *,
    generator: torch.Generator,
    blur_kernel: int,
    flip: bool,
    samples: int = 1,
    targets: dict | None = None,
) -> Tensor:
    """Per-image MetaCloak objective (N,): the surrogate's denoising loss of the TRANSFORMED photos
    (``training_transform`` of each working-size view), averaged over ``samples`` draws, VAE
    posterior sampled, one t and noise per photo and draw."""
    import torch

    from facedefense.diffusion import encode_latents

    values, order = [], []
    for indices, batch in photos.working(padded):
        total = 0.0
        for _ in range(samples):
            view = training_transform(batch, generator, blur_kernel=blur_kernel, flip=flip)
            latents = encode_latents(surrogate.vae, view, sample=True, generator=generator).float()
            target = (targets or {}).get(tuple(batch.shape[-2:]))
            with surrogate.autocast():
                total = total + surrogate.denoising(latents, states, generator=generator, target_latents=target)
        values.append(total / samples)
        order.extend(indices)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(values)[inverse.to(values[0].device)]


class MetaCloak(DreamBoothAttack):
    """Protect one person's photos against a pool of DreamBooth surrogates at different stages
    of fine-tuning, through the transformations a training pipeline applies.

    First the surrogate is fine-tuned ``train_steps`` DreamBooth steps on the photos (prior
    preservation) and its states at ``pool_steps(train_steps, interval)`` form the pool. Then, for
    ``steps`` rounds, each pool state in turn is loaded and advanced ``iterations`` times by:
    ``pgd_steps`` L-infinity sign-ascent steps on its denoising loss of the transformed photos
    (``metacloak_loss``: random Gaussian blur and horizontal flip), then ``advance_steps``
    DreamBooth steps on the perturbed photos, so the perturbation works against models at every
    stage of an attacker's training, under its augmentations. The pool itself never changes.

    Args:
        See ``MetaCloakConfig`` and ``DreamBoothAttackConfig``.

    Shape:
        an ``IdentitySet``: photos of any sizes (seen with their short side at ``resolution``,
        the perturbation kept at the original resolution); references are not used.

    Examples:
        >>> metacloak = MetaCloak(model="stabilityai/stable-diffusion-2-1-base")
        >>> out = metacloak.protect_identity(IdentitySet.from_images(photos))

    Differences from the reference code (with their reasons: ``docs/methods/metacloak.md``, Fidelity):
        budgets in [0, 1] units; float32 trainable weights under autocast; training images drawn
        at random; photos of any sizes (not squashed to 512x512); the blur and flip act on the
        surrogate's view of each photo; rounding to 8 bits inside the budget; the pool saved
        and the rounds resumable; optional EOT through purifiers, momentum, LoRA.
    """

    name: ClassVar[str] = "metacloak"
    Config: ClassVar[type[MetaCloakConfig]] = MetaCloakConfig

    def _perturb_identity(self, identity: IdentitySet, generator: torch.Generator, workdir: Path | None) -> Any:
        import torch

        from facedefense.optim import PGDState, RunCheckpoint, generator_state, restore_generator
        from facedefense.progress import bar as progress_bar
        from facedefense_iterative.surrogate import PhotoBatch

        c = self.config
        photos = PhotoBatch.pack(identity.images, c.resolution, device=self.device)
        kept = pool_steps(c.train_steps, c.interval)
        stages = c.steps * len(self.surrogates) * len(kept)
        per_stage = c.iterations * (c.pgd_steps + c.advance_steps)
        pgd = self.make_pgd(stages * c.iterations * c.pgd_steps)
        rounds = self.checkpoint(workdir, identity)
        pool_file = RunCheckpoint(rounds.workdir, rounds.key, name="pool.pt")
        self.reset_surrogates()
        for index in range(len(self.surrogates)):
            self.class_images_for(index, identity.class_prompt)  # generated before the run's randomness
        saved, pool_saved = rounds.load(), pool_file.load()
        training = 0 if pool_saved is not None else len(self.surrogates) * kept[-1]
        bar = progress_bar(total=training + stages * per_stage, desc=f"{self.name} ({identity.name})")
        try:
            if pool_saved is None:
                bar.set_description(f"{self.name} ({identity.name}) surrogate pool", refresh=False)
                pool = [self.build_pool(i, photos, identity, generator, kept, bar) for i in range(len(self.surrogates))]
                pool_file.save({"pool": pool, "generator": generator_state(generator)})
            else:
                pool = pool_saved["pool"]
                restore_generator(generator, pool_saved["generator"])
            stage, state = 0, pgd.start(photos.padded, generator)
            if saved is not None:
                stage, state = saved["stage"], PGDState.from_state_dict(saved["pgd"], self.device)
                restore_generator(generator, saved["generator"])
                bar.update(stage * per_stage)
            while stage < stages:
                number, rest = divmod(stage, len(self.surrogates) * len(kept))
                index, member = divmod(rest, len(kept))
                bar.set_description(f"{self.name} ({identity.name}) round {number + 1}/{c.steps}, "
                                    f"state {kept[member]}", refresh=False)
                state = self._stage(index, pool[index][member], photos, identity, state, pgd, generator, bar)
                stage += 1
                rounds.save({"stage": stage, "pgd": state.state_dict(), "generator": generator_state(generator)})
        finally:
            bar.close()
        values = state.objective if state.objective is not None else torch.zeros(len(photos.sizes))
        stats = [{"rounds": c.steps, "pool_states": len(kept), "denoising_loss_last": float(v)} for v in values]
        return Perturbation(photos.unpack(state.adversarial), stats)

    def build_pool(self, index: int, photos: PhotoBatch, identity: IdentitySet, generator: torch.Generator,
                   kept: list[int], bar: Any = None) -> list[dict[str, Tensor]]:
        """Surrogate ``index``'s states (trainable tensors on the CPU) after each of ``kept`` DreamBooth
        steps on the clean photos, from one training run (one optimizer throughout)."""
        surrogate = self.surrogates[index]
        pool = {0: surrogate.state_dict()} if 0 in kept else {}
        done = [0]

        def on_step(loss: float) -> None:
            done[0] += 1
            if done[0] in kept:
                pool[done[0]] = surrogate.state_dict()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

        c = self.config
        clean = photos.square(photos.padded, c.resolution)
        surrogate.train(clean, instance_prompt=identity.instance_prompt, steps=kept[-1], learning_rate=c.learning_rate,
                        generator=generator, class_images=self.class_images_for(index, identity.class_prompt),
                        class_prompt=identity.class_prompt, prior_loss_weight=c.prior_loss_weight, on_step=on_step)
        return [pool[s] for s in kept]

    def _stage(self, index: int, weights: dict[str, Tensor], photos: PhotoBatch, identity: IdentitySet, state: Any,
               pgd: Any, generator: torch.Generator, bar: Any) -> Any:
        """One pool state's turn: load it, then ``iterations`` x (PGD steps, surrogate steps)."""
        c = self.config
        surrogate = self.surrogates[index]
        surrogate.restore({k: v.to(self.device) for k, v in weights.items()})
        for _ in range(c.iterations):
            with surrogate.frozen():
                state = pgd.run(photos.padded, self.objective(index, photos, identity, generator), state,
                                steps=c.pgd_steps, generator=generator, bar=bar)
            if c.advance_steps:
                self.train(index, photos.square(state.adversarial, c.resolution), identity, generator,
                           c.advance_steps, bar=bar)
        return state

    def objective(self, index: int, photos: Any, identity: IdentitySet, generator: torch.Generator) -> Any:
        """MetaCloak's PGD objective against surrogate ``index`` (``metacloak_loss``), per image (N,)."""
        import torch

        surrogate = self.surrogates[index]
        with torch.no_grad():
            states = surrogate.embed([identity.instance_prompt], grad=False)
        targets = surrogate.target_latents(self.target, photos)
        c = self.config

        def loss(padded: Tensor) -> Tensor:
            return metacloak_loss(surrogate, photos, padded, states, generator=generator, blur_kernel=c.blur_kernel,
                                  flip=c.flip, samples=c.transform_samples, targets=targets)

        return loss
