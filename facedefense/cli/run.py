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
) -> None:
    """Protect photos with a defender; writes PNGs with the same names and a manifest."""
    from facedefense.batch import protect_files
    from facedefense.budget import parse_budget

    budget = parse_budget(eps) if eps is not None else None
    options = method_options(
        option, model=model, eps=budget, steps=steps, checkpoint=checkpoint, seed=seed, device=device, dtype=dtype
    )
    defender = _make("defender", method, options)
    show = progress_default() if progress is None else progress
    report = protect_files(defender, inputs, output, references=reference, batch_size=batch_size, progress=show)
    _finish(report, output, "protected")


def chain_options(names: list[str], pairs: list[str] | None, **named: Any) -> list[dict[str, Any]]:
    """Route ``-o`` options (and the named ones) to the purifiers of a chain.

    ``key=value`` goes to every method of the chain that has the option ``key``;
    ``NAME.key=value`` only to the method ``NAME`` (every occurrence of it), ``N.key=value`` only to
    the N-th method (1-based); a targeted option wins over a plain one. An option that no method of
    the chain has, or a target not in the chain, is an error; so is a named option (``--model``)
    given again as ``-o``.

    Example:
        >>> chain_options(["jpeg", "diffpure"], ["jpeg.quality=70", "seed=3"], model="m")
        [{'seed': '3', 'quality': '70'}, {'seed': '3', 'model': 'm'}]
    """
    from facedefense.config import config_fields, parse_option_pairs
    from facedefense.errors import ConfigError
    from facedefense.registry import get_registry

    registry = get_registry()
    fields = [set(config_fields(registry.load("purifier", name).Config)) for name in names]
    given = parse_option_pairs(pairs)
    for key, value in named.items():
        if value is not None:
            if key in given:
                raise ConfigError(f"option '{key}' given twice (as --{key.replace('_', '-')} and -o {key}=...)")
            given[key] = value
    routed: list[dict[str, Any]] = [{} for _ in names]
    for key, value in sorted(given.items(), key=lambda item: "." in item[0]):
        target, dot, option = key.rpartition(".")
        if dot:
            chosen = [i for i, name in enumerate(names) if target in (name, str(i + 1))]
            if not chosen:
                raise ConfigError(f"option '{key}': no method '{target}' in the chain ({', '.join(names)})")
            for i in chosen:
                if option not in fields[i]:
                    raise ConfigError(f"{names[i]} has no option '{option}'; valid options: {', '.join(sorted(fields[i]))}")
        else:
            chosen = [i for i in range(len(names)) if option in fields[i]]
            if not chosen:
                raise ConfigError(f"no method in the chain ({', '.join(names)}) has an option '{option}'")
        for i in chosen:
            routed[i][option] = value
    return routed


@friendly_errors
def purify(
    inputs: Inputs,
    method: Annotated[
        list[str],
        typer.Option("--method", "-m", help="Purifier name (see `facedefense list purifiers`); repeat to chain them in order."),
    ],
    output: Output,
    model: Model = None,
    seed: Seed = None,
    device: Device = None,
    dtype: Dtype = None,
    batch_size: BatchSize = 1,
    option: Options = None,
    progress: Progress = None,
) -> None:
    """Purify photos (the adversary's counter-measure) with one purifier or a chain applied in order;
    writes PNGs and a manifest. ``-o key=value`` goes to every method with that option,
    ``-o NAME.key=value`` to one method of the chain."""
    from facedefense.batch import purify_files

    options = chain_options(method, option, model=model, seed=seed, device=device, dtype=dtype)
    purifiers = [_make("purifier", name, opts) for name, opts in zip(method, options)]
    show = progress_default() if progress is None else progress
    report = purify_files(purifiers, inputs, output, batch_size=batch_size, progress=show)
    _finish(report, output, "purified")


def register(app: typer.Typer) -> None:
    app.command()(protect)
    app.command()(purify)
