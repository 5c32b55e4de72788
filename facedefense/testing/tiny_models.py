"""Tiny random-weight diffusers models, built from configs and saved with ``save_pretrained``.

They load through exactly the ``from_pretrained`` path real models take. The VAE downsamples by 8
like Stable Diffusion's, so a 512x512 image gives 64x64 latents (the real geometry), at a cost of
well under a second per attack step on a CPU.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

CROSS_ATTENTION_DIM = 32
#: Downsampling factor of the tiny SD VAE (the real one's).
VAE_FACTOR = 8


def _seeded(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _prepare() -> None:
    """Make diffusers/transformers importable (torchvision shim) and quiet their progress bars."""
    from facedefense.diffusion.loading import _prepare_imports

    _prepare_imports()


def _isolated_rng() -> Any:
    """Seeding inside the builders must not change the caller's global torch RNG."""
    import torch

    return torch.random.fork_rng(devices=[])


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


def _vae(seed: int, downsample_blocks: int = 4, scaling_factor: float = 0.18215, sample_size: int = 64) -> Any:
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
        sample_size=sample_size,
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


def _latent_size(sample_size: int, factor: int) -> int:
    from facedefense.errors import ConfigError

    if sample_size <= 0 or sample_size % factor:
        raise ConfigError(f"sample_size must be a positive multiple of {factor}, got {sample_size}")
    return sample_size // factor


