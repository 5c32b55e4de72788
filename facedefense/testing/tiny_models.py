"""Tiny random-weight diffusers models, built from configs and saved with ``save_pretrained``.

They load through exactly the ``from_pretrained`` path real models take. The VAE downsamples by 8
like Stable Diffusion's, so a 512x512 image gives 64x64 latents (the real geometry), at a cost of
well under a second per attack step on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense._compat.torchvision_ops import ensure_torchvision_importable

if TYPE_CHECKING:
    from torch import Tensor

CROSS_ATTENTION_DIM = 32


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _unet(seed: int, in_channels: int = 4, sample_size: int = 8, **extra: Any) -> Any:
    from diffusers import UNet2DConditionModel

    _seeded(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
        **extra,
    )


def _vae(seed: int, downsample_blocks: int = 4, scaling_factor: float = 0.18215) -> Any:
    from diffusers import AutoencoderKL

    _seeded(seed)
    channels = (32, 64, 64, 64)[:downsample_blocks]
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * downsample_blocks,
        up_block_types=("UpDecoderBlock2D",) * downsample_blocks,
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def _text_encoder(seed: int, vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed)
    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=CROSS_ATTENTION_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        layer_norm_eps=1e-5,
        vocab_size=vocab_size,
        max_position_embeddings=77,
    )
    return CLIPTextModel(config)


def _training_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, clip_sample=False,
    )


def _text_parts(seed: int) -> tuple[Any, Any]:
    from facedefense.testing.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    return tokenizer, _text_encoder(seed, len(tokenizer))


def _build_sd_family(pipeline_class: Any, directory: str | Path, *, seed: int, scheduler: Any, in_channels: int) -> Path:
    """Assemble a Stable-Diffusion-shaped pipeline from tiny parts and save it."""
    tokenizer, text_encoder = _text_parts(seed)
    pipeline = pipeline_class(
        vae=_vae(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=_unet(seed, in_channels=in_channels),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _save(pipeline, directory)


def build_tiny_sd(directory: str | Path, *, seed: int = 0) -> Path:
    """Build a tiny Stable Diffusion (text-to-image) folder and return its path.

    UNet (32, 64) channels with cross-attention 32 (about 1.4M parameters), a VAE that downsamples
    by 8 (4 blocks), a 2-layer CLIP text encoder, an offline CLIP tokenizer, DDPM scheduler
    (scaled_linear 0.00085-0.012, 1000 steps).

    Example:
        >>> path = build_tiny_sd("/tmp/tiny-sd")
        >>> parts = facedefense.diffusion.load_components(str(path))
    """
    ensure_torchvision_importable()
    from diffusers import StableDiffusionPipeline

    return _build_sd_family(StableDiffusionPipeline, directory, seed=seed, scheduler=_training_scheduler(), in_channels=4)


def build_tiny_instruct_pix2pix(directory: str | Path, *, seed: int = 0) -> Path:
    """Tiny InstructPix2Pix folder (UNet with 8 input channels: noisy latent + image latent)."""
    ensure_torchvision_importable()
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return _build_sd_family(StableDiffusionInstructPix2PixPipeline, directory, seed=seed, scheduler=scheduler, in_channels=8)


def build_tiny_inpaint(directory: str | Path, *, seed: int = 0) -> Path:
    """Tiny inpainting folder (UNet with 9 input channels: latent + mask + masked-image latent)."""
    ensure_torchvision_importable()
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    return _build_sd_family(StableDiffusionInpaintPipeline, directory, seed=seed, scheduler=scheduler, in_channels=9)


def build_tiny_upscaler(directory: str | Path, *, seed: int = 0) -> Path:
    """Tiny x4 upscaler folder: UNet with 7 input channels (latent + low-res RGB) conditioned on
    the noise level, a VAE that downsamples by 4 (scaling 0.08333, like SD x4-upscaler)."""
    ensure_torchvision_importable()
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    tokenizer, text_encoder = _text_parts(seed)
    unet = _unet(seed, in_channels=7, class_embed_type=None, num_class_embeds=1000)
    pipeline = StableDiffusionUpscalePipeline(
        vae=_vae(seed, downsample_blocks=3, scaling_factor=0.08333),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear", clip_sample=False, steps_offset=1),
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear", clip_sample=False, prediction_type="v_prediction", steps_offset=1
        ),
        max_noise_level=350,
    )
    return _save(pipeline, directory)


def _save(pipeline: Any, directory: str | Path) -> Path:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


def sample_faces(count: int = 4, size: int = 64) -> Tensor:
    """Deterministic test portraits: shifted and mirrored crops of ``skimage.data.astronaut()``
    (a public-domain NASA portrait shipped with scikit-image), resized to ``size`` x ``size``.

    Returns:
        (count, 3, size, size) float32 in [0, 1], on the 8-bit grid like decoded files.
    """
    import torch
    from skimage.data import astronaut

    from facedefense.imaging import resize

    base = torch.from_numpy(astronaut().copy()).permute(2, 0, 1).float() / 255.0  # (3, 512, 512)
    crops = []
    for index in range(count):
        offset = 8 * (index % 4)
        crop = base[:, offset : offset + 448, 16 + offset : 16 + offset + 448]
        crops.append(crop.flip(-1) if index % 2 else crop)
    faces = resize(torch.stack(crops), (size, size)).clamp(0, 1)
    return torch.round(faces * 255) / 255


def train_tiny_unet(
    directory: str | Path,
    images: Tensor,
    *,
    steps: int = 300,
    seed: int = 0,
    learning_rate: float = 1e-3,
    prompt: str = "a photo of sks person",
) -> Path:
    """Fine-tune the UNet of a tiny SD folder in place on ``images`` so it responds to its input.

    A random-weight UNet barely reacts to its input, so attacks on the denoising loss are not
    measurable on it; a few hundred AdamW steps on a handful of images fix that (DESIGN.md, tests).

    Args:
        directory: a folder from :func:`build_tiny_sd` (its ``unet/`` is overwritten).
        images: (N, 3, H, W) in [0, 1], H and W multiples of 8.
        steps: optimizer steps (batch = all images).
        seed: randomness of timesteps and noise.
        learning_rate: AdamW learning rate.
        prompt: conditioning prompt.
    """
    import torch

    from facedefense.diffusion import TextEmbeddingCache, denoising_loss, encode_latents, load_components

    parts = load_components(str(directory))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = encode_latents(parts.vae, images)
        states = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)(prompt)
    unet = parts.unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate)
    for _ in range(steps):
        loss = denoising_loss(unet, parts.scheduler, latents, states, generator=generator, reduction="mean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    unet.eval().requires_grad_(False).save_pretrained(Path(directory) / "unet", safe_serialization=True)
    return Path(directory)
