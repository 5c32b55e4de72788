"""RID and GAP-Diff at 512x512: every way to run them, side by side, in ONE interleaved run.

Paths per method (random weights of the real architecture; they time like trained ones):

- ``reference fp32``: the network as the reference inference scripts run it (PyTorch eager, fp32);
- ``reference bf16 autocast``: the same under ``torch.autocast(dtype=torch.bfloat16)``;
- ``onnxruntime fp32`` and ``onnxruntime int8``: the network exported by ``facedefense export``
  (done here), and ONNX Runtime's dynamic int8 quantization of that file;
- every facedefense path (``Defender.protect``, the whole protection including rounding to the
  uint8 grid): RID ``engine=float32|bfloat16|int8|int8+bf16|module`` and ``--dtype auto``;
  GAP-Diff ``engine=float32|bfloat16|int8|int8+bf16`` (folded networks) and ``--dtype auto``.

Each path is called once to warm up, then the paths take turns (round-robin) for ``--rounds``
rounds, so a change of load on a shared machine hits them all alike; the table gives the best
time per photo, its ratio to ``reference fp32`` (and to ONNX Runtime int8 for RID, to the bf16
autocast reference for GAP-Diff: the issue's targets), and the largest difference of the protected
image from ``reference fp32``'s in gray levels. ``--dtype auto``'s first construction (which
measures, with an empty cache), its second construction (cached) and a first construction naming
the engine it chose are timed too, first thing, each in a fresh process as a user's first run pays
them: ``probe adds s`` is what measuring adds to a first run. The rows' ``--dtype auto`` reads the
choice measured there.

Memory: holding every path of the full-size RID at once takes about 6 GiB; ``--rid-depth`` runs a
shallower DiT (same width, tokens and heads: every block costs the same, so the ratios hold).

    PYTHONPATH=.:plugins .venv/bin/python benchmarks/amortized_speed.py --rid-depth 14 --rounds 3

On a GPU (``--device cuda``) the rows are the reference network in fp32 and under bf16 autocast and
facedefense's ``--dtype auto`` (bf16) and ``--dtype float32`` (RID: also ``engine=module``, its
PyTorch module in bf16), with photos per second; batch them:

    PYTHONPATH=.:plugins .venv/bin/python benchmarks/amortized_speed.py --device cuda --batch 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def _random_checkpoint(method: str, folder: Path, rid_depth: int) -> Path:
    import torch

    from facedefense.checkpoints import save_checkpoint
    from facedefense_amortized.networks import RID_ARCHITECTURE, GAPGenerator, PerturbationDiT

    path = folder / f"{method}-random-{rid_depth}.safetensors"
    if path.exists():
        return path
    torch.manual_seed(0)
    if method == "rid":
        architecture = {**RID_ARCHITECTURE, "depth": rid_depth}
        network, eps = PerturbationDiT(**architecture), 6 / 255
        for parameter in network.parameters():  # DiT init zeroes the output layer: give it signal
            parameter.data.normal_(0, 0.02)
    else:
        architecture, network, eps = {}, GAPGenerator(), 8 / 255
        for module in network.modules():  # non-trivial batch-norm statistics
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return save_checkpoint(network, path, method=method, eps=eps, architecture=architecture)


def _reference_paths(method: str, checkpoint: Path, images, device: str = "cpu"):
    """The defender class, ``protected(network output) -> images`` (the reference's last step), and
    the reference network run as its inference script runs it, in fp32 and under bf16 autocast, on
    ``device``: ``{name: callable() -> protected images}``."""
    import torch

    from facedefense.imaging import to_vae_range
    from facedefense.registry import get_registry

    Defender = get_registry().load("defender", method)
    loaded = Defender.load_trained(str(checkpoint))
    network, eps = loaded.network.eval().to(device), loaded.eps
    kind = torch.device(device).type

    def protected(output):
        delta = eps * (torch.tanh(output.float()) if method == "rid" else output.float())
        return (images + delta).clamp(0, 1)

    def reference():
        with torch.inference_mode():
            return protected(network(to_vae_range(images)))

    def autocast():
        with torch.inference_mode(), torch.autocast(kind, dtype=torch.bfloat16):
            return protected(network(to_vae_range(images)))

    return Defender, protected, {"reference fp32": reference, "reference bf16 autocast": autocast}


def _paths(method: str, checkpoint: Path, folder: Path, images, threads: int) -> tuple[dict, dict]:
    """``{name: callable(images) -> protected images}`` and notes (probe times, chosen paths)."""
    from facedefense.imaging import to_vae_range
    from facedefense_amortized.onnx_io import OnnxEngine

    Defender, protected, paths = _reference_paths(method, checkpoint, images)
    onnx_fp32 = folder / f"{checkpoint.stem}.onnx"
    if not onnx_fp32.exists():
        Defender.export_onnx(str(checkpoint), onnx_fp32)
    onnx_int8 = folder / f"{checkpoint.stem}-int8.onnx"
    if not onnx_int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(onnx_fp32), str(onnx_int8), weight_type=QuantType.QInt8)
    for name, file in (("onnxruntime fp32", onnx_fp32), ("onnxruntime int8", onnx_int8)):
        engine = OnnxEngine(file, method=method, threads=threads)
        paths[name] = lambda engine=engine: protected(engine(to_vae_range(images)))

    notes = {}
    auto = Defender(checkpoint=str(checkpoint), device="cpu")  # reads the choice measured by main()
    notes["auto chose"] = f"{auto.path} ({auto.choice.reason if auto.choice else 'not measured'})"
    if method == "rid":
        from facedefense_amortized.networks.dit import engine_paths

        defenders = {f"facedefense engine={p}": {"engine": p} for p in engine_paths()}
        defenders["facedefense engine=module fp32"] = {"engine": "module", "dtype": "float32"}
    else:
        from facedefense_amortized.networks.gap_generator import folded_precisions

        engines = folded_precisions()
        defenders = {f"facedefense engine={e} (folded)": {"engine": e} for e in engines}
    for name, options in defenders.items():
        defender = Defender(checkpoint=str(checkpoint), device="cpu", **options)
        paths[name] = lambda d=defender: d.protect(images).images
    paths[f"facedefense --dtype auto ({auto.path})"] = lambda: auto.protect(images).images
    return paths, notes


def _first_run_costs(method: str, checkpoint: Path, cache: str, threads: int) -> dict:
    """What measuring costs a user's first run, each in a fresh process: ``--dtype auto`` with an
    empty cache, then again (cached), against a first run that names the chosen engine; and the
    probe's own seconds. The best of two of each (process starts are noisy); the choice measured
    is added to ``cache``'s ``autotune.json``."""
    import subprocess
    import sys

    def run(private: str, *engine: str) -> dict:
        command = [sys.executable, __file__, "--first-run", method, str(checkpoint), *engine, "--threads", str(threads)]
        env = {**os.environ, "FACEDEFENSE_CACHE_DIR": private}
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])

    privates = [tempfile.mkdtemp(prefix="facedefense-first-run-") for _ in range(2)]
    autos = [run(private) for private in privates]
    best = min(range(2), key=lambda index: autos[index]["first construction s"])
    auto = autos[best]
    engine = auto.pop("engine")
    named = min(run(tempfile.mkdtemp(prefix="facedefense-first-run-"), engine)["first construction s"] for _ in range(2))
    shared = Path(cache) / "autotune.json"
    entries = json.loads(shared.read_text()) if shared.exists() else {}
    entries.update(json.loads((Path(privates[best]) / "autotune.json").read_text()))
    shared.write_text(json.dumps(entries, indent=2))
    return {**auto, "named engine first construction s": named, "probe adds s": auto["first construction s"] - named}


