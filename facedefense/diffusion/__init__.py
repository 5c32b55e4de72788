"""Diffusion toolkit: load Stable Diffusion components and pipelines, move between pixels and
latents, the latent-diffusion denoising loss, cached text embeddings.

Importing this package is cheap; torch, diffusers and transformers load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SDComponents": "facedefense.diffusion.loading",
    "load_components": "facedefense.diffusion.loading",
    "load_pipeline": "facedefense.diffusion.loading",
    "PIPELINE_KINDS": "facedefense.diffusion.loading",
    "load_pixel_ddpm": "facedefense.diffusion.loading",
    "is_pixel_ddpm": "facedefense.diffusion.loading",
    "refuse_pixel_ddpm": "facedefense.diffusion.loading",
    "encode_latents": "facedefense.diffusion.latents",
    "latent_mean": "facedefense.diffusion.latents",
    "decode_latents": "facedefense.diffusion.latents",
    "denoising_loss": "facedefense.diffusion.losses",
    "sample_timesteps": "facedefense.diffusion.losses",
    "TextEmbeddingCache": "facedefense.diffusion.text",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'facedefense.diffusion' has no attribute '{name}'")


__all__ = list(_EXPORTS)