def _build_sd_family(
    pipeline_class: Any, directory: str | Path, *, seed: int, scheduler: Any, in_channels: int, sample_size: int
) -> Path:
    """Assemble a Stable-Diffusion-shaped pipeline from tiny parts and save it."""
    latent_size = _latent_size(sample_size, VAE_FACTOR)
    with _isolated_rng():
        tokenizer, text_encoder = _text_parts(seed)
        pipeline = pipeline_class(
            vae=_vae(seed, sample_size=sample_size),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=_unet(seed, in_channels=in_channels, sample_size=latent_size),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    return _save(pipeline, directory)


def build_tiny_sd(directory: str | Path, *, seed: int = 0, sample_size: int = 64) -> Path:
    """Build a tiny Stable Diffusion (text-to-image) folder and return its path.

    UNet (32, 64) channels with cross-attention 32 (about 1M parameters), a VAE that downsamples
    by 8 like SD's (4 blocks (32, 64, 64, 64), 4 latent channels, scaling 0.18215), a 2-layer CLIP
    text encoder of width 32, an offline CLIP tokenizer, DDPM scheduler (scaled_linear
    0.00085-0.012, 1000 steps). Saved as safetensors; building and saving take about 0.2 s (plus
    the first diffusers import).

    Args:
        directory: output folder (created; existing files are overwritten).
        seed: ``torch.manual_seed`` before each network, so the weights are reproducible.
        sample_size: default image side of the pipeline in pixels (a multiple of 8); any size that
            is a multiple of 8 works at run time.

    Returns:
        ``Path(directory)``.

    Examples:
        >>> path = build_tiny_sd("/tmp/tiny-sd")
        >>> parts = facedefense.diffusion.load_components(str(path))
    """
    _prepare()
    from diffusers import StableDiffusionPipeline

    return _build_sd_family(
        StableDiffusionPipeline, directory, seed=seed, scheduler=_training_scheduler(), in_channels=4,
        sample_size=sample_size,
    )


def build_tiny_instruct_pix2pix(directory: str | Path, *, seed: int = 0, sample_size: int = 64) -> Path:
    """Tiny InstructPix2Pix folder (UNet with 8 input channels: noisy latent + image latent;
    EulerAncestral scheduler); otherwise as
    [`build_tiny_sd`][facedefense.testing.tiny_models.build_tiny_sd]."""
    _prepare()
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return _build_sd_family(
        StableDiffusionInstructPix2PixPipeline, directory, seed=seed, scheduler=scheduler, in_channels=8,
        sample_size=sample_size,
    )


def build_tiny_inpaint(directory: str | Path, *, seed: int = 0, sample_size: int = 64) -> Path:
    """Tiny inpainting folder (UNet with 9 input channels: latent + mask + masked-image latent;
    DDIM scheduler); otherwise as [`build_tiny_sd`][facedefense.testing.tiny_models.build_tiny_sd]."""
    _prepare()
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    return _build_sd_family(
        StableDiffusionInpaintPipeline, directory, seed=seed, scheduler=scheduler, in_channels=9,
        sample_size=sample_size,
    )


def build_tiny_upscaler(directory: str | Path, *, seed: int = 0, sample_size: int = 64) -> Path:
    """Tiny x4 upscaler folder shaped like ``stabilityai/stable-diffusion-x4-upscaler``.

    UNet with 7 input channels (latent + low-res RGB) conditioned on the noise level through 1000
    class embeddings, a VAE that downsamples by 4 (3 blocks, scaling 0.08333), DDPM low-res
    scheduler, DDIM v-prediction scheduler, ``max_noise_level`` 350. A (N, 3, h, w) input gives
    (N, 3, 4h, 4w); ``sample_size`` is the UNet's nominal latent side times 4 (a multiple of 4).

    Examples:
        >>> pipe = load_pipeline(str(build_tiny_upscaler("/tmp/up")), "upscale_x4")
        >>> pipe("a photo", image=torch.rand(1, 3, 16, 16), num_inference_steps=2, output_type="pt").images.shape
        torch.Size([1, 3, 64, 64])
    """
    _prepare()
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    latent_size = _latent_size(sample_size, 4)
    with _isolated_rng():
        tokenizer, text_encoder = _text_parts(seed)
        unet = _unet(seed, in_channels=7, sample_size=latent_size, class_embed_type=None, num_class_embeds=1000)
        vae = _vae(seed, downsample_blocks=3, scaling_factor=0.08333, sample_size=sample_size)
    pipeline = StableDiffusionUpscalePipeline(
        vae=vae,
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


def build_tiny_pixel_ddpm(directory: str | Path, *, seed: int = 0, sample_size: int = 32) -> Path:
    """Tiny pixel-space DDPM folder (a diffusers ``DDPMPipeline``: ``unet/`` + ``scheduler/``).

    ``UNet2DModel`` with (32, 64) channels, one layer per block and no attention (about 0.65M
    parameters), 3 input and 3 output channels (it predicts the noise), downsampling by 2 (sides
    must be even); DDPM scheduler with DiffPure's linear betas 1e-4..0.02 over 1000 steps. Shaped
    like ``google/ddpm-*`` and the guided-diffusion models DiffPure and GrIDPure use, at a cost of
    milliseconds per step at 64x64.

    Examples:
        >>> unet, scheduler = load_pixel_ddpm(str(build_tiny_pixel_ddpm("/tmp/ddpm")))
        >>> unet(torch.zeros(1, 3, 32, 32), 10).sample.shape
        torch.Size([1, 3, 32, 32])
    """
    _prepare()
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    with _isolated_rng():
        _seeded(seed)
        unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=32,
        )
    scheduler = DDPMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000)
    return _save(DDPMPipeline(unet=unet, scheduler=scheduler), directory)


def _save(pipeline: Any, directory: str | Path) -> Path:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


@functools.lru_cache(maxsize=1)
def _astronaut() -> Tensor:
    """``skimage.data.astronaut()`` as (3, 512, 512) float32 in [0, 1], decoded once per process (8 ms)."""
    import torch
    from skimage.data import astronaut

    return torch.from_numpy(astronaut().copy()).permute(2, 0, 1).float() / 255.0


