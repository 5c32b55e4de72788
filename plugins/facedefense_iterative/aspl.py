"""Anti-DreamBooth ASPL: Alternating Surrogate and Perturbation Learning (Van Le et al.,
"Anti-DreamBooth: Protecting users from personalized text-to-image synthesis", ICCV 2023,
arXiv:2303.15433)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.config import check_method_paths, option
from facedefense.errors import ConfigError
from facedefense.interfaces import Defender, Perturbation
from facedefense.interfaces.identity import DEFAULT_CLASS_PROMPT, DEFAULT_INSTANCE_PROMPT
from facedefense_iterative.frozen_model import PGDConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from facedefense.interfaces import IdentitySet


@dataclass
class DreamBoothAttackConfig(PGDConfig):
    """Options shared by ASPL and FSMG (defaults: the reference scripts, converted to [0, 1]).

    Attributes:
        model: surrogate model(s): a diffusers folder or Hugging Face id; several separated by
            commas give the ensemble variant (E-ASPL / E-FSMG), perturbations averaged per round.
        eps: L-infinity budget in [0, 1] units. Default 0.025 = 6.4/255 (the reference's 0.05 in [-1, 1]).
        instance_prompt: the prompt an attacker binds the person to (the file runner passes it
            with each identity). Default ``"a photo of sks person"``.
        class_prompt: the class prompt of prior preservation. Default ``"a photo of person"``.
        step_size: sign step in [0, 1] units. Default 0.0025 (the reference's 0.005 in [-1, 1]);
            ASPL with LoRA: 1/510 (``aspl_lora.py``'s 1/255 in [-1, 1]).
        resolution: the surrogate sees each photo with its short side at this size (aspect kept);
            training views are centre-cropped squares of this size. Default 512.
        learning_rate: AdamW learning rate of the surrogate. Default 5e-7 for a full fine-tune and
            5e-6 with LoRA (the reference's ``aspl_lora.py``: its adapters start at zero).
        prior_loss_weight: weight of the prior-preservation loss (0 turns it off). Default 1.0.
        num_class_images: class images generated once by the base model (cached), or the first ones
            of ``class_images``; 0 turns the prior off, as ``prior_loss_weight=0`` does. Default 200.
        class_image_steps: sampling steps for the class images. Default 50.
        class_images: a folder of class images to use instead of generating them.
        train_text_encoder: fine-tune the text encoder with the UNet (the reference does). Default True.
        lora_rank: 0 = full fine-tune (the reference); r > 0 = LoRA adapters of rank r on the attention
            projections (fits a 24 GB GPU; ``aspl_lora.py`` uses 4). It changes the defaults of the
            options left unset to ``aspl_lora.py``'s.
        gradient_checkpointing: recompute UNet activations in backward passes to save memory.
        target_image: a path: targeted variant (pull the denoised latent toward this image).
        eot: purifiers to optimize through (expectation over transformations), e.g. ``jpeg`` or
            ``none,jpeg``; names from ``facedefense list purifiers``.
        eot_samples: transform draws per PGD step.
        momentum: MI-FGSM momentum of the PGD steps (0 = the reference's plain sign steps).
        schedule: ``constant`` (reference), ``linear`` or ``cosine`` step decay.
        random_start: start from a uniform point of the eps-ball (the reference does not).
    """

    eps: float = 0.025
    step_size: float | None = None  # type: ignore[assignment]
    resolution: int | None = 512
    instance_prompt: str = DEFAULT_INSTANCE_PROMPT
    class_prompt: str = DEFAULT_CLASS_PROMPT
    learning_rate: float | None = None
    prior_loss_weight: float = 1.0
    num_class_images: int = 200
    class_image_steps: int = 50
    class_images: str = ""
    train_text_encoder: bool = True
    lora_rank: int = 0
    gradient_checkpointing: bool = False
    target_image: str = ""
    schedule: str = "constant"
    random_start: bool = False

    def __post_init__(self) -> None:
        lora = self.lora_rank > 0
        for name, value in self.unset_defaults(lora).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        super().__post_init__()
        if self.resolution is None:
            raise ConfigError("the DreamBooth surrogate needs a resolution (e.g. 512)")
        if self.learning_rate < 0 or self.prior_loss_weight < 0 or self.lora_rank < 0 or self.num_class_images < 0:
            raise ConfigError("learning_rate, prior_loss_weight, lora_rank and num_class_images must be >= 0")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(f"schedule must be constant, linear or cosine, got '{self.schedule}'")

    @staticmethod
    def unset_defaults(lora: bool) -> dict[str, Any]:
        """The values of the options left unset (None): the reference's for a full fine-tune or LoRA."""
        return {"learning_rate": 5e-6 if lora else 5e-7, "step_size": 0.0025}


@dataclass
class ASPLConfig(DreamBoothAttackConfig):
    """ASPL options.

    Attributes:
        steps: outer rounds (surrogate steps on the clean set, PGD on the photos, surrogate steps
            on the perturbed photos). Default 50; with LoRA 20 (``aspl_lora.py``).
        pgd_steps: PGD steps per round. Default 6; with LoRA 10.
        surrogate_steps: surrogate fine-tuning steps per phase. Default 3; with LoRA 10.
    """

    steps: int | None = None  # type: ignore[assignment]
    pgd_steps: int | None = option(None, min=1)
    surrogate_steps: int | None = option(None, min=0)

    @staticmethod
    def unset_defaults(lora: bool) -> dict[str, Any]:
        """``attack_with_aspl.sh``'s values for a full fine-tune; ``aspl_lora.py``'s argument defaults with LoRA."""
        if lora:
            return {"steps": 20, "pgd_steps": 10, "surrogate_steps": 10, "learning_rate": 5e-6, "step_size": 1 / 510}
        return {"steps": 50, "pgd_steps": 6, "surrogate_steps": 3, "learning_rate": 5e-7, "step_size": 0.0025}


class DreamBoothAttack(Defender):
    """What ASPL and FSMG share: surrogates loaded once, class images, targets, EOT, checkpoints."""

    scope: ClassVar[str] = "identity"
    Config: ClassVar[type[DreamBoothAttackConfig]] = DreamBoothAttackConfig

    def __init__(self, config: DreamBoothAttackConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        from facedefense_iterative.surrogate import Surrogate, class_image_files, load_target_image

        models = [m.strip() for m in self.config.model.split(",") if m.strip()]
        if not models:
            raise ConfigError(f"{self.name} needs a surrogate model: --model (a diffusers folder or Hugging Face id)")
        for m in models:  # every missing folder is reported before the first model loads
            check_method_paths({"model": m})
        if self.config.class_images and self._uses_prior:
            class_image_files(self.config.class_images)  # a bad folder is reported before the models load
        self.target = load_target_image(self.config.target_image) if self.config.target_image else None
        self.eot = self.config.build_eot(self.device)
        self.surrogates = [
            Surrogate(m, device=self.device, dtype=self.dtype, train_text_encoder=self.config.train_text_encoder,
                      lora_rank=self.config.lora_rank, gradient_checkpointing=self.config.gradient_checkpointing)
            for m in models
        ]
        self._initial = [s.state_dict() for s in self.surrogates]  # on the CPU: a float32 UNet is 3.5 GB for SD 2.1
        self._class_images: list[Tensor | None] = [None] * len(models)

    # -- pieces ------------------------------------------------------------------------------

    @property
    def _uses_prior(self) -> bool:
        """Whether surrogate training has a prior-preservation term (a weight and images for it)."""
        return self.config.prior_loss_weight != 0 and self.config.num_class_images != 0

    def class_images_for(self, index: int, class_prompt: str) -> Tensor | None:
        """Prior-preservation images of surrogate ``index`` (generated by its base model once, cached)."""
        from facedefense_iterative.surrogate import class_images

        c = self.config
        if not self._uses_prior:
            return None
        if self._class_images[index] is None:
            self._class_images[index] = class_images(
                self.surrogates[index].model, class_prompt, c.num_class_images, resolution=c.resolution,
                steps=c.class_image_steps, seed=c.seed, device=self.device, dtype=self.dtype,
                folder=c.class_images or None,
            )
        return self._class_images[index]

    def reset_surrogates(self) -> None:
        """Back to the base weights (each identity starts from the pretrained model)."""
        for surrogate, initial in zip(self.surrogates, self._initial):
            surrogate.restore(initial)

    def make_pgd(self, total_steps: int, *, minimize: bool = False) -> Any:
        """The PGD engine with the method's budget, step, schedule and EOT; ``minimize`` for a
        targeted objective (ACE), ascent otherwise."""
        from facedefense.optim import LinfPGD

        c = self.config
        return LinfPGD(eps=c.eps, step_size=c.step_size, minimize=minimize, schedule=c.schedule,  # type: ignore[arg-type]
                       total_steps=total_steps, momentum=c.momentum, random_start=c.random_start, eot=self.eot,
                       description=self.name)

    def checkpoint(self, workdir: Path | None, identity: IdentitySet) -> Any:
        """The run's checkpoint, keyed by method, budget, every other option and the photos."""
        from facedefense.config import config_to_dict
        from facedefense.optim import RunCheckpoint
        from facedefense_iterative.surrogate import file_digest

        options = {k: v for k, v in config_to_dict(self.config).items() if k not in ("device", "dtype", "eps")}
        key = {"method": self.name, "eps": self.config.eps, **options,
               "photos": file_digest(identity.images), "references": file_digest(identity.references)}
        return RunCheckpoint(workdir / self.name if workdir is not None else None, key)

    def train(self, index: int, instances: Tensor, identity: IdentitySet, generator: torch.Generator, steps: int,
              batch_size: int = 1, bar: Any = None) -> list[float]:
        """``steps`` DreamBooth steps of surrogate ``index`` on ``instances`` (training views), with
        ``batch_size`` instance and class images per step; ``bar`` (a progress bar) advances per step."""
        c = self.config

        def advance(loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)

        return self.surrogates[index].train(
            instances, instance_prompt=identity.instance_prompt, steps=steps, learning_rate=c.learning_rate,
            generator=generator, class_images=self.class_images_for(index, identity.class_prompt),
            class_prompt=identity.class_prompt, prior_loss_weight=c.prior_loss_weight, batch_size=batch_size,
            on_step=advance if bar is not None else None,
        )

    def objective(self, index: int, photos: Any, identity: IdentitySet, generator: torch.Generator) -> Any:
        """The PGD objective against surrogate ``index``: its denoising loss of the photos (N,)."""
        import torch

        surrogate = self.surrogates[index]
        with torch.no_grad():
            states = surrogate.embed([identity.instance_prompt], grad=False)  # once per PGD phase
        targets = surrogate.target_latents(self.target, photos)

        def loss(padded: Tensor) -> Tensor:
            return surrogate.photo_loss(photos, padded, states, generator=generator, targets=targets)

        return loss


class ASPL(DreamBoothAttack):
    """Protect one person's photos against DreamBooth by alternating surrogate and PGD updates.

    Each round: (1) ``f' <- f`` fine-tuned ``surrogate_steps`` DreamBooth steps on the CLEAN set (the
    identity's references, else the photos themselves); (2) ``pgd_steps`` L-infinity sign-ascent steps
    on all photos jointly, maximizing ``f'``'s denoising loss; (3) ``f`` fine-tuned
    ``surrogate_steps`` steps on the PERTURBED photos, so the surrogate follows what an attacker
    would learn. The targeted variant (``target_image``) also pulls the predicted ``x_{t-1}`` toward
    the target image's latent. Several models (``model="a,b,c"``) run one round each from the shared
    photos: each model's step (3) trains on its own perturbed photos, and the next round starts from
    their average (E-ASPL, as ``ensemble_aspl.py``).

    Args:
        See ``ASPLConfig`` and ``DreamBoothAttackConfig``.

    Shape:
        an ``IdentitySet``: photos of any sizes (each seen with its short side at
        ``resolution``, the perturbation kept at the original resolution), references of any sizes.

    Examples:
        >>> aspl = ASPL(model="stabilityai/stable-diffusion-2-1-base")
        >>> out = aspl.protect_identity(IdentitySet.from_images(photos, references=clean_photos))

    Differences from the reference code (with their reasons: ``docs/methods/aspl.md``, Fidelity):
        budgets in [0, 1] units (0.05 -> 0.025); float32 trainable weights under bf16 autocast (the
        reference trains bf16 weights, which lr 5e-7 hardly moves); training images drawn at random
        (the reference reuses instance/class images 0-2 forever); ``f' = copy(f)`` is a copy of the
        trainable tensors, not a deep copy of the networks; photos of any sizes and aspect ratios;
        the targeted loss uses the DDPM posterior mean (the reference adds the sampler's random
        noise, and indexes t-1 = -1 at t = 0); the result is rounded to 8 bits inside the budget
        (the reference's ``+128`` truncation can exceed it by one gray level); resumable rounds;
        optional EOT, momentum, LoRA (which keeps the copy ``f'`` that ``aspl_lora.py`` drops).
    """

    name: ClassVar[str] = "aspl"
    Config: ClassVar[type[ASPLConfig]] = ASPLConfig

    def _perturb_identity(self, identity: IdentitySet, generator: torch.Generator, workdir: Path | None) -> Any:
        import torch

        from facedefense.optim import PGDState, generator_state, restore_generator
        from facedefense.progress import bar as progress_bar
        from facedefense_iterative.surrogate import PhotoBatch, square_crop

        c = self.config
        photos = PhotoBatch.pack(identity.images, c.resolution, device=self.device)
        clean = torch.cat([square_crop(x.reshape(1, *x.shape[-3:]).to(self.device), c.resolution) for x in identity.clean])
        pgd = self.make_pgd(c.steps * c.pgd_steps)
        checkpoint = self.checkpoint(workdir, identity)
        self.reset_surrogates()
        for index in range(len(self.surrogates)):
            self.class_images_for(index, identity.class_prompt)  # generated before the run's randomness
        saved = checkpoint.load()
        first_round = 0
        if saved is None:
            state = pgd.start(photos.padded, generator)
        else:
            first_round = saved["round"]
            state = PGDState.from_state_dict(saved["pgd"], self.device)
            for surrogate, weights in zip(self.surrogates, saved["surrogates"]):
                surrogate.restore({k: v.to(self.device) for k, v in weights.items()})
            restore_generator(generator, saved["generator"])
        per_round = len(self.surrogates) * (c.pgd_steps + 2 * c.surrogate_steps)  # every step of a round shows
        bar = progress_bar(total=c.steps * per_round, initial=first_round * per_round, desc=f"{self.name} ({identity.name})")
        try:
            for number in range(first_round, c.steps):
                bar.set_description(f"{self.name} ({identity.name}) round {number + 1}/{c.steps}", refresh=False)
                state = self._round(photos, clean, identity, state, pgd, generator, bar)
                first_round += 1
                checkpoint.save({"round": first_round, "pgd": state.state_dict(),
                                 "surrogates": [s.state_dict() for s in self.surrogates],
                                 "generator": generator_state(generator)})
        finally:
            bar.close()
        stats = [{"rounds": c.steps, "denoising_loss_last": float(v)} for v in
                 (state.objective if state.objective is not None else torch.zeros(len(photos.sizes)))]
        return Perturbation(photos.unpack(state.adversarial), stats)

    def _round(self, photos: Any, clean: Tensor, identity: IdentitySet, state: Any, pgd: Any,
               generator: torch.Generator, bar: Any) -> Any:
        """One ASPL round over every surrogate. The ensemble continues from the average of the models'
        perturbed photos; each model's step 3 trains on its own PGD result (``ensemble_aspl.py``)."""
        import torch

        from facedefense.budget import project_linf
        from facedefense.optim import PGDState

        outcomes = []
        for index, surrogate in enumerate(self.surrogates):
            base = surrogate.snapshot()
            self.train(index, clean, identity, generator, self.config.surrogate_steps, bar=bar)  # f' <- f + steps on the clean set
            with surrogate.frozen():
                outcomes.append(pgd.run(photos.padded, self.objective(index, photos, identity, generator), state,
                                        steps=self.config.pgd_steps, generator=generator, bar=bar))
            surrogate.restore(base)
        if len(outcomes) == 1:
            state = outcomes[0]
        else:
            mean = torch.stack([o.adversarial for o in outcomes]).mean(0)
            momentum = None if outcomes[0].momentum is None else torch.stack([o.momentum for o in outcomes]).mean(0)
            objective = torch.stack([o.objective for o in outcomes]).mean(0)
            state = PGDState(project_linf(mean, photos.padded, self.config.eps), outcomes[0].step, momentum, objective)
        for index, outcome in enumerate(outcomes):  # f <- f + steps on its own perturbed photos
            self.train(index, photos.square(outcome.adversarial, self.config.resolution), identity, generator,
                       self.config.surrogate_steps, bar=bar)
        return state
