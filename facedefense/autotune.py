"""``--dtype auto`` that measures: pick a method's fastest numeric path on this machine, once.

Which precision is fastest on a CPU is not something its flags tell reliably: on an AMD EPYC with
AVX-512 BF16 and VNNI but no AMX, bf16 products through oneDNN run 2x faster than fp32 and int8
3-4x, while eager bf16 matrix products (which reorder their weights at every call) run slower than
fp32. So a method that has several paths (RID: fp32, bf16 or int8 linears; GAP-Diff: fp32 or bf16
convolutions) times each on a small representative problem the first time it runs on a machine
(at most ``budget_s`` seconds, 2 by default) and caches the winner per machine (CPU model and
flags), torch version, thread count, method and problem, in ``autotune.json`` of facedefense's
cache folder ([`cache_dir`][facedefense.io.cache_dir]: ``$FACEDEFENSE_CACHE``, e.g. ``~/.cache/facedefense``).
Later runs read the cache and measure nothing. ``facedefense info --hardware`` shows the choices
and their timings. An explicit ``--dtype`` never consults this module.

``FACEDEFENSE_AUTOTUNE=0`` turns measuring off (the method's first candidate, its flag-based
guess, is used). Tests inject the measurement with [`use_measurement`][facedefense.autotune.use_measurement]
so that nothing in them depends on timing.

Examples:
    >>> from facedefense import autotune
    >>> with autotune.use_measurement(lambda probes: {"float32": 2.0, "bfloat16": 1.0}):
    ...     choice = autotune.choose("demo", ["float32", "bfloat16"], lambda: {}, problem={"side": 8}, cache=False)
    >>> choice.name
    'bfloat16'
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Flags shown by ``facedefense info --hardware`` (they explain, they do not decide).
NOTABLE_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
CACHE_FILE = "autotune.json"

Probes = Mapping[str, Callable[[], object]]
Measurement = Callable[[Probes], Mapping[str, float]]


@dataclass(frozen=True)
class Choice:
    """The path a method runs, and why.

    Attributes:
        name: the chosen candidate.
        seconds: best measured seconds per probe call, by candidate (empty when not measured).
        reason: one line for people (``"measured: bfloat16 0.05 s < float32 0.11 s"``).
        cached: True when read from the cache (nothing measured in this process).
        probe_seconds: wall-clock seconds this process spent building and timing the probes.
    """

    name: str
    seconds: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    cached: bool = False
    probe_seconds: float = 0.0


def cache_dir() -> Path:
    """facedefense's cache folder, [`facedefense.io.cache_dir`][facedefense.io.cache_dir]
    (``$FACEDEFENSE_CACHE``)."""
    from facedefense.io import cache_dir as user_cache_dir

    return user_cache_dir()


def cache_path() -> Path:
    return cache_dir() / CACHE_FILE


@functools.cache
def cpu_info() -> dict[str, Any]:
    """CPU model name and its flags (from /proc/cpuinfo on Linux; the platform's name elsewhere)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = sorted(set(value.split()))
    return {"model": model, "flags": flags}


def machine_key(device: str = "cpu") -> dict[str, Any]:
    """What a measured choice depends on besides the method: CPU model and flags, torch, threads."""
    import torch

    info = cpu_info()
    key = {
        "cpu": info["model"],
        "flags": hashlib.sha256(" ".join(info["flags"]).encode()).hexdigest()[:12],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        key["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return key


def _entry_key(method: str, problem: Mapping[str, Any], names: Sequence[str], machine: Mapping[str, Any]) -> str:
    text = json.dumps({"method": method, "problem": problem, "names": list(names), **machine}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_cache() -> dict[str, dict[str, Any]]:
    """All cached choices (an unreadable cache counts as empty: it is only a cache)."""
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(entries: dict[str, dict[str, Any]]) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError:  # a read-only home must not stop protection; we measure again next time
        pass


def time_probes(probes: Probes, budget_s: float = 2.0, keep_within: float = 1.25) -> dict[str, float]:
    """Best seconds per call of each probe: one warm-up call each, then rounds that visit every
    probe in turn (interleaved, so a load change hits all alike) until ``budget_s`` seconds have
    passed since the start (at least two timed rounds). From the second round on, a probe whose
    best is slower than ``keep_within`` times the leader's is out (it keeps its time): the budget
    goes to telling the close ones apart, and one disturbed call cannot put the winner out."""
    deadline = time.perf_counter() + budget_s
    for probe in probes.values():
        probe()
    best = dict.fromkeys(probes, float("inf"))
    running, rounds = dict(probes), 0
    while True:
        for name, probe in running.items():
            start = time.perf_counter()
            probe()
            best[name] = min(best[name], time.perf_counter() - start)
        rounds += 1
        if rounds < 2:
            continue
        if time.perf_counter() >= deadline:
            return best
        leader = min(best.values())
        running = {name: probe for name, probe in running.items() if best[name] <= keep_within * leader}


_measurement: Measurement | None = None


@contextlib.contextmanager
def use_measurement(measure: Measurement) -> Iterator[None]:
    """Replace the timing of probes (tests: a fixed ``{name: seconds}``, nothing timed)."""
    global _measurement
    previous, _measurement = _measurement, measure
    try:
        yield
    finally:
        _measurement = previous


def choose(
    method: str,
    names: Sequence[str],
    build_probes: Callable[[], Probes],
    *,
    problem: Mapping[str, Any],
    device: str = "cpu",
    budget_s: float = 2.0,
    cache: bool = True,
) -> Choice:
    """The fastest of ``names`` for ``method`` on this machine: cached, else measured and cached.

    Args:
        method: the method's registry name.
        names: candidate paths, the preferred guess first (used when measuring is off).
        build_probes: builds ``{name: callable}``, each running one representative call of that
            path (called only when measuring).
        problem: what the probe's cost depends on (architecture, size): part of the cache key.
        device: ``"cpu"`` or ``"cuda:N"`` (part of the key).
        budget_s: seconds the measurement may take after the warm-up calls.
        cache: read and write the user's cache (False: always measure, store nothing).
    """
    names = list(names)
    if len(names) == 1:
        return Choice(names[0], reason="only candidate")
    if os.environ.get("FACEDEFENSE_AUTOTUNE", "1").lower() in ("0", "off", "false", "no"):
        return Choice(names[0], reason="FACEDEFENSE_AUTOTUNE=0: not measured, the default guess")
    machine = machine_key(device)
    key = _entry_key(method, problem, names, machine)
    if cache and (entry := read_cache().get(key)) and entry.get("choice") in names:
        return Choice(entry["choice"], dict(entry.get("seconds", {})), entry.get("reason", ""), cached=True)
    start = time.perf_counter()
    probes = build_probes()
    seconds = dict((_measurement or functools.partial(time_probes, budget_s=budget_s))(probes))
    spent = time.perf_counter() - start
    ranked = sorted((s, n) for n, s in seconds.items() if n in names)
    if not ranked:
        return Choice(names[0], reason="no candidate could be measured: the default guess")
    best = ranked[0][1]
    reason = "measured: " + " < ".join(f"{name} {value:.3g} s" for value, name in ranked)
    choice = Choice(best, {n: float(s) for n, s in seconds.items()}, reason, probe_seconds=spent)
    if cache:
        entries = read_cache()
        entries[key] = {
            "method": method,
            "problem": dict(problem),
            "choice": best,
            "seconds": choice.seconds,
            "reason": reason,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **machine,
        }
        _write_cache(entries)
    return choice


def hardware_report() -> list[str]:
    """Lines for ``facedefense info --hardware``: this machine and the choices cached for it."""
    import torch

    info = cpu_info()
    notable = [flag for flag in NOTABLE_FLAGS if flag in info["flags"]]
    machine = machine_key("cpu")
    lines = [
        f"cpu: {info['model']} ({os.cpu_count()} logical cores, torch uses {machine['threads']} threads)",
        f"notable cpu flags: {', '.join(notable) or 'none'} (hints only: auto measures)",
        f"torch {torch.__version__}; oneDNN {'available' if torch.backends.mkldnn.is_available() else 'absent'}; "
        f"cuda {'available: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'absent'}",
        f"autotune cache: {cache_path()}"
        + (" (measuring off: FACEDEFENSE_AUTOTUNE=0)" if os.environ.get("FACEDEFENSE_AUTOTUNE") in ("0", "off") else ""),
    ]
    same = {k: machine[k] for k in ("cpu", "flags", "torch")}
    entries = [e for e in read_cache().values() if all(e.get(k) == v for k, v in same.items())]
    if not entries:
        lines.append("no measured choices yet for this machine (the first --dtype auto run of a method measures)")
    for entry in sorted(entries, key=lambda e: (e.get("method", ""), json.dumps(e.get("problem", {})))):
        problem = ", ".join(f"{k}={v}" for k, v in entry.get("problem", {}).items())
        lines.append(
            f"{entry.get('method')} [{problem}; {entry.get('device', 'cpu')}, {entry.get('threads')} threads]: "
            f"{entry.get('choice')} ({entry.get('reason', '')}; {entry.get('measured_at', '')})"
        )
    return lines


__all__ = ["Choice", "cache_dir", "cache_path", "choose", "hardware_report", "machine_key", "time_probes", "use_measurement"]
