"""FaceLock (Wang et al., "Edit Away and My Face Will not Stay: Personal Biometric Defense against
Malicious Generative Editing", CVPR 2025, arXiv:2411.16832; reference code taco-group/FaceLock)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError
from facedefense.imaging import resize, working_size
from facedefense.interfaces import Defender
from facedefense_iterative.frozen_model import PGDConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

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
        face_detector: face backend (``facedefense_metrics.faces``) whose 5 landmarks of the clean
            photo align the face for the embedder; it must give the landmarks the embedder is
            aligned with (``arcface``: ``retinaface`` or ``mtcnn``; ``dlib_torch``: ``dlib``).
            None: the embedder's default (``retinaface`` for ``arcface``, ``dlib`` for ``dlib_torch``).
        face_detector_weights: weights of the face detector (RetinaFace's ``detection_Resnet50_Final.pth``;
            None: looked for in torch's hub cache).
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
    face_detector: str | None = None
    face_detector_weights: str | None = None
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


class FaceLock(Defender):
    """Destroy the identity in what an editor reconstructs from the photo.

    Per image, ascends (sign steps, linear step decay, random start)::

        L = -w_id * cos(FR(A(R(x'))), FR(A(x))) * [i >= 0.35 N]
            + w_z * MSE(mu_E(x'), mu_E(x))
            + w_p * LPIPS(R(x'), x) * [i > 0.25 N]

    where ``R(x') = D(mu_E(x'))`` is the VAE reconstruction of the surrogate editing model (clamped
    to the image range, as the reference), ``FR`` a face-recognition embedder (pluggable:
    `facedefense.models.shared_model`), ``A`` the embedder's face alignment (a differentiable
    similarity warp to its template, from the 5 landmarks of the clean photo, detected once) and
    ``i`` the step. An editor built on that VAE then produces a face that no longer matches the
    person.

    A photo in which the detector finds no face gets no identity term (the latent and LPIPS terms
    still apply); a warning says how many, and its stats say ``face_found: false``.

    Args:
        model: diffusers folder or Hugging Face id of the editing model whose VAE is attacked (the
            reference uses ``timbrooks/instruct-pix2pix``).
        eps, steps, step_size, face_model, face_model_path, face_detector, face_detector_weights,
            lpips_weights, identity_weight, latent_weight, lpips_weight, identity_start, lpips_start,
            random_start, resolution: see `FaceLockConfig`.

    Shape:
        images: (N, 3, H, W) float in [0, 1], any size; landmarks are detected on the photo and
        scaled to the working size.

    Examples:
        >>> defender = FaceLock(model="timbrooks/instruct-pix2pix", face_model_path="recognition_arcface_ir_se50.pth",
        ...                     face_detector_weights="detection_Resnet50_Final.pth", lpips_weights="vgg16-397923af.pth")
        >>> protected = defender.protect(images).images

    Differences from the reference code (docs/methods/facelock.md, "Fidelity"):
        the face embedder is pluggable (the reference uses CVLFace AdaFace-KPRPE with its DFA
        aligner, loaded with ``trust_remote_code``; not here) and the landmarks are detected once
        on the clean photo (the reference's aligner runs on every reconstruction); budgets in
        [0, 1] units; per-image losses (the reference averages over the batch); fp32 on CPUs.
    """

    name: ClassVar[str] = "facelock"
    Config: ClassVar[type[FaceLockConfig]] = FaceLockConfig

    def __init__(self, config: FaceLockConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)

        self.eot = self.config.build_eot(self.device)
        from facedefense.diffusion import load_components
        from facedefense.models import shared_model
        from facedefense_metrics.lpips import backbone_file

        if not self.config.model:
            raise ConfigError("facelock needs the editing model: --model (a diffusers folder or a Hugging Face id)")
        self.embedder = shared_model(
            self.config.face_model, path=self.config.face_model_path, device=self.device,
            dtype=str(self.dtype).removeprefix("torch."),
        )
        self.detector = self._build_detector()
        # LPIPS-VGG (FaceLock's loss), the metrics plugin's shared model: built once per process, frozen.
        found = backbone_file(self.config.lpips_weights, "vgg", "facelock", "lpips_weights")
        self.lpips = shared_model("lpips", path="random" if found is None else str(found), device=self.device,
                                  dtype=str(self.dtype).removeprefix("torch."), net="vgg")
        self.vae = load_components(self.config.model, components=("vae",), device=self.device, dtype=self.dtype).vae

    def _build_detector(self) -> Any:
        """The face backend giving the landmarks the embedder is aligned with (one-line errors)."""
        from facedefense_iterative.face_embedders import landmark_detector

        config = self.config
        return landmark_detector(self.embedder, face_model=config.face_model, face_detector=config.face_detector,
                                 weights=config.face_detector_weights, device=self.device, method="facelock")

    def find_landmarks(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        """5 landmarks (N, 5, 2) of the largest face of each photo, (x, y) in pixels of the photo
        resized to ``size``; NaN where the detector finds no face. Detected on the photos themselves."""
        from facedefense_iterative.face_embedders import find_landmarks

        return find_landmarks(self.detector, images, size)

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu_E(x), D(mu_E(x)))``: the unscaled latent mean (float32) and the VAE reconstruction."""
        from facedefense.diffusion import latent_mean

        latent = latent_mean(self.vae, images.to(self.dtype)).float()
        return latent, self.decode(latent)

    def decode(self, latent: Tensor) -> Tensor:
        """``D(z)`` of an unscaled latent: (N, 3, H, W) float32 in [0, 1], clamped as the reference's
        ``.clip(-1, 1)``."""
        from facedefense.diffusion import decode_latents

        return decode_latents(self.vae, latent * self.vae.config.scaling_factor)

    def embed(self, images: Tensor, landmarks: Tensor) -> Tensor:
        """Face embeddings (N, D) float32 of the aligned faces of ``images`` (working size, [0, 1]),
        with ``landmarks`` (N, 5, 2) of the clean photo; differentiable with respect to ``images``."""
        return self.embedder(images.to(self.dtype), landmarks.to(images.device)).float()

    def identity_similarity(self, images: Tensor, clean: Tensor, landmarks: Tensor | None = None) -> Tensor:
        """Cosine similarity (N,) of the aligned face embeddings of ``images``'s reconstruction and
        ``clean`` (NaN where no face is found in ``clean``); ``landmarks`` as `find_landmarks` gives
        them (detected on ``clean`` when None)."""
        import torch
        import torch.nn.functional as F

        size = working_size(*images.shape[-2:], self.config.resolution)
        if landmarks is None:
            landmarks = self.find_landmarks(clean, size)
        found = ~landmarks.isnan().flatten(1).any(1)
        out = torch.full((images.shape[0],), float("nan"), device=images.device)
        if found.any():
            _, recon = self.reconstruct(resize(images[found.to(images.device)], size))
            reference = resize(clean[found.to(clean.device)], size)
            out[found.to(out.device)] = F.cosine_similarity(
                self.embed(recon, landmarks[found]), self.embed(reference, landmarks[found]), dim=1
            )
        return out

    def _perturb(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, list[dict[str, Any]]]:
        import warnings

        import torch
        import torch.nn.functional as F

        from facedefense.diffusion import latent_mean
        from facedefense.optim import LinfPGD
        from facedefense_iterative.frozen_model import flush_denormals

        config = self.config
        size = working_size(*images.shape[-2:], config.resolution)
        clean = resize(images, size)
        landmarks = self.find_landmarks(images, size)
        found = (~landmarks.isnan().flatten(1).any(1)).to(images.device)
        if not found.all():
            warnings.warn(
                f"facelock: no face found in {int((~found).sum())} of {len(found)} photos; they get no identity term",
                UserWarning, stacklevel=2,
            )
        with torch.no_grad():
            clean_latent, clean_recon = self.reconstruct(clean)
            clean_embedding = self.embed(clean[found], landmarks[found.cpu()]) if found.any() else None

        def similarity(recon: Tensor) -> Tensor:
            """cos(FR(A(recon)), FR(A(x))) of the photos with a face, 0 for the others; (N,)."""
            if clean_embedding is None:
                return torch.zeros(recon.shape[0], device=recon.device)
            values = F.cosine_similarity(self.embed(recon[found], landmarks[found.cpu()]), clean_embedding, dim=1)
            return torch.zeros(recon.shape[0], device=recon.device).masked_scatter(found, values)

        progress = {"step": 0}

        def objective(adversarial: Tensor) -> Tensor:
            step = progress["step"]
            identity = step >= config.identity_start * config.steps and config.identity_weight > 0
            perceptual = step > config.lpips_start * config.steps and config.lpips_weight > 0
            latent = latent_mean(self.vae, resize(adversarial, size).to(self.dtype)).float()
            loss = config.latent_weight * (latent - clean_latent).pow(2).flatten(1).mean(1)
            if identity or perceptual:  # the decoder runs only once a term needs the reconstruction
                recon = self.decode(latent)
                if identity:
                    loss = loss - config.identity_weight * similarity(recon)
                if perceptual:
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
                before = similarity(clean_recon)
                after = similarity(self.reconstruct(resize(state.adversarial, size))[1])
        stats = [
            {
                "face_found": bool(face),
                "identity_similarity_start": float(b) if face else None,
                "identity_similarity_end": float(a) if face else None,
            }
            for face, b, a in zip(found.tolist(), before.tolist(), after.tolist())
        ]
        return state.adversarial, stats
