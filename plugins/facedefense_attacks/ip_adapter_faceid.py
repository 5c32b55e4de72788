"""IP-Adapter-FaceID (h94/IP-Adapter-FaceID; Ye et al., arXiv:2308.06721): the IP-Adapter whose image
tokens come from a face-recognition embedding (512-D, unit length) instead of CLIP, with a LoRA on
the UNet trained alongside. Loaded with diffusers' own ``load_ip_adapter(..., image_encoder_folder=None)``
(which also loads the LoRA); generation passes the face embeddings as ``ip_adapter_image_embeds``,
shaped as diffusers' IP-Adapter guide builds them: (1, N, 1, 512) for N photos, zeros as the
unconditional embedding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError, ImageError, ModelNotFoundError
from facedefense_attacks.zero_shot import ZeroShotConfig, ZeroShotModel, ZeroShotPersonalizer

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class IPAdapterFaceIDConfig(ZeroShotConfig):
    """IP-Adapter-FaceID options: the adapter, the face encoder, and `ZeroShotConfig`'s generation.

    Attributes:
        adapter: Hugging Face id or local folder of the adapter (``h94/IP-Adapter-FaceID``).
        subfolder: its subfolder holding the weights (none).
        weight_name: the weights file (``ip-adapter-faceid_sd15.bin``: the plain SD 1.5 FaceID).
        face_backend: the face backend of the metrics plugin that detects the largest face and
            embeds it (``arcface``: RetinaFace + ArcFace IR-SE50, 512-D).
        face_weights: the recognition network's weights file (default: the backend's; ``random``: tests).
        detector_weights: RetinaFace's weights file (default: the backend's; ``random``: tests).
        face_threshold: minimum detection confidence (0.9).
    """

    adapter: str = "h94/IP-Adapter-FaceID"
    subfolder: str = ""
    weight_name: str = "ip-adapter-faceid_sd15.bin"
    face_backend: str = "arcface"
    face_weights: str = ""
    detector_weights: str = ""
    face_threshold: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("adapter", "weight_name", "face_backend"):
            if not str(getattr(self, key)).strip():
                raise ConfigError(f"option '{key}' must not be empty")
        if not 0 <= self.face_threshold <= 1:
            raise ConfigError(f"option 'face_threshold' must be from 0 to 1, got {self.face_threshold}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class IPAdapterFaceID(ZeroShotPersonalizer):
    """Zero-shot identity transfer with IP-Adapter-FaceID: the largest face of each photo is
    embedded by a face-recognition network and conditions generation; nothing is trained.

    Args:
        model: base SD 1.5-family model. adapter, subfolder, weight_name: the adapter;
            face_backend, face_weights, detector_weights, face_threshold: the face encoder
            (`IPAdapterFaceIDConfig`). Generation options: see `ZeroShotConfig`.

    Shape:
        images: list of N (3, H, W) photos in [0, 1], any sizes. Photos without a detected face
            are left out (recorded in the model's ``no_face``); none with a face is refused. The
            model keeps (1, M, 1, 512) unit embeddings of the M photos with a face.

    Example:
        >>> model = IPAdapterFaceID(model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        ...                         face_weights="recognition_arcface_ir_se50.pth").fit(photos)
        >>> images = model.generate(["a photo of person in the snow"], num_images=4)

    See ``docs/methods/ip_adapter_faceid.md`` (defaults, the face encoder, licences).
    """

    name: ClassVar[str] = "ip_adapter_faceid"
    Config: ClassVar[type[IPAdapterFaceIDConfig]] = IPAdapterFaceIDConfig
    Model: ClassVar[type[ZeroShotModel]] = ZeroShotModel
    _backend: Any = None
    _no_face: tuple[int, ...] = ()

    def _load_adapter(self, pipeline: Any) -> None:
        from diffusers.models.embeddings import IPAdapterFaceIDImageProjection
        from safetensors import SafetensorError

        from facedefense_metrics.faces import get_backend

        config, label = self.config, self.name
        where = "/".join(part for part in (config.adapter, config.subfolder, config.weight_name) if part)
        try:
            pipeline.load_ip_adapter(
                config.adapter,
                subfolder=config.subfolder or None,
                weight_name=config.weight_name,
                image_encoder_folder=None,
            )
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
            raise ModelNotFoundError(
                f"{label}: the IP-Adapter {where} cannot be loaded ({_first_line(exc)})"
            ) from exc
        layer = pipeline.unet.encoder_hid_proj.image_projection_layers[0]
        if not isinstance(layer, IPAdapterFaceIDImageProjection):
            raise ConfigError(
                f"{label}: {where} is not a plain FaceID adapter (CLIP adapters: ip_adapter; "
                "FaceID Plus is not supported yet)"
            )
        pipeline.set_ip_adapter_scale(config.scale)
        backend = get_backend(
            config.face_backend,
            weights=config.face_weights or None,
            detector_weights=config.detector_weights or None,
            threshold=config.face_threshold,
            device=str(self.device),
        )
        if not backend.can_embed:
            raise ConfigError(f"{label}: face backend '{config.face_backend}' has no identity embedding")
        self._backend = backend

    def _encode(self, pipeline: Any, images: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Unit embeddings of the largest face of each photo, (1, M, 1, D), and zeros."""
        import torch
        import torch.nn.functional as F

        found = self._backend.embed_largest(images)
        self._no_face = tuple(index for index, embedding in enumerate(found) if embedding is None)
        kept = [embedding.float().cpu() for embedding in found if embedding is not None]
        if not kept:
            raise ImageError(f"{self.name}: no face found in any of the {len(images)} photo(s)")
        expected = pipeline.unet.encoder_hid_proj.image_projection_layers[0].ff.net[0].proj.in_features
        if kept[0].numel() != expected:
            raise ConfigError(
                f"{self.name}: face backend '{self.config.face_backend}' embeds {kept[0].numel()}-D, "
                f"the adapter takes {expected}-D"
            )
        positive = F.normalize(torch.stack(kept), dim=-1)[None, :, None, :]
        return positive, torch.zeros_like(positive)

    def _adapter_info(self) -> dict[str, Any]:
        config = self.config
        return {
            "adapter": config.adapter,
            "subfolder": config.subfolder,
            "weight_name": config.weight_name,
            "scale": config.scale,
            "face_backend": config.face_backend,
            "no_face": list(self._no_face),
        }
