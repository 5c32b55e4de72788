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
(CAAT's each with its key/value update); ``simac`` one ASPL round after a 5-iteration timestep search. ``facelock``
uses a small random face embedder and a random-weight LPIPS VGG16 (ArcFace IR-SE50 costs more). ``ace``
two PGD phases of ``--steps // 2`` steps with its 10 LoRA steps between (a default run is 5 x 30 PGD
+ 4 x 10 LoRA steps); ``glaze`` the style transfer (img2img, 20 of 50 steps with guidance) then
``--steps`` PGD steps through the VAE encoder and a random-weight LPIPS VGG16.

    .venv/bin/python benchmarks/iterative_speed.py --methods aspl fsmg advdm photoguard --photos 4
    .venv/bin/python benchmarks/iterative_speed.py --model sd15 --methods advdm --steps 1 --photos 1

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
    args = parser.parse_args()

    import torch

    from facedefense.config import parse_option_pairs
    from facedefense.runtime import cpu_has_fast_bf16

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FACEDEFENSE_CACHE", str(cache))
    if args.model == "trained-tiny":
        model = trained_tiny(cache)
    elif args.model in ("sd15", "sd21"):
        model = full_size(args.model, cache)
    else:
        model = args.model
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model {args.model}; device {args.device}, dtype {args.dtype}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; AMX-BF16: {cpu_has_fast_bf16()}; load average {load:.2f} (should be ~0)")
    print(f"{'method':>20} {'unit':>28} {'s/unit':>8} {'s/photo':>8} {'peak GiB':>8} {'load s':>6}")
    context = multiprocessing.get_context("spawn")
    rows = []
    extra = parse_option_pairs(args.option)
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
        unit = ("1 round (3+6+3 steps)" if method == "aspl" else
                f"{options['train_steps']} train + {args.steps} PGD" if method == "fsmg" else
                f"{2 * options['pgd_steps']} PGD + 10 LoRA steps" if method == "ace" else
                f"img2img + {args.steps} PGD steps" if method == "glaze" else f"{args.steps} PGD steps")
        row["unit"] = unit
        rows.append(row)
        print(f"{method:>20} {unit:>28} {row['seconds']:8.2f} {row['seconds'] / args.photos:8.2f} "
              f"{row['peak_memory_gib']:8.2f} {row['load_seconds']:6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "device": args.device, "load_average": load,
                                               "results": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
