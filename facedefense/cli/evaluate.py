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


def shows_visible_change(generated: Path) -> bool:
    """Whether ``generated`` was written by ``protect`` or ``purify``: compared with the originals,
    its budget metrics (PSNR, SSIM, LPIPS, L-inf) then say how visible the change is."""
    from facedefense.outputs import read_manifest

    manifest = read_manifest(generated if generated.is_dir() else generated.parent) or {}
    return manifest.get("command") in ("protect", "purify")


def explain(entry: dict[str, Any], visible_change: bool) -> str:
    """What a metric's value says, in words: what it measures and which way is better (or, for a
    budget metric of protected photos against their originals, which way is less visible)."""
    better = "higher" if entry["higher_is_better"] else "lower"
    measures = entry.get("measures") or ""
    if visible_change and entry.get("visibility"):
        return f"how visible the change is: {better} = less visible ({measures})"
    protected = f", protected if {entry['protected_if']}" if entry.get("protected_if") else ""
    return (f"{measures}: " if measures else "") + f"{better} is better{protected}"


def print_table(results: dict[str, Any], *, visible_change: bool = False) -> list[str]:
    """One row per group (identity or prompt) and their mean when there are several, then one line
    per metric: value and unit, what it says, how many images (and groups) it covers; an undefined
    value (n/a) with its reason. Returns the explanations (one per metric)."""
    names = list(results["metrics"])
    kind = results.get("grouped_by")
    plural = {"identity": "identities", "prompt": "prompts"}.get(kind or "", "")
    groups = results.get(plural, {}) if plural else {}
    if groups:
        labels = {name: group.get("prompt", name) for name, group in groups.items()}
        first = max(8, *(len(label) for label in labels.values()))
        widths = [max(10, len(n)) for n in names]
        typer.echo("  ".join([f"{kind:<{first}}", *(f"{n:>{w}}" for n, w in zip(names, widths))]))
        for group, result in groups.items():
            cells = [_cell(result["metrics"][n]) for n in names]
            typer.echo("  ".join([f"{labels[group]:<{first}}", *(f"{c:>{w}}" for c, w in zip(cells, widths))]))
        cells = [_cell(results["metrics"][n]) for n in names]
        typer.echo("  ".join([f"{'mean':<{first}}", *(f"{c:>{w}}" for c, w in zip(cells, widths))]))
        typer.echo("")
    width = max(len(name) for name in names)
    explanations = []
    for name, entry in results["metrics"].items():
        said = explain(entry, visible_change)
        explanations.append(said)
        details = dict(entry["details"])
        value = _cell(entry)
        if value == "n/a" and "undefined" in details:
            details = {"undefined": details.pop("undefined"), **details}  # why there is no value, first
        counted = f"{entry[plural]} of {len(groups)} {plural}, " if plural in entry else ""
        unit = f" {entry['unit']}" if entry["unit"] and value != "n/a" else ""
        typer.echo(f"{name:<{width}}  {value}{unit}  {said}; {counted}{entry['count']} image(s)")
        for key, detail in details.items():
            typer.echo(f"{'':<{width}}  {key}: {detail}")
    return explanations


def _budget(generated: Path) -> float | None:
    """The budget of the protect run that wrote ``generated`` (its manifest), if any."""
    from facedefense.outputs import read_manifest

    budget = (read_manifest(generated if generated.is_dir() else generated.parent) or {}).get("budget")
    eps = budget.get("eps") if isinstance(budget, dict) else None
    return float(eps) if isinstance(eps, (int, float)) and eps > 0 else None


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
    html_path: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a self-contained HTML report (tables, thumbnails, images side by side) to this file."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
) -> None:
    """Score a folder of images with metrics, against references when given.

    PSNR/SSIM of protected photos against their originals say how visible the protection is;
    ISM/FDFR of an attack's generated faces against the person's clean photos say whether it held.

    Example: facedefense evaluate protected/ --reference photos/ --html report.html
    """
    from facedefense.outputs import claim_file, json_written_by

    inputs = [generated, *([reference] if reference is not None else [])]
    if json_path is not None and html_path is not None and json_path.absolute() == html_path.absolute():
        raise fail("--json and --html name the same file; give two names")
    if json_path is not None:  # checked before any work: an input, a user's file, an unwritable place
        claim_file(json_path, "evaluate", inputs=inputs, written_by=json_written_by("evaluate"), kind="--json file")
    if html_path is not None:
        from facedefense.report_html import written_by

        claim_file(html_path, "evaluate", inputs=inputs, written_by=written_by("evaluate"), kind="--html file")
    from facedefense.evaluation import default_metrics, evaluate_identities

    metrics = list(dict.fromkeys(metric or default_metrics()))
    options = metric_options(option, metrics)
    results = evaluate_identities(generated, reference, metrics, prompts=prompt, options=options, device=device, match=match)
    for failure in results["failures"]:
        typer.echo(f"skipped: {failure['error']}", err=True)
    explanations = print_table(results, visible_change=shows_visible_change(generated))
    if json_path is not None:
        from facedefense.io import write_json

        write_json({"command": "evaluate", **results}, json_path)  # "command": proof a rerun may replace it
    if html_path is not None:
        from facedefense.report_html import evaluation_page, write_page

        write_page(evaluation_page(results, explanations, match=match, eps=_budget(generated)), html_path)
        typer.echo(f"report: {html_path}")
    if results["failures"]:
        raise fail(f"{len(results['failures'])} image(s) could not be scored", code=1)


def register(app: typer.Typer) -> None:
    app.command()(evaluate)
