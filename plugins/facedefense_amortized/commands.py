"""``facedefense train``, ``facedefense export`` and ``facedefense pairs``, added to the CLI by the
amortized plugin (``register_commands``): the core names no method.

``train`` and ``export`` accept any registered defender whose class offers the hooks
``training_recipe()`` (a ``Recipe``) and
``export_onnx(checkpoint, output, eps=None)``: ``rid`` and ``gap_diff`` here, and a third-party
amortized defender that implements them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from facedefense.cli.common import friendly_errors, progress_default


def _defender_class(method: str, hook: str):
    from facedefense.errors import ConfigError
    from facedefense.registry import get_registry

    cls = get_registry().load("defender", method)
    if not callable(getattr(cls, hook, None)):
        raise ConfigError(f"defender '{method}' cannot be used here (it has no {hook} hook; rid and gap_diff do)")
    return cls


#: ``train --objective``: the RID loss weights each objective sets (``-o`` options may set the weights).
OBJECTIVES = {
    "sds": {"sds_weight": 1.0, "encoder_weight": 0.0},
    "encoder": {"sds_weight": 0.0, "encoder_weight": 1.0},
    "sds+encoder": {"sds_weight": 1.0, "encoder_weight": 1.0},
}


def objective_options(method: str, objective: str, options: dict[str, str]) -> dict[str, str]:
    """The training options of ``--objective`` (``OBJECTIVES``), under the ``-o`` options given.

    ``encoder`` trains on the face encoder's similarity alone (IDProtector's objective on RID's
    network; no diffusion model runs), ``sds+encoder`` on both. A weight given with ``-o`` is kept,
    unless it turns off a term the objective names or turns on one it leaves out.

    Example:
        >>> objective_options("rid", "encoder", {"encoder_weight": "2"})
        {'sds_weight': '0.0', 'encoder_weight': '2'}
    """
    from facedefense.errors import ConfigError

    if method != "rid":
        raise ConfigError(f"--objective is for rid; {method} trains on its own objective")
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown --objective '{objective}'; choose {', '.join(OBJECTIVES)}")
    merged = {key: str(value) for key, value in OBJECTIVES[objective].items()}
    for key, value in options.items():
        if key in merged:
            try:
                on, wanted = float(value) != 0, float(merged[key]) != 0
            except ValueError:
                raise ConfigError(f"-o {key}={value}: not a number") from None
            if on != wanted:
                raise ConfigError(f"-o {key}={value} contradicts --objective {objective} (it {'uses' if wanted else 'leaves out'} that term)")
        merged[key] = value
    return merged


@friendly_errors
def train(
    method: Annotated[str, typer.Option("--method", "-m", help="Amortized defender to train: rid or gap_diff.")],
    data: Annotated[Path, typer.Option(help="Folder of face photos (subfolders included).")],
    model: Annotated[str, typer.Option(help="Diffusion model(s) to train against, comma-separated (an ensemble).")],
    output: Annotated[Path, typer.Option(help="Run folder: checkpoint + sidecar, training state, log.jsonl, facedefense.json (new, empty, or this method's run with --resume).")],
    eps: Annotated[str | None, typer.Option(help="L-infinity budget in [0,1] units (default 8/255).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: rid 20000, gap_diff 50 epochs).")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Images per step and process (default: rid 1, gap_diff 6, as the references).")
    ] = None,
    pairs: Annotated[Path | None, typer.Option(help="rid: JSON list of {source_path, attacked_path} for the regression loss.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output exactly where it stopped.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of initialization, data order, timesteps and noise.")] = 0,
    save_every: Annotated[int, typer.Option("--save-every", help="Save checkpoint and state every N steps.")] = 400,
    mixed_precision: Annotated[str, typer.Option("--mixed-precision", help="no, bf16 or fp16 (autocast through accelerate).")] = "no",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing", help="Trade compute for memory.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N (accelerate launch chooses per process).")] = "auto",
    option: Annotated[list[str] | None, typer.Option("-o", "--option", help="Method training option key=value (repeatable).")] = None,
    objective: Annotated[
        str | None,
        typer.Option(help="rid: sds (Adv-SDS against --model, the default), encoder (the face encoder's similarity, "
                     "against zero-shot attacks) or sds+encoder; weights with -o sds_weight / encoder_weight.",
                     show_default=False),
    ] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = None,
) -> None:
    """Train an amortized defender's network against diffusion models (see docs: Training)."""
    from facedefense.budget import parse_budget
    from facedefense.config import parse_option_pairs
    from facedefense_amortized.training.loop import TrainSettings
    from facedefense_amortized.training.loop import train as run

    cls = _defender_class(method, "training_recipe")
    options = parse_option_pairs(option)
    if objective is not None:
        options = objective_options(cls.name, objective, options)
    settings = TrainSettings(
        method=cls.name,
        data=data,
        models=[m.strip() for m in model.split(",") if m.strip()],
        output=output,
        eps=parse_budget(eps) if eps is not None else None,
        steps=steps,
        batch_size=batch_size,
        pairs=pairs,
        resume=resume,
        seed=seed,
        save_every=save_every,
        mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing,
        device=device,
        progress=progress_default() if progress is None else progress,
        options=options,
    )
    result = run(settings, cls.training_recipe())
    terms = ", ".join(f"{k} {v:.4g}" for k, v in result.last.items() if isinstance(v, float))
    typer.echo(f"trained {result.steps} step(s): {result.checkpoint} ({terms})")


@friendly_errors
def export(
    method: Annotated[str, typer.Option("--method", "-m", help="Amortized defender: rid or gap_diff.")],
    checkpoint: Annotated[Path, typer.Option(help="Network weights (.safetensors with sidecar, or an official file).")],
    output: Annotated[Path, typer.Option(help="The .onnx file to write (never the checkpoint; an existing file only if export wrote it).")],
    eps: Annotated[str | None, typer.Option(help="Budget in [0,1] units, for a checkpoint without metadata.")] = None,
) -> None:
    """Export an amortized defender's network to ONNX (batch dynamic; the budget in its metadata)."""
    from facedefense.budget import parse_budget
    from facedefense.checkpoints import sidecar_path
    from facedefense.errors import ConfigError
    from facedefense.outputs import claim_file
    from facedefense_amortized.onnx_io import exported_by_facedefense, require_onnx

    cls = _defender_class(method, "export_onnx")
    budget = parse_budget(eps) if eps is not None else None
    if output.suffix != ".onnx":
        raise ConfigError(f"--output must end in .onnx, got {output.name}")
    # checked before the checkpoint is read: never the checkpoint, never a file export did not write
    claim_file(output, "export", inputs=[checkpoint, sidecar_path(checkpoint)], written_by=exported_by_facedefense, kind="--output file")
    require_onnx()
    path = cls.export_onnx(str(checkpoint), output, eps=budget)
    typer.echo(f"exported {cls.name} to {path}")


@friendly_errors
def pairs(
    clean: Annotated[Path, typer.Argument(help="Folder of clean photos.", show_default=False)],
    protected: Annotated[Path, typer.Argument(help="Their protected versions (same names), e.g. from protect --method aspl.", show_default=False)],
    output: Annotated[Path, typer.Option(help="The pairs JSON to write (for train --method rid --pairs; never in CLEAN or PROTECTED, an existing file only if pairs wrote it).")],
) -> None:
    """Write RID's regression pairs JSON from clean photos and their protected versions."""
    from facedefense_amortized.training.data import write_pairs

    count = write_pairs(clean, protected, output)
    typer.echo(f"wrote {count} pair(s) to {output}")


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(export)
    app.command()(pairs)
