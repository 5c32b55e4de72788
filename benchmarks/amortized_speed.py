"""Photos per second and peak memory of the amortized defenders (RID, GAP-Diff) at 512x512.

Compares facedefense's path (``Defender.protect``: batching, bf16 on GPUs and AMX CPUs, int8 linears
for RID on other CPUs, channels-last convolutions) with a plain fp32 eager forward of the same
network. Full-size architectures with random weights (they time like trained ones). Each
measurement runs in its own process so peak memory is its own.

    .venv/bin/python benchmarks/amortized_speed.py --methods rid gap_diff --batch 1 4 --json results.json

Targets (issue 3): RID <= 0.5 s/photo and GAP-Diff <= 0.2 s/photo on the CPU; RID >= 100 photos/s
on a GPU in bf16 with batching.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

TARGETS_CPU = {"rid": 0.5, "gap_diff": 0.2}


def _checkpoint(method: str, folder: Path) -> Path:
    import torch

    from facedefense_amortized.checkpoints import save_checkpoint
    from facedefense_amortized.networks import RID_ARCHITECTURE, GAPGenerator, PerturbationDiT

    path = folder / f"{method}-random.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        if method == "rid":
            network, architecture, eps = PerturbationDiT(), RID_ARCHITECTURE, 6 / 255
            for parameter in network.parameters():  # DiT init zeroes the output layer: give it signal
                parameter.data.normal_(0, 0.02)
        else:
            network, architecture, eps = GAPGenerator(), {}, 8 / 255
        save_checkpoint(network, path, method=method, eps=eps, architecture=architecture)
    return path


def _measure(method: str, mode: str, batch: int, device: str, checkpoint: str, repeats: int, queue) -> None:
    import torch

    from facedefense.imaging import to_vae_range
    from facedefense.testing.tiny_models import sample_faces

    images = sample_faces(batch, 512).to(device)
    if mode == "plain-fp32":
        from facedefense_amortized.checkpoints import read_state_dict
        from facedefense_amortized.networks import GAPGenerator, PerturbationDiT

        network = PerturbationDiT() if method == "rid" else GAPGenerator()
        network.load_state_dict(read_state_dict(checkpoint))
        network = network.eval().to(device)

        def run():
            with torch.no_grad():
                return network(to_vae_range(images))
    else:
        from facedefense.registry import get_registry

        defender = get_registry().load("defender", method)(checkpoint=checkpoint, device=device, dtype=mode)

        def run():
            return defender.protect(images)

    run()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    queue.put({"seconds_per_photo": min(times) / batch, "peak_memory_gib": memory})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["rid", "gap_diff"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=["plain-fp32", "auto"], help="plain-fp32 and/or a --dtype value")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "facedefense-bench"))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    from facedefense.runtime import cpu_has_fast_bf16

    folder = Path(args.cache)
    folder.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    rows = []
    print(f"device {args.device}; CPU bf16 matrix units (AMX): {cpu_has_fast_bf16()}")
    for method in args.methods:
        checkpoint = str(_checkpoint(method, folder))
        for mode in args.modes:
            for batch in args.batch:
                queue = context.Queue()
                process = context.Process(
                    target=_measure, args=(method, mode, batch, args.device, checkpoint, args.repeats, queue)
                )
                process.start()
                result = queue.get()
                process.join()
                row = {"method": method, "mode": mode, "batch": batch, "device": args.device, **result}
                row["photos_per_second"] = 1.0 / row["seconds_per_photo"]
                rows.append(row)
                target = TARGETS_CPU.get(method) if args.device == "cpu" and mode != "plain-fp32" else None
                verdict = "" if target is None else ("  target met" if row["seconds_per_photo"] <= target else f"  target {target} s MISSED")
                print(f"{method:>8} {mode:>10} batch {batch}: {row['seconds_per_photo']:.3f} s/photo "
                      f"({row['photos_per_second']:.2f} photos/s), peak {row['peak_memory_gib']:.2f} GiB{verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
