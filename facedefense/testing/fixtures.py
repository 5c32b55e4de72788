"""pytest fixtures for facedefense and its plugins: tiny models (built once per session) and
sample faces. Use them with ``pytest_plugins = ["facedefense.testing.fixtures"]`` in a conftest.

``trained_tiny_sd_path`` fine-tunes the tiny UNet (about 15 s) and caches the result on disk,
keyed by the library versions, the recipe and the builder's source, under
``$FACEDEFENSE_TEST_CACHE``, by default the ``tests`` folder of facedefense's cache folder
(``$FACEDEFENSE_CACHE/tests``, ``~/.cache/facedefense/tests`` when that is not set); set
``FACEDEFENSE_TEST_CACHE`` empty or ``0`` to disable.
Importing this module sets ``HF_HUB_OFFLINE=1`` (tests never touch the network).

``$FACEDEFENSE_TEST_DEVICE`` (``cpu`` by default, ``cuda`` on a GPU machine) is the device the
contract tests build their methods on: `device_under_test` reads it, the ``test_device`` fixture
gives it to a test.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: Recipe of the trained tiny model; change it to invalidate caches.
TRAINED_RECIPE = {"seed": 0, "steps": 150, "learning_rate": 3e-3, "images": 4, "size": 128, "version": 2}
#: Environment variable naming the device the contract tests run methods on (default cpu).
TEST_DEVICE_VARIABLE = "FACEDEFENSE_TEST_DEVICE"
#: Tiny open_clip architectures (random weights: plumbing only), see `register_tiny_clip`.
TINY_CLIPS = {
    "vit": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
    },
    "resnet": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
    },
}


def _built(factory: pytest.TempPathFactory, builder_name: str) -> Path:
    from facedefense.testing import tiny_models

    return getattr(tiny_models, builder_name)(factory.mktemp(builder_name.removeprefix("build_")))


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Stable Diffusion folder (VAE downsampling by 8)."""
    return _built(tmp_path_factory, "build_tiny_sd")


@pytest.fixture(scope="session")
def tiny_sdxl_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Stable Diffusion XL folder (`facedefense.testing.tiny_sdxl`)."""
    from facedefense.testing.tiny_sdxl import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl"))


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


@pytest.fixture(scope="session")
def tiny_pixel_ddpm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pixel-space DDPM folder (``UNet2DModel`` + DDPM scheduler)."""
    return _built(tmp_path_factory, "build_tiny_pixel_ddpm")


def _cache_key() -> str:
    """Hash of the library versions, the recipe and the source of everything that shapes the model."""
    from importlib.metadata import version

    from facedefense.diffusion import latents, losses, text
    from facedefense.testing import tiny_models, tokenizer

    parts = [version(name) for name in ("torch", "diffusers", "transformers", "tokenizers", "safetensors")]
    parts.append(repr(sorted(TRAINED_RECIPE.items())))
    for module in (tiny_models, tokenizer, losses, latents, text):
        parts.append(hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest())
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _cache_root() -> Path | None:
    """``$FACEDEFENSE_TEST_CACHE`` (empty or ``0`` disables the disk cache), else the ``tests`` folder
    of facedefense's cache folder (``facedefense.io.cache_dir``)."""
    from facedefense.io import cache_dir

    configured = os.environ.get("FACEDEFENSE_TEST_CACHE")
    if configured is not None and configured.strip() in ("", "0", "off", "false"):
        return None
    return Path(configured).expanduser() if configured else cache_dir() / "tests"


def _complete(folder: Path, key: str) -> bool:
    """A cached model counts only with its completion marker (written last, then renamed atomically)."""
    marker = folder / "facedefense_cache.json"
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError):
        return False


def _usable(folder: Path) -> bool:
    """The cached folder still loads (guards against files damaged after it was written)."""
    from facedefense.diffusion import load_components
    from facedefense.errors import ModelNotFoundError

    try:
        load_components(str(folder), components=("unet", "vae", "tokenizer", "text_encoder", "scheduler"))
    except ModelNotFoundError:
        return False
    return True


