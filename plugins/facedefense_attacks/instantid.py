"""InstantID (Wang et al., "InstantID: Zero-shot Identity-Preserving Generation in Seconds",
arXiv:2401.07519; code: instantX-research/InstantID): SDXL conditioned on one face in two ways.
The face-recognition embedding (512-D, antelopev2's glintr100 in the reference) goes through a
Resampler to 16 image tokens that decoupled cross-attention adds to the UNet (an IP-Adapter, loaded
with diffusers' own ``load_ip_adapter``), and the IdentityNet, a ControlNet whose control image is
the face's five keypoints drawn as ``draw_kps`` draws them, attends to those identity tokens instead
of the text (the reference pipeline passes ``encoder_hidden_states=prompt_image_emb`` to the
ControlNet). Built on diffusers' ``StableDiffusionXLControlNetPipeline``; a forward pre-hook gives
the ControlNet the identity tokens (`IdentityNetInput`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError, ImageError, ModelNotFoundError
from facedefense_attacks.common import check_not_empty, check_range, resize_center_crop
from facedefense_attacks.ip_adapter_faceid import face_backend_for
from facedefense_attacks.zero_shot import (
    ZeroShotConfig,
    ZeroShotModel,
    ZeroShotPersonalizer,
    adapter_projection,
)

if TYPE_CHECKING:
    from torch import Tensor

#: The negative prompt of InstantID's ``infer.py``.
NEGATIVE_PROMPT = (
    "(lowres, low quality, worst quality:1.2), (text:1.2), watermark, painting, drawing, illustration, "
    "glitch, deformed, mutated, cross-eyed, ugly, disfigured (lowres, low quality, worst quality:1.2), "
    "(text:1.2), watermark, painting, drawing, illustration, glitch,deformed, mutated, cross-eyed, ugly, "
    "disfigured"
)
#: ``draw_kps``'s colours (RGB) of the five keypoints: left eye, right eye, nose, mouth left, mouth right.
KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
#: ``draw_kps``'s limbs (each keypoint joined to the nose), its stick half-width and dot radius (pixels).
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
STICK_WIDTH, DOT_RADIUS = 4, 10
#: Width of the face embedding the adapter's Resampler takes.
FACE_EMBED_DIM = 512


def draw_keypoints(landmarks: Tensor, height: int, width: int) -> Tensor:
    """InstantID's control image: the five (x, y) keypoints on black, each joined to the nose by a
    filled ellipse of half-width ``STICK_WIDTH`` in its own colour at 60 %, then dots of radius
    ``DOT_RADIUS`` in full colour (``draw_kps``; integer centres, axes and angle as it passes them
    to OpenCV). Returns (3, height, width) in [0, 1] on the 8-bit grid."""
    import torch

    points = landmarks.detach().double().cpu()
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    canvas = torch.zeros(3, height, width, dtype=torch.float64)
    for start, end in LIMBS:
        (x0, y0), (x1, y1) = points[start].tolist(), points[end].tolist()
        centre_x, centre_y = int((x0 + x1) / 2), int((y0 + y1) / 2)
        half_length = max(int(math.hypot(x0 - x1, y0 - y1) / 2), 1)
        angle = math.radians(int(math.degrees(math.atan2(y0 - y1, x0 - x1))))
        dx, dy = cols - centre_x, rows - centre_y
        along = dx * math.cos(angle) + dy * math.sin(angle)
        across = -dx * math.sin(angle) + dy * math.cos(angle)
        inside = (along / half_length) ** 2 + (across / STICK_WIDTH) ** 2 <= 1
        canvas[:, inside] = torch.tensor(KEYPOINT_COLOURS[start], dtype=torch.float64)[:, None]
    canvas = torch.floor(canvas * 0.6)
    for (x, y), colour in zip(points.tolist(), KEYPOINT_COLOURS):
        inside = (cols - int(x)) ** 2 + (rows - int(y)) ** 2 <= DOT_RADIUS**2
        canvas[:, inside] = torch.tensor(colour, dtype=torch.float64)[:, None]
    return (canvas / 255).float()


class IdentityNetInput:
    """Forward pre-hook of the IdentityNet: its ``encoder_hidden_states`` become ``tokens``, the
    (B, 16, D) identity tokens of the batch (InstantID's ControlNet attends to them, not to the text).

    `attach` registers one on a ControlNet (once) and returns it."""

    def __init__(self) -> None:
        self.tokens: Tensor | None = None

    @classmethod
    def attach(cls, controlnet: Any) -> IdentityNetInput:
        hook = getattr(controlnet, "_facedefense_identity_input", None)
        if hook is None:
            hook = cls()
            controlnet.register_forward_pre_hook(hook, with_kwargs=True)
            controlnet._facedefense_identity_input = hook
        return hook

    def __call__(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        states = kwargs["encoder_hidden_states"]
        if self.tokens is None or self.tokens.shape[0] != states.shape[0]:
            raise RuntimeError("InstantID: the IdentityNet's identity tokens are not set for this batch")
        return args, {**kwargs, "encoder_hidden_states": self.tokens.to(states.device, states.dtype)}


@dataclass
class InstantIDConfig(ZeroShotConfig):
    """InstantID options; generation defaults are InstantID's ``infer.py``.

    Attributes:
        resolution: side of the generated images in pixels (1024, SDXL's).
        inference_steps: denoising steps (30).
        guidance_scale: classifier-free guidance (5.0).
        negative_prompt: ``infer.py``'s negative prompt.
        scale: weight of the identity tokens in the UNet's cross-attention (0.8, ``ip_adapter_scale``).
        adapter, subfolder, weight_name: the face adapter (``InstantX/InstantID``, ``ip-adapter.bin``).
        controlnet, controlnet_subfolder: the IdentityNet (``InstantX/InstantID``, ``ControlNetModel``).
        controlnet_scale: the IdentityNet's ``controlnet_conditioning_scale`` (0.8).
        face_backend: the face backend that detects the largest face, its keypoints and embedding
            (``insightface``: give antelopev2's ``glintr100.onnx`` as ``face_weights``, InstantID's).
        face_weights, detector_weights, face_threshold: the backend's files and detection threshold (0.9).
    """

    resolution: int = 1024
    inference_steps: int = 30
    guidance_scale: float = 5.0
    negative_prompt: str = NEGATIVE_PROMPT
    scale: float = 0.8
    adapter: str = "InstantX/InstantID"
    subfolder: str = ""
    weight_name: str = "ip-adapter.bin"
    controlnet: str = "InstantX/InstantID"
    controlnet_subfolder: str = "ControlNetModel"
    controlnet_scale: float = 0.8
    face_backend: str = "insightface"
    face_weights: str = ""
    detector_weights: str = ""
    face_threshold: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        check_not_empty(self, "adapter", "weight_name", "controlnet", "face_backend")
        check_range("controlnet_scale", self.controlnet_scale, 0, 10)
        check_range("face_threshold", self.face_threshold, 0, 1)


def _with_identitynet(pipeline: Any, controlnet: str, subfolder: str, label: str) -> Any:
    """``StableDiffusionXLControlNetPipeline`` sharing ``pipeline``'s components, with the IdentityNet."""
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    from facedefense.diffusion.loading import _from_pretrained

    where = "/".join(part for part in (controlnet, subfolder) if part)
    try:
        net = _from_pretrained(
            ControlNetModel, controlnet, subfolder=subfolder or None, dtype=pipeline.unet.dtype
        )
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{label}: the IdentityNet {where} cannot be loaded ({exc})") from exc
    extended = StableDiffusionXLControlNetPipeline.from_pipe(pipeline, controlnet=net.to(pipeline.device))
    IdentityNetInput.attach(extended.controlnet)
    return extended


class InstantIDModel(ZeroShotModel):
    """The InstantID pipeline with the reference faces' embeddings and the keypoint image.

    ``image_embeds`` are (1, 1, M, 512): the M faces' embeddings as one sequence the Resampler
    attends to (the reference reshapes ``image_embeds`` to (1, -1, 512)); ``extra_embeds["keypoints"]``
    is the (1, 3, R, R) control image. Saved in the ``ip_adapter`` format (the embeddings file and
    the metadata naming the adapter, and here the IdentityNet).
    """

    @classmethod
    def _extend_pipeline(cls, pipeline: Any, info: dict[str, Any]) -> Any:
        return _with_identitynet(
            pipeline, str(info["controlnet"]), str(info.get("controlnet_subfolder") or ""), "instantid"
        )

    def _prepare_projection(self, batch: int, guided: bool) -> None:
        """The identity tokens of the batch ([unconditional, conditional] halves when guided, as
        the pipeline stacks its latents) for the IdentityNet, through the loaded Resampler."""
        import torch

        unet = self.pipeline.unet
        parts = [self.negative_image_embeds, self.image_embeds] if guided else [self.image_embeds]
        embeds = torch.cat([part.expand(batch, *part.shape[1:]) for part in parts])
        with torch.no_grad():
            tokens = unet.encoder_hid_proj([embeds.to(self.pipeline.device, unet.dtype)])[0]
        IdentityNetInput.attach(self.pipeline.controlnet).tokens = tokens.flatten(1, 2)

    def _pipeline_inputs(self, prompts: int, guidance_scale: float) -> dict[str, Any]:
        keypoints = self.extra_embeds["keypoints"].to(self.pipeline.device, self.pipeline.unet.dtype)
        return {
            **super()._pipeline_inputs(prompts, guidance_scale),
            "image": keypoints,
            "controlnet_conditioning_scale": float(self.info.get("controlnet_scale", 0.8)),
        }


class InstantID(ZeroShotPersonalizer):
    """Zero-shot identity transfer with InstantID on SDXL: the photos' largest faces are embedded
    and the first one's keypoints fix the pose; nothing is trained.

    Args:
        model: base SDXL model. adapter, subfolder, weight_name: the face adapter; controlnet,
            controlnet_subfolder, controlnet_scale: the IdentityNet; face_backend, face_weights,
            detector_weights, face_threshold: the face encoder (`InstantIDConfig`). Generation
            options: see `ZeroShotConfig`.

    Shape:
        images: list of N (3, H, W) photos in [0, 1], any sizes. Photos without a detected face are
            left out (``no_face``); none with a face is refused. The keypoints come from the
            first photo with a face, resized and center-cropped to ``resolution`` (its face must
            survive the crop). The model keeps (1, 1, M, 512) embeddings as the backend gives
            them (insightface: not normalised, as InstantID's ``face_info['embedding']``) and the
            (1, 3, R, R) keypoint image.

    Example:
        >>> model = InstantID(model="stabilityai/stable-diffusion-xl-base-1.0",
        ...                   face_weights="antelopev2/glintr100.onnx").fit(photos)
        >>> images = model.generate(["a photo of person as a knight"], num_images=4)

    See ``docs/methods/instantid.md`` (defaults, licences, GPU memory).
    """

    name: ClassVar[str] = "instantid"
    needs_sdxl: ClassVar[bool] = True
    Config: ClassVar[type[InstantIDConfig]] = InstantIDConfig
    Model: ClassVar[type[ZeroShotModel]] = InstantIDModel
    _backend: Any = None
    _no_face: tuple[int, ...] = ()
    _pose_photo: int = 0

    def _check_before_loading(self) -> None:
        """`ZeroShotPersonalizer._check_before_loading`, and a face adapter (from the file's header
        when it is on this machine)."""
        super()._check_before_loading()
        config = self.config
        found = adapter_projection(config.adapter, config.subfolder, config.weight_name)
        if found is not None:
            self._check_projection(found[0], found[1].get("proj_in.weight", (0, 0))[-1])

    def _check_projection(self, projection: str, in_features: int) -> None:
        """Refuse an adapter whose projection class (named ``projection``) is not a Resampler of
        `FACE_EMBED_DIM`-D inputs (``in_features``)."""
        if projection != "IPAdapterPlusImageProjection" or in_features != FACE_EMBED_DIM:
            raise ConfigError(
                f"{self.name}: {self._adapter_path()} is not an InstantID face adapter "
                f"(a Resampler of {FACE_EMBED_DIM}-D face embeddings)"
            )

    def _extend_pipeline(self, pipeline: Any) -> Any:
        config = self.config
        return _with_identitynet(pipeline, config.controlnet, config.controlnet_subfolder, self.name)

    def _load_adapter(self, pipeline: Any) -> None:
        config = self.config
        layer = self._load_ip_adapter(pipeline, "the face adapter", subfolder=config.subfolder or None, image_encoder_folder=None)
        in_features = layer.proj_in.in_features if hasattr(layer, "proj_in") else 0
        self._check_projection(type(layer).__name__, in_features)
        pipeline.set_ip_adapter_scale(config.scale)
        self._backend = face_backend_for(config, self.device, self.name)

    def _encode(self, pipeline: Any, images: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The faces' embeddings (1, 1, M, 512), zeros, and the first face's keypoint image."""
        import torch

        found = self._backend.embed_largest(images)
        self._no_face = tuple(index for index, embedding in enumerate(found) if embedding is None)
        kept = [embedding.float().cpu() for embedding in found if embedding is not None]
        if not kept:
            raise ImageError(f"{self.name}: no face found in any of the {len(images)} photo(s)")
        if kept[0].numel() != FACE_EMBED_DIM:
            raise ConfigError(
                f"{self.name}: face backend '{self.config.face_backend}' embeds {kept[0].numel()}-D, "
                f"the adapter takes {FACE_EMBED_DIM}-D"
            )
        self._pose_photo = next(index for index, embedding in enumerate(found) if embedding is not None)
        size = self.config.resolution
        square = resize_center_crop(images[self._pose_photo].float(), size)
        faces = self._backend.detect(square)
        if not faces or faces[0].landmarks is None:
            raise ImageError(
                f"{self.name}: photo {self._pose_photo} has no face with keypoints in its "
                f"{size}x{size} center crop (the pose of the generated images)"
            )
        keypoints = draw_keypoints(faces[0].landmarks, size, size)[None]
        positive = torch.stack(kept)[None, None]
        return positive, torch.zeros_like(positive), {"keypoints": keypoints}

    def _adapter_info(self) -> dict[str, Any]:
        config = self.config
        return {
            "adapter": config.adapter,
            "subfolder": config.subfolder,
            "weight_name": config.weight_name,
            "scale": config.scale,
            "controlnet": config.controlnet,
            "controlnet_subfolder": config.controlnet_subfolder,
            "controlnet_scale": config.controlnet_scale,
            "face_backend": config.face_backend,
            "no_face": list(self._no_face),
            "pose_photo": self._pose_photo,
        }
