"""Seconds per training step and peak memory of each personalizer at 512x512.

Architectures: ``tiny`` (the test suite's tiny Stable Diffusion) and ``sd15`` (Stable Diffusion
1.5's UNet, VAE and text encoder shapes with random weights: they time like trained ones; the tiny
offline tokenizer stands in for CLIP's, so textual inversion resizes a 49,408-row embedding to a
few hundred rows). Each measurement runs in its own process, so its peak memory is its own: peak
resident memory on the CPU (``VmHWM``), ``torch.cuda.max_memory_allocated`` on a GPU. The time per
step is the mean over the steps after the first (warm-up). Class images are random tensors passed
to ``fit`` (class-image generation is not training).

    .venv/bin/python benchmarks/attack_speed.py --arch tiny --steps 4
    .venv/bin/python benchmarks/attack_speed.py --arch sd15 --steps 3 --methods lora textual_inversion lora_ti \
        -o mixed_precision=bf16 -o gradient_checkpointing=true

Zero-shot attacks (``--methods ip_adapter photomaker``; ``--arch tiny`` only) train nothing: their
rows are the seconds to encode the photos (``fit``) and the seconds per generated image at
``--resolution`` with ``--steps`` denoising steps (``generate``, ``--num-images`` images, the mean
of the calls after a first warm-up image), with the tiny adapters of
`facedefense.testing.tiny_adapters` (IP-Adapter on the tiny SD, PhotoMaker on the tiny SDXL).
``ip_adapter_faceid`` and ``instantid`` also need face networks: they run when their face options
are given with ``-o`` (``face_weights=...``), else they are listed as not measured.

    .venv/bin/python benchmarks/attack_speed.py --arch tiny --methods ip_adapter photomaker --resolution 64 --steps 4

Full-size DreamBooth trains all 860M UNet parameters with AdamW (about 14 GB of weights, gradients
and optimizer state in float32): run it on a GPU (``-o optimizer=adamw_8bit`` there saves ~5 GB).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
from pathlib import Path

METHODS = ("dreambooth", "lora", "textual_inversion", "lora_ti")
#: Zero-shot attacks -> (base model: tiny SD or tiny SDXL, the tiny adapter's builder and options).
ZERO_SHOT = {
    "ip_adapter": ("sd", "build_tiny_ip_adapter", {"weight_name": "WEIGHT_NAME"}),
    "ip_adapter_faceid": ("sd", "build_tiny_ip_adapter_faceid", {"weight_name": "FACEID_WEIGHT_NAME"}),
    "instantid": ("sdxl", "build_tiny_instantid", {"weight_name": "INSTANTID_WEIGHT_NAME"}),
    "photomaker": ("sdxl", "build_tiny_photomaker", {"weight_name": "PHOTOMAKER_WEIGHT_NAME"}),
}
#: Zero-shot attacks that need face networks given by path (``-o face_weights=...``).
NEEDS_FACES = ("ip_adapter_faceid", "instantid")


#: Architectures ``build`` knows: the test suite's tiny model and full-size ones with random weights.
ARCHITECTURES = ("tiny", "sd15", "sd21")


def model_path(arch: str, root: Path) -> Path:
    """Where ``build`` puts architecture ``arch`` under ``root``."""
    return root / ("tiny" if arch == "tiny" else f"random-{arch}")


def build(arch: str, root: Path) -> Path:
    """The tiny test model, or SD 1.5 / 2.1-base with random weights (``iterative_speed.full_size``)."""
    from iterative_speed import full_size

    from facedefense.testing.tiny_models import build_tiny_sd

    folder = model_path(arch, root)
    if arch != "tiny":
        return Path(full_size(arch, root))
    return folder if (folder / "model_index.json").exists() else build_tiny_sd(folder)


def prepared_model(context, arch: str, root: Path) -> str:
    """``build`` run in a process of ``context`` (its memory is not the measuring process's); the
    model folder."""
    builder = context.Process(target=build, args=(arch, root))
    builder.start()
    builder.join()
    return str(model_path(arch, root))


def in_fresh_process(context, target, *args) -> tuple[dict | None, int]:
    """``target(queue, *args)`` in a fresh process of ``context`` (so its peak memory is its own):
    what it put on the queue (None when the process failed) and its exit code."""
    queue = context.Queue()
    process = context.Process(target=target, args=(queue, *args))
    process.start()
    process.join()
    return (queue.get() if process.exitcode == 0 else None), process.exitcode


def _peak_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def measure(queue: multiprocessing.Queue, method: str, model: str, resolution: int, steps: int,
            device: str, options: dict) -> None:
    """One personalizer, one process: fit for ``steps`` steps, report s/step and peak memory."""
    import torch

    from facedefense.registry import get_registry

    generator = torch.Generator().manual_seed(0)
    photos = [torch.rand(3, resolution, resolution, generator=generator) for _ in range(4)]
    classes = [torch.rand(3, resolution, resolution, generator=generator) for _ in range(4)]
    personalizer = get_registry().load("personalizer", method)(
        model=model, steps=steps, resolution=resolution, device=device, **options)
    personalizer.fit(photos, class_images=classes)
    seconds = personalizer.last_training.seconds
    timings = getattr(personalizer.last_training, "step_seconds", None) or []
    per_step = sum(timings[1:]) / max(1, len(timings) - 1) if len(timings) > 1 else seconds / steps
    queue.put({"method": method, "resolution": resolution, "steps": steps, "device": device,
               "batch": personalizer.config.batch_size, "prior": personalizer.config.prior_preservation,
               "options": options, "seconds_per_step": round(per_step, 3), "first_step": round(timings[0], 3) if timings else None,
               "peak_gib": round(_peak_gib(device), 2)})


def build_zero_shot(method: str, root: Path) -> dict:
    """The tiny base model and tiny adapter of zero-shot ``method`` under ``root``; the options
    that select them."""
    from facedefense.testing import tiny_adapters
    from facedefense.testing.tiny_models import build_tiny_sd
    from facedefense.testing.tiny_sdxl import build_tiny_sdxl

    base, builder, names = ZERO_SHOT[method]
    model = root / f"tiny-{base}"
    if not (model / "model_index.json").exists():
        (build_tiny_sd if base == "sd" else build_tiny_sdxl)(model)
    adapter = getattr(tiny_adapters, builder)(root / f"adapter-{method}", model)
    options = {key: getattr(tiny_adapters, value) for key, value in names.items()}
    if method == "instantid":
        options["controlnet"] = str(adapter / tiny_adapters.INSTANTID_CONTROLNET_FOLDER)
        options["controlnet_subfolder"] = ""
    return {"model": str(model), "adapter": str(adapter), **options}


def measure_zero_shot(queue: multiprocessing.Queue, method: str, root: Path, resolution: int, steps: int,
                      num_images: int, device: str, options: dict) -> None:
    """One zero-shot attack, one process: encode 4 photos, then generate ``num_images`` images one
    call each after a warm-up image; report seconds and peak memory."""
    import time

    import torch

    from facedefense.registry import get_registry

    chosen = {**build_zero_shot(method, root), **options}
    generator = torch.Generator().manual_seed(0)
    photos = [torch.rand(3, resolution, resolution, generator=generator) for _ in range(4)]
    personalizer = get_registry().load("personalizer", method)(
        resolution=resolution, inference_steps=steps, device=device, **chosen)
    personalizer.prepare()
    started = time.perf_counter()
    model = personalizer.fit(photos)
    encode = time.perf_counter() - started
    prompt = personalizer.default_prompts()[0]
    model.generate(prompt, generator=torch.Generator().manual_seed(0))  # warm-up
    started = time.perf_counter()
    for index in range(num_images):
        model.generate(prompt, generator=torch.Generator().manual_seed(index + 1))
    per_image = (time.perf_counter() - started) / num_images
    queue.put({"method": method, "resolution": resolution, "steps": steps, "device": device,
               "options": options, "encode_seconds": round(encode, 3),
               "seconds_per_image": round(per_image, 3), "peak_gib": round(_peak_gib(device), 2)})


def run_zero_shot(context, args, options: dict) -> list[dict]:
    """The zero-shot rows of ``args.methods`` (tiny architectures only)."""
    results = []
    for method in (m for m in args.methods if m in ZERO_SHOT):
        if method in NEEDS_FACES and "face_weights" not in options:
            print(f"{args.arch:5s} {method:18s} not measured (needs its face networks: -o face_weights=...)", flush=True)
            continue
        outcome, exitcode = in_fresh_process(
            context, measure_zero_shot, method, args.cache, args.resolution, args.steps, args.num_images,
            args.device, options,
        )
        if outcome is None:
            print(f"{args.arch:5s} {method:18s} failed (exit {exitcode})", flush=True)
            continue
        results.append({"arch": args.arch, **outcome})
        print(f"{args.arch:5s} {method:18s} encode {outcome['encode_seconds']:6.3f} s  "
              f"{outcome['seconds_per_image']:8.3f} s/image ({args.steps} steps)  "
              f"peak {outcome['peak_gib']:.2f} GiB", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=ARCHITECTURES, default="tiny")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=(*METHODS, *ZERO_SHOT))
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4,
                        help="training steps (the first is warm-up); zero-shot: denoising steps")
    parser.add_argument("--num-images", type=int, default=2, help="zero-shot: timed images (after one warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "facedefense-attack-bench")
    parser.add_argument("-o", "--option", action="append", default=[], help="personalizer option key=value")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from facedefense.config import parse_option_pairs

    options = parse_option_pairs(args.option)
    print(f"load average: {os.getloadavg()}; cores: {os.cpu_count()}", flush=True)
    context = multiprocessing.get_context("spawn")
    zero_shot = [method for method in args.methods if method in ZERO_SHOT]
    if zero_shot and args.arch != "tiny":
        parser.error(f"zero-shot attacks ({', '.join(zero_shot)}) run on --arch tiny only")
    results = run_zero_shot(context, args, options) if zero_shot else []
    training = [method for method in args.methods if method in METHODS]
    model = prepared_model(context, args.arch, args.cache) if training else ""
    for method in training:
        outcome, exitcode = in_fresh_process(
            context, measure, method, model, args.resolution, args.steps, args.device, options
        )
        if outcome is None:
            print(f"{args.arch:5s} {method:18s} failed (exit {exitcode})", flush=True)
            continue
        result = {"arch": args.arch, **outcome}
        results.append(result)
        print(f"{args.arch:5s} {method:18s} {result['seconds_per_step']:8.3f} s/step  "
              f"peak {result['peak_gib']:.2f} GiB  (batch {result['batch']}, prior {result['prior']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
