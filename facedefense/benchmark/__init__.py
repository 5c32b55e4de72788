"""``facedefense benchmark``: protect -> purify -> attack -> evaluate over a grid, cached and resumable.

See ``docs/benchmark.md``. The config ([`load_config`][facedefense.benchmark.config.load_config]) names
identities, defenders, purifier chains, attacks, metrics, seeds and a protocol profile;
[`run_benchmark`][facedefense.benchmark.runner.run_benchmark] plans the grid as a graph of cached stages and
runs what is missing, in-process or on Ray.
"""

from facedefense.benchmark.config import BenchmarkConfig, load_config
from facedefense.benchmark.protocols import PROFILES, Protocol
from facedefense.benchmark.runner import run_benchmark

__all__ = ["PROFILES", "BenchmarkConfig", "Protocol", "load_config", "run_benchmark"]
