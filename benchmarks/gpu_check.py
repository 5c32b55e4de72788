"""Every registered method once on a device: does each path run there, in each precision?

Iterates the registry (plugins included, as ``facedefense list`` does) and runs every defender,
purifier, personalizer, editor and metric once on ``--device`` (default ``cuda``) at ``--size``
pixels (default 64) on the tiny random-weight models of ``facedefense.testing.tiny_models`` (built
into a temporary folder; no download, no real weights), in float32, bfloat16 and float16 where the
method's precision is an option (``dtype``; metrics and classical purifiers compute in float32).
Where a method needs other weights (CLIP, ArcFace, RetinaFace, Inception, LPIPS' backbone,
RID/GAP-Diff checkpoints) it gets random ones, built as the test suite builds them. What each run
does (protect; purify and a gradient through ``purify_differentiable``; fit, generate, save, load
and generate again; edit; compute) and checks (shape, range, budget, finite gradients) is in
``EXERCISES``; the small options of each method (1-2 steps, 2 class images, ...) are in ``RECIPES``.

One row per run, printed as it ends: method, variant, kind, dtype, status, seconds (construction,
model loading and the run), peak memory in MiB (``torch.cuda.max_memory_allocated`` during the row
on a GPU; on a CPU the peak resident set size above the row's start, sampled every 5 ms), and the
one-line error. Status:

- ``ok``;
- ``FAIL``: an exception or a failed check (its one line; the JSON keeps the traceback);
- ``no recipe``: a registered method RECIPES does not cover, so a new method cannot be skipped
  silently: add a recipe. Counted as a failure;
- ``skipped``: needs weights that cannot be replaced by random ones (the row says which); counted
  apart, and a failure under ``--strict``;
- ``n/a``: a precision the method refuses on this device by design (float16 training on a CPU).

Exit status 1 when a row failed (or, with ``--strict``, was skipped), 2 on bad arguments.

    .venv/bin/python benchmarks/gpu_check.py --json gpu_check.json          # everything, on cuda
    .venv/bin/python benchmarks/gpu_check.py --device cpu --only jpeg psnr advdm --dtypes float32
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
FLOAT32 = ("float32",)
#: Side of the images the face metrics see: dlib's detector (upsampling once) finds the sample face
#: from about 160 px; smaller faces would leave the embedding paths unexercised.
FACE_SIZE = 192
EDIT_PROMPT = "make it a painting"
METRIC_PROMPT = "a photo of a person"


# --- what each run needs -----------------------------------------------------------------------------


class TinyAssets:
    """The tiny models and files the recipes use, each built on first use under ``root``."""

    def __init__(self, root: Path, size: int) -> None:
        self.root, self.size, self._folders = root, size, 0
        root.mkdir(parents=True, exist_ok=True)

    def folder(self, name: str) -> str:
        """A fresh empty folder (class-image caches, training outputs)."""
        self._folders += 1
        path = self.root / f"{name}-{self._folders}"
        path.mkdir(parents=True)
        return str(path)

    def _tiny(self, builder: str, name: str, **options: Any) -> str:
        from facedefense.testing import tiny_models

        return str(getattr(tiny_models, builder)(self.root / name, **options))

    @cached_property
    def sd(self) -> str:
        return self._tiny("build_tiny_sd", "sd")

    @cached_property
    def sd_other(self) -> str:
        """A second tiny SD (other weights), for the ensemble variants."""
        return self._tiny("build_tiny_sd", "sd-seed1", seed=1)

    @cached_property
    def ip2p(self) -> str:
        return self._tiny("build_tiny_instruct_pix2pix", "ip2p")

    @cached_property
    def inpaint(self) -> str:
        return self._tiny("build_tiny_inpaint", "inpaint")

    @cached_property
    def upscaler(self) -> str:
        return self._tiny("build_tiny_upscaler", "upscaler")

    @cached_property
    def pixel_ddpm(self) -> str:
        return self._tiny("build_tiny_pixel_ddpm", "ddpm")

    @cached_property
    def clip(self) -> str:
        """Name of a tiny ViT open_clip architecture (random weights), registered with open_clip."""
        from facedefense.testing.fixtures import register_tiny_clip

        return register_tiny_clip(self.root / "clip", "vit")

    @cached_property
    def clip_resnet(self) -> str:
        """Name of a tiny ResNet open_clip architecture (CLIP-IQA runs ResNet CLIPs)."""
        from facedefense.testing.fixtures import register_tiny_clip

        return register_tiny_clip(self.root / "clip", "resnet")

    @cached_property
    def rid(self) -> str:
        """A small RID network (facedefense checkpoint, random weights)."""
        import torch

        from facedefense.checkpoints import save_checkpoint
        from facedefense_amortized.networks import PerturbationDiT

        architecture = {"input_size": 64, "patch_size": 16, "hidden_size": 32, "depth": 2, "num_heads": 4,
                        "num_classes": 10}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            network = PerturbationDiT(**architecture)
            for parameter in network.parameters():  # DiT's initialization zeroes the output layer
                parameter.data.normal_(0, 0.02)
        path = self.root / "rid.safetensors"
        return str(save_checkpoint(network, path, method="rid", eps=6 / 255, architecture=architecture))

    @cached_property
    def gap(self) -> str:
        """A small GAP-Diff generator (facedefense checkpoint, random weights and batch-norm statistics)."""
        import torch

        from facedefense.checkpoints import save_checkpoint
        from facedefense_amortized.networks import GAPGenerator

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            network = GAPGenerator(ngf=8)
            for module in network.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
        path = self.root / "gap.safetensors"
        return str(save_checkpoint(network, path, method="gap_diff", eps=8 / 255, architecture={"ngf": 8}))

    @cached_property
    def arcface(self) -> str:
        """facexlib's ArcFace IR-SE50 with random weights, saved like ``recognition_arcface_ir_se50.pth``."""
        import torch

        from facedefense._compat.torchvision_ops import ensure_torchvision_importable

        ensure_torchvision_importable()
        from facexlib.recognition.arcface_arch import Backbone

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            network = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se")
        path = self.root / "arcface_random.pth"
        torch.save(network.state_dict(), path)
        return str(path)

    @cached_property
    def mask(self) -> str:
        """A mask PNG (white = edit) covering the lower half of a ``size`` square image."""
        from PIL import Image

        path, side = self.root / "mask.png", self.size
        mask = Image.new("L", (side, side))
        mask.paste(255, (0, side // 2, side, side))
        mask.save(path)
        return str(path)


@dataclass(frozen=True)
class Recipe:
    """How to run one method small.

    Attributes:
        options: ``options(assets) -> dict`` of constructor options (models, steps, sizes).
        variant: label of this path when a method has several (``diffusion``, ``lora``...).
        dtypes: the precisions to run: all three where ``dtype`` sets the method's precision.
        per_dtype: extra options for one dtype (a personalizer's ``mixed_precision``).
        cpu_refuses: dtypes the method refuses on a CPU by design (rows ``n/a`` there).
        size: image side for this recipe (None: ``--size``).
        needs: weights that cannot be replaced by random ones; the row is ``skipped``.
    """

    options: Callable[[TinyAssets], dict[str, Any]] = lambda assets: {}
    variant: str = ""
    dtypes: tuple[str, ...] = DTYPES
    per_dtype: dict[str, dict[str, Any]] = field(default_factory=dict)
    cpu_refuses: tuple[str, ...] = ()
    size: int | None = None
    needs: str = ""


def _iterative(assets: TinyAssets, **options: Any) -> dict[str, Any]:
    """The SD-surrogate defenders' small settings: the tiny SD at the image's own size, 2 steps."""
    return {"model": assets.sd, "steps": 2, "resolution": None, **options}


def _anti_dreambooth(assets: TinyAssets, **options: Any) -> dict[str, Any]:
    """ASPL and FSMG: one round, 2 class images of 2 steps; their DreamBooth surrogate trains at a
    fixed resolution (the image size)."""
    return {**_iterative(assets, steps=1, resolution=assets.size, num_class_images=2, class_image_steps=2), **options}


def _personalizer(assets: TinyAssets) -> dict[str, Any]:
    return {"model": assets.sd, "class_cache": assets.folder("classes"), "steps": 2, "resolution": assets.size,
            "num_class_images": 2, "class_inference_steps": 2, "inference_steps": 2}


#: Training precision of the personalizers in each inference dtype (fp16 training needs a GPU).
MIXED_PRECISION = {"float32": {"mixed_precision": "no"}, "bfloat16": {"mixed_precision": "bf16"},
                   "float16": {"mixed_precision": "fp16"}}
PERSONALIZER = Recipe(_personalizer, per_dtype=MIXED_PRECISION, cpu_refuses=("float16",))
ASPL = {"pgd_steps": 1, "surrogate_steps": 1}
#: Methods whose precision is not an option (metrics, classical purifiers); face metrics at FACE_SIZE.
F32 = {"dtypes": FLOAT32}
FACE = {"dtypes": FLOAT32, "size": FACE_SIZE}
RANDOM = {"weights": "random"}

#: (kind, name) -> the runs of that method. A registered method missing here is a failure.
RECIPES: dict[tuple[str, str], list[Recipe]] = {
    ("defender", "advdm"): [Recipe(_iterative)],
    ("defender", "aspl"): [
        Recipe(lambda a: _anti_dreambooth(a, **ASPL)),
        Recipe(lambda a: _anti_dreambooth(a, lora_rank=4, **ASPL), "lora"),
        Recipe(lambda a: _anti_dreambooth(a, model=f"{a.sd},{a.sd_other}", **ASPL), "ensemble"),
    ],
    ("defender", "fsmg"): [Recipe(lambda a: _anti_dreambooth(a, train_steps=1))],
    ("defender", "caat"): [Recipe(lambda a: _anti_dreambooth(a, steps=2))],
    ("defender", "simac"): [Recipe(lambda a: _anti_dreambooth(a, pgd_steps=1, surrogate_steps=1, search_steps=1, search_samples=2))],
    ("defender", "metacloak"): [Recipe(lambda a: _anti_dreambooth(a, train_steps=2, interval=2, iterations=1, pgd_steps=1, advance_steps=1))],
    ("defender", "ace"): [Recipe(lambda a: _anti_dreambooth(a, steps=2, pgd_steps=1, surrogate_steps=1))],
    ("defender", "glaze"): [Recipe(lambda a: _iterative(a, target_steps=5, lpips_weights="random"))],
    # MTCNN (its weights ship) finds the sample face at 64 px, so the aligned identity term runs.
    ("defender", "facelock"): [
        Recipe(lambda a: _iterative(a, face_model="random_face_embedder", face_detector="mtcnn", lpips_weights="random")),
        Recipe(lambda a: _iterative(a, face_model="arcface", face_model_path=a.arcface, face_detector="mtcnn",
                                    lpips_weights="random"), "arcface"),
    ],
    # the face encoder's PGD: random-weight ArcFace IR-SE50 aligned on MTCNN's landmarks (the ONNX
    # encoders are read from insightface's files, which cannot be replaced by random ones here)
    ("defender", "anti_encoder"): [
        Recipe(lambda a: {"face_model": "arcface", "face_model_path": a.arcface, "face_detector": "mtcnn", "steps": 2}),
    ],
    ("defender", "mist"): [Recipe(_iterative)],
    ("defender", "sds"): [Recipe(_iterative), Recipe(lambda a: _iterative(a, mode="+"), "+")],
    ("defender", "photoguard"): [
        Recipe(_iterative),
        Recipe(lambda a: _iterative(a, attack="diffusion", diffusion_steps=1), "diffusion"),
        Recipe(lambda a: _iterative(a, model=a.inpaint, attack="diffusion", diffusion_steps=1, mask=a.mask), "inpaint"),
    ],
    ("defender", "rid"): [
        Recipe(lambda a: {"checkpoint": a.rid}, cpu_refuses=("float16",)),
        Recipe(lambda a: {"checkpoint": a.rid, "engine": "module"}, "module"),
    ],
    ("defender", "gap_diff"): [
        Recipe(lambda a: {"checkpoint": a.gap}),
        Recipe(lambda a: {"checkpoint": a.gap, "engine": "module"}, "module"),
    ],
    ("defender", "example_texture"): [Recipe(**F32)],
    ("purifier", "diffpure"): [
        Recipe(lambda a: {"model": a.pixel_ddpm, "steps": 2, "strength": 0.05}),
        Recipe(lambda a: {"model": a.sd, "steps": 2, "strength": 0.1}, "sd"),
    ],
    ("purifier", "gridpure"): [
        Recipe(lambda a: {"model": a.pixel_ddpm, "crop": 32, "stride": 16, "strength": 0.02, "steps": 1, "iterations": 1}),
    ],
    ("purifier", "impress"): [Recipe(lambda a: {"model": a.sd, "iterations": 2, "lpips_weights": "random"})],
    ("purifier", "noisy_upscale"): [Recipe(lambda a: {"model": a.upscaler, "steps": 2})],
    ("purifier", "jpeg"): [Recipe(**F32)],
    ("purifier", "gaussian_blur"): [Recipe(**F32)],
    ("purifier", "gaussian_noise"): [Recipe(**F32)],
    ("purifier", "quantize"): [Recipe(**F32)],
    ("purifier", "resize"): [Recipe(**F32)],
    ("purifier", "adverse_cleaner"): [Recipe(lambda a: {"bilateral_steps": 4, "guided_steps": 1}, **F32)],
    ("purifier", "tvm"): [Recipe(lambda a: {"max_iter": 2}, **F32)],
    ("personalizer", "dreambooth"): [PERSONALIZER],
    ("personalizer", "lora"): [PERSONALIZER],
    ("personalizer", "textual_inversion"): [PERSONALIZER],
    ("personalizer", "lora_ti"): [PERSONALIZER],
    # an adapter must match the UNet's attention sizes: h94's files fit SD 1.5 / SDXL, not these random ones
    ("personalizer", "ip_adapter"): [Recipe(lambda a: {}, needs="an IP-Adapter file matching the model (h94/IP-Adapter)")],
    ("personalizer", "ip_adapter_faceid"): [
        Recipe(lambda a: {}, needs="an IP-Adapter-FaceID file matching the model (h94/IP-Adapter-FaceID) and ArcFace weights"),
    ],
    ("personalizer", "instantid"): [
        Recipe(lambda a: {}, needs="an SDXL model, InstantID's face adapter and IdentityNet (InstantX/InstantID), insightface's glintr100.onnx"),
    ],
    ("personalizer", "photomaker"): [
        Recipe(lambda a: {}, needs="an SDXL model and PhotoMaker v1's photomaker-v1.bin (TencentARC/PhotoMaker: ID encoder and LoRA)"),
    ],
    ("editor", "instruct_pix2pix"): [Recipe(lambda a: {"model": a.ip2p, "steps": 2, "resolution": None})],
    ("editor", "sdedit"): [Recipe(lambda a: {"model": a.sd, "steps": 2, "resolution": None})],
    ("editor", "inpaint"): [Recipe(lambda a: {"model": a.inpaint, "steps": 2, "resolution": None})],
    ("metric", "psnr"): [Recipe(**F32)],
    ("metric", "ssim"): [Recipe(**F32)],
    ("metric", "linf"): [Recipe(**F32)],
    ("metric", "ciede2000"): [Recipe(**F32)],
    ("metric", "l0"): [Recipe(**F32)],
    ("metric", "brisque"): [Recipe(**F32)],
    ("metric", "lpips"): [Recipe(lambda a: RANDOM, **F32), Recipe(lambda a: {**RANDOM, "net": "vgg"}, "vgg", **F32)],
    ("metric", "fid"): [
        Recipe(lambda a: RANDOM, **F32),
        Recipe(lambda a: {**RANDOM, "network": "torchvision"}, "torchvision", **F32),
    ],
    ("metric", "liqe"): [Recipe(lambda a: RANDOM, **F32)],
    ("metric", "clip_i"): [Recipe(lambda a: {**RANDOM, "architecture": a.clip}, **F32)],
    ("metric", "ims_clip"): [Recipe(lambda a: {**RANDOM, "architecture": a.clip}, **F32)],
    ("metric", "clip_s"): [Recipe(lambda a: {**RANDOM, "architecture": a.clip}, **F32)],
    ("metric", "clip_t"): [Recipe(lambda a: {**RANDOM, "architecture": a.clip}, **F32)],
    ("metric", "clip_iqa"): [
        Recipe(lambda a: {**RANDOM, "architecture": a.clip_resnet}, **F32),
        Recipe(lambda a: {**RANDOM, "architecture": a.clip_resnet, "pos_embedding": True}, "pos_embed", **F32),
    ],
    # dlib's detector finds the sample face at FACE_SIZE when it upsamples once.
    ("metric", "fdfr"): [
        Recipe(lambda a: {"upsample": 1}, **FACE),
        Recipe(lambda a: {"upsample": 1, "backend": "dlib_torch"}, "dlib_torch", **FACE),
        Recipe(lambda a: {"backend": "mtcnn"}, "mtcnn", **FACE),
        Recipe(lambda a: {"backend": "retinaface", "detector_weights": "random"}, "retinaface", **FACE),
    ],
    ("metric", "fr"): [
        Recipe(lambda a: {"upsample": 1}, **FACE),
        Recipe(lambda a: {"upsample": 1, "backend": "dlib_torch"}, "dlib_torch", **FACE),
    ],
    ("metric", "ism"): [
        Recipe(lambda a: {"upsample": 1}, **FACE),
        Recipe(lambda a: {"upsample": 1, "backend": "dlib_torch"}, "dlib_torch", **FACE),
        Recipe(lambda a: {**RANDOM, "backend": "vgg_face", "detector_weights": "random"}, "vgg_face", **FACE),
    ],
    ("metric", "ser_fiq"): [Recipe(lambda a: {**RANDOM, "detector_weights": "random", "passes": 4}, **FACE)],
}


# --- what each run does and checks -----------------------------------------------------------------


class CheckFailed(AssertionError):
    """A method ran but its output broke the contract (shape, range, budget, gradient)."""


def _expect(condition: Any, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _check_images(out: Any, like: Any, what: str) -> None:
    import torch

    _expect(tuple(out.shape) == tuple(like.shape), f"{what}: shape {tuple(out.shape)}, expected {tuple(like.shape)}")
    _expect(torch.isfinite(out).all(), f"{what}: non-finite values")
    _expect(out.min() >= 0 and out.max() <= 1, f"{what}: values outside [0, 1]")


def _run_defender(method: Any, images: Any, assets: TinyAssets) -> dict[str, Any]:
    result = method.protect(images)
    _check_images(result.images, images, "protect")
    budget = method.config.eps * 255
    _expect(max(result.linf) <= budget + 1e-3, f"L-inf {max(result.linf):.2f} gray levels over the budget {budget:.2f}")
    _expect((result.images != images).flatten(1).any(1).all(), "an image came back unchanged")
    return {"linf": [round(v, 3) for v in result.linf]}


def _run_purifier(method: Any, images: Any, assets: TinyAssets) -> dict[str, Any]:
    import torch

    _check_images(method.purify(images), images, "purify")
    x = images.clone().requires_grad_(True)
    out = method.purify_differentiable(x)
    _expect(tuple(out.shape) == tuple(images.shape), f"purify_differentiable: shape {tuple(out.shape)}")
    (grad,) = torch.autograd.grad(out.float().sum(), x)
    _expect(torch.isfinite(grad).all(), "purify_differentiable: non-finite gradient")
    return {"gradient_abs_sum": float(grad.abs().sum())}


def _run_personalizer(method: Any, images: Any, assets: TinyAssets) -> dict[str, Any]:
    import torch

    from facedefense.interfaces.personalizer import load_personalized

    model = method.fit(list(images), output_dir=assets.folder("fit"))
    prompt = method.config.instance_prompt
    generated = model.generate([prompt], num_images=1)
    _expect(generated.ndim == 4 and generated.shape[:2] == (1, 3), f"generate: shape {tuple(generated.shape)}")
    _expect(torch.isfinite(generated).all() and generated.min() >= 0 and generated.max() <= 1, "generate: values outside [0, 1]")
    folder = model.save(assets.folder("saved"))
    loaded = load_personalized(folder, device=str(method.device), dtype=method.config.dtype)
    again = loaded.generate([prompt], num_images=1)
    _expect(again.shape == generated.shape, f"generate after loading: shape {tuple(again.shape)}")
    _expect(torch.isfinite(again).all(), "generate after loading: non-finite values")
    return {"generated": list(generated.shape)}


def _run_editor(method: Any, images: Any, assets: TinyAssets) -> dict[str, Any]:
    _check_images(method.edit(images, EDIT_PROMPT), images, "edit")
    return {}


def _run_metric(method: Any, images: Any, assets: TinyAssets) -> dict[str, Any]:
    from facedefense.testing.tiny_models import sample_faces

    others = list(sample_faces(2 * len(images), images.shape[-1])[len(images) :])  # other crops, same person
    references = others if method.pairing != "none" else None
    prompts = METRIC_PROMPT if method.needs_prompt else None
    result = method.compute(list(images), references, prompts=prompts)
    return {"value": result.value, "per_image": result.per_image}


#: kind -> ``run(method, images, assets) -> facts``: the calls each kind's row makes, with its checks.
EXERCISES: dict[str, Callable[[Any, Any, TinyAssets], dict[str, Any]]] = {
    "defender": _run_defender,
    "purifier": _run_purifier,
    "personalizer": _run_personalizer,
    "editor": _run_editor,
    "metric": _run_metric,
}


# --- rows --------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One run: what ran, how it ended, its cost."""

    method: str
    kind: str
    variant: str = ""
    dtype: str = ""
    status: str = "ok"
    seconds: float | None = None
    peak_mib: float | None = None
    error: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    traceback: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("FAIL", "no recipe")


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of a block in MiB (``.mib``): on a GPU ``torch.cuda.max_memory_allocated`` over
    the block; on a CPU the highest resident set size above the block's start, sampled every 5 ms
    (None where ``/proc`` is missing)."""

    def __init__(self, device: Any) -> None:
        self.device, self.mib = device, None
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._start = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        import torch

        if self.device.type == "cuda":
            try:
                torch.cuda.synchronize(self.device)
            except RuntimeError:  # the block's own CUDA error, reported by the row
                return
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.mib = (max(self._peak, _rss_bytes()) - self._start) / 2**20


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@contextmanager
def environment_set(**values: str) -> Iterator[None]:
    """Environment variables set within the block, restored after it."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def libraries_quiet() -> Iterator[None]:
    """Log messages at error level within the block (the table is the output; a Python warning a
    method raises is kept in its row's ``warnings``): the root logger's (open_clip logs there), and
    diffusers' and transformers' through their environment variables if they are not imported yet,
    else their logging modules."""
    import logging

    root, root_level = logging.getLogger(), logging.getLogger().level
    libraries = [sys.modules[name].utils.logging for name in ("diffusers", "transformers") if name in sys.modules]
    verbosities = [library.get_verbosity() for library in libraries]
    root.setLevel(logging.ERROR)
    for library in libraries:
        library.set_verbosity_error()
    try:
        with environment_set(DIFFUSERS_VERBOSITY="error", TRANSFORMERS_VERBOSITY="error"):
            yield
    finally:
        root.setLevel(root_level)
        for library, verbosity in zip(libraries, verbosities):
            library.set_verbosity(verbosity)


def _release(device: Any) -> None:
    """Free what a row left: shared models, garbage, the CUDA cache."""
    import torch

    from facedefense.models import clear_shared_models

    clear_shared_models()
    if device.type == "cuda":
        # cycles can still hold CUDA tensors; on the CPU the collector's own schedule is enough (a full
        # collection costs 0.1-0.3 s per row in a process holding torch, diffusers and transformers)
        gc.collect()
        torch.cuda.empty_cache()


def run_row(spec: Any, recipe: Recipe, dtype: str, device: Any, assets: TinyAssets, images: dict[int, Any]) -> Row:
    """Build ``spec``'s method with ``recipe`` in ``dtype`` on ``device``, run its kind's exercise."""
    from facedefense.registry import get_registry
    from facedefense.testing.tiny_models import sample_faces

    row = Row(spec.name, spec.kind, recipe.variant, dtype)
    if recipe.needs:
        row.status, row.error = "skipped", f"needs weights: {recipe.needs}"
        return row
    if device.type == "cpu" and dtype in recipe.cpu_refuses:
        row.status, row.error = "n/a", f"{dtype} needs a GPU for this method"
        return row
    side = recipe.size or assets.size
    if side not in images:
        images[side] = sample_faces(2, side)
    method = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start, memory = time.perf_counter(), PeakMemory(device)
        try:
            with memory:
                options = {**recipe.options(assets), **recipe.per_dtype.get(dtype, {})}
                method = get_registry().create(spec.kind, spec.name, device=str(device), dtype=dtype, **options)
                row.facts = EXERCISES[spec.kind](method, images[side], assets)
        except Exception as exc:  # one method's failure must not stop the others
            row.status, row.error, row.traceback = "FAIL", _one_line(exc), traceback.format_exc()
        row.seconds, row.peak_mib = time.perf_counter() - start, memory.mib
    row.warnings = sorted({_one_line(w.message)[:200] for w in caught})[:5]
    del method
    _release(device)
    return row


def selected_specs(only: Sequence[str] | None) -> list[Any]:
    """The registry's methods (every kind but shared models), those named in ``only`` (names or kinds)."""
    from facedefense.registry import METHOD_KINDS, PLURALS, get_registry

    wanted = {PLURALS.get(token, token) for token in only or ()}
    specs = [spec for kind in METHOD_KINDS for spec in get_registry().all_specs(kind)]
    if wanted:
        unknown = wanted - {spec.name for spec in specs} - set(METHOD_KINDS)
        if unknown:
            raise ValueError(f"--only: no registered method or kind {', '.join(sorted(unknown))}")
        specs = [spec for spec in specs if spec.name in wanted or spec.kind in wanted]
    return specs


def planned(specs: Sequence[Any], dtypes: Sequence[str]) -> Iterator[tuple[Any, Recipe | None, str]]:
    """(spec, recipe, dtype) for every run; ``recipe`` None for a method without a recipe."""
    for spec in specs:
        recipes = RECIPES.get((spec.kind, spec.name))
        if recipes is None:
            yield spec, None, ""
            continue
        for recipe in recipes:
            for dtype in (d for d in recipe.dtypes if d in dtypes):
                yield spec, recipe, dtype


# --- output ------------------------------------------------------------------------------------------

COLUMNS = "{:<18} {:<12} {:<13} {:<9} {:<9} {:>7} {:>9}  {}"


def format_row(row: Row, width: int = 110) -> str:
    seconds = f"{row.seconds:.2f}" if row.seconds is not None else "-"
    peak = f"{row.peak_mib:.0f}" if row.peak_mib is not None else "-"
    error = row.error if len(row.error) <= width else row.error[: width - 3] + "..."
    return COLUMNS.format(row.method, row.variant or "-", row.kind, row.dtype or "-", row.status, seconds, peak, error)


def summary(rows: Sequence[Row]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))


def environment(device: Any) -> dict[str, Any]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    facts: dict[str, Any] = {"device": str(device), "python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "facedefense"):
        try:
            facts[package] = version(package)
        except PackageNotFoundError:
            facts[package] = None
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["bf16_supported"] = torch.cuda.is_bf16_supported()
    else:
        facts["threads"] = torch.get_num_threads()
    return facts


def check(specs: Sequence[Any], dtypes: Sequence[str], device: Any, assets: TinyAssets) -> list[Row]:
    """Run every planned row, printing each as it ends."""
    rows, images = [], {}
    for spec, recipe, dtype in planned(specs, dtypes):
        if recipe is None:
            row = Row(spec.name, spec.kind, status="no recipe", error="add small options for it to RECIPES in benchmarks/gpu_check.py")
        else:
            row = run_row(spec, recipe, dtype, device, assets, images)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def run(argv: Sequence[str] | None = None) -> tuple[int, list[Row]]:
    """Parse ``argv``, run the check, print the table; (exit status, rows)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (a dry run)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="methods or kinds to run (default: every registered method)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), help="precisions to run where a method has them")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels, 64-128, a multiple of 8 (default 64)")
    parser.add_argument("--strict", action="store_true", help="count skipped rows (weights not available) as failures")
    parser.add_argument("--json", type=Path, help="write the rows (with tracebacks and warnings) here")
    args = parser.parse_args(argv)
    if not 64 <= args.size <= 128 or args.size % 8:
        parser.error(f"--size must be a multiple of 8 from 64 to 128, got {args.size}")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from facedefense.errors import ConfigError
    from facedefense.progress import progress_enabled_as
    from facedefense.runtime import resolve_device

    try:
        device = resolve_device(args.device)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        specs = selected_specs(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    facts = environment(device)
    print(", ".join(f"{key} {value}" for key, value in facts.items()), flush=True)
    print(COLUMNS.format("method", "variant", "kind", "dtype", "status", "seconds", "peak MiB", "error"), flush=True)
    with tempfile.TemporaryDirectory(prefix="facedefense-gpu-check-") as root:
        cache = str(Path(root) / "cache")  # class images, autotune results: never the user's caches
        with progress_enabled_as(False), libraries_quiet(), environment_set(FACEDEFENSE_CACHE=cache, FACEDEFENSE_CACHE_DIR=cache):
            rows = check(specs, args.dtypes, device, TinyAssets(Path(root) / "assets", args.size))
    failed = [row for row in rows if row.failed or (args.strict and row.status == "skipped")]
    print(f"\n{len(rows)} rows on {device}: {summary(rows)}", flush=True)
    for row in failed:
        label = " ".join(filter(None, (row.method + (f"/{row.variant}" if row.variant else ""), row.dtype)))
        print(f"  {row.status}: {label}: {row.error}", flush=True)
    if args.json:
        document = {"environment": facts, "size": args.size, "dtypes": args.dtypes, "rows": [asdict(row) for row in rows]}
        args.json.write_text(json.dumps(document, indent=1, default=str) + "\n", encoding="utf-8")
    return (1 if failed else 0), rows


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv)[0]


if __name__ == "__main__":
    sys.exit(main())