def _first_run(method: str, checkpoint: str, engine: str | None = None) -> None:
    """Print (JSON) the seconds of a first construction of ``method`` (``--dtype auto``, or
    ``engine``) and, for auto, of a second one and of its probe, and the engine it chose."""
    from facedefense.registry import get_registry

    Defender = get_registry().load("defender", method)
    options = {"engine": engine} if engine else {}
    start = time.perf_counter()
    first = Defender(checkpoint=checkpoint, device="cpu", **options)
    facts = {"first construction s": time.perf_counter() - start}
    if not engine:
        start = time.perf_counter()
        Defender(checkpoint=checkpoint, device="cpu")
        facts["cached construction s"] = time.perf_counter() - start
        facts["probe s"] = first.choice.probe_seconds if first.choice else 0.0
        facts["engine"] = first.choice.name if first.choice else "auto"  # nothing measured: compare with itself
    print(json.dumps(facts))


def _gpu_paths(method: str, checkpoint: Path, images, device: str) -> tuple[dict, dict]:
    """The GPU rows: the reference network in fp32 and under bf16 autocast, and facedefense's
    ``--dtype auto`` (bf16 where supported) and ``--dtype float32`` (RID: also its module in bf16,
    ``engine=module``), on ``device``."""
    import torch

    images = images.to(device)
    Defender, _, paths = _reference_paths(method, checkpoint, images, device)
    options = [{"dtype": "auto"}, {"dtype": "float32"}] + ([{"dtype": "auto", "engine": "module"}] if method == "rid" else [])
    for option in options:
        defender = Defender(checkpoint=str(checkpoint), device=device, **option)
        name = " ".join(f"--{key} {value}" if key == "dtype" else f"{key}={value}" for key, value in option.items())
        paths[f"facedefense {name} ({defender.path})"] = lambda d=defender: d.protect(images).images
    return paths, {"device": torch.cuda.get_device_name(device)}


