"""IP-Adapter-FaceID (h94/IP-Adapter-FaceID; Ye et al., arXiv:2308.06721): the IP-Adapter whose image
tokens come from a face-recognition embedding (512-D, unit length) instead of CLIP, with a LoRA on
the UNet trained alongside. Loaded with diffusers' own ``load_ip_adapter(..., image_encoder_folder=None)``
(which also loads the LoRA); generation passes the face embeddings as ``ip_adapter_image_embeds``,
shaped as diffusers' IP-Adapter guide builds them: (1, N, 1, 512) for N photos, zeros as the
unconditional embedding.

FaceID **Plus** (v1, and v2 with the shortcut) adds the CLIP ViT-H/14 penultimate hidden states of
the face crop (aligned to insightface's template at 224 px, as h94's model card does with
``face_align.norm_crop``) that a perceiver resampler attends to; diffusers' projection reads them
from its ``clip_embeds`` attribute (and ``shortcut``/``shortcut_scale``), which `FaceIDModel` sets
for each generated batch. SD 1.5 and SDXL base models both work (the adapter file must match)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError, ImageError
from facedefense_attacks.common import check_not_empty
from facedefense_attacks.zero_shot import (
    ZeroShotConfig,
    ZeroShotModel,
    ZeroShotPersonalizer,
    adapter_projection,
)

if TYPE_CHECKING:
    from torch import Tensor

#: Values of the ``variant`` option (``auto``: plain or Plus from the adapter file, v2 when its
#: name says ``plusv2``).
VARIANTS = ("auto", "plain", "plus", "plusv2")
#: Side of the aligned face crop the Plus variants give the CLIP encoder (h94's model card:
#: ``face_align.norm_crop(image, landmark=faces[0].kps, image_size=224)``).
FACE_CROP_SIZE = 224


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
        variant: ``auto`` (from the adapter file), ``plain``, ``plus`` (v1) or ``plusv2`` (v2: the
            face tokens added to the resampler's output, h94's ``shortcut=True``).
        image_encoder: the Plus variants' CLIP image encoder, a hub id or folder
            (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, h94's ``image_encoder_path``); unused by plain FaceID.
        shortcut_scale: weight of the resampler output in v2's shortcut (1.0, h94's ``s_scale``).
    """

    adapter: str = "h94/IP-Adapter-FaceID"
    subfolder: str = ""
    weight_name: str = "ip-adapter-faceid_sd15.bin"
    face_backend: str = "arcface"
    face_weights: str = ""
    detector_weights: str = ""
    face_threshold: float = 0.9
    variant: str = "auto"
    image_encoder: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    shortcut_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ConfigError(f"option 'variant' must be one of {', '.join(VARIANTS)}, got '{self.variant}'")
        if not 0 <= self.shortcut_scale <= 10:
            raise ConfigError(f"option 'shortcut_scale' must be from 0 to 10, got {self.shortcut_scale}")
        check_not_empty(self, "adapter", "weight_name", "face_backend")
        if not 0 <= self.face_threshold <= 1:
            raise ConfigError(f"option 'face_threshold' must be from 0 to 1, got {self.face_threshold}")


def face_backend_for(config: Any, device: Any, label: str) -> Any:
    """The face backend named by ``config`` (``face_backend``, ``face_weights``,
    ``detector_weights``, ``face_threshold``) on ``device``; refused when it cannot embed."""
    from facedefense_metrics.faces import get_backend

    backend = get_backend(
        config.face_backend,
        weights=config.face_weights or None,
        detector_weights=config.detector_weights or None,
        threshold=config.face_threshold,
        device=str(device),
    )
    if not backend.can_embed:
        raise ConfigError(f"{label}: face backend '{config.face_backend}' has no identity embedding")
    return backend


def align_face(image: Tensor, landmarks: Tensor, size: int = FACE_CROP_SIZE) -> Tensor:
    """(3, H, W) in [0, 1] and the face's five (x, y) landmarks -> (3, size, size): the face
    warped onto insightface's 112 px template scaled to ``size`` (``norm_crop``; black outside)."""
    import numpy as np

    from facedefense_metrics.faces.arcface import TEMPLATE_112
    from facedefense_metrics.faces.dlib_torch import _sample, _similarity

    template = np.asarray(TEMPLATE_112) * (size / 112)
    matrix, shift = _similarity(template, landmarks.detach().double().cpu().numpy())
    return _sample(image, np.concatenate([matrix, shift[:, None]], axis=1), size)


