"""SimAC: ASPL with an adaptive greedy search of the timesteps and a feature-interference loss
(Wang et al., "SimAC: A Simple Anti-Customization Method for Protecting Face Privacy against
Text-to-Image Synthesis of Diffusion Models", CVPR 2024, arXiv:2312.07865)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.config import option
from facedefense.errors import ConfigError
from facedefense_iterative.aspl import ASPL, ASPLConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from facedefense.interfaces import IdentitySet
    from facedefense_iterative.surrogate import PhotoBatch, Surrogate


@dataclass
class SimACConfig(ASPLConfig):
    """SimAC options (the ASPL ones: ``ASPLConfig``; defaults: GAP-Diff's ``benchmark/scripts/simac.sh``).

    Attributes:
        eps: L-infinity budget in [0, 1] units. Default 8/255 (the script's 16/255 in [-1, 1]).
        search_steps: greedy iterations of the timestep search per photo (``--max_steps``). Default 50.
        search_samples: timesteps scored per iteration. Default 5.
        search_radius: the timesteps within this distance of the lowest-scoring one are deleted
            each iteration (``--delta_t``). Default 20.
        search_keep: the search stops when at most this many timesteps remain. Default 100.
        feature_weight: weight of the feature-interference loss (the mean squared difference of the
            UNet's last up block's ResNet features between the perturbed and the clean photo, same
            t and noise) added to the denoising loss that PGD raises; 0 turns it off. Default 1.0.
    """

    eps: float = 8 / 255
    search_steps: int = option(50, min=0)
    search_samples: int = option(5, min=1)
    search_radius: int = option(20, min=1)
    search_keep: int = option(100, min=1)
    feature_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feature_weight < 0:
            raise ConfigError(f"feature_weight must be >= 0, got {self.feature_weight}")


def greedy_timesteps(
    score: Callable[[int], float],
    advance: Callable[[int], None],
    *,
    total: int,
    generator: torch.Generator,
    steps: int = 50,
    samples: int = 5,
    radius: int = 20,
    keep: int = 100,
) -> Tensor:
    """SimAC's adaptive greedy time-interval selection for one photo.

    Each iteration, while more than ``keep`` timesteps survive: score ``samples`` surviving
    timesteps drawn at random (``score(t)``: the photo's gradient magnitude at t), delete the
    ``2 radius`` timesteps around the lowest-scoring one (its centre kept ``radius`` away from both
    ends), and ``advance(t)`` the photo by one PGD step at the highest-scoring one.

    Returns:
        the surviving timesteps (sorted, int64, on the CPU).
    """
    import torch

    alive = torch.ones(total, dtype=torch.bool)
    for _ in range(steps):
        remaining = alive.nonzero().flatten()
        if len(remaining) <= keep:
            break
        picks = torch.randint(len(remaining), (samples,), generator=generator, device=generator.device).cpu()
        candidates = [int(remaining[i]) for i in picks]
        scores = [score(t) for t in candidates]
        worst = candidates[min(range(samples), key=scores.__getitem__)]
        best = candidates[max(range(samples), key=scores.__getitem__)]
        centre = min(max(worst, radius), total - radius)
        alive[centre - radius : centre + radius] = False
        advance(best)
    return alive.nonzero().flatten()


@contextlib.contextmanager
def decoder_features(unet: Any) -> Iterator[list[Tensor]]:
    """Collects the residual-branch outputs (``conv2``) of the ResNets of the UNet's last up block,
    in call order, while the block runs (SimAC's ``out_layers_features`` of ``up_blocks[3]``)."""
    features: list[Tensor] = []
    hooks = [r.conv2.register_forward_hook(lambda _m, _i, out: features.append(out)) for r in unet.up_blocks[-1].resnets]
    try:
        yield features
    finally:
        for hook in hooks:
            hook.remove()


def simac_loss(
    surrogate: Surrogate,
    photos: PhotoBatch,
    padded: Tensor,
    states: Tensor,
    allowed: list[Tensor],
    *,
    generator: torch.Generator,
    feature_weight: float,
    targets: dict | None = None,
) -> Tensor:
    """Per-image SimAC objective (N,): the denoising loss at a timestep drawn from each photo's
    surviving set, plus ``feature_weight`` times the mean squared difference of the last up block's
    ResNet features from those of the clean photo (``photos.padded``) at the same t and noise."""
    import torch

    from facedefense.diffusion import encode_latents

    values, order = [], []
    clean_views = dict((tuple(i), b) for i, b in photos.working(photos.padded))
    for indices, batch in photos.working(padded):
        latents = encode_latents(surrogate.vae, batch, sample=True, generator=generator).float()
        picks = [allowed[i][torch.randint(len(allowed[i]), (1,), generator=generator, device=generator.device).cpu()] for i in indices]
        timesteps = torch.cat(picks).to(latents.device)
        noise = torch.randn(latents.shape, generator=generator, device=generator.device)
        target = (targets or {}).get(tuple(batch.shape[-2:]))
        with decoder_features(surrogate.unet) as perturbed, surrogate.autocast():
            value = surrogate.denoising(latents, states, generator=generator, target_latents=target,
                                        timesteps=timesteps, noise=noise)
        if feature_weight > 0:
            with torch.no_grad():
                clean = encode_latents(surrogate.vae, clean_views[tuple(indices)], sample=True, generator=generator).float()
                with decoder_features(surrogate.unet) as reference, surrogate.autocast():
                    surrogate.denoising(clean, states, generator=generator, timesteps=timesteps, noise=noise)
            distance = sum((a.float() - b.float()).pow(2).flatten(1).mean(1) for a, b in zip(perturbed, reference))
            value = value + feature_weight * distance / len(perturbed)
        values.append(value)
        order.extend(indices)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(values)[inverse.to(values[0].device)]


class SimAC(ASPL):
    """Protect one person's photos with ASPL restricted to the timesteps where they are most
    vulnerable, plus a feature-interference term.

    First, for each photo, the base model's gradient magnitude ``sum |d L / d x|`` ranks timesteps:
    a greedy search (``greedy_timesteps``) deletes the neighbourhood of the weakest of a few
    sampled timesteps per iteration until at most ``search_keep`` remain (a PGD step at the
    strongest moves a scratch copy of the photo between iterations; the photo itself starts ASPL
    clean). Then ASPL runs as usual (``steps`` rounds of surrogate training on the clean set, PGD,
    surrogate training on the perturbed photos), its PGD drawing each photo's timestep from the
    photo's surviving set and raising the denoising loss plus ``feature_weight`` times the
    distance of the UNet decoder's features from the clean photo's.

    Args:
        See ``SimACConfig`` and ``ASPLConfig``.

    Shape:
        an ``IdentitySet``: photos and references of any sizes.

    Examples:
        >>> simac = SimAC(model="stabilityai/stable-diffusion-2-1-base")
        >>> out = simac.protect_identity(IdentitySet.from_images(photos, references=clean_photos))

    Differences from the reference code (with their reasons: ``docs/methods/simac.md``, Fidelity):
        the feature term has a gradient (GAP-Diff's copy adds it as a Python float, so it never
        steers PGD; ``feature_weight=0`` gives that behaviour); the clean features are the original
        photos' (the copy uses the photos at the start of each PGD phase); a search that runs out
        of iterations keeps what survives (the copy then loses the photo's entry); with an ensemble
        the timesteps are searched on the first model; the search's result is saved with the run
        (``--resume`` does not repeat it); the ASPL differences.
    """

    name: ClassVar[str] = "simac"
    Config: ClassVar[type[SimACConfig]] = SimACConfig

    def _perturb_identity(self, identity: IdentitySet, generator: torch.Generator, workdir: Path | None) -> Any:
        from facedefense.optim import RunCheckpoint, generator_state, restore_generator

        rounds = self.checkpoint(workdir, identity)
        search = RunCheckpoint(rounds.workdir, rounds.key, name="timesteps.pt")  # the search, saved once
        saved = search.load()
        if saved is None:
            self.reset_surrogates()
            self._allowed = self.search_timesteps(identity, generator)
            search.save({"allowed": self._allowed, "generator": generator_state(generator)})
        else:
            self._allowed = list(saved["allowed"])
            restore_generator(generator, saved["generator"])
        perturbation = super()._perturb_identity(identity, generator, workdir)
        for stats, allowed in zip(perturbation.stats, self._allowed):
            stats.update(timesteps_kept=len(allowed), timesteps_lowest=int(allowed.min()), timesteps_highest=int(allowed.max()))
        return perturbation

    def search_timesteps(self, identity: IdentitySet, generator: torch.Generator) -> list[Tensor]:
        """Each photo's surviving timesteps after the greedy search on the base model (surrogate 0)."""
        import torch

        from facedefense.progress import bar as progress_bar

        surrogate = self.surrogates[0]
        with torch.no_grad():
            states = surrogate.embed([identity.instance_prompt], grad=False)
        allowed = []
        with surrogate.frozen(), progress_bar(total=len(identity.images), desc=f"{self.name} ({identity.name}): timestep search") as bar:
            for image in identity.images:
                allowed.append(self._search_photo(surrogate, image, states, generator))
                bar.update(1)
        return allowed

    def _search_photo(self, surrogate: Surrogate, image: Tensor, states: Tensor, generator: torch.Generator) -> Tensor:
        """``greedy_timesteps`` for one photo: scores are ``sum |d L / d x|`` of a scratch copy that
        each iteration's PGD step moves (the photo itself is not changed)."""
        import torch

        from facedefense.budget import project_linf
        from facedefense_iterative.surrogate import PhotoBatch

        c = self.config
        photo = PhotoBatch.pack([image], c.resolution, device=self.device)
        current = [photo.padded]

        def gradient(t: int) -> Tensor:
            x = current[0].detach().requires_grad_(True)
            ((_, view),) = photo.working(x)
            latents = self._latents(surrogate, view, generator)
            with surrogate.autocast():
                loss = surrogate.denoising(latents, states, generator=generator, timesteps=torch.tensor([t], device=self.device))
            return torch.autograd.grad(loss.sum(), x)[0]

        def advance(t: int) -> None:
            moved = current[0] + c.step_size * gradient(t).sign()
            current[0] = project_linf(moved, photo.padded, c.eps).detach()

        return greedy_timesteps(
            lambda t: float(gradient(t).abs().sum()), advance, total=surrogate.scheduler.config.num_train_timesteps,
            generator=generator, steps=c.search_steps, samples=c.search_samples, radius=c.search_radius, keep=c.search_keep,
        )

    @staticmethod
    def _latents(surrogate: Surrogate, view: Tensor, generator: torch.Generator) -> Tensor:
        from facedefense.diffusion import encode_latents

        return encode_latents(surrogate.vae, view, sample=True, generator=generator).float()

    def objective(self, index: int, photos: Any, identity: IdentitySet, generator: torch.Generator) -> Any:
        """SimAC's PGD objective against surrogate ``index`` (``simac_loss``), per image (N,)."""
        import torch

        surrogate = self.surrogates[index]
        with torch.no_grad():
            states = surrogate.embed([identity.instance_prompt], grad=False)
        targets = surrogate.target_latents(self.target, photos)
        allowed = [a.to(self.device) for a in self._allowed]

        def loss(padded: Tensor) -> Tensor:
            return simac_loss(surrogate, photos, padded, states, allowed, generator=generator,
                              feature_weight=self.config.feature_weight, targets=targets)

        return loss
