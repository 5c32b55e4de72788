"""Seconds per photo and peak memory of the iterative defenders at 512x512.

Each defender runs in its own process (its peak memory is its own) on ``--photos`` sample portraits,
after one warm-up call (allocations, kernels, the class-image cache). ``--model`` picks the surrogate:

- ``trained-tiny`` (default): the test kit's tiny SD (x8 VAE, so 512x512 photos give 64x64 latents
  like real SD) fine-tuned on faces, cached under ~/.cache/facedefense/tests;
- ``sd15`` / ``sd21``: full-size Stable Diffusion 1.5 / 2.1-base architectures with random weights
  (they time like trained ones); built once under ``--cache``. Use ``--steps 1`` on a CPU;
- any diffusers folder or Hugging Face id.

What one "unit" is per method: ``aspl`` one round (``surrogate_steps`` + ``pgd_steps`` +
``surrogate_steps``, the reference's 3 + 6 + 3 by default); ``fsmg`` ``--steps`` PGD steps after
``train_steps`` DreamBooth steps; ``advdm`` / ``photoguard`` / ``photoguard:diffusion`` (4 unrolled
DDIM steps with guidance 7.5) / ``mist`` / ``sds`` / ``facelock`` / ``caat`` ``--steps`` PGD steps
(CAAT's each with its key/value update); ``simac`` one ASPL round after a 5-iteration timestep search;
``metacloak`` one iteration (``--steps`` PGD + 2 surrogate steps) against a pool of one state, the
untrained surrogate. ``facelock`` uses a small random face embedder and a random-weight LPIPS VGG16
(ArcFace IR-SE50 costs more). ``ace`` two PGD phases of ``--steps // 2`` steps with its 10 LoRA steps between (a default run is 5 x 30 PGD
+ 4 x 10 LoRA steps); ``glaze`` the style transfer (img2img, 20 of 50 steps with guidance) then
``--steps`` PGD steps through the VAE encoder and a random-weight LPIPS VGG16.

    .venv/bin/python benchmarks/iterative_speed.py --methods aspl fsmg advdm photoguard --photos 4
    .venv/bin/python benchmarks/iterative_speed.py --model sd15 --methods advdm --steps 1 --photos 1
    .venv/bin/python benchmarks/iterative_speed.py --against-reference /tmp/antidb-ref --rounds 3 --repeats 2
    .venv/bin/python benchmarks/iterative_speed.py --profile

``--against-reference PATH`` times ``aspl`` beside Anti-DreamBooth's ``attacks/aspl.py`` from a
checkout at PATH (never committed), interleaved in one run (issue 27; target: at most 0.5x the
reference per round). ``--profile`` times the pieces of a round (VAE encoder, UNet, text encoder,
AdamW) alone.

Target (issue 9): one aspl round on 4 photos at 512x512 with the trained tiny model in at most
10 s on the CPU. The load average is printed first: the machine should be idle.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

RECIPES = {
    "aspl": lambda steps: {"steps": 1, "pgd_steps": 6, "surrogate_steps": 3, "num_class_images": 8,
                           "class_image_steps": 2},
    "fsmg": lambda steps: {"steps": steps, "train_steps": 3, "num_class_images": 8, "class_image_steps": 2},
    "advdm": lambda steps: {"steps": steps},
    "photoguard": lambda steps: {"steps": steps},
    # name:variant rows run the defender `name` with extra options
    "photoguard:diffusion": lambda steps: {"steps": steps, "attack": "diffusion"},
    "mist": lambda steps: {"steps": steps},
    "caat": lambda steps: {"steps": steps},
    # one round after a 5-iteration timestep search (the default search scores 300 passes per photo)
    "simac": lambda steps: {"steps": 1, "pgd_steps": 6, "surrogate_steps": 3, "num_class_images": 8,
                            "class_image_steps": 2, "search_steps": 5},
    # one iteration (--steps PGD + 2 surrogate steps) against a pool of one state, the untrained
    # surrogate (train_steps=0: no pool training); a default identity is 4 rounds x 6 states x 100
    "metacloak": lambda steps: {"steps": 1, "train_steps": 0, "iterations": 1, "pgd_steps": steps,
                                "advance_steps": 2, "num_class_images": 8, "class_image_steps": 2},
    "sds": lambda steps: {"steps": steps, "mode": "+"},
    "ace": lambda steps: {"steps": 2, "pgd_steps": max(1, steps // 2), "surrogate_steps": 10, "num_class_images": 8,
                          "class_image_steps": 2},
    "glaze": lambda steps: {"steps": steps, "lpips_weights": "random"},
    # random face embedder and LPIPS backbone (no weights here); every term on from the first step
    "facelock": lambda steps: {"steps": steps, "face_model": "random_face_embedder", "lpips_weights": "random",
                               "identity_start": 0.0, "lpips_start": 0.0},
}


def _peak_rss_gib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def trained_tiny(cache: Path) -> str:
    """The test kit's trained tiny SD: the pytest cache when present, else built and trained here."""
    from facedefense.testing.fixtures import TRAINED_RECIPE, _cache_key, _cache_root
    from facedefense.testing.tiny_models import build_tiny_sd, sample_faces, train_tiny_unet

    root = _cache_root()
    cached = root / f"trained-tiny-sd-{_cache_key()}" if root is not None else None
    if cached is not None and (cached / "facedefense_cache.json").is_file():
        return str(cached)
    folder = cache / f"trained-tiny-sd-{_cache_key()}"
    if not (folder / "unet" / "facedefense_training.json").is_file():
        build_tiny_sd(folder, seed=TRAINED_RECIPE["seed"])
        train_tiny_unet(folder, sample_faces(TRAINED_RECIPE["images"], TRAINED_RECIPE["size"]),
                        steps=TRAINED_RECIPE["steps"], seed=TRAINED_RECIPE["seed"])
    return str(folder)


