"""``facedefense make-tiny-model`` and ``facedefense demo``: offline pipeline check with tiny models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facedefense.cli.common import check_method_paths, friendly_errors, progress_default

TINY_KINDS = ("sd", "instruct_pix2pix", "inpaint", "upscaler", "pixel_ddpm")
DEMO_BANNER = (
    "DEMO: this run uses a tiny random-weight diffusion model built offline. It exercises the whole "
    "pipeline (load, protect, budget check, manifest, evaluate) but gives NO real protection. For that, run "
    "`facedefense protect PHOTOS --method photoguard --model stable-diffusion-v1-5/stable-diffusion-v1-5 "
    "--output OUT`."
)


@friendly_errors
def make_tiny_model(
    output: Annotated[Path, typer.Argument(help="Folder to write the diffusers model into.", show_default=False)],
    kind: Annotated[str, typer.Option(help=f"One of: {', '.join(TINY_KINDS)}.")] = "sd",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    train_steps: Annotated[
        int, typer.Option(help="Fine-tune the tiny UNet on sample faces this many steps (sd only).")
    ] = 0,
) -> None:
    """Build a tiny random-weight diffusers model (for tests, demos and plugin development)."""
    from facedefense.errors import ConfigError
    from facedefense.testing import tiny_models

    builders = {
        "sd": tiny_models.build_tiny_sd,
        "instruct_pix2pix": tiny_models.build_tiny_instruct_pix2pix,
        "inpaint": tiny_models.build_tiny_inpaint,
        "upscaler": tiny_models.build_tiny_upscaler,
        "pixel_ddpm": tiny_models.build_tiny_pixel_ddpm,
    }
    if kind not in builders:
        raise ConfigError(f"unknown tiny model kind '{kind}'; expected one of {', '.join(TINY_KINDS)}")
    if train_steps and kind != "sd":
        raise ConfigError("--train-steps applies to --kind sd only")
    path = builders[kind](output, seed=seed)
    if train_steps:
        try:
            faces = tiny_models.sample_faces(4, 128)
        except ImportError as exc:
            raise ConfigError("--train-steps needs scikit-image for its sample faces: pip install 'facedefense[test]'") from exc
        tiny_models.train_tiny_unet(path, faces, steps=train_steps, seed=seed)
    typer.echo(f"tiny {kind} model written to {path}")


@friendly_errors
def demo(
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="Portraits to protect (default: a sample portrait).")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", help="Demo folder (its protected/ subfolder is replaced on each run).")
    ] = Path("demo-output"),
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="Defender to demonstrate (default: the one tagged 'demo').")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Weights file of an amortized defender (-m rid, -m gap_diff).", show_default=False),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimization steps.")] = 5,
    eps: Annotated[str, typer.Option(help="Budget in [0,1] units.")] = "8/255",
    option: Annotated[
        list[str] | None, typer.Option("-o", "--option", help="Defender option key=value (repeatable).")
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Show progress bars (default: on a terminal).", show_default=False),
    ] = None,
) -> None:
    """Protect sample portraits with a tiny model built on the spot (a pipeline demo, offline)."""
    from facedefense.batch import protect_files
    from facedefense.budget import parse_budget
    from facedefense.config import config_fields, format_value, parse_option_pairs
    from facedefense.errors import ConfigError
    from facedefense.evaluation import evaluate_folder
    from facedefense.io import check_output_dir, save_image
    from facedefense.registry import get_registry
    from facedefense.testing import tiny_models

    check_output_dir(output)
    registry = get_registry()
    if method is None:
        tagged = registry.tagged("defender", "demo")
        if not tagged:
            raise ConfigError("no defender is registered for the demo (tag 'demo'); pass --method NAME")
        method = tagged[0]
    fields = config_fields(registry.load("defender", method).Config)
    if checkpoint is not None and "checkpoint" not in fields:
        raise ConfigError(f"{method} takes no --checkpoint (it has no option 'checkpoint')")
    chosen = {**parse_option_pairs(option), **({"checkpoint": str(checkpoint)} if checkpoint is not None else {})}
    check_method_paths(chosen)  # before anything is written
    typer.secho(DEMO_BANNER, fg=typer.colors.YELLOW, err=True)
    output.mkdir(parents=True, exist_ok=True)
    model_dir = output / "tiny-sd"
    if "model" in fields and not (model_dir / "model_index.json").exists():
        tiny_models.build_tiny_sd(model_dir)  # only for a defender that uses a diffusion model
    if not inputs:
        samples = output / "originals"
        samples.mkdir(exist_ok=True)
        save_image(_sample_portrait(tiny_models), samples / "astronaut.png")
        inputs = [samples]
    offered = {"model": str(model_dir), "eps": parse_budget(eps), "steps": steps, "device": "cpu", "dtype": "float32"}
    if checkpoint is not None:  # an amortized defender: its budget is the checkpoint's (-o eps= changes it)
        offered = {"device": "cpu"}
    options = {key: value for key, value in offered.items() if key in fields}  # only what the method has
    defender = registry.create("defender", method, **{**options, **chosen})
    protected = output / "protected"
    show = progress_default() if progress is None else progress
    # The demo folder is the demo's own: each run replaces the previous run's protected images.
    report = protect_files(defender, inputs, protected, progress=show, existing="overwrite", warn_unchanged=False)
    typer.echo(f"protected {len(report.succeeded)} image(s) into {protected}")
    budget = format_value(defender.config.eps)  # what the defender used (an amortized one: its checkpoint's)
    for entry in report.succeeded:
        typer.echo(f"  {entry['output']}: max change {entry['linf_gray_levels']:.0f} gray levels (budget {budget})")
    if report.manifest.get("compare"):
        typer.echo(f"side by side (original, protected, difference): {protected / report.manifest['compare']}")
    if report.unchanged:
        from facedefense.batch import unchanged_message

        typer.echo(f"warning: {unchanged_message(report)}", err=True)
    reference = Path(report.succeeded[0]["input"]).parent if report.succeeded else None
    if reference is not None and all(Path(e["input"]).parent == reference for e in report.succeeded):
        scores = evaluate_folder(protected, reference)
        for name, entry in scores["metrics"].items():
            typer.echo(f"  {name} (protected vs original): {entry['value']:.3f} {entry['unit']}")
    typer.secho("DEMO finished (tiny random model: pipeline check only).", fg=typer.colors.YELLOW, err=True)


def _sample_portrait(tiny_models) -> object:
    """The public-domain sample portrait (scikit-image), or a one-line error naming the extra."""
    from facedefense.errors import MissingDependencyError

    try:
        return tiny_models.sample_faces(1, 512)[0]
    except ImportError as exc:
        raise MissingDependencyError(
            "the sample portrait needs scikit-image: pip install 'facedefense[test]', or pass your own INPUT"
        ) from exc


def register(app: typer.Typer) -> None:
    app.command("make-tiny-model")(make_tiny_model)
    app.command()(demo)
