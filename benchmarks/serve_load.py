"""Bounded loopback load on ``facedefense serve``: photos/s, latency, every answer checked.

Starts the app in this process on 127.0.0.1 (uvicorn, an ephemeral port), measures the defender's
network-only throughput (``protect`` on batches of ``--max-batch`` images, no HTTP, no PNG), then
sends ``--requests`` PNG uploads from ``--clients`` concurrent clients (a time limit bounds the
run). Every answer is checked by the client itself, after the timed load (decoding is the client's
work, and the clients share this process's cores with the service): status 200, decoded, same size,
and the largest change against the upload within the served budget. Reports served photos/s against network-only
photos/s, p50/p99 latency, the batch sizes the server formed and the process's memory before and
after the load.

Target on a CPU (RID): served photos/s at concurrency 8 >= 0.8x the network-only throughput
measured in the same run. Without ``--method`` it serves the demo network (a tiny RID with random
weights: it measures the service's overhead, not RID's network).

    .venv/bin/python benchmarks/serve_load.py --clients 8 --requests 200 --size 256
    .venv/bin/python benchmarks/serve_load.py --method rid --checkpoint ASDS-eps-8_255.bin --size 512 --device cuda
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path


def rss_mib() -> float:
    """This process's resident memory in MiB (Linux; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def photos(count: int, size: int) -> list:
    """``count`` portraits as (1, 3, size, size) tensors on the 8-bit grid (sample faces, else noise)."""
    import torch

    try:
        from facedefense.testing.tiny_models import sample_faces

        faces = sample_faces(count, size)
    except ImportError:  # scikit-image missing: random images
        faces = torch.randint(0, 256, (count, 3, size, size), generator=torch.Generator().manual_seed(0)) / 255.0
    return [face[None] for face in faces]


def encode(image) -> bytes:
    from facedefense.io import png_bytes

    return png_bytes(image)


def network_only(defender, images: list, batch: int, seconds: float) -> float:
    """Photos/s of ``defender.protect`` on batches of ``batch`` images, for about ``seconds``."""
    import torch

    stacked = torch.cat((images * batch)[:batch])
    defender.protect(stacked)  # warm-up
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < seconds:
        defender.protect(stacked)
        done += batch
    return done / (time.perf_counter() - start)


