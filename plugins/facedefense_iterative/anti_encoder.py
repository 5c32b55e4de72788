"""anti_encoder: per-image PGD against the identity encoders of the zero-shot attacks (IP-Adapter-FaceID,
InstantID, PhotoMaker v2, PuLID embed the face with insightface's IResNet; IP-Adapter embeds the
photo with a CLIP image encoder), in the style of IDProtector (Song et al., CVPR 2025) and
FaceShield (ICCV 2025): make the protected photo's embeddings, as the attacker's encoders compute
them, stop matching the person."""

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

#: Distance between the eye centres of insightface's 112x112 template, in chip pixels.
_TEMPLATE_EYES = 35.24


@dataclass
class AntiEncoderConfig(PGDConfig):
    """anti_encoder options.

    Attributes:
        eps: L-infinity budget in [0, 1] units. Default 12/255 (FaceShield's).
        steps: PGD steps. Default 30 (FaceShield's).
        step_size: sign step in [0, 1] units. Default 1/255 (ours: 30 steps can cross the ball twice).
        face_model: shared face embedder (``facedefense list models``): ``insightface`` (the torch
            IResNet read from insightface's ONNX file: the zero-shot attacks' encoder; default),
            ``arcface`` (facexlib's IR-SE50), ``dlib_torch``, ``random_face_embedder`` (tests).
        face_model_path: its weights (``insightface``: ``glintr100.onnx`` or ``w600k_r50.onnx``).
        face_detector: face backend whose 5 landmarks of the clean photo align the face (None: the
            embedder's default, ``retinaface`` for the 112x112 template, ``dlib`` for ``dlib_torch``).
        face_detector_weights: weights of the face detector (RetinaFace's ``detection_Resnet50_Final.pth``).
        target: photo of another face: its embedding is pulled toward (targeted) instead of the
            photo's own pushed away from. None: untargeted (default).
        align_jitter: standard deviation, in pixels of the 112x112 chip, of the Gaussian noise added
            to the landmarks at every objective evaluation: expectation over the alignment the
            attacker's own detector finds on the protected photo. Default 1 (ours); 0: none.
        resolution: the photo is resized so its short side is this many pixels before the face is
            cut out (None, the default: the chip is sampled from the photo itself, as insightface's
            ``norm_crop`` warps the original).
        face_weight: weight of the face-encoder term. Default 1; 0: no face term (no face model loaded).
        clip_weight: weight of the CLIP image-encoder term (IP-Adapter's encoder). Default 0 (off).
        clip_encoder: folder or Hugging Face id holding that encoder (a transformers
            ``CLIPVisionModelWithProjection``), e.g. ``h94/IP-Adapter``; needed when ``clip_weight > 0``.
        clip_subfolder: its subfolder (``models/image_encoder``: IP-Adapter's ViT-H/14 for SD 1.5).
        model: not used (the encoders are the target, no diffusion model).
        random_start: start from a uniform point of the ball. Default True (ours: Madry et al.'s PGD).
        eot, eot_samples, momentum: see `PGDConfig`.
    """

    eps: float = 12 / 255
    steps: int = 30
    step_size: float = 1 / 255
    resolution: int | None = None
    face_model: str = "insightface"
    face_model_path: str | None = None
    face_detector: str | None = None
    face_detector_weights: str | None = None
    target: str | None = None
    align_jitter: float = 1.0
    face_weight: float = 1.0
    clip_weight: float = 0.0
    clip_encoder: str | None = None
    clip_subfolder: str = "models/image_encoder"
    random_start: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.align_jitter < 0:
            raise ConfigError(f"anti_encoder align_jitter is a standard deviation in chip pixels, >= 0; got {self.align_jitter}")
        if min(self.face_weight, self.clip_weight) < 0 or self.face_weight + self.clip_weight == 0:
            raise ConfigError("anti_encoder face_weight and clip_weight must be >= 0, and not both 0")
        if self.clip_weight > 0 and not self.clip_encoder:
            raise ConfigError("anti_encoder clip_weight > 0 needs clip_encoder (the IP-Adapter's CLIP image encoder, e.g. h94/IP-Adapter)")


