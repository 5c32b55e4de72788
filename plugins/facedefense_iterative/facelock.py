"""FaceLock (Wang et al., "Edit Away and My Face Will not Stay: Personal Biometric Defense against
Malicious Generative Editing", CVPR 2025, arXiv:2411.16832; reference code taco-group/FaceLock)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense.imaging import resize, working_size
from facedefense.interfaces import Defender
from facedefense_iterative.frozen_model import PGDConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

VGG16_FILE = "vgg16-397923af.pth"


@dataclass
class FaceLockConfig(PGDConfig):
    """FaceLock options (the reference's [-1, 1] numbers are halved).

    Attributes:
        eps: L-infinity budget in [0, 1] units. Default 4/255 (the reference's 0.03 in [-1, 1] is 3.8/255).
        steps: PGD steps. Default 100 (the reference's).
        step_size: first sign step in [0, 1] units, decaying linearly to 1/100. Default 0.005 (the
            reference's 0.01 in [-1, 1]).
        face_model: shared face embedder (``facedefense list models``): ``arcface`` (facexlib's
            IR-SE50, weights by path), ``dlib_torch`` (the metrics plugin's), ``random_face_embedder`` (tests).
        face_model_path: weights of the face embedder (None: the embedder's default).
        lpips_weights: torchvision VGG16 checkpoint of LPIPS's backbone (``vgg16-397923af.pth``);
            None: looked for in torch's hub cache; ``"random"``: a random backbone (tests).
        identity_weight, latent_weight, lpips_weight: weights of the three terms. Defaults 1, 0.2, 1.
        identity_start, lpips_start: fraction of the steps after which the identity and LPIPS
            terms switch on. Defaults 0.35 and 0.25 (the reference's).
        random_start: start from a uniform point of the ball, as the reference does.
        eot: purifiers to optimize through (expectation over transformations), e.g. ``jpeg`` or
            ``none,jpeg``; empty: none.
        eot_samples: transform draws per step.
        momentum: MI-FGSM momentum (0 = plain sign steps, the reference).
    """

    eps: float = 4 / 255
    steps: int = 100
    step_size: float = 0.005
    face_model: str = "arcface"
    face_model_path: str | None = None
    lpips_weights: str | None = None
    identity_weight: float = 1.0
    latent_weight: float = 0.2
    lpips_weight: float = 1.0
    identity_start: float = 0.35
    lpips_start: float = 0.25
    random_start: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.identity_weight, self.latent_weight, self.lpips_weight) < 0:
            raise ConfigError("facelock weights must be non-negative")
        if not (0 <= self.identity_start <= 1 and 0 <= self.lpips_start <= 1):
            raise ConfigError("facelock identity_start and lpips_start are fractions of the steps, in [0, 1]")


def build_lpips(weights: str | None, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``lpips.LPIPS(net="vgg")`` with its linear heads from the wheel and the VGG16 backbone from
    ``weights`` (never downloaded). Maps two (N, 3, H, W) batches in [-1, 1] to (N, 1, 1, 1)."""
    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    path = None
    if weights != "random":
        if weights is None:
            import torch.hub

            path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
            if not path.is_file():
                raise ModelNotFoundError(
                    f"facelock's LPIPS needs {VGG16_FILE} (torchvision's VGG16, download.pytorch.org/models): "
                    f"pass -o lpips_weights=PATH or put it in {path.parent}"
                )
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ModelNotFoundError(f"facelock: LPIPS weights file {path} not found (expected {VGG16_FILE}, torchvision's VGG16)")
    ensure_torchvision_importable()
    import lpips

    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        names = {name: "features." + name.split(".", 1)[1] for name in model.net.state_dict()}
        if any(key not in state for key in names.values()):
            raise ModelNotFoundError(f"facelock: {path} is not a torchvision VGG16 checkpoint ({VGG16_FILE})")
        model.net.load_state_dict({name: state[key] for name, key in names.items()})
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class FaceLock(Defender):
    """Destroy the identity in what an editor reconstructs from the photo.

    Per image, ascends (sign steps, linear step decay, random start)::

        L = -w_id * cos(FR(R(x')), FR(x)) * [i >= 0.35 N]
            + w_z * MSE(mu_E(x'), mu_E(x))
            + w_p * LPIPS(R(x'), x) * [i > 0.25 N]

    where ``R(x') = D(mu_E(x'))`` is the VAE reconstruction of the surrogate editing model, ``FR`` a
    face-recognition embedder (pluggable: :func:`facedefense.models.shared_model`) and ``i`` the step.
    An editor built on that VAE then produces a face that no longer matches the person.

    Args:
        model: diffusers folder or Hugging Face id of the editing model whose VAE is attacked (the
            reference uses ``timbrooks/instruct-pix2pix``).
        eps, steps, step_size, face_model, face_model_path, lpips_weights, identity_weight,
            latent_weight, lpips_weight, identity_start, lpips_start, random_start, resolution:
            see :class:`FaceLockConfig`.

    Shape:
        images: (N, 3, H, W) float in [0, 1], portraits (the whole working image is the face
        embedder's input); any size.

    Example:
        >>> defender = FaceLock(model="timbrooks/instruct-pix2pix", face_model_path="recognition_arcface_ir_se50.pth",
        ...                     lpips_weights="vgg16-397923af.pth")
        >>> protected = defender.protect(images).images

    Differences from the reference code:
        the face embedder is pluggable (the reference uses CVLFace AdaFace-KPRPE with its aligner,
        loaded with ``trust_remote_code``; not here) and sees the whole working image (no alignment);
        budgets in [0, 1] units; per-image losses (the reference averages over the batch); fp32 on CPUs.
    """

    name: ClassVar[str] = "facelock"
    Config: ClassVar[type[FaceLockConfig]] = FaceLockConfig

    def __init__(self, config: FaceLockConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)

        self.eot = self.config.build_eot(self.device)
        from facedefense.diffusion import load_components
        from facedefense.models import shared_model

        if not self.config.model:
            raise ConfigError("facelock needs the editing model: --model (a diffusers folder or a Hugging Face id)")
        self.embedder = shared_model(
            self.config.face_model, path=self.config.face_model_path, device=self.device,
            dtype=str(self.dtype).removeprefix("torch."),
        )
        self.lpips = build_lpips(self.config.lpips_weights, self.device, self.dtype)
        self.vae = load_components(self.config.model, components=("vae",), device=self.device, dtype=self.dtype).vae

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu_E(x), D(mu_E(x)))``: the unscaled latent mean and the VAE reconstruction in [0, 1]."""
        from facedefense.diffusion import decode_latents, latent_mean

        latent = latent_mean(self.vae, images.to(self.dtype))
        return latent.float(), decode_latents(self.vae, latent * self.vae.config.scaling_factor)

    def identity_similarity(self, images: Tensor, clean: Tensor) -> Tensor:
        """Cosine similarity (N,) of the face embeddings of ``images``'s reconstruction and ``clean``."""
        import torch.nn.functional as F

        size = working_size(*images.shape[-2:], self.config.resolution)
        _, recon = self.reconstruct(resize(images, size))
        embedded = self.embedder(recon.to(self.dtype)).float()
        reference = self.embedder(resize(clean, size).to(self.dtype)).float()
        return F.cosine_similarity(embedded, reference, dim=1)

    def _perturb(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, list[dict[str, Any]]]:
        import torch
        import torch.nn.functional as F

        from facedefense.optim import LinfPGD
        from facedefense_iterative.frozen_model import flush_denormals

        config = self.config
        size = working_size(*images.shape[-2:], config.resolution)
        clean = resize(images, size)
        with torch.no_grad():
            clean_latent, _ = self.reconstruct(clean)
            clean_embedding = self.embedder(clean.to(self.dtype)).float()
        progress = {"step": 0}

        def objective(adversarial: Tensor) -> Tensor:
            step = progress["step"]
            latent, recon = self.reconstruct(resize(adversarial, size))
            loss = config.latent_weight * (latent - clean_latent).pow(2).flatten(1).mean(1)
            if step >= config.identity_start * config.steps and config.identity_weight > 0:
                embedding = self.embedder(recon.to(self.dtype)).float()
                loss = loss - config.identity_weight * F.cosine_similarity(embedding, clean_embedding, dim=1)
            if step > config.lpips_start * config.steps and config.lpips_weight > 0:
                distance = self.lpips(recon.to(self.dtype) * 2 - 1, clean.to(self.dtype) * 2 - 1).float().flatten()
                loss = loss + config.lpips_weight * distance
            return loss

        def advance(state: Any) -> None:
            progress["step"] = state.step

        pgd = LinfPGD(
            eps=config.eps, step_size=config.step_size, minimize=False, schedule="linear", total_steps=config.steps,
            random_start=config.random_start, momentum=config.momentum, eot=self.eot, description="facelock",
        )
        with flush_denormals():
            state = pgd.run(images, objective, steps=config.steps, generator=generator, on_step=advance)
            with torch.no_grad():
                before = self.identity_similarity(images, images)
                after = self.identity_similarity(state.adversarial, images)
        stats = [{"identity_similarity_start": float(b), "identity_similarity_end": float(a)} for b, a in zip(before, after)]
        return state.adversarial, stats