def _prune(root: Path, keep: Path, limit: int = 3) -> None:
    """Keep the ``limit`` most recent trained models (each about 9 MB); older keys are stale anyway."""
    entries = sorted(root.glob("trained-tiny-sd-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for entry in [e for e in entries if e != keep][limit - 1 :]:
        shutil.rmtree(entry, ignore_errors=True)


@pytest.fixture(scope="session")
def trained_tiny_sd_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD whose UNet was fine-tuned on sample faces, so denoising-loss attacks are measurable.

    Built and trained once (about 15 s on 2 CPU cores), then cached on disk across sessions under a
    key of library versions, recipe and builder source, so a stale model is never reused. Under
    pytest-xdist one worker trains it on every core while the others wait for it (a file lock).
    """
    from facedefense.testing.tiny_models import build_tiny_sd, sample_faces, train_tiny_unet

    key = _cache_key()
    root = _cache_root()
    cached = root / f"trained-tiny-sd-{key}" if root is not None else None
    if cached is not None and _complete(cached, key) and _usable(cached):
        return cached
    with _training_turn(root, key):  # one process trains, on every core; the others wait, then reuse it
        if cached is not None and _complete(cached, key) and _usable(cached):
            return cached
        work = tmp_path_factory.mktemp("trained-tiny-sd")
        build_tiny_sd(work, seed=TRAINED_RECIPE["seed"])
        faces = sample_faces(TRAINED_RECIPE["images"], TRAINED_RECIPE["size"])
        with _all_cores():
            train_tiny_unet(
                work, faces, steps=TRAINED_RECIPE["steps"], seed=TRAINED_RECIPE["seed"],
                learning_rate=TRAINED_RECIPE["learning_rate"],
            )
        return work if cached is None else _store(work, cached, key)


@contextlib.contextmanager
def _training_turn(root: Path | None, key: str) -> Iterator[None]:
    """Hold an exclusive lock on the cache entry ``key`` (POSIX ``flock``; none without a cache or
    ``fcntl``): under pytest-xdist the workers would otherwise all train the same model at once."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if root is None or fcntl is None:
        yield
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / f".trained-tiny-sd-{key}.lock", "a")  # noqa: SIM115 (held across the yield)
    except OSError:  # read-only cache folder: train without the lock
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _all_cores() -> Iterator[None]:
    """Every core for torch while the model trains (xdist workers run on one thread each, and the
    other workers wait for this one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _store(work: Path, cached: Path, key: str) -> Path:
    """Copy the trained folder into the cache atomically (staging folder, marker, rename); the
    session copy when the cache cannot be written."""
    root = cached.parent
    staging = cached.with_name(f".{cached.name}.{os.getpid()}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(work, staging)
        (staging / "facedefense_cache.json").write_text(json.dumps({"key": key, **TRAINED_RECIPE}), encoding="utf-8")
        if cached.exists():  # stale or damaged: replace it
            shutil.rmtree(cached, ignore_errors=True)
        os.replace(staging, cached)
        _prune(root, keep=cached)
        return cached
    except OSError:  # read-only home, a concurrent writer: the session copy is as good
        shutil.rmtree(staging, ignore_errors=True)
        return work


@contextlib.contextmanager
def registered(kind: str, target: Any, name: str | None = None, *, plugin: str = "tests", **facts: Any) -> Iterator[str]:
    """Register ``target`` in the process registry for the duration of a ``with`` block.

    Examples:
        >>> with registered("defender", MyDefender):
        ...     facedefense.create("defender", "my_defender")
    """
    from facedefense.registry import MethodSpec, get_registry

    registry = get_registry()
    name = name or target.name
    registry.add(MethodSpec(kind, name, target, plugin, **facts))
    if registry.specs[kind].get(name) is None or registry.specs[kind][name].target is not target:
        raise RuntimeError(f"{kind} '{name}' could not be registered: {registry.problems[-1:]}")
    try:
        yield name
    finally:
        registry.remove(kind, name)


@pytest.fixture
def register_method() -> Iterator[Any]:
    """A function ``register_method(kind, target, name=None)`` whose registrations end with the test."""
    with contextlib.ExitStack() as stack:
        yield lambda kind, target, name=None, **facts: stack.enter_context(registered(kind, target, name, **facts))


@pytest.fixture(scope="session")
def face_images():
    """Two 64x64 sample portraits, (2, 3, 64, 64) float32 in [0, 1] on the 8-bit grid."""
    from facedefense.testing.tiny_models import sample_faces

    return sample_faces(2, 64)


def device_under_test() -> str:
    """The device the contract tests build their methods on: ``$FACEDEFENSE_TEST_DEVICE``
    (``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``), default ``cpu``.

    Raises:
        ConfigError: an unknown device or one this machine lacks (one line naming the variable).
    """
    value = os.environ.get(TEST_DEVICE_VARIABLE, "").strip() or "cpu"
    if value == "cpu":
        return value
    from facedefense.errors import ConfigError
    from facedefense.runtime import resolve_device

    try:
        return str(resolve_device(value))
    except ConfigError as exc:
        raise ConfigError(f"{TEST_DEVICE_VARIABLE}={value}: {exc}") from None


@pytest.fixture(scope="session")
def test_device() -> str:
    """The device of device-aware tests: ``$FACEDEFENSE_TEST_DEVICE``, default ``cpu``
    (see `device_under_test`)."""
    return device_under_test()


def register_tiny_clip(folder: str | Path, kind: str = "vit") -> str:
    """Register the tiny CLIP ``kind`` of ``TINY_CLIPS`` (``"vit"`` or ``"resnet"``) with
    open_clip, its config written to ``folder``; returns the architecture name to pass as a CLIP
    metric's ``architecture`` (with ``weights="random"``)."""
    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    path = Path(folder) / f"facedefense-tiny-clip-{kind}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(TINY_CLIPS[kind]), encoding="utf-8")
    open_clip.add_model_config(path)
    return path.stem