def serve_in_thread(app):  # type: ignore[no-untyped-def]
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit("error: the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def check_answer(upload, answer: bytes, eps_levels: float) -> float | None:
    """The largest change of the answer against the upload in gray levels, or None when it does not decode
    or its size differs."""
    import numpy as np
    from PIL import Image

    try:
        image = np.asarray(Image.open(io.BytesIO(answer)).convert("RGB"), dtype=np.int16)
    except OSError:
        return None
    original = (upload[0].permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
    if image.shape != original.shape:
        return None
    return float(np.abs(image - original).max())


def load(url: str, uploads: list[tuple[object, bytes]], clients: int, requests: int, limit_s: float,
         eps_levels: float, method: str) -> dict:  # fmt: skip
    import httpx

    latencies: list[float] = []
    statuses: Counter = Counter()
    answers: list[tuple[object, bytes]] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + limit_s

    def client() -> None:
        with httpx.Client(timeout=120) as session:
            for index in counter:
                if time.monotonic() > stop_at:
                    return
                original, data = uploads[index % len(uploads)]
                start = time.perf_counter()
                try:
                    response = session.post(f"{url}/v1/protect?method={method}", files={"file": (f"{index}.png", data, "image/png")})
                    status, body = response.status_code, response.content
                except httpx.HTTPError as exc:
                    status, body = type(exc).__name__, b""
                elapsed = time.perf_counter() - start
                with lock:
                    statuses[status] += 1
                    latencies.append(elapsed)
                    if status == 200:
                        answers.append((original, body))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    # Every answer is checked after the clock stops: decoding PNGs is the client's work, and the
    # clients share this process and its cores with the service they measure.
    within = sum(levels is not None and levels <= eps_levels
                 for levels in (check_answer(original, body, eps_levels) for original, body in answers))
    answered = sum(statuses.values())
    ordered = sorted(latencies)
    return {
        "sent": answered,
        "ok": statuses.get(200, 0),
        "statuses": {str(key): value for key, value in statuses.items()},
        "within_budget": within,
        "wall_s": wall,
        "photos_per_s": statuses.get(200, 0) / wall if wall else 0.0,
        "p50_ms": 1000 * statistics.median(ordered) if ordered else None,
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", help="defender to serve (default: the demo network)")
    parser.add_argument("--checkpoint", help="its weights (rid, gap_diff)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the method's)")
    parser.add_argument("--random-rid", type=int, metavar="DEPTH",
                        help="serve RID's architecture (512 px input, width 1152) with DEPTH blocks and random weights")
    parser.add_argument("--size", type=int, default=256, help="side of the square test photos in pixels")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=200, help="uploads in all")
    parser.add_argument("--time-limit", type=float, default=120.0, help="stop sending after this many seconds")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--queue-size", type=int, default=64)
    parser.add_argument("--png-level", type=int, default=6, help="zlib level of the served PNGs (0-9)")
    parser.add_argument("--baseline-s", type=float, default=5.0, help="seconds of the network-only measurement")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from facedefense.serve import Limits, create_app

    options = {key: value for key, value in (("checkpoint", args.checkpoint), ("device", args.device)) if value}
    methods = {args.method: options} if args.method else None
    if args.random_rid:
        import tempfile

        from facedefense.serve.demo import build_demo_checkpoint
        from facedefense_amortized.networks import RID_ARCHITECTURE

        folder = tempfile.mkdtemp(prefix="serve-load-")
        checkpoint = build_demo_checkpoint(folder, architecture={**RID_ARCHITECTURE, "depth": args.random_rid})
        methods = {"rid": {"checkpoint": str(checkpoint), "engine": "module", "dtype": "float32", **options}}
    limits = Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                    png_level=args.png_level)
    app = create_app(methods, limits)
    service = app.state.service
    loaded = next(iter(service.methods.values()))
    eps_levels = loaded.defender.config.eps * 255.0
    images = photos(8, args.size)
    uploads = [(image, encode(image)) for image in images]

    before = network_only(loaded.defender, images, loaded.runner.max_batch, args.baseline_s)
    server, thread, url = serve_in_thread(app)
    try:
        load(url, uploads, min(args.clients, 4), 2 * args.clients, 30, eps_levels, loaded.name)  # warm-up
        loaded.batches.clear()
        memory_before = rss_mib()
        served = load(url, uploads, args.clients, args.requests, args.time_limit, eps_levels, loaded.name)
        memory_after = rss_mib()
        batches = list(loaded.batches.elements())
        # The same load again: the memory it adds shows whether anything accumulates per request.
        again = load(url, uploads, args.clients, args.requests, args.time_limit, eps_levels, loaded.name)
        memory_again = rss_mib()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    after = network_only(loaded.defender, images, loaded.runner.max_batch, args.baseline_s)
    service.close()
    # The faster of the two network-only measurements (before and after the load): a busy machine
    # slows one of them down, and the ratio must not flatter the service.
    baseline = max(before, after)
    figures = {
        "method": loaded.name, "demo": loaded.demo, "size": args.size, "clients": args.clients,
        "requests": args.requests, "max_batch": loaded.runner.max_batch, "network_only_photos_per_s": baseline,
        **served, "ratio": served["photos_per_s"] / baseline if baseline else None,
        "mean_batch": statistics.mean(batches) if batches else None, "rss_before_mib": memory_before,
        "rss_after_mib": memory_after, "rss_after_second_load_mib": memory_again,
        "network_only_before_after": [before, after], "second_load": again,
    }  # fmt: skip
    print(f"method {loaded.name}{' (demo network)' if loaded.demo else ''}, {args.size}x{args.size} PNG, "
          f"{args.clients} clients, max batch {loaded.runner.max_batch}")  # fmt: skip
    print(f"network only        {baseline:8.1f} photos/s   (before the load {before:.1f}, after {after:.1f})")
    print(f"served              {served['photos_per_s']:8.1f} photos/s   ({figures['ratio']:.2f}x network only)")
    print(f"latency             p50 {served['p50_ms']:.0f} ms   p99 {served['p99_ms']:.0f} ms")
    print(f"answered            {served['sent']} of {args.requests} sent ({served['statuses']}), "
          f"{served['within_budget']} checked within {eps_levels:g}/255")  # fmt: skip
    print(f"batch sizes         mean {figures['mean_batch'] or 0:.2f}  ({Counter(batches).most_common(4)})")
    print(f"memory              {memory_before:.0f} MiB before, {memory_after:.0f} MiB after the load, "
          f"{memory_again:.0f} MiB after the same load again ({again['ok']} answered)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    complete = all(run["ok"] == run["sent"] == run["within_budget"] and run["sent"] > 0 for run in (served, again))
    print("every request answered and within budget:", "yes" if complete else "NO")
    sys.exit(0 if complete else 1)


if __name__ == "__main__":
    main()
