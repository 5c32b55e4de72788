"""``run_benchmark``: plan the grid, run what is not cached, write results, report and examples."""

from __future__ import annotations

import importlib.util
import time
from collections import Counter
from pathlib import Path
from typing import Any

from facedefense.benchmark.config import BenchmarkConfig, load_config
from facedefense.benchmark.executors import run_local, run_ray
from facedefense.benchmark.folders import OUTPUT_FILES, RunFolders, run_inputs
from facedefense.benchmark.graph import Cell, Stage, plan
from facedefense.benchmark.report import (
    collect_rows,
    example_file,
    render_report,
    write_examples,
    write_html,
    write_results,
    write_text,
)
from facedefense.benchmark.stages import Cache
from facedefense.errors import ConfigError, MissingDependencyError, OutputError
from facedefense.io import write_json

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
        cache: stage cache folder (default ``OUTPUT/cache``); several outputs may share one, one
            run at a time.
        progress: show a progress bar over the whole grid.
        num_cpus: CPUs of a local Ray instance (default: all).

    Everything the config names (paths, models, options, labels) is checked, and the output and
    cache folders claimed (`facedefense.benchmark.folders`), before anything is written.

    Returns:
        A summary: output paths, stage counts (computed, cached, failed, skipped), cells, failed
        cells, seconds. A failed stage makes a failed run (manifest status ``failed``).

    Raises:
        ConfigError: ``file:line: message``: the first problem of the config.
        OutputError: the output or cache folder is refused, or another run holds it.

    Examples:
        >>> summary = run_benchmark("benchmarks/configs/tiny.yaml", "out/tiny")
        >>> print(open("out/tiny/report.md").read())
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}'; expected one of {', '.join(EXECUTORS)}")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise MissingDependencyError("--executor ray needs Ray: pip install 'facedefense[ray]'")
    started = time.perf_counter()
    config = load_config(config_path)
    stages, cells, methods = plan(config)  # every method's options checked: still nothing written
    output = Path(output) if output is not None else Path("benchmark-output") / config.path.stem
    store = Cache(cache if cache is not None else output / "cache")
    planned = [*OUTPUT_FILES, *(example_file(cell) for cell in cells)]
    with RunFolders.claim(output, store.root, run_inputs(config.sources, methods)) as folders:
        folders.start(config.path, planned)
        status, summary, error, written, raised = "failed", None, None, False, False
        try:
            summary = _run(config, stages, cells, methods, store, output, executor, address, progress, num_cpus)
            written = True
            summary["seconds"] = round(time.perf_counter() - started, 2)
            write_json(summary, output / "run.json")
            if summary["failed"]:
                error = f"{summary['failed']} stage(s) failed: see the Failures section of report.md"
            else:
                status = "completed"
        except KeyboardInterrupt:
            status, raised = "interrupted", True
            raise
        except BaseException as exc:
            error, raised = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__), True
            raise
        finally:
            try:
                folders.finish(status, summary=summary, error=error, written=written)
            except OutputError:
                if not raised:  # else the error under way is the one to report
                    raise
    return summary


def _run(
    config: BenchmarkConfig, stages: list[Stage], cells: list[Cell], methods: dict[str, dict[str, Any]], store: Cache,
    output: Path, executor: str, address: str | None, progress: bool, num_cpus: int | None,
) -> dict[str, Any]:
    """Run the stages not cached yet, then write results, report and examples; returns the summary."""
    store.root.mkdir(parents=True, exist_ok=True)
    store.clean_temporary()  # what killed runs left: no other run works here (the folders are locked)
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
    summary["failed_cells"] = len({row["cell"] for row in rows if row["status"] != "ok"})
    write_results(rows, output / "results.jsonl")
    report = render_report(config, rows, summary, methods)
    write_text(output / "report.md", report)
    kinds = {stage.key: stage.kind for stage in stages}
    write_examples(cells, store, kinds, output, per_prompt=config.examples)
    write_html(report, output, f"Benchmark: {config.path.name}")
    return summary