def sample_faces(count: int = 4, size: int = 64) -> Tensor:
    """Deterministic test portraits that always exist offline: shifted, mirrored and zoomed crops of
    ``skimage.data.astronaut()`` (a public-domain NASA portrait shipped with scikit-image), resized.

    Images 0-3 are 448-pixel crops shifted by 8 pixels, odd ones mirrored; each further group of four
    zooms in by 16 pixels more (distinct images up to ``count = 48``, then they repeat).

    Args:
        count: number of images.
        size: side in pixels.

    Returns:
        (count, 3, size, size) float32 in [0, 1], on the 8-bit grid like decoded files.

    Examples:
        >>> sample_faces(2, 64).shape
        torch.Size([2, 3, 64, 64])
    """
    import torch

    from facedefense.imaging import resize

    base = _astronaut()  # (3, 512, 512), read only
    faces = []
    for index in range(count):
        offset, side = 8 * (index % 4), 448 - 16 * ((index // 4) % 12)
        crop = base[:, offset : offset + side, 16 + offset : 16 + offset + side]
        crop = crop.flip(-1) if index % 2 else crop
        faces.append(resize(crop[None], (size, size))[0])
    return torch.round(torch.stack(faces).clamp(0, 1) * 255) / 255


def train_tiny_unet(
    directory: str | Path,
    images: Tensor,
    *,
    steps: int = 150,
    seed: int = 0,
    learning_rate: float = 3e-3,
    prompt: str = "a photo of sks person",
) -> Path:
    """Fine-tune the UNet of a tiny SD folder in place on ``images`` so it responds to its input.

    A random-weight UNet barely reacts to its input (20 PGD steps at 8/255 raise its denoising loss
    by about 0.1%), so attacks on the denoising loss are not measurable on it. 150 full-batch AdamW
    steps at lr 3e-3 on four 128x128 faces (about 15 s on 2 CPU cores) fix that: 3 PGD steps at 8/255
    then raise the loss by 90-105% at 128x128, 50-60% at 64x64 and 3-4% at 32x32 (also on faces it
    never saw), against under 1.5% for uniform noise of the same budget (common random numbers,
    measured with torch 2.13 / diffusers 0.42). 300 steps at lr 1e-3 reach the same responses in
    twice the time.

    Args:
        directory: a folder from [`build_tiny_sd`][facedefense.testing.tiny_models.build_tiny_sd] (its
            ``unet/`` is overwritten).
        images: (N, 3, H, W) in [0, 1], H and W multiples of 8.
        steps: optimizer steps (batch = all images, latents = posterior means).
        seed: randomness of timesteps and noise.
        learning_rate: AdamW learning rate.
        prompt: conditioning prompt.

    Returns:
        ``Path(directory)``; ``unet/facedefense_training.json`` records the recipe and the first and
        last losses.

    Examples:
        >>> path = train_tiny_unet(build_tiny_sd("/tmp/tiny"), sample_faces(4, 128), steps=150)
    """
    import json

    import torch

    from facedefense.diffusion import TextEmbeddingCache, denoising_loss, encode_latents, load_components
    from facedefense.errors import ConfigError
    from facedefense.imaging import check_image_batch

    images = check_image_batch(images)
    if images.shape[-1] % VAE_FACTOR or images.shape[-2] % VAE_FACTOR:
        raise ConfigError(f"training images must have sides that are multiples of 8, got {tuple(images.shape[-2:])}")
    parts = load_components(str(directory))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = encode_latents(parts.vae, images)
        states = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)(prompt)
    unet = parts.unet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate)
    losses = []
    for _ in range(steps):
        loss = denoising_loss(unet, parts.scheduler, latents, states, generator=generator, reduction="mean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    target = Path(directory) / "unet"
    unet.eval().requires_grad_(False).save_pretrained(target, safe_serialization=True)
    record = {"steps": steps, "seed": seed, "learning_rate": learning_rate, "prompt": prompt,
              "images": list(images.shape), "first_losses": losses[:10], "last_losses": losses[-10:]}
    (target / "facedefense_training.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return Path(directory)
