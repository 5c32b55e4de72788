"""``facedefense benchmark``: run a benchmark config (protect -> purify -> attack -> evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facedefense.cli.common import fail, friendly_errors, progress_default


@friendly_errors
def benchmark(
    config: Annotated[Path, typer.Argument(help="Benchmark config (YAML).", show_default=False)],
    output: Annotated[
        Path | None, typer.Option("--output", help="Output folder (default: benchmark-output/<config name>).")
    ] = None,
    executor: Annotated[str, typer.Option(help="local (in this process) or ray (each stage a Ray task).")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (auto, ray://host:10001); default: a local Ray instance.")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Stage cache folder, shareable between runs (default: OUTPUT/cache).")
    ] = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bar over the whole grid (default: on a terminal).")
    ] = None,
) -> None:
    """Protect, purify, attack and evaluate over the grid a config names; cached and resumable.

    The config and every path, model, option and label it names are checked before anything is
    written; the output folder (and a --cache folder) is claimed and locked for the run: a folder
    holding photos, models or files no benchmark run wrote is refused (exit 2). A failed stage
    makes the run fail (exit 1). Writes report.md, report.html (one page with the images),
    results.jsonl and examples.png.

    Example: facedefense benchmark benchmarks/configs/tiny.yaml --output tiny-out
    """
    from facedefense.benchmark import run_benchmark

    summary = run_benchmark(
        config, output, executor=executor, address=address, cache=cache,
        progress=progress_default() if progress is None else progress,
    )
    typer.echo(
        f"{summary['cells']} cell(s), {summary['stages']} stage(s): {summary['computed']} computed, "
        f"{summary['cached']} cached, {summary['failed']} failed, {summary['skipped']} skipped "
        f"in {summary['seconds']:.1f} s; report: {Path(summary['output']) / 'report.md'} (one page with images: report.html)"
    )
    for failure in summary["failures"]:
        typer.echo(f"failed: {failure['stage']}: {failure['error']}", err=True)
    if summary["failed"] or summary["failed_cells"]:  # a failed stage is a failed run, even one no cell reads
        raise fail(
            f"{summary['failed']} stage(s) failed, {summary['failed_cells']} cell(s) failed; see the Failures section of report.md",
            code=1,
        )


def register(app: typer.Typer) -> None:
    app.command()(benchmark)
