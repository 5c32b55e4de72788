"""Start-up time of ``facedefense list --json`` against ``python -c "import torch"``.

Target: listing is faster than importing torch (it must import no torch-heavy module).

    .venv/bin/python benchmarks/cli_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def best_time(command: list[str], repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cli = shutil.which("facedefense", path=str(Path(sys.executable).parent)) or "facedefense"
    rows = {
        "facedefense list --json": [cli, "list", "--json"],
        "facedefense --help": [cli, "--help"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
    }
    results = {name: best_time(command, args.repeats) for name, command in rows.items()}
    for name, (best, median) in results.items():
        print(f"{name:<28} best {best:6.3f} s   median {median:6.3f} s")
    ok = results["facedefense list --json"][1] < results['python -c "import torch"'][1]
    print("target (list faster than importing torch):", "met" if ok else "MISSED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
