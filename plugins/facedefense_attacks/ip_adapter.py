"""IP-Adapter (Ye et al., "IP-Adapter: Text Compatible Image Prompt Adapter for Text-to-Image
Diffusion Models", arXiv:2308.06721): a CLIP image encoder embeds the reference photos, a projection
turns the embedding into image tokens, and decoupled cross-attention layers add them to every
cross-attention of the UNet. Loaded with diffusers' own ``load_ip_adapter``; generation passes the
embeddings as ``ip_adapter_image_embeds``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense_attacks.common import check_not_empty
from facedefense_attacks.zero_shot import (
    ZeroShotConfig,
    ZeroShotModel,
    ZeroShotPersonalizer,
    adapter_projection,
)

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class IPAdapterConfig(ZeroShotConfig):
    """IP-Adapter options: which adapter (diffusers' ``load_ip_adapter`` arguments) and the
    generation defaults of `ZeroShotConfig`.

    Attributes:
        adapter: Hugging Face id or local folder of the adapter (``h94/IP-Adapter``).
        subfolder: its subfolder holding the weights (``models``: SD 1.5's).
        weight_name: the weights file (``ip-adapter_sd15.safetensors``; ``ip-adapter-plus-face_sd15.safetensors``
            is the face-cropped Plus variant, whose encoder hidden states are used as diffusers does).
        image_encoder_folder: the CLIP image encoder's folder inside ``subfolder`` (``image_encoder``:
            ViT-H/14), or a path ``a/b`` from the adapter's root.
    """

    adapter: str = "h94/IP-Adapter"
    subfolder: str = "models"
    weight_name: str = "ip-adapter_sd15.safetensors"
    image_encoder_folder: str = "image_encoder"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_not_empty(self, "adapter", "weight_name", "image_encoder_folder")


class IPAdapter(ZeroShotPersonalizer):
    """Zero-shot identity transfer with IP-Adapter: the photos' CLIP image embeddings condition
    generation; nothing is trained.

    Args:
        model: base SD 1.5-family model. adapter, subfolder, weight_name, image_encoder_folder: the
            adapter (`IPAdapterConfig`). scale: image-token weight (1.0). Generation options: see
            `ZeroShotConfig`.

    Shape:
        images: list of N (3, H, W) photos in [0, 1], any sizes; each is resized and center-cropped
            by the encoder's own ``CLIPImageProcessor`` (224 px for ViT-H/14). The model keeps
            (1, N, D) embeddings (D = 1024 for ViT-H/14; (1, N, 257, 1280) hidden states for Plus):
            the tokens of all N photos are concatenated, as diffusers does with a list of images.

    Example:
        >>> model = IPAdapter(model="stable-diffusion-v1-5/stable-diffusion-v1-5").fit(photos)
        >>> images = model.generate(["a photo of person on the beach"], num_images=4)

    See ``docs/methods/ip_adapter.md`` (defaults and their sources).
    """

    name: ClassVar[str] = "ip_adapter"
    Config: ClassVar[type[IPAdapterConfig]] = IPAdapterConfig
    Model: ClassVar[type[ZeroShotModel]] = ZeroShotModel

    def _check_before_loading(self) -> None:
        """A FaceID adapter file is refused from its header when it is on this machine."""
        config = self.config
        found = adapter_projection(config.adapter, config.subfolder, config.weight_name)
        if found is not None:
            self._check_projection(found[0])

    def _check_projection(self, projection: str) -> None:
        """Refuse an adapter whose projection class, named ``projection``, takes face embeddings."""
        if projection.startswith("IPAdapterFaceID"):
            raise ConfigError(
                f"{self.name}: {self._adapter_path()} is a FaceID adapter (face embeddings, not CLIP); "
                "use ip_adapter_faceid"
            )

    def _load_adapter(self, pipeline: Any) -> None:
        config, label, where = self.config, self.name, self._adapter_path()
        # subfolder "" not None: diffusers joins it with the encoder's folder
        layer = self._load_ip_adapter(pipeline, "the IP-Adapter", subfolder=config.subfolder,
                                      image_encoder_folder=config.image_encoder_folder)
        self._check_projection(type(layer).__name__)
        if getattr(pipeline, "image_encoder", None) is None:
            raise ModelNotFoundError(
                f"{label}: no CLIP image encoder was loaded with {where} (image_encoder_folder)"
            )
        pipeline.set_ip_adapter_scale(config.scale)

    def _encode(self, pipeline: Any, images: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """diffusers' own ``encode_image`` on the photos as ``CLIPImageProcessor`` prepares them from
        8-bit images: the projected embedding (plain IP-Adapter, zeros as the unconditional one)
        or the penultimate hidden states (Plus, the encoder's output on a black image as the
        unconditional one)."""
        from diffusers.models.embeddings import ImageProjection
        from PIL import Image

        from facedefense.io import to_uint8

        photos = [Image.fromarray(to_uint8(image)) for image in images]
        pixels = pipeline.feature_extractor(images=photos, return_tensors="pt").pixel_values
        plain = isinstance(pipeline.unet.encoder_hid_proj.image_projection_layers[0], ImageProjection)
        positive, negative = pipeline.encode_image(pixels, self.device, 1, not plain)
        return positive[None].float().cpu(), negative[None].float().cpu(), {}

    def _adapter_info(self) -> dict[str, Any]:
        config = self.config
        return {
            "adapter": config.adapter,
            "subfolder": config.subfolder,
            "weight_name": config.weight_name,
            "image_encoder_folder": config.image_encoder_folder,
            "scale": config.scale,
        }