def full_size(kind: str, cache: Path) -> str:
    """SD 1.5 or 2.1-base architecture with random weights (the tiny kit's offline tokenizer),
    built once as ``cache/random-<kind>``; the other benchmarks use it too."""
    folder = cache / f"random-{kind}"
    if (folder / "model_index.json").is_file():
        return str(folder)
    import torch

    from facedefense.testing.tiny_models import _prepare

    _prepare()  # the torchvision shim, before diffusers' pipelines import transformers' image code
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from facedefense.testing.tokenizer import build_tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    v2 = kind == "sd21"
    width = 1024 if v2 else 768
    unet = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=width, attention_head_dim=(5, 10, 20, 20) if v2 else 8,
        use_linear_projection=v2, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=4096 if v2 else 3072,
        num_hidden_layers=23 if v2 else 12, num_attention_heads=16 if v2 else 12, max_position_embeddings=77,
        hidden_act="gelu" if v2 else "quick_gelu", projection_dim=width, bos_token_id=len(tokenizer) - 2,
        eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1))
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              steps_offset=1, prediction_type="epsilon")
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(folder, safe_serialization=True)
    return str(folder)


def _measure(method: str, model: str, options: dict, photos: int, size: int, device: str, dtype: str, queue) -> None:
    import torch

    from facedefense.registry import get_registry
    from facedefense.testing.tiny_models import sample_faces

    images = (torch.round(sample_faces(photos, size).clamp(0, 1) * 255) / 255)
    cls = get_registry().load("defender", method.split(":")[0])
    start = time.perf_counter()
    defender = cls(model=model, device=device, dtype=dtype, resolution=size, **options)
    load_seconds = time.perf_counter() - start
    defender.protect(images)  # warm-up: allocations, kernels, class images
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    defender.protect(images)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else _peak_rss_gib()
    queue.put({"seconds": seconds, "peak_memory_gib": memory, "load_seconds": load_seconds})


# ----------------------------------------------------------------------------------------------
# Side by side with the reference (Anti-DreamBooth's attacks/aspl.py)

#: ``attack_with_aspl.sh``'s options the reference's functions read (budgets in [-1, 1] units).
REFERENCE_ARGS = {
    "instance_prompt": "a photo of sks person", "class_prompt": "a photo of person", "with_prior_preservation": True,
    "prior_loss_weight": 1.0, "resolution": 512, "center_crop": True, "learning_rate": 5e-7, "pgd_alpha": 5e-3,
    "pgd_eps": 5e-2, "max_f_train_steps": 3, "max_adv_train_steps": 6,
}