def _cpu_line() -> str:
    from facedefense.autotune import NOTABLE_FLAGS, cpu_info

    info = cpu_info()
    flags = ", ".join(f for f in NOTABLE_FLAGS if f in info["flags"]) or "none"
    return f"{info['model']} ({os.cpu_count()} logical cores; {flags})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["rid", "gap_diff"], choices=["rid", "gap_diff"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="timed round-robin rounds after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rid-depth", type=int, default=14, help="DiT blocks (14 = the released network)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "facedefense-bench"))
    parser.add_argument("--device", default="cpu", help="cpu, or cuda[:N]: the reference and the module paths on a GPU")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--first-run", nargs="+", metavar="METHOD CHECKPOINT [ENGINE]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_run:
        import torch

        torch.set_num_threads(args.threads)
        return _first_run(*args.first_run)

    import onnxruntime
    import torch

    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch has no CUDA device")

    from facedefense.testing.tiny_models import sample_faces

    torch.set_num_threads(args.threads)
    folder = Path(args.cache)
    folder.mkdir(parents=True, exist_ok=True)
    images = torch.round(sample_faces(args.batch, 512).clamp(0, 1) * 255) / 255
    load = os.getloadavg()[0]
    print(f"cpu: {_cpu_line()}" + (f"; gpu: {torch.cuda.get_device_name(args.device)}" if gpu else ""))
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, batch {args.batch}, "
          f"512x512, RID depth {args.rid_depth}/14; load average at start {load:.2f}")
    results = {}
    first_runs = {}
    if not gpu:  # the probe's cost as a user's first run pays it: a fresh process, an empty cache
        cache = tempfile.mkdtemp(prefix="facedefense-bench-cache-")
        for method in args.methods:
            checkpoint = _random_checkpoint(method, folder, args.rid_depth)
            first_runs[method] = _first_run_costs(method, checkpoint, cache, args.threads)
        os.environ["FACEDEFENSE_CACHE_DIR"] = cache  # the choices just measured
    for method in args.methods:
        checkpoint = _random_checkpoint(method, folder, args.rid_depth)
        if gpu:
            paths, notes = _gpu_paths(method, checkpoint, images, args.device)
        else:
            paths, notes = _paths(method, checkpoint, folder, images, args.threads)
            notes = {**first_runs[method], **notes}
        outputs = {name: run().cpu() for name, run in paths.items()}  # warm-up, and the images compared
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, run in paths.items():
                if gpu:
                    torch.cuda.synchronize(args.device)
                start = time.perf_counter()
                run()
                if gpu:
                    torch.cuda.synchronize(args.device)
                times[name].append((time.perf_counter() - start) / args.batch)
        base = min(times["reference fp32"])
        second = "onnxruntime int8" if method == "rid" and not gpu else "reference bf16 autocast"
        rows = []
        for name in paths:
            best = min(times[name])
            gray = (outputs[name].float() - outputs["reference fp32"].float()).abs().max().item() * 255
            rows.append({"path": name, "s_per_photo": best, "photos_per_s": 1 / best, "median": statistics.median(times[name]),
                         "vs_reference_fp32": best / base, f"vs_{second}": best / min(times[second]), "max_gray": gray})
        results[method] = {"rows": rows, "notes": notes}
        print(f"\n{method}: {'; '.join(f'{k}: {v:.2f}' if isinstance(v, float) else f'{k}: {v}' for k, v in notes.items())}")
        print(f"| path | s/photo (best) | photos/s | median | x reference fp32 | x {second} | max gray levels vs reference fp32 |")
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['path']} | {row['s_per_photo']:.4f} | {row['photos_per_s']:.1f} | {row['median']:.4f} | "
                  f"{row['vs_reference_fp32']:.2f} | {row[f'vs_{second}']:.2f} | {row['max_gray']:.2f} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        meta = {"cpu": _cpu_line(), "device": args.device, "batch": args.batch, "torch": torch.__version__,
                "threads": args.threads, "rid_depth": args.rid_depth}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