class AntiEncoder(Defender):
    """Push the identity embeddings of each photo away from the clean photo's (or toward a target's).

    Per image, descends (sign steps, random start, EOT)::

        L = w_f cos(E(A_j(T(x'))), E(A(x))) + w_c cos(C(T(x')), C(x))        untargeted
        L = -w_f cos(E(A_j(T(x'))), E(A(t))) - w_c cos(C(T(x')), C(t))      with a target photo t

    where ``E`` is the face encoder (`facedefense.models.shared_model`; by default insightface's IResNet
    read from the attack's own ONNX file), ``A`` its 112x112 alignment (a differentiable similarity
    warp from the 5 landmarks of the clean photo, detected once), ``A_j`` the same with the landmarks
    jittered by ``align_jitter`` chip pixels, ``C`` a CLIP image encoder's projected embedding of the
    whole photo (CLIP's resize, center crop and normalization, differentiable) and ``T`` a purifier
    drawn by the EOT. A photo without a detected face gets no face term (a warning says how many);
    with no term left it keeps the random start only.

    Args:
        eps, steps, step_size, face_model, face_model_path, face_detector, face_detector_weights,
            target, align_jitter, face_weight, clip_weight, clip_encoder, clip_subfolder,
            resolution, random_start, eot, eot_samples, momentum: see `AntiEncoderConfig`.

    Shape:
        images: (N, 3, H, W) float in [0, 1], any size.

    Examples:
        >>> defender = AntiEncoder(face_model_path="antelopev2/glintr100.onnx",
        ...                        face_detector_weights="detection_Resnet50_Final.pth", eot="none,jpeg")
        >>> protected = defender.protect(images).images

    See ``docs/methods/anti_encoder.md`` (defaults and their sources).
    """

    name: ClassVar[str] = "anti_encoder"
    Config: ClassVar[type[AntiEncoderConfig]] = AntiEncoderConfig

    def __init__(self, config: AntiEncoderConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        from facedefense.models import shared_model
        from facedefense_iterative.face_embedders import landmark_detector

        config = self.config
        self.eot = config.build_eot(self.device)
        self.embedder = self.detector = self.clip = None
        if config.face_weight > 0:
            self.embedder = shared_model(config.face_model, path=config.face_model_path, device=self.device,
                                         dtype=str(self.dtype).removeprefix("torch."))
            self.detector = landmark_detector(self.embedder, face_model=config.face_model, face_detector=config.face_detector,
                                              weights=config.face_detector_weights, device=self.device, method=self.name)
        if config.clip_weight > 0:
            from facedefense._compat.torchvision_ops import ensure_torchvision_importable
            from facedefense.diffusion.loading import _from_pretrained

            ensure_torchvision_importable()
            from transformers import CLIPVisionModelWithProjection

            self.clip = _from_pretrained(CLIPVisionModelWithProjection, config.clip_encoder,
                                         subfolder=config.clip_subfolder or None)
            self.clip = self.clip.to(self.device, self.dtype).eval().requires_grad_(False)

    def clip_embed(self, images: Tensor) -> Tensor:
        """CLIP image embeddings (N, D) float32 of (N, 3, H, W) in [0, 1], preprocessed as CLIP's
        processor does (short side to the encoder's size, center crop, CLIP's mean and std);
        differentiable with respect to ``images``."""
        from facedefense_metrics._clip import preprocess

        pixels = preprocess(images, int(self.clip.config.image_size))
        return self.clip(pixel_values=pixels.to(self.dtype)).image_embeds.float()

    def size_of(self, images: Tensor) -> tuple[int, int]:
        """(height, width) the face is cut from: the photo's own, or scaled to ``resolution``."""
        height, width = images.shape[-2:]
        return (height, width) if self.config.resolution is None else working_size(height, width, self.config.resolution)

    def find_landmarks(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        """5 landmarks (N, 5, 2) of the largest face of each photo, in pixels of the photo resized to
        ``size``; NaN where none is found."""
        from facedefense_iterative.face_embedders import find_landmarks

        return find_landmarks(self.detector, images, size)

    def embed(self, images: Tensor, landmarks: Tensor) -> Tensor:
        """Face embeddings (N, D) float32 of ``images`` aligned with ``landmarks`` (N, 5, 2);
        differentiable with respect to ``images``."""
        return self.embedder(images.to(self.dtype), landmarks.to(images.device)).float()

    def target_embeddings(self) -> tuple[Tensor | None, Tensor | None]:
        """(1, D) face and CLIP embeddings of the ``target`` photo (None without a target, or for a
        term that is off)."""
        import torch

        from facedefense.io import load_image

        if self.config.target is None:
            return None, None
        pixels = load_image(self.config.target).pixels.to(self.device)
        face = clip = None
        with torch.no_grad():
            if self.embedder is not None:
                landmarks = self.find_landmarks(pixels, tuple(pixels.shape[-2:]))
                if landmarks.isnan().any():
                    raise ConfigError(f"anti_encoder: no face found in the target photo {self.config.target}")
                face = self.embed(pixels, landmarks)
            if self.clip is not None:
                clip = self.clip_embed(pixels)
        return face, clip

    def identity_similarity(self, images: Tensor, clean: Tensor, landmarks: Tensor | None = None) -> Tensor:
        """cos(E(A(images)), E(A(clean))) per image (N,), aligned with ``clean``'s landmarks (detected
        when None, in pixels of the working size); NaN where ``clean`` has no face."""
        import torch
        import torch.nn.functional as F

        size = self.size_of(images)
        landmarks = self.find_landmarks(clean, size) if landmarks is None else landmarks
        found = ~landmarks.isnan().flatten(1).any(1)
        out = torch.full((images.shape[0],), float("nan"), device=images.device)
        if found.any():
            marks, where = landmarks[found], found.to(images.device)
            out[where] = F.cosine_similarity(self.embed(resize(images[where], size), marks),
                                             self.embed(resize(clean[where], size), marks), dim=1)
        return out

    def _perturb(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, list[dict[str, Any]]]:
        import warnings

        import torch
        import torch.nn.functional as F

        from facedefense.optim import LinfPGD

        config = self.config
        size = self.size_of(images)
        found, marks, scale = torch.zeros(images.shape[0], dtype=torch.bool), None, None
        if self.embedder is not None:
            landmarks = self.find_landmarks(images, size)
            found = ~landmarks.isnan().flatten(1).any(1)
            if not found.all():
                rest = "the CLIP term only" if self.clip is not None else "the random start only"
                warnings.warn(f"anti_encoder: no face found in {int((~found).sum())} of {len(found)} photos; "
                              f"they get {rest}", UserWarning, stacklevel=2)
            marks = landmarks[found]
            # jitter scale: chip pixels -> working-size pixels, from each face's eye distance
            scale = (marks[:, 1] - marks[:, 0]).norm(dim=-1).view(-1, 1, 1) / _TEMPLATE_EYES
        where, faces = found.to(images.device), bool(found.any())
        face_reference, clip_reference = self.target_embeddings()
        with torch.no_grad():
            if faces and face_reference is None:
                face_reference = self.embed(resize(images[where], size), marks)
            if self.clip is not None and clip_reference is None:
                clip_reference = self.clip_embed(images)

        def face_similarity(adversarial: Tensor, jitter: float = 0.0) -> Tensor:
            """cos(E(A_j(x')), reference) of the photos with a face, 0 for the others; (N,)."""
            out = torch.zeros(adversarial.shape[0], device=adversarial.device)
            if not faces:
                return out
            aligned = marks
            if jitter > 0:
                device = generator.device if generator is not None else "cpu"
                noise = torch.randn(marks.shape, generator=generator, device=device).to(marks.device)
                aligned = marks + noise * jitter * scale
            values = F.cosine_similarity(self.embed(resize(adversarial[where], size), aligned), face_reference, dim=1)
            return out.masked_scatter(where, values)

        def clip_similarity(adversarial: Tensor) -> Tensor:
            """cos(C(x'), reference); (N,)."""
            return F.cosine_similarity(self.clip_embed(adversarial), clip_reference, dim=1)

        sign = 1.0 if config.target is None else -1.0  # untargeted: lower them; targeted: raise them

        def objective(adversarial: Tensor) -> Tensor:
            loss = config.face_weight * face_similarity(adversarial, config.align_jitter)
            if self.clip is not None:
                loss = loss + config.clip_weight * clip_similarity(adversarial)
            return sign * loss

        pgd = LinfPGD(eps=config.eps, step_size=config.step_size, minimize=True, random_start=config.random_start,
                      momentum=config.momentum, eot=self.eot, description=self.name)
        if faces or self.clip is not None:
            adversarial = pgd.run(images, objective, steps=config.steps, generator=generator).adversarial
        else:  # nothing to optimize
            adversarial = pgd.start(images, generator).adversarial
        prefix = "" if config.target is None else "target_"
        stats: list[dict[str, Any]] = [{} for _ in range(images.shape[0])]
        with torch.no_grad():
            if self.embedder is not None:
                for entry, face, value in zip(stats, found.tolist(), face_similarity(adversarial).tolist()):
                    entry.update({"face_found": bool(face), f"{prefix or 'identity_'}similarity": value if face else None})
            if self.clip is not None:
                for entry, value in zip(stats, clip_similarity(adversarial).tolist()):
                    entry[f"clip_{prefix}similarity"] = value
        return adversarial, stats