class _TorchOnCPU:
    """The ``torch`` the reference module sees: ``torch.device("cuda")`` is the CPU and its
    hard-coded ``torch.bfloat16`` weights are float32; everything else is torch itself."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        self.bfloat16 = torch.float32

    def device(self, *args: Any, **kwargs: Any) -> Any:
        return self._torch.device("cpu")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)


def load_reference(path: Path) -> Any:
    """Import ``attacks/aspl.py`` from the user's checkout, patched at run time only: its module sees
    `_TorchOnCPU`; ``datasets`` (imported for logging in ``main``, which is not called) is a stub."""
    import importlib.util
    import sys
    import types

    import torch

    file = Path(path) / "attacks" / "aspl.py"
    if not file.is_file():
        raise SystemExit(f"--against-reference: no attacks/aspl.py under {path} (a checkout of VinAIResearch/Anti-DreamBooth)")
    sys.modules.setdefault("datasets", types.ModuleType("datasets"))
    spec = importlib.util.spec_from_file_location("antidreambooth_aspl", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.torch = _TorchOnCPU(torch)
    return module


def _timed(owner: Any, name: str, log: list, label: str | None = None) -> None:
    """Replace ``owner.name`` by a wrapper that appends ``(label, seconds)`` to ``log`` per call."""
    original = getattr(owner, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            log.append((label or name, time.perf_counter() - start))

    setattr(owner, name, call)


def _summary(log: list, rounds: int) -> dict:
    """Seconds per round (mean of the rounds after the first, a warm-up) and per phase."""
    per_round = [s for label, s in log if label == "round"]
    timed = per_round[1:] or per_round
    phases = {}
    for phase in ("train_clean", "pgd", "train_perturbed"):
        values = [s for label, s in log if label == phase][1:] or [s for label, s in log if label == phase]
        phases[phase] = sum(values) / max(1, len(values))
    return {"round_seconds": per_round, "seconds_per_round": sum(timed) / len(timed), "fastest_round": min(timed),
            "seconds_per_pgd_step": phases["pgd"] / REFERENCE_ARGS["max_adv_train_steps"], "phases": phases,
            "peak_memory_gib": _peak_rss_gib()}


def _reference_rounds(path: str, model: str, folders: dict, rounds: int, queue: Any) -> None:
    """The reference's ``main`` loop (``f' = deepcopy(f)``; ``train_one_epoch`` on the clean set;
    ``pgd_attack``; ``train_one_epoch`` on the perturbed photos) for ``rounds`` rounds, each timed."""
    import argparse
    import contextlib
    import copy
    import io

    import torch

    from facedefense.diffusion.loading import _prepare_imports
    from facedefense.runtime import keep_freed_memory

    keep_freed_memory()  # the allocator setting facedefense's methods use on the CPU
    _prepare_imports()  # torchvision's shim, before the reference imports it
    ref = load_reference(Path(path))
    import diffusers
    import transformers
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer

    # the reference moves its networks with `.to(dtype)` at every phase; diffusers warns each time
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()

    args = argparse.Namespace(**REFERENCE_ARGS, class_data_dir=folders["class"])
    torch.manual_seed(0)
    text_encoder = ref.import_model_class_from_model_name_or_path(model, None).from_pretrained(model, subfolder="text_encoder")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer", use_fast=False)
    except (OSError, ValueError, TypeError):  # the tiny kit ships a fast tokenizer only
        tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    vae.requires_grad_(False)
    clean = ref.load_data(folders["clean"], size=args.resolution, center_crop=args.center_crop)
    perturbed = ref.load_data(folders["photos"], size=args.resolution, center_crop=args.center_crop)
    original = perturbed.clone()
    log: list = []
    models = [unet, text_encoder]
    with contextlib.redirect_stdout(io.StringIO()):  # its per-step prints
        for _ in range(rounds):
            start = time.perf_counter()
            surrogate = copy.deepcopy(models)
            surrogate = ref.train_one_epoch(args, surrogate, tokenizer, scheduler, vae, clean, args.max_f_train_steps)
            log.append(("train_clean", time.perf_counter() - start))
            mark = time.perf_counter()
            perturbed = ref.pgd_attack(args, surrogate, tokenizer, scheduler, vae, perturbed, original, None,
                                       args.max_adv_train_steps)
            log.append(("pgd", time.perf_counter() - mark))
            mark = time.perf_counter()
            models = ref.train_one_epoch(args, models, tokenizer, scheduler, vae, perturbed, args.max_f_train_steps)
            log.append(("train_perturbed", time.perf_counter() - mark))
            log.append(("round", time.perf_counter() - start))
    queue.put(_summary(log, rounds))


def _our_rounds(model: str, photos: Any, rounds: int, options: dict, queue: Any) -> None:
    """facedefense ``aspl`` for ``rounds`` rounds on ``photos``, each round and phase timed."""
    os.environ["FACEDEFENSE_PROGRESS"] = "0"
    from facedefense.registry import get_registry

    cls = get_registry().load("defender", "aspl")
    steps = REFERENCE_ARGS["max_f_train_steps"]
    defender = cls(model=model, device="cpu", dtype="float32", resolution=REFERENCE_ARGS["resolution"], steps=rounds,
                   pgd_steps=REFERENCE_ARGS["max_adv_train_steps"], surrogate_steps=steps, **options)
    log: list = []
    phases = iter(())

    def next_phase() -> str:
        nonlocal phases
        label = next(phases, None)
        if label is None:
            phases = iter(("train_clean", "train_perturbed"))
            label = next(phases)
        return label

    original_train, original_make_pgd = defender.train, defender.make_pgd

    def train(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original_train(*args, **kwargs)
        finally:
            log.append((next_phase(), time.perf_counter() - start))

    def make_pgd(total_steps: int) -> Any:
        pgd = original_make_pgd(total_steps)
        _timed(pgd, "run", log, "pgd")
        return pgd

    defender.train, defender.make_pgd = train, make_pgd
    _timed(defender, "_round", log, "round")
    defender.protect(photos)
    queue.put(_summary(log, rounds))


def against_reference(path: str, model: str, rounds: int, repeats: int, options: dict, cache: Path) -> list[dict]:
    """Reference and facedefense ``aspl`` interleaved (ref, ours, ref, ours, ...), each run in its own
    process on the same model, 4 photos and 4 class images at 512x512, fp32, same allocator setting."""
    import torch

    from facedefense.io import save_image
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_iterative.surrogate import class_images

    size = REFERENCE_ARGS["resolution"]
    photos = torch.round(sample_faces(4, size).clamp(0, 1) * 255) / 255
    references = class_images(model, REFERENCE_ARGS["class_prompt"], options["num_class_images"], resolution=size,
                              steps=options["class_image_steps"], seed=0, device=torch.device("cpu"),
                              dtype=torch.float32, progress=False)  # cached: facedefense reads the same ones
    folders = {name: cache / "reference-inputs" / name for name in ("photos", "clean", "class")}
    for name, images in (("photos", photos), ("clean", photos), ("class", references)):
        folders[name].mkdir(parents=True, exist_ok=True)
        for old in folders[name].glob("*.png"):
            old.unlink()
        for index, image in enumerate(images):
            save_image(image, folders[name] / f"{index:04d}.png")
    context = multiprocessing.get_context("spawn")
    results = []
    for repeat in range(repeats):
        for who in ("reference", "facedefense"):
            queue = context.Queue()
            target, arguments = ((_reference_rounds, (path, model, {k: str(v) for k, v in folders.items()}, rounds, queue))
                                 if who == "reference" else (_our_rounds, (model, photos, rounds, options, queue)))
            load = os.getloadavg()[0]
            process = context.Process(target=target, args=arguments)
            process.start()
            process.join()
            if process.exitcode != 0:
                raise SystemExit(f"{who} run failed (exit code {process.exitcode})")
            row = queue.get()
            row.update(implementation=who, repeat=repeat, load_average=load)
            results.append(row)
            phases = " ".join(f"{k} {v:.2f}" for k, v in row["phases"].items())
            print(f"{who:>12} #{repeat}: {row['seconds_per_round']:6.2f} s/round (fastest {row['fastest_round']:.2f}), "
                  f"{row['seconds_per_pgd_step']:5.2f} s/PGD step ({phases}); peak {row['peak_memory_gib']:.2f} GiB; "
                  f"load {load:.2f}", flush=True)
            if who == "facedefense":
                print(f"{'':>12} pair #{repeat}: {row['seconds_per_round'] / results[-2]['seconds_per_round']:.2f}x per round",
                      flush=True)
    mean = {who: sum(r["seconds_per_round"] for r in results if r["implementation"] == who) / repeats
            for who in ("reference", "facedefense")}
    step = {who: sum(r["seconds_per_pgd_step"] for r in results if r["implementation"] == who) / repeats
            for who in ("reference", "facedefense")}
    print(f"aspl per round: facedefense {mean['facedefense']:.2f} s, reference {mean['reference']:.2f} s: "
          f"{mean['facedefense'] / mean['reference']:.2f}x; per PGD step {step['facedefense']:.2f} s vs "
          f"{step['reference']:.2f} s: {step['facedefense'] / step['reference']:.2f}x (rounds 2-{rounds} of each run)")
    fastest = {who: min(r["fastest_round"] for r in results if r["implementation"] == who) for who in mean}
    print(f"fastest round (the least disturbed by the machine's load): facedefense {fastest['facedefense']:.2f} s, "
          f"reference {fastest['reference']:.2f} s: {fastest['facedefense'] / fastest['reference']:.2f}x")
    return results


# ----------------------------------------------------------------------------------------------
# Where one aspl round's time goes


def profile_pieces(model: str, photos: int = 4, size: int = 512, repeats: int = 3) -> dict[str, float]:
    """Seconds of each piece of an aspl round on ``photos`` photos at ``size``, timed alone (best of
    ``repeats``): the VAE encoder forward and backward (the gradient to the pixels, PGD's), the UNet
    forward and backward to its input (PGD) and with its weights (a surrogate step, batch 2), the text
    encoder's forward and backward, and an AdamW step over the surrogate's trainable weights."""
    import torch

    from facedefense.diffusion import encode_latents, load_components

    parts = load_components(model, device=torch.device("cpu"), dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(photos, 3, size, size, generator=generator)
    tokens = parts.tokenizer(["a photo of sks person"] * 2, padding="max_length", truncation=True,
                             max_length=parts.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        states = parts.text_encoder(tokens)[0]
        latents = encode_latents(parts.vae, pixels)
    timesteps = torch.randint(0, 1000, (photos,), generator=generator)

    def best(work: Any) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return min(times)

    def vae_forward() -> Any:
        with torch.no_grad():
            encode_latents(parts.vae, pixels)

    def vae_both() -> Any:
        x = pixels.clone().requires_grad_(True)
        encode_latents(parts.vae, x).sum().backward()

    def unet_forward() -> Any:
        with torch.no_grad():
            parts.unet(latents, timesteps, states[:1].expand(photos, -1, -1))

    def unet_both() -> Any:
        z = latents.clone().requires_grad_(True)
        parts.unet(z, timesteps, states[:1].expand(photos, -1, -1)).sample.sum().backward()

    def unet_weights() -> Any:
        parts.unet.requires_grad_(True)
        try:
            parts.unet(latents[:2], timesteps[:2], states).sample.sum().backward()
        finally:
            parts.unet.zero_grad(set_to_none=True)
            parts.unet.requires_grad_(False)

    def text_both() -> Any:
        parts.text_encoder.requires_grad_(True)
        try:
            parts.text_encoder(tokens)[0].sum().backward()
        finally:
            parts.text_encoder.zero_grad(set_to_none=True)
            parts.text_encoder.requires_grad_(False)

    params = [p for m in (parts.unet, parts.text_encoder) for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=5e-7, weight_decay=1e-2)

    def adamw() -> Any:
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        for p in params:
            p.grad = None

    pieces = {
        f"VAE encoder forward ({photos} photos)": best(vae_forward),
        f"VAE encoder forward + backward to the pixels ({photos} photos)": best(vae_both),
        f"UNet forward ({photos} latents)": best(unet_forward),
        f"UNet forward + backward to the latents ({photos})": best(unet_both),
        "UNet forward + backward with weight gradients (2 latents: a surrogate step)": best(unet_weights),
        "text encoder forward + backward (2 prompts)": best(text_both),
        "AdamW step over the UNet and text encoder": best(adamw),
    }
    for name, seconds in pieces.items():
        print(f"{seconds:8.3f} s  {name}")
    return pieces



def _unit(method: str, options: dict, steps: int) -> str:
    """What one timed call of ``method`` ran, from the options it ran with (``-o`` values are strings)."""
    value = {key: int(val) for key, val in options.items() if str(val).isdigit()}
    if method == "aspl":
        return f"1 round ({value['surrogate_steps']}+{value['pgd_steps']}+{value['surrogate_steps']} steps)"
    if method == "simac":
        return (f"search {value['search_steps']} + 1 round ({value['surrogate_steps']}+{value['pgd_steps']}+"
                f"{value['surrogate_steps']} steps)")
    if method == "fsmg":
        return f"{value['train_steps']} train + {steps} PGD"
    if method == "ace":
        return f"{value['steps'] * value['pgd_steps']} PGD + {value['surrogate_steps']} LoRA steps"
    if method == "glaze":
        return f"img2img + {steps} PGD steps"
    if method == "metacloak":
        return f"1 iteration ({value['pgd_steps']} PGD + {value['advance_steps']} surrogate)"
    return f"{steps} PGD steps"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--model", default="trained-tiny", help="trained-tiny, sd15, sd21, or a folder / hub id")
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6, help="PGD steps (fsmg, advdm, photoguard)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--option", "-o", action="append", default=[], help="extra defender option key=value")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "facedefense-bench"))
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--against-reference", metavar="PATH",
                        help="time aspl beside a checkout of VinAIResearch/Anti-DreamBooth (attacks/aspl.py) at PATH")
    parser.add_argument("--profile", action="store_true",
                        help="time the pieces of an aspl round (VAE encoder, UNet, text encoder, AdamW) alone")
    parser.add_argument("--rounds", type=int, default=3, help="aspl rounds per run (the first is a warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved reference/facedefense pairs")
    args = parser.parse_args()

    import torch

    from facedefense.config import parse_option_pairs
    from facedefense.runtime import cpu_has_fast_bf16

    extra = parse_option_pairs(args.option)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.model == "trained-tiny":
        model = trained_tiny(cache)  # the test kit's cache first (before FACEDEFENSE_CACHE moves it)
    elif args.model in ("sd15", "sd21"):
        model = full_size(args.model, cache)
    else:
        model = args.model
    os.environ.setdefault("FACEDEFENSE_CACHE", str(cache))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model {args.model}; device {args.device}, dtype {args.dtype}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; AMX-BF16: {cpu_has_fast_bf16()}; load average {load:.2f} (should be ~0)")
    if args.profile:
        from facedefense.runtime import keep_freed_memory

        keep_freed_memory()
        profile_pieces(model, args.photos, args.size)
        return
    if args.against_reference:
        options = {**RECIPES["aspl"](args.steps), **extra}
        options = {k: v for k, v in options.items() if k not in ("steps", "pgd_steps", "surrogate_steps")}
        options["num_class_images"] = 4
        results = against_reference(args.against_reference, model, args.rounds, args.repeats, options, cache)
        if args.json:
            Path(args.json).write_text(json.dumps({"model": args.model, "load_average": load, "results": results},
                                                  indent=2), encoding="utf-8")
        return
    print(f"{'method':>20} {'unit':>28} {'s/unit':>8} {'s/photo':>8} {'peak GiB':>8} {'load s':>6}")
    context = multiprocessing.get_context("spawn")
    rows = []
    for method in args.methods:
        options = {**RECIPES[method](args.steps), **extra}
        queue = context.Queue()
        process = context.Process(target=_measure, args=(method, model, options, args.photos, args.size, args.device,
                                                         args.dtype, queue))
        process.start()
        process.join()
        if process.exitcode != 0:
            print(f"{method:>20} failed (exit code {process.exitcode})")
            continue
        row = {"method": method, "photos": args.photos, "size": args.size, "options": options, **queue.get()}
        unit = _unit(method, options, args.steps)
        row["unit"] = unit
        rows.append(row)
        print(f"{method:>20} {unit:>28} {row['seconds']:8.2f} {row['seconds'] / args.photos:8.2f} "
              f"{row['peak_memory_gib']:8.2f} {row['load_seconds']:6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "device": args.device, "load_average": load,
                                               "results": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