class FaceIDModel(ZeroShotModel):
    """A FaceID model; for the Plus variants (``info["variant"]``) it hands the projection the
    saved CLIP hidden states (``extra_embeds``: ``clip_embeds`` and ``negative_clip_embeds``, each
    (1, M, T, W)) stacked for the batch as diffusers stacks ``ip_adapter_image_embeds``
    (unconditional half first), and v2's shortcut."""

    def _prepare_projection(self, batch: int, guided: bool) -> None:
        import torch

        if not str(self.info.get("variant", "plain")).startswith("plus"):
            return
        layer = self.pipeline.unet.encoder_hid_proj.image_projection_layers[0]
        positive, negative = self.extra_embeds["clip_embeds"], self.extra_embeds["negative_clip_embeds"]
        parts = [negative, positive] if guided else [positive]
        embeds = torch.cat([part.expand(batch, *part.shape[1:]) for part in parts])
        layer.clip_embeds = embeds.to(self.pipeline.device, self.pipeline.unet.dtype)
        layer.shortcut = self.info["variant"] == "plusv2"
        layer.shortcut_scale = float(self.info.get("shortcut_scale", 1.0))


class IPAdapterFaceID(ZeroShotPersonalizer):
    """Zero-shot identity transfer with IP-Adapter-FaceID: the largest face of each photo is
    embedded by a face-recognition network and conditions generation; nothing is trained.

    Args:
        model: base SD 1.5-family model. adapter, subfolder, weight_name: the adapter;
            face_backend, face_weights, detector_weights, face_threshold: the face encoder;
            variant, image_encoder, shortcut_scale: FaceID Plus (`IPAdapterFaceIDConfig`).
            Generation options: see `ZeroShotConfig`.

    Shape:
        images: list of N (3, H, W) photos in [0, 1], any sizes. Photos without a detected face
            are left out (recorded in the model's ``no_face``); none with a face is refused. The
            model keeps (1, M, 1, 512) unit embeddings of the M photos with a face; Plus also
            (1, M, T, W) CLIP hidden states of their 224 px aligned face crops (T = 257, W = 1280
            for ViT-H/14) and of a zero image (unconditional).

    Example:
        >>> model = IPAdapterFaceID(model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        ...                         face_weights="recognition_arcface_ir_se50.pth").fit(photos)
        >>> images = model.generate(["a photo of person in the snow"], num_images=4)

    See ``docs/methods/ip_adapter_faceid.md`` (defaults, the face encoder, licences).
    """

    name: ClassVar[str] = "ip_adapter_faceid"
    Config: ClassVar[type[IPAdapterFaceIDConfig]] = IPAdapterFaceIDConfig
    Model: ClassVar[type[ZeroShotModel]] = FaceIDModel
    _backend: Any = None
    _no_face: tuple[int, ...] = ()
    _variant: str = "plain"
    _image_encoder: Any = None

    def _check_before_loading(self) -> None:
        """The adapter file's kind and variant (`_variant_of`), from its header when it is on this machine."""
        config = self.config
        found = adapter_projection(config.adapter, config.subfolder, config.weight_name)
        if found is not None:
            self._variant_of(found[0])

    def _variant_of(self, projection: str) -> str:
        """The variant of an adapter whose projection class is named ``projection``; refused when it
        is not a FaceID one or not the ``variant`` option's."""
        config, label, where = self.config, self.name, self._adapter_path()
        plus = projection == "IPAdapterFaceIDPlusImageProjection"
        if not plus and projection != "IPAdapterFaceIDImageProjection":
            raise ConfigError(f"{label}: {where} is not a FaceID adapter (CLIP adapters: ip_adapter)")
        variant = config.variant
        if variant == "auto":
            variant = ("plusv2" if "plusv2" in config.weight_name.lower() else "plus") if plus else "plain"
        if plus != variant.startswith("plus"):
            found = "a FaceID Plus" if plus else "a plain FaceID"
            raise ConfigError(f"{label}: {where} is {found} adapter, not variant '{variant}'")
        return variant

    def _load_adapter(self, pipeline: Any) -> None:
        config = self.config
        layer = self._load_ip_adapter(pipeline, "the IP-Adapter", subfolder=config.subfolder or None, image_encoder_folder=None)
        self._variant = self._variant_of(type(layer).__name__)
        plus = self._variant.startswith("plus")
        pipeline.set_ip_adapter_scale(config.scale)
        if plus:
            self._image_encoder = self._load_image_encoder(pipeline)
        self._backend = face_backend_for(config, self.device, self.name)

    def _load_image_encoder(self, pipeline: Any) -> Any:
        """The Plus variants' CLIP vision model (``image_encoder``) in the pipeline's dtype, and its
        processor sized as diffusers' ``load_ip_adapter`` sizes one."""
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        from facedefense.diffusion.loading import _from_pretrained

        encoder = _from_pretrained(
            CLIPVisionModelWithProjection, self.config.image_encoder, dtype=pipeline.unet.dtype
        )
        size = int(encoder.config.image_size)
        self._processor = CLIPImageProcessor(size=size, crop_size=size)
        return encoder.to(pipeline.device).eval()

    def _clip_hidden_states(self, crops: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(1, M, T, W) penultimate hidden states of the face crops and of zero pixel values (h94's
        ``get_image_embeds``: the unconditional input is ``zeros_like`` the processed crops)."""
        from PIL import Image

        from facedefense.io import to_uint8

        encoder = self._image_encoder
        photos = [Image.fromarray(to_uint8(crop)) for crop in crops]
        pixels = self._processor(images=photos, return_tensors="pt").pixel_values.to(
            encoder.device, encoder.dtype
        )
        states = [encoder(x, output_hidden_states=True).hidden_states[-2] for x in (pixels, pixels * 0)]
        return states[0][None].float().cpu(), states[1][None].float().cpu()

    def _encode(self, pipeline: Any, images: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Unit embeddings of the largest face of each photo, (1, M, 1, D), and zeros; Plus also
        the CLIP hidden states of the aligned crops of the same faces (`_clip_hidden_states`)."""
        import torch
        import torch.nn.functional as F

        found = self._backend.embed_largest(images)
        self._no_face = tuple(index for index, embedding in enumerate(found) if embedding is None)
        kept = [embedding.float().cpu() for embedding in found if embedding is not None]
        if not kept:
            raise ImageError(f"{self.name}: no face found in any of the {len(images)} photo(s)")
        layer = pipeline.unet.encoder_hid_proj.image_projection_layers[0]
        expected = (layer.proj if self._variant.startswith("plus") else layer.ff).net[0].proj.in_features
        if kept[0].numel() != expected:
            raise ConfigError(
                f"{self.name}: face backend '{self.config.face_backend}' embeds {kept[0].numel()}-D, "
                f"the adapter takes {expected}-D"
            )
        positive = F.normalize(torch.stack(kept), dim=-1)[None, :, None, :]
        extra: dict[str, Tensor] = {}
        if self._variant.startswith("plus"):
            crops = []
            for index, embedding in enumerate(found):
                faces = self._backend.detect(images[index]) if embedding is not None else []
                if faces and faces[0].landmarks is not None:
                    crops.append(align_face(images[index].float(), faces[0].landmarks))
            if len(crops) != len(kept):
                raise ImageError(
                    f"{self.name}: face backend '{self.config.face_backend}' gives no landmarks to crop by"
                )
            extra["clip_embeds"], extra["negative_clip_embeds"] = self._clip_hidden_states(crops)
        return positive, torch.zeros_like(positive), extra

    def _adapter_info(self) -> dict[str, Any]:
        config = self.config
        return {
            "adapter": config.adapter,
            "subfolder": config.subfolder,
            "weight_name": config.weight_name,
            "scale": config.scale,
            "variant": self._variant,
            "shortcut_scale": config.shortcut_scale,
            "face_backend": config.face_backend,
            "no_face": list(self._no_face),
        }
