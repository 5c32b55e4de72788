"""Executors: run the stages that are not cached yet, in-process or as Ray tasks.

Both skip finished stages (their folder is in the cache), run a stage only after the stages it
reads, record a failing stage (its error, one line) and skip what depends on it while the rest of
the grid goes on. Failed stages are not cached: the next run tries them again.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from facedefense.benchmark.graph import Stage
from facedefense.benchmark.stages import Cache, MethodCache, run_stage

#: Outcome of a stage: {"status": "cached" | "done" | "failed" | "skipped", "error": str (failed/skipped)}
Outcome = dict[str, Any]


def _error_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _attempt(stage: Stage, root: str, methods: MethodCache, kinds: dict[str, str], upstream: Sequence[Outcome]) -> Outcome:
    broken = next((outcome for outcome in upstream if outcome["status"] in ("failed", "skipped")), None)
    if broken is not None:
        return {"status": "skipped", "error": broken["error"], "origin": broken.get("origin", "")}
    try:
        run_stage(stage, Cache(root), methods, kinds)
    except Exception as exc:  # noqa: BLE001 - one cell's failure must not stop the grid
        if os.environ.get("FACEDEFENSE_BENCHMARK_TRACEBACK"):
            traceback.print_exc(file=sys.stderr)
        return {"status": "failed", "error": _error_line(exc), "origin": stage.label}
    return {"status": "done"}


def run_local(stages: Sequence[Stage], cache: Cache, progress: Callable[[Stage, Outcome], None]) -> dict[str, Outcome]:
    """Run the stages one after another in this process (they come in dependency order)."""
    kinds = {stage.key: stage.kind for stage in stages}
    methods = MethodCache()
    outcomes: dict[str, Outcome] = {}
    for stage in stages:
        if cache.done(stage):
            outcomes[stage.key] = {"status": "cached"}
        else:
            outcomes[stage.key] = _attempt(stage, str(cache.root), methods, kinds, [outcomes[d] for d in stage.deps])
        progress(stage, outcomes[stage.key])
    return outcomes


_WORKER_METHODS: MethodCache | None = None


def _ray_stage(stage: Stage, root: str, kinds: dict[str, str], *upstream: Outcome) -> Outcome:
    """The body of a Ray task: one stage in a worker (methods stay loaded between its tasks)."""
    global _WORKER_METHODS
    if _WORKER_METHODS is None:
        _WORKER_METHODS = MethodCache()
    return _attempt(stage, root, _WORKER_METHODS, kinds, upstream)


def run_ray(
    stages: Sequence[Stage], cache: Cache, progress: Callable[[Stage, Outcome], None], *, address: str | None = None,
    num_cpus: int | None = None,
) -> dict[str, Outcome]:
    """Run each uncached stage as a Ray task asking for the GPUs it needs (``Stage.gpus``, when the
    cluster has GPUs). Workers read and write the same cache folder, which must be shared storage on
    a multi-node cluster. ``address`` None starts a local Ray instance."""
    from facedefense.errors import MissingDependencyError

    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError("--executor ray needs Ray: pip install 'facedefense[ray]'") from exc
    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False}
        if address is None:
            options["num_cpus"] = num_cpus
        ray.init(**options)
    try:
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        task = ray.remote(_ray_stage)
        kinds = {stage.key: stage.kind for stage in stages}
        kinds_ref = ray.put(kinds)
        refs: dict[str, Any] = {}
        pending: dict[Any, Stage] = {}
        outcomes: dict[str, Outcome] = {}
        for stage in stages:
            if cache.done(stage):
                outcomes[stage.key] = refs[stage.key] = {"status": "cached"}
                progress(stage, outcomes[stage.key])
                continue
            gpus = stage.gpus if has_gpus else 0
            ref = task.options(num_gpus=gpus, num_cpus=stage.threads or 1, max_retries=0, name=stage.kind).remote(
                stage, str(cache.root), kinds_ref, *[refs[d] for d in stage.deps]
            )
            refs[stage.key] = ref
            pending[ref] = stage
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                stage = pending.pop(ref)
                try:
                    outcomes[stage.key] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a worker died: record it like a failure
                    outcomes[stage.key] = {"status": "failed", "error": _error_line(exc), "origin": stage.label}
                progress(stage, outcomes[stage.key])
        return {stage.key: outcomes[stage.key] for stage in stages}
    finally:
        if started:
            ray.shutdown()
