"""``run_benchmark``: plan the grid, run what is not cached, write results, report and examples."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from facedefense.benchmark.config import load_config
from facedefense.benchmark.executors import run_local, run_ray
from facedefense.benchmark.graph import Stage, plan
from facedefense.benchmark.report import (
    _write_text,
    collect_rows,
    render_report,
    write_examples,
    write_results,
)
from facedefense.benchmark.stages import Cache
from facedefense.errors import ConfigError

EXECUTORS = ("local", "ray")


def run_benchmark(
    config_path: str | Path,
    output: str | Path | None = None,
    *,
    executor: str = "local",
    address: str | None = None,
    cache: str | Path | None = None,
    progress: bool = False,
    num_cpus: int | None = None,
) -> dict[str, Any]:
    """Run a benchmark config end to end.

    Args:
        config_path: the YAML config.
        output: folder for ``results.jsonl``, ``report.md``, ``examples.png`` and (by default) the
            stage cache. Default ``benchmark-output/<config name>``.
        executor: ``"local"`` (in this process) or ``"ray"`` (each stage a Ray task).
        address: Ray cluster address (``auto``, ``ray://host:10001``); None starts a local instance.
        cache: stage cache folder (default ``OUTPUT/cache``); several outputs may share one.
        progress: show a progress bar over the whole grid.
        num_cpus: CPUs of a local Ray instance (default: all).

    Returns:
        A summary: output paths, stage counts (computed, cached, failed, skipped), cells, seconds.

    Example:
        >>> summary = run_benchmark("benchmarks/configs/tiny.yaml", "out/tiny")
        >>> print(open("out/tiny/report.md").read())
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}'; expected one of {', '.join(EXECUTORS)}")
    started = time.perf_counter()
    config = load_config(config_path)
    output = Path(output) if output is not None else Path("benchmark-output") / config.path.stem
    output.mkdir(parents=True, exist_ok=True)
    store = Cache(cache if cache is not None else output / "cache")
    store.root.mkdir(parents=True, exist_ok=True)
    store.clean_temporary()
    stages, cells, methods = plan(config)
    counts: Counter[str] = Counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(stages), desc="benchmark", unit="stage", dynamic_ncols=True)

    def report(stage: Stage, outcome: dict[str, Any]) -> None:
        counts[outcome["status"]] += 1
        if bar is not None:
            bar.set_postfix_str(f"{counts['done']} run, {counts['cached']} cached, {counts['failed']} failed | {stage.label}"[:100])
            bar.update(1)

    try:
        if executor == "ray":
            outcomes = run_ray(stages, store, report, address=address, num_cpus=num_cpus)
        else:
            outcomes = run_local(stages, store, report)
    finally:
        if bar is not None:
            bar.close()
    summary = {
        "config": str(config.path), "output": str(output), "cache": str(store.root), "executor": executor,
        "stages": len(stages), "computed": counts["done"], "cached": counts["cached"],
        "failed": counts["failed"], "skipped": counts["skipped"], "cells": len(cells),
        "failures": [
            {"stage": stage.label, "error": outcomes[stage.key]["error"]} for stage in stages if outcomes[stage.key]["status"] == "failed"
        ],
    }
    rows = collect_rows(config, cells, outcomes, store, methods)
    write_results(rows, output / "results.jsonl")
    _write_text(output / "report.md", render_report(config, rows, summary, methods))
    kinds = {stage.key: stage.kind for stage in stages}
    write_examples(cells, store, kinds, output, per_prompt=config.examples)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["failed_cells"] = len({row["cell"] for row in rows if row["status"] != "ok"})
    _write_text(output / "run.json", json.dumps(summary, indent=2) + "\n")
    return summary
