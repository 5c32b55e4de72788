"""pytest fixtures for facedefense and its plugins: tiny models (built once per session) and
sample faces. Use them with ``pytest_plugins = ["facedefense.testing.fixtures"]`` in a conftest.

``trained_tiny_sd_path`` fine-tunes the tiny UNet (about 30 s) and caches the result on disk,
keyed by the library versions and the recipe, under ``$FACEDEFENSE_TEST_CACHE`` (default
``~/.cache/facedefense/tests``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Recipe of the trained tiny model; change it to invalidate caches.
TRAINED_RECIPE = {"seed": 0, "steps": 300, "images": 4, "size": 128, "version": 1}


def _built(factory: pytest.TempPathFactory, builder_name: str) -> Path:
    from facedefense.testing import tiny_models

    return getattr(tiny_models, builder_name)(factory.mktemp(builder_name.removeprefix("build_")))


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Stable Diffusion folder (VAE downsampling by 8)."""
    return _built(tmp_path_factory, "build_tiny_sd")


@pytest.fixture(scope="session")
def tiny_ip2p_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny InstructPix2Pix folder."""
    return _built(tmp_path_factory, "build_tiny_instruct_pix2pix")


@pytest.fixture(scope="session")
def tiny_inpaint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny inpainting folder."""
    return _built(tmp_path_factory, "build_tiny_inpaint")


@pytest.fixture(scope="session")
def tiny_upscaler_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny x4-upscaler folder."""
    return _built(tmp_path_factory, "build_tiny_upscaler")


def _cache_key() -> str:
    from importlib.metadata import version

    parts = [version("torch"), version("diffusers"), version("transformers"), repr(sorted(TRAINED_RECIPE.items()))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@pytest.fixture(scope="session")
def trained_tiny_sd_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD whose UNet was fine-tuned on sample faces, so denoising-loss attacks are measurable."""
    from facedefense.testing.tiny_models import build_tiny_sd, sample_faces, train_tiny_unet

    root = Path(os.environ.get("FACEDEFENSE_TEST_CACHE", Path.home() / ".cache" / "facedefense" / "tests"))
    cached = root / f"trained-tiny-sd-{_cache_key()}"
    if (cached / "model_index.json").exists() and (cached / "unet" / "diffusion_pytorch_model.safetensors").exists():
        return cached
    work = tmp_path_factory.mktemp("trained-tiny-sd")
    build_tiny_sd(work, seed=TRAINED_RECIPE["seed"])
    faces = sample_faces(TRAINED_RECIPE["images"], TRAINED_RECIPE["size"])
    train_tiny_unet(work, faces, steps=TRAINED_RECIPE["steps"], seed=TRAINED_RECIPE["seed"])
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".{cached.name}.{os.getpid()}"
        shutil.copytree(work, staging, dirs_exist_ok=True)
        os.replace(staging, cached) if not cached.exists() else shutil.rmtree(staging)
        return cached
    except OSError:
        return work


@pytest.fixture(scope="session")
def face_images():
    """Two 64x64 sample portraits, (2, 3, 64, 64) float32 in [0, 1] on the 8-bit grid."""
    from facedefense.testing.tiny_models import sample_faces

    return sample_faces(2, 64)
