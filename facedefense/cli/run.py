"""``facedefense protect`` and ``facedefense purify``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from facedefense.cli.common import check_method_paths, fail, friendly_errors, method_options, progress_default

Inputs = Annotated[list[Path], typer.Argument(help="Image files and/or folders (not recursive).", show_default=False)]
Output = Annotated[Path, typer.Option("--output", help="Output folder (created; must not be an input folder).")]
Model = Annotated[str | None, typer.Option(help="Diffusers folder or Hugging Face id of the model the method uses.")]
Device = Annotated[str | None, typer.Option(help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str | None, typer.Option(help="auto, float32, bfloat16 or float16 (model precision).")]
Seed = Annotated[int | None, typer.Option(help="Random seed (default: the method's, 0).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward/backward pass.")]
PngLevel = Annotated[
    int,
    typer.Option("--png-level", min=0, max=9, help="zlib level of the written PNGs, 0-9 (default 6); the pixels are "
                 "the same at every level: 1 writes about 1.45x faster for about 9% more bytes."),
]
Options = Annotated[list[str] | None, typer.Option("-o", "--option", help="Method option key=value (repeatable).")]
Progress = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Show progress bars (files and optimization steps). Default: when stderr is a terminal.",
        show_default=False,
    ),
]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="The output folder holds an earlier run: remove that run's outputs and manifest first "
        "(files no run wrote are never deleted).",
    ),
]
Add = Annotated[
    bool,
    typer.Option(
        "--add",
        help="The output folder holds an earlier run: keep its outputs and add these (same names are replaced).",
    ),
]


def _existing(overwrite: bool, add: bool) -> str:
    if overwrite and add:
        raise fail("--overwrite and --add exclude each other")
    return "overwrite" if overwrite else "add" if add else "refuse"


def _plan(command: str, inputs: list[Path], output: Path, existing: str, reference: Path | None = None) -> None:
    """Check the inputs, the output folder and its earlier contents before building the method."""
    from facedefense.batch import claim_output_dir, find_identities, plan_outputs

    identities = find_identities(inputs, reference)
    plan_outputs(identities, output)
    sources = [path for identity in identities for path in (*identity.paths, *identity.references)]
    claim_output_dir(output, existing, command=command, inputs=sources, dry_run=True)


def _make(kind: str, name: str, options: dict[str, Any]) -> Any:
    """Build the method, saying so first (building may load a diffusion model: seconds to a minute)."""
    from facedefense.progress import status
    from facedefense.registry import get_registry

    model = options.get("model")
    status(f"{name}: loading" + (f" {model}" if model else "") + " ...")
    return get_registry().create(kind, name, **options)


def _check_resume(output: Path, name: str, options: dict[str, Any]) -> None:
    """Check that ``--resume`` continues the run in ``output`` before building the defender (that
    loads its models): its run record is known from the options (`Method.configured`, as the
    benchmark fingerprints its stages). ``protect_files`` checks again."""
    from facedefense.batch import check_resume, run_record
    from facedefense.errors import UnknownMethodError
    from facedefense.registry import get_registry

    try:
        spec = get_registry().get("defender", name)
    except UnknownMethodError:
        return  # building it says which kind the name is
    planned = spec.load().configured(plugin=spec.plugin, plugin_version=spec.version, **options)
    check_resume(output, run_record(planned))


#: Exit status of a ``protect`` run that wrote images identical to their input: the defender changed
#: nothing (an untrained checkpoint, a zero budget), so those photos are NOT protected. Inputs that
#: could not be processed (status 1) take precedence.
UNCHANGED_EXIT = 3


def _finish(report: Any, output: Path, verb: str) -> None:
    for failure in report.failed:
        typer.echo(f"skipped: {failure['error']}", err=True)
    done, unchanged = len(report.succeeded), len(report.unchanged) if verb == "protected" else 0
    manifest = f"(manifest: {report.manifest_path.name})"
    if unchanged:
        from facedefense.batch import unchanged_message

        typer.echo(f"warning: {unchanged_message(report)}", err=True)
        typer.echo(
            f"NOT protected: {unchanged} of {done} image(s) written into {output} are identical to their input; "
            f"{verb} {done - unchanged} image(s) {manifest}"
        )
    else:
        typer.echo(f"{verb} {done} image(s) into {output} {manifest}")
    compare = report.manifest.get("compare")
    if compare:
        typer.echo(f"side by side (originals included: do not publish it): {output / compare}")
    if report.failed:
        raise fail(f"{len(report.failed)} input(s) could not be processed", code=1)
    if unchanged:
        raise typer.Exit(UNCHANGED_EXIT)


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
    runtime: Annotated[
        str | None, typer.Option(help="Inference runtime where a method offers several (amortized: torch or onnx).")
    ] = None,
    seed: Seed = None,
    device: Device = None,
    dtype: Dtype = None,
    batch_size: BatchSize = 1,
    option: Options = None,
    progress: Progress = None,
    overwrite: Overwrite = False,
    add: Add = False,
    png_level: PngLevel = 6,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run into the same --output from its last saved round "
            "(same method, budget and options).",
        ),
    ] = False,
) -> None:
    """Protect photos with a defender; writes PNGs with the same names and a manifest.

    Also writes .facedefense-work/compare.png (original, protected and amplified difference). An output
    folder that holds files is refused unless --overwrite or --add says what to do. Exit status 3:
    some protected image is identical to its photo (NOT protected).

    Example: facedefense protect photos/ --method photoguard --model stable-diffusion-v1-5/stable-diffusion-v1-5 --output protected/
    """
    from facedefense.budget import parse_budget
    from facedefense.distributed import bind_device, current_shard

    if resume and overwrite:
        raise fail("--resume and --overwrite exclude each other")
    existing = _existing(overwrite, add)
    budget = parse_budget(eps) if eps is not None else None
    options = method_options(
        option, model=model, eps=budget, steps=steps, checkpoint=checkpoint, runtime=runtime, seed=seed,
        device=device, dtype=dtype
    )
    if resume and existing == "refuse":
        existing = "add"  # resuming adds to the interrupted run
    _plan("protect", inputs, output, existing, reference)
    check_method_paths(options)
    bind_device(current_shard())
    if resume:
        _check_resume(output, method, options)
    from facedefense.batch import protect_files
    from facedefense.progress import progress_enabled_as

    show = progress_default() if progress is None else progress
    with progress_enabled_as(show):  # loading the models is said on stderr whenever bars are shown
        defender = _make("defender", method, options)
        report = protect_files(
            defender, inputs, output, references=reference, batch_size=batch_size, progress=show, existing=existing,
            warn_unchanged=False, resume=resume, png_level=png_level,
        )  # fmt: skip
    _finish(report, output, "protected")


def chain_options(names: list[str], pairs: list[str] | None, **named: Any) -> list[dict[str, Any]]:
    """Route ``-o`` options (and the named ones) to the purifiers of a chain.

    ``key=value`` goes to every method of the chain that has the option ``key``;
    ``NAME.key=value`` only to the method ``NAME`` (every occurrence of it), ``N.key=value`` only to
    the N-th method (1-based); a targeted option wins over a plain one. An option that no method of
    the chain has, or a target not in the chain, is an error; so is a named option (``--model``)
    given again as ``-o``.

    Examples:
        >>> chain_options(["jpeg", "diffpure"], ["jpeg.quality=70", "seed=3"], model="m")
        [{'seed': '3', 'quality': '70'}, {'seed': '3', 'model': 'm'}]
    """
    from facedefense.config import config_fields, parse_option_pairs
    from facedefense.errors import ConfigError, UnknownMethodError
    from facedefense.registry import get_registry

    registry = get_registry()

    def config_class(name: str) -> Any:
        try:
            return registry.load("purifier", name).Config
        except UnknownMethodError:
            registry.create("purifier", name)  # raises the message that says which kind the name is
            raise

    fields = [set(config_fields(config_class(name))) for name in names]
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
    overwrite: Overwrite = False,
    add: Add = False,
    png_level: PngLevel = 6,
) -> None:
    """Purify photos (the adversary's counter-measure) with one purifier or a chain applied in order.

    Writes PNGs and a manifest. -o key=value goes to every method with that option, -o NAME.key=value
    to one method of the chain. An output folder that holds files is refused unless --overwrite or
    --add says what to do.

    Example: facedefense purify protected/ -m jpeg -m gaussian_blur -o jpeg.quality=70 --output purified/
    """
    existing = _existing(overwrite, add)
    options = chain_options(method, option, model=model, seed=seed, device=device, dtype=dtype)
    _plan("purify", inputs, output, existing)
    for routed in options:
        check_method_paths(routed)
    from facedefense.batch import purify_files
    from facedefense.progress import progress_enabled_as

    show = progress_default() if progress is None else progress
    with progress_enabled_as(show):
        purifiers = [_make("purifier", name, opts) for name, opts in zip(method, options)]
        report = purify_files(purifiers, inputs, output, batch_size=batch_size, progress=show, existing=existing,
                              png_level=png_level)
    _finish(report, output, "purified")


def register(app: typer.Typer) -> None:
    app.command()(protect)
    app.command()(purify)
