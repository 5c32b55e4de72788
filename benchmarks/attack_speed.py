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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=ARCHITECTURES, default="tiny")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="training steps (the first is warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "facedefense-attack-bench")
    parser.add_argument("-o", "--option", action="append", default=[], help="personalizer option key=value")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from facedefense.config import parse_option_pairs

    options = parse_option_pairs(args.option)
    print(f"load average: {os.getloadavg()}; cores: {os.cpu_count()}", flush=True)
    context = multiprocessing.get_context("spawn")
    model = prepared_model(context, args.arch, args.cache)
    results = []
    for method in args.methods:
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
