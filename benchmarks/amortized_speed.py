"""Photos per second and peak memory of the amortized defenders (RID, GAP-Diff) at 512x512.

Compares facedefense's path (``Defender.protect`` with ``--dtype`` MODE: batching, bf16 on GPUs
and AMX CPUs, oneDNN int8 linears for RID and folded, prepacked convolutions for GAP-Diff on other
CPUs) with a plain fp32 eager forward of the same network (``plain-fp32``: the module, no
``protect``). Full-size architectures with random weights (they time like trained ones). Each
measurement runs in its own process, so its peak memory is its own; the time is the best of
``--repeats`` calls after one warm-up call, divided by the batch size.

When ``float32`` is among the modes, every other facedefense mode's protected images are compared
with it: ``max_gray`` is the largest difference in gray levels (target: at most 2).

    .venv/bin/python benchmarks/amortized_speed.py --methods rid gap_diff --batch 1 4 --json results.json

Targets (issue 3): RID <= 0.5 s/photo and GAP-Diff <= 0.2 s/photo on the CPU, outputs within 2
gray levels of fp32. The machine must be otherwise idle: the load average is printed first.
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

TARGETS_CPU = {"rid": 0.5, "gap_diff": 0.2}


def _checkpoint(method: str, folder: Path) -> Path:
    import torch

    from facedefense.checkpoints import save_checkpoint
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
            for module in network.modules():  # non-trivial batch-norm statistics
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
        save_checkpoint(network, path, method=method, eps=eps, architecture=architecture)
    return path


def _peak_rss_gib() -> float:
    """This process's peak resident memory. ``VmHWM`` where Linux has it: ``ru_maxrss`` survives
    ``exec``, so a spawned child would report its parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _measure(method: str, mode: str, batch: int, device: str, checkpoint: str, repeats: int, output: str, queue) -> None:
    import torch

    from facedefense.imaging import to_vae_range
    from facedefense.testing.tiny_models import sample_faces

    images = (torch.round(sample_faces(batch, 512).clamp(0, 1) * 255) / 255).to(device)
    start = time.perf_counter()
    if mode == "plain-fp32":
        from facedefense.checkpoints import read_state_dict
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
            return defender.protect(images).images

    load_seconds = time.perf_counter() - start
    result = run()  # warm-up
    if mode != "plain-fp32":
        torch.save((result * 255).round().to(torch.uint8).cpu(), output)
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
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else _peak_rss_gib()
    queue.put({"seconds_per_photo": min(times) / batch, "peak_memory_gib": memory, "load_seconds": load_seconds})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["rid", "gap_diff"], choices=["rid", "gap_diff"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument(
        "--modes", nargs="+", default=["plain-fp32", "float32", "auto"], help="plain-fp32 and/or --dtype values"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "facedefense-bench"))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    from facedefense.runtime import cpu_has_fast_bf16

    folder = Path(args.cache)
    folder.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    rows = []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device {args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"AMX-BF16: {cpu_has_fast_bf16()}; load average {load:.2f} (should be ~0)"
    )
    header = f"{'method':>8} {'mode':>10} {'batch':>5} {'s/photo':>8} {'photos/s':>8} {'peak GiB':>8} {'load s':>6} {'max_gray':>8}"
    print(header)
    for method in args.methods:
        checkpoint = str(_checkpoint(method, folder))
        for batch in args.batch:
            outputs = {}
            for mode in args.modes:
                output = str(folder / f"{method}-{mode}-{batch}.pt")
                queue = context.Queue()
                process = context.Process(
                    target=_measure,
                    args=(method, mode, batch, args.device, checkpoint, args.repeats, output, queue),
                )
                process.start()
                result = queue.get()
                process.join()
                if mode != "plain-fp32":
                    outputs[mode] = torch.load(output)
                row = {"method": method, "mode": mode, "batch": batch, "device": args.device, **result}
                row["photos_per_second"] = 1.0 / row["seconds_per_photo"]
                rows.append(row)
            for row in rows[-len(args.modes) :]:
                if "float32" in outputs and row["mode"] in outputs and row["mode"] != "float32":
                    difference = outputs[row["mode"]].int() - outputs["float32"].int()
                    row["max_gray"] = int(difference.abs().max())
                target = TARGETS_CPU.get(method) if args.device == "cpu" and row["mode"] != "plain-fp32" else None
                verdict = "" if target is None else ("  met" if row["seconds_per_photo"] <= target else f"  > {target} s")
                gray = str(row.get("max_gray", "-"))
                print(
                    f"{method:>8} {row['mode']:>10} {batch:>5} {row['seconds_per_photo']:>8.3f} "
                    f"{row['photos_per_second']:>8.2f} {row['peak_memory_gib']:>8.2f} {row['load_seconds']:>6.1f} "
                    f"{gray:>8}{verdict}"
                )
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "amx_bf16": cpu_has_fast_bf16()}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
