"""A tiny random-weight Stable Diffusion XL folder, shaped like ``stabilityai/stable-diffusion-xl-base-1.0``
(two CLIP text encoders whose penultimate states are concatenated, the second one's pooled
projection and the six size/crop numbers as the UNet's added condition), after the dummy components
of diffusers' own SDXL pipeline tests, with the sizes of `facedefense.testing.tiny_models`.

It loads through ``StableDiffusionXLPipeline.from_pretrained`` exactly as the real model does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Width of each tiny text encoder; the UNet's cross-attention takes both concatenated.
TEXT_WIDTH = 32
#: Width of one entry of the six added time ids (SDXL's 256).
TIME_EMBED_DIM = 8


def _text_encoder_2(seed: int, vocab_size: int) -> Any:
    """The second text encoder: a CLIP text tower with a ``TEXT_WIDTH`` projection (SDXL's OpenCLIP bigG)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from facedefense.testing.tiny_models import _seeded

    _seeded(seed + 1)
    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        layer_norm_eps=1e-5,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        projection_dim=TEXT_WIDTH,
    )
    return CLIPTextModelWithProjection(config)


def tiny_sdxl_unet(seed: int = 0, sample_size: int = 8) -> Any:
    """The tiny SDXL UNet: (32, 64) channels, one layer and one transformer block per block,
    cross-attention ``2 * TEXT_WIDTH``, ``text_time`` added embedding of the pooled text
    projection and six ``TIME_EMBED_DIM``-wide time ids (about 1.5M parameters)."""
    from diffusers import UNet2DConditionModel

    from facedefense.testing.tiny_models import _seeded

    _seeded(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_WIDTH,
        cross_attention_dim=2 * TEXT_WIDTH,
        norm_num_groups=32,
    )


def build_tiny_sdxl(directory: str | Path, *, seed: int = 0, sample_size: int = 64) -> Path:
    """Build a tiny SDXL (text-to-image) folder and return its path.

    `tiny_sdxl_unet`, the tiny SD VAE (downsampling by 8, SDXL's scaling 0.13025), the offline tiny
    tokenizer for both text encoders, two 2-layer CLIP text encoders of width 32 (the second with
    a projection), SDXL's Euler scheduler (scaled_linear 0.00085-0.012, leading spacing, offset 1).
    Building and saving take well under a second.

    Args:
        directory: output folder (created; existing files are overwritten).
        seed: ``torch.manual_seed`` before each network.
        sample_size: default image side in pixels (a multiple of 8).

    Example:
        >>> pipe = load_pipeline(str(build_tiny_sdxl("/tmp/tiny-sdxl")), "sdxl_text2img")
    """
    from facedefense.testing.tiny_models import (
        VAE_FACTOR,
        _isolated_rng,
        _latent_size,
        _prepare,
        _save,
        _text_parts,
        _vae,
    )

    _prepare()
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    latent_size = _latent_size(sample_size, VAE_FACTOR)
    with _isolated_rng():
        tokenizer, text_encoder = _text_parts(seed)
        pipeline = StableDiffusionXLPipeline(
            vae=_vae(seed, scaling_factor=0.13025, sample_size=sample_size),
            text_encoder=text_encoder,
            text_encoder_2=_text_encoder_2(seed, len(tokenizer)),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=tiny_sdxl_unet(seed, sample_size=latent_size),
            scheduler=EulerDiscreteScheduler(
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                steps_offset=1,
                timestep_spacing="leading",
            ),
            force_zeros_for_empty_prompt=True,
        )
    return _save(pipeline, directory)
