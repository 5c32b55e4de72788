"""Seconds per training step and peak memory of ``facedefense train`` (RID and GAP-Diff).

Architectures (``--arch``): ``tiny`` (the test suite's tiny Stable Diffusion, with small defender
networks: RID width 64, depth 2; GAP-Diff ``ngf=8``) and ``sd15`` / ``sd21`` (Stable Diffusion
1.5's or 2.1-base's UNet, VAE and text encoder with random weights, and the full-size defender
networks: RID's 14-block DiT, GAP-Diff's ``ngf=64`` U-Net with its discriminator). Random weights
time like trained ones. Each measurement runs in its own process, so its peak memory is its own:
``VmHWM`` on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU. Seconds per step are the mean
of the steps after the first (warm-up), read from the run's ``log.jsonl``.

    .venv/bin/python benchmarks/training_speed.py --arch tiny --steps 5
    .venv/bin/python benchmarks/training_speed.py --arch sd21 --steps 3 --mixed-precision bf16 --device cuda

On a GPU, ``--mixed-precision bf16`` is the issue's configuration; on a CPU without AMX, bf16 runs
slower than fp32 (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
from pathlib import Path

from attack_speed import ARCHITECTURES, _peak_gib, in_fresh_process, prepared_model

METHODS = ("rid", "gap_diff")
#: ``-o`` options per method for the tiny architecture (the full ones use the defaults).
TINY_OPTIONS = {
    "rid": {"architecture": "patch_size=16,hidden_size=64,depth=2,num_heads=4,num_classes=4", "warmup_steps": 0},
    "gap_diff": {"architecture": "ngf=8", "discriminator_width": 8, "first_phase_epochs": 1},
}


def measure(queue, method: str, model: str, arch: str, resolution: int, steps: int, batch: int, device: str,
            mixed_precision: str, checkpointing: bool, work: str) -> None:
    """One method, one process: train ``steps`` steps, report seconds per step and peak memory."""
    import numpy as np
    import torch
    from PIL import Image

    from facedefense.registry import get_registry
    from facedefense_amortized.training.loop import TrainSettings, train

    data = Path(work) / "faces"
    data.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for index in range(max(4, batch)):
        pixels = (torch.rand(resolution, resolution, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(np.ascontiguousarray(pixels)).save(data / f"{index}.png")
    options = dict(TINY_OPTIONS[method]) if arch == "tiny" else {}
    if method == "rid":
        options["architecture"] = ",".join(filter(None, [f"input_size={resolution}", options.get("architecture", "")]))
    else:
        options["size"] = resolution
    settings = TrainSettings(
        method=method, data=data, models=[model], output=Path(work) / "run", steps=steps, batch_size=batch,
        device=device, mixed_precision=mixed_precision, gradient_checkpointing=checkpointing,
        save_every=10**9, options=options,
    )
    train(settings, get_registry().load("defender", method).training_recipe())
    seconds = [json.loads(line)["seconds"] for line in (settings.output / "log.jsonl").read_text().splitlines()]
    per_step = sum(seconds[1:]) / (len(seconds) - 1) if len(seconds) > 1 else seconds[0]
    queue.put({"method": method, "arch": arch, "resolution": resolution, "batch": batch, "device": device,
               "mixed_precision": mixed_precision, "gradient_checkpointing": checkpointing,
               "seconds_per_step": round(per_step, 3), "first_step": round(seconds[0], 3),
               "peak_gib": round(_peak_gib(device), 2), "threads": torch.get_num_threads()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=ARCHITECTURES, default="tiny")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--resolution", type=int, default=512, help="training image side (GAP-Diff: >= 512)")
    parser.add_argument("--steps", type=int, default=4, help="training steps (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "facedefense-attack-bench")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    print(f"load average: {os.getloadavg()}; cores: {os.cpu_count()}", flush=True)
    context = multiprocessing.get_context("spawn")
    model = prepared_model(context, args.arch, args.cache)
    results = []
    for method in args.methods:
        work = tempfile.mkdtemp(prefix=f"facedefense-train-bench-{method}-")
        result, exitcode = in_fresh_process(
            context, measure, method, model, args.arch, args.resolution, args.steps, args.batch_size, args.device,
            args.mixed_precision, args.gradient_checkpointing, work,
        )
        if result is None:
            print(f"{args.arch:5s} {method:9s} failed (exit {exitcode})", flush=True)
            continue
        results.append(result)
        print(f"{args.arch:5s} {method:9s} {result['seconds_per_step']:8.3f} s/step (first {result['first_step']:.2f} s)  "
              f"peak {result['peak_gib']:.2f} GiB  batch {args.batch_size}, {args.resolution}px, "
              f"mixed precision {args.mixed_precision}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
