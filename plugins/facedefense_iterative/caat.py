"""CAAT: Cross-Attention Anti-Customization Attack (Xu et al., "Perturbing Attention Gives You More
Bang for the Buck: Subtle Imaging Perturbations That Efficiently Fool Customized Diffusion Models",
CVPR 2024, arXiv:2404.15081)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.config import option
from facedefense.errors import ConfigError
from facedefense.interfaces import Perturbation
from facedefense.runtime import fused_adam
from facedefense_iterative.aspl import DreamBoothAttack, DreamBoothAttackConfig

if TYPE_CHECKING:
    import torch

    from facedefense.interfaces import IdentitySet
    from facedefense_iterative.surrogate import Surrogate

#: The trainable tensors of CAAT's surrogate: the key and value projections of the UNet's
#: cross-attention layers (diffusers names them ``attn2``; Custom Diffusion's ``crossattn_kv``).
CROSS_ATTENTION_KV = (".attn2.to_k.", ".attn2.to_v.")


@dataclass
class CAATConfig(DreamBoothAttackConfig):
    """CAAT options (defaults: GAP-Diff's ``benchmark/scripts/caat.sh``, converted to [0, 1]).

    Attributes:
        eps: L-infinity budget in [0, 1] units. Default 8/255 (the script's 0.0627 = 16/255 in [-1, 1]).
        step_size: sign step in [0, 1] units. Default 0.0025 (the script's alpha 5e-3 in [-1, 1]).
        steps: joint steps (one PGD step on the photos and one AdamW step on the cross-attention
            keys and values each, from one backward pass). Default 250.
        learning_rate: AdamW learning rate of the key/value projections. Default 1e-5.
        prior_loss_weight: must be 0: CAAT crafts without prior preservation (the script's run).
        train_text_encoder: must be false: only the UNet's cross-attention keys and values train.
        checkpoint_every: save the state every this many steps (``--resume``). Default 10.
    """

    eps: float = 8 / 255
    steps: int = 250
    prior_loss_weight: float = 0.0
    train_text_encoder: bool = False
    checkpoint_every: int = option(10, min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prior_loss_weight != 0:
            raise ConfigError("caat crafts without prior preservation: prior_loss_weight must be 0")
        if self.train_text_encoder or self.lora_rank:
            raise ConfigError("caat trains only the UNet's cross-attention keys and values: no train_text_encoder, no lora_rank")
        if len([m for m in self.model.split(",") if m.strip()]) > 1:
            raise ConfigError("caat takes one surrogate model (no ensemble)")

    @staticmethod
    def unset_defaults(lora: bool) -> dict[str, Any]:
        """``caat.sh``'s learning rate and alpha (in [0, 1] units)."""
        return {"learning_rate": 1e-5, "step_size": 0.0025}


def train_cross_attention_kv(surrogate: Surrogate) -> None:
    """Make only the UNet's cross-attention key/value projections trainable (float32 master
    weights); every other UNet weight is frozen and stored in the compute dtype."""
    for name, parameter in surrogate.unet.named_parameters():
        trained = any(part in f".{name}" for part in CROSS_ATTENTION_KV)
        parameter.requires_grad_(trained)
        if not trained:
            parameter.data = parameter.data.to(surrogate.dtype)
    surrogate.trainable = {f"unet.{k}": p for k, p in surrogate.unet.named_parameters() if p.requires_grad}
    if not surrogate.trainable:
        raise ConfigError(f"caat: the UNet of {surrogate.model} has no cross-attention key/value projections (attn2.to_k/to_v)")


class CAAT(DreamBoothAttack):
    """Protect one person's photos by perturbing what the cross-attention layers learn.

    Each step draws one timestep and noise per photo, computes the surrogate's denoising loss of
    all photos together (the instance prompt, VAE posterior sampled) and backpropagates once: the
    photos take an L-infinity sign-ASCENT step on that loss, while the cross-attention key and
    value projections (the only trainable weights, as in Custom Diffusion's ``crossattn_kv``) take
    an AdamW DESCENT step on it (gradient clipped to norm 1), so the surrogate keeps learning the
    perturbed photos the way a fine-tuning attacker would, at a fraction of ASPL's cost.

    Args:
        See ``CAATConfig`` and ``DreamBoothAttackConfig``.

    Shape:
        an ``IdentitySet``: photos of any sizes (seen with their short side at ``resolution``,
        the perturbation kept at the original resolution); references are not used.

    Examples:
        >>> caat = CAAT(model="stabilityai/stable-diffusion-2-1-base")
        >>> out = caat.protect_identity(IdentitySet.from_images(photos))

    Differences from the reference code (with their reasons: ``docs/methods/caat.md``, Fidelity):
        budgets in [0, 1] units; photos of any sizes kept unflipped and uncropped (the script
        flips and random-crops them once before crafting and saves them so); rounding to 8 bits
        inside the budget; resumable; optional EOT, momentum, targeted loss.
    """

    name: ClassVar[str] = "caat"
    Config: ClassVar[type[CAATConfig]] = CAATConfig

    def __init__(self, config: CAATConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        train_cross_attention_kv(self.surrogates[0])
        self._initial = [s.state_dict() for s in self.surrogates]

    def _perturb_identity(self, identity: IdentitySet, generator: torch.Generator, workdir: Path | None) -> Any:
        import torch

        from facedefense.optim import PGDState, generator_state, restore_generator
        from facedefense.progress import bar as progress_bar
        from facedefense_iterative.surrogate import PhotoBatch

        c = self.config
        surrogate = self.surrogates[0]
        photos = PhotoBatch.pack(identity.images, c.resolution, device=self.device)
        pgd = self.make_pgd(c.steps)
        checkpoint = self.checkpoint(workdir, identity)
        self.reset_surrogates()
        weights = list(surrogate.trainable.values())
        optimizer = torch.optim.AdamW(weights, lr=c.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8,
                                      fused=fused_adam(weights))
        saved = checkpoint.load()
        if saved is None:
            state = pgd.start(photos.padded, generator)
        else:
            state = PGDState.from_state_dict(saved["pgd"], self.device)
            surrogate.restore({k: v.to(self.device) for k, v in saved["surrogate"].items()})
            optimizer.load_state_dict(saved["optimizer"])
            restore_generator(generator, saved["generator"])
        loss = self.objective(0, photos, identity, generator)
        count = len(photos.sizes)
        with progress_bar(total=c.steps, initial=state.step, desc=f"{self.name} ({identity.name})") as bar:
            while state.step < c.steps:
                optimizer.zero_grad(set_to_none=True)
                state = pgd.step(photos.padded, loss, state, generator=generator, total=c.steps, parameters=weights)
                with torch.no_grad():
                    for weight in weights:  # the step's gradient is of the loss's sum; the reference descends its mean
                        if weight.grad is not None:
                            weight.grad /= count
                torch.nn.utils.clip_grad_norm_(weights, 1.0)
                optimizer.step()
                bar.update(1)
                bar.set_postfix(loss=f"{state.objective.mean().item():.4g}", refresh=False)
                if state.step % c.checkpoint_every == 0 or state.step == c.steps:
                    checkpoint.save({"pgd": state.state_dict(), "surrogate": surrogate.state_dict(),
                                     "optimizer": optimizer.state_dict(), "generator": generator_state(generator)})
        optimizer.zero_grad(set_to_none=True)
        values = state.objective if state.objective is not None else torch.zeros(count)
        stats = [{"steps": c.steps, "denoising_loss_last": float(v)} for v in values]
        return Perturbation(photos.unpack(state.adversarial), stats)
