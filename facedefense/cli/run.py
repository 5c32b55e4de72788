"""``facedefense protect`` and ``facedefense purify``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from facedefense.cli.common import fail, friendly_errors, method_options, progress_default

Inputs = Annotated[list[Path], typer.Argument(help="Image files and/or folders (not recursive).", show_default=False)]
Output = Annotated[Path, typer.Option("--output", help="Output folder (created; must not be an input folder).")]
Model = Annotated[str | None, typer.Option(help="Diffusers folder or Hugging Face id of the model the method uses.")]
Device = Annotated[str | None, typer.Option(help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str | None, typer.Option(help="auto, float32, bfloat16 or float16 (model precision).")]
Seed = Annotated[int | None, typer.Option(help="Random seed (default: the method's, 0).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward/backward pass.")]
Options = Annotated[list[str] | None, typer.Option("-o", "--option", help="Method option key=value (repeatable).")]
Progress = Annotated[bool | None, typer.Option("--progress/--no-progress", help="Show progress bars.")]


def _make(kind: str, name: str, options: dict[str, Any]) -> Any:
    from facedefense.registry import get_registry

    return get_registry().create(kind, name, **options)


def _finish(report: Any, output: Path, verb: str) -> None:
    for failure in report.failed:
        typer.echo(f"skipped: {failure['error']}", err=True)
    typer.echo(f"{verb} {len(report.succeeded)} image(s) into {output} (manifest: {report.manifest_path.name})")
    if report.failed:
        raise fail(f"{len(report.failed)} input(s) could not be processed", code=1)


@friendly_errors
def protect(
    inputs: Inputs,
    method: Annotated[str, typer.Option("--method", "-m", help="Defender name (see `facedefense list defenders`).")],
    output: Output,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="Clean photos of the same person (identity-scoped defenders learn from them); for a folder "
            "of identities, a folder of subfolders with the same names.",
        ),
    ] = None,
    model: Model = None,
    eps: Annotated[str | None, typer.Option(help="L-infinity budget in [0,1] units: 8/255 or 0.0314.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimization steps (iterative defenders).")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="Network weights (amortized defenders).")] = None,
    seed: Seed = None,
    device: Device = None,
    dtype: Dtype = None,
    batch_size: BatchSize = 1,
    option: Options = None,
    progress: Progress = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run into the same --output from its last saved round "
            "(same method, budget and options).",
        ),
    ] = False,
) -> None:
    """Protect photos with a defender; writes PNGs with the same names and a manifest."""
    from facedefense.batch import protect_files
    from facedefense.budget import parse_budget
    from facedefense.distributed import bind_device, current_shard

    budget = parse_budget(eps) if eps is not None else None
    options = method_options(
        option, model=model, eps=budget, steps=steps, checkpoint=checkpoint, seed=seed, device=device, dtype=dtype
    )
    bind_device(current_shard())
    defender = _make("defender", method, options)
    show = progress_default() if progress is None else progress
    report = protect_files(
        defender, inputs, output, references=reference, batch_size=batch_size, progress=show, resume=resume
    )
    _finish(report, output, "protected")


@friendly_errors
def purify(
    inputs: Inputs,
    method: Annotated[str, typer.Option("--method", "-m", help="Purifier name (see `facedefense list purifiers`).")],
    output: Output,
    model: Model = None,
    seed: Seed = None,
    device: Device = None,
    dtype: Dtype = None,
    batch_size: BatchSize = 1,
    option: Options = None,
    progress: Progress = None,
) -> None:
    """Purify photos (the adversary's counter-measure); writes PNGs and a manifest."""
    from facedefense.batch import purify_files

    options = method_options(option, model=model, seed=seed, device=device, dtype=dtype)
    purifier = _make("purifier", method, options)
    show = progress_default() if progress is None else progress
    report = purify_files(purifier, inputs, output, batch_size=batch_size, progress=show)
    _finish(report, output, "purified")


def register(app: typer.Typer) -> None:
    app.command()(protect)
    app.command()(purify)
