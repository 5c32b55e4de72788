"""``facedefense evaluate``: score a folder of images, against references when given."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from facedefense.cli.common import fail, friendly_errors


def metric_options(pairs: list[str] | None, metrics: list[str]) -> dict[str, dict[str, str]]:
    """``-o key=value`` -> options of every chosen metric that has that option; ``-o ism.key=value``
    -> that metric only.

    Raises:
        ConfigError: a key no chosen metric accepts, or a prefix that is not a chosen metric.
    """
    import dataclasses

    from facedefense.config import parse_option_pairs
    from facedefense.errors import ConfigError
    from facedefense.registry import get_registry

    registry = get_registry()
    fields = {name: {f.name for f in dataclasses.fields(registry.load("metric", name).Config)} for name in metrics}
    options: dict[str, dict[str, str]] = {name: {} for name in metrics}
    for key, value in parse_option_pairs(pairs).items():
        target, dot, option = key.rpartition(".")
        if dot:
            if target not in fields:
                raise ConfigError(f"option '{key}': '{target}' is not one of the chosen metrics ({', '.join(metrics)})")
            options[target][option] = value
            continue
        takers = [name for name, names in fields.items() if key in names]
        if not takers:
            raise ConfigError(f"no chosen metric has an option '{key}' (metrics: {', '.join(metrics)}; see facedefense info NAME)")
        for name in takers:
            options[name][key] = value
    return options


def _cell(entry: dict[str, Any]) -> str:
    return "n/a" if math.isnan(entry["value"]) else f"{entry['value']:.4f}"


def print_table(results: dict[str, Any]) -> None:
    """One row per identity (and their mean) when there are several, then one line per metric with
    its unit, direction, count and details."""
    names = list(results["metrics"])
    identities = results.get("identities", {})
    if len(identities) > 1:
        first = max(8, *(len(i) for i in identities))
        widths = [max(10, len(n)) for n in names]
        typer.echo("  ".join([f"{'identity':<{first}}", *(f"{n:>{w}}" for n, w in zip(names, widths))]))
        for identity, result in identities.items():
            cells = [_cell(result["metrics"][n]) for n in names]
            typer.echo("  ".join([f"{identity:<{first}}", *(f"{c:>{w}}" for c, w in zip(cells, widths))]))
        cells = [_cell(results["metrics"][n]) for n in names]
        typer.echo("  ".join([f"{'mean':<{first}}", *(f"{c:>{w}}" for c, w in zip(cells, widths))]))
        typer.echo("")
    width = max(len(name) for name in names)
    for name, entry in results["metrics"].items():
        arrow = "higher is better" if entry["higher_is_better"] else "lower is better"
        protected = f"; protected if {entry['protected_if']}" if entry.get("protected_if") else ""
        counted = f"{entry['identities']} identities, " if "identities" in entry else ""
        typer.echo(f"{name:<{width}}  {_cell(entry)} {entry['unit']}  ({arrow}{protected}; {counted}{entry['count']} image(s))")
        for key, detail in entry["details"].items():
            typer.echo(f"{'':<{width}}  {key}: {detail}")


@friendly_errors
def evaluate(
    generated: Annotated[
        Path, typer.Argument(help="Folder (or file) of images to score; a folder of subfolders = one identity each.", show_default=False)
    ],
    reference: Annotated[
        Path | None,
        typer.Option(help="Reference images: paired by name (paired metrics) or a clean set (ISM, FID); subfolders per identity."),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", help="Metric name (repeatable). Default: the metrics registered as defaults."),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Prompt for metrics that need one (CLIP-S).")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("-o", "--option", help="Metric option key=value (every metric that has it) or metric.key=value."),
    ] = None,
    match: Annotated[
        str, typer.Option("--match", help="Generated name from its reference's stem, e.g. 'noisy_{stem}'.")
    ] = "{stem}",
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the results (per-image values) to this JSON file (never an input, never a file evaluate did not write)."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
) -> None:
    """Compute metrics, e.g. PSNR/SSIM of protected images against their originals, ISM/FDFR of
    generated faces against the person's clean photos."""
    if json_path is not None:  # checked before any work: an input, a user's file, an unwritable place
        from facedefense.outputs import claim_file, json_written_by

        inputs = [generated, *([reference] if reference is not None else [])]
        claim_file(json_path, "evaluate", inputs=inputs, written_by=json_written_by("evaluate"), kind="--json file")
    from facedefense.evaluation import default_metrics, evaluate_identities

    metrics = list(dict.fromkeys(metric or default_metrics()))
    options = metric_options(option, metrics)
    results = evaluate_identities(generated, reference, metrics, prompts=prompt, options=options, device=device, match=match)
    for failure in results["failures"]:
        typer.echo(f"skipped: {failure['error']}", err=True)
    print_table(results)
    if json_path is not None:
        from facedefense.io import write_json

        write_json({"command": "evaluate", **results}, json_path)  # "command": proof a rerun may replace it
    if results["failures"]:
        raise fail(f"{len(results['failures'])} image(s) could not be scored", code=1)


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
