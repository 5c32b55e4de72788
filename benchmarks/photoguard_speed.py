"""Per-step time and peak memory of PhotoGuard's encoder attack.

By default on the tiny offline model (x8 VAE, so 512x512 images give 64x64 latents like real SD);
pass ``--model`` for a real diffusers folder or Hugging Face id.

    .venv/bin/python benchmarks/photoguard_speed.py --size 512 --steps 10 --dtype float32 bfloat16
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="diffusers folder or hub id (default: a tiny model built now)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    from facedefense.testing.tiny_models import build_tiny_sd, sample_faces
    from facedefense_iterative.photoguard import PhotoGuard

    model = args.model or str(build_tiny_sd(tempfile.mkdtemp(prefix="tiny-sd-")))
    images = sample_faces(args.batch, args.size)
    rows = []
    for dtype in args.dtype:
        defender = PhotoGuard(model=model, steps=1, device=args.device, dtype=dtype, resolution=args.size)
        defender.protect(images)  # warm-up (allocations, kernels)
        defender = PhotoGuard(model=model, steps=args.steps, device=args.device, dtype=dtype, resolution=args.size)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        defender.protect(images)
        seconds = time.perf_counter() - start
        memory = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else peak_rss_gib()
        rows.append({"dtype": dtype, "size": args.size, "batch": args.batch, "steps": args.steps,
                     "seconds_per_step": seconds / args.steps, "peak_memory_gib": memory})
        print(f"{dtype:>9}  {args.size}x{args.size} batch {args.batch}: {seconds / args.steps:.3f} s/step, "
              f"peak {'GPU' if args.device.startswith('cuda') else 'RSS'} {memory:.2f} GiB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"model": model, "device": args.device, "results": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
