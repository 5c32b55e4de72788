"""The training loop shared by the amortized defenders: data order, randomness, checkpoints,
resuming, JSONL logs, progress, and ``accelerate`` (one or many GPUs, mixed precision).

An output folder holds one run:

- ``<method>.safetensors`` + ``<method>.safetensors.json``: the network and its sidecar (method,
  budget, architecture, data, models, steps), loadable by ``facedefense protect --checkpoint``;
- ``training_state.pt``: step, optimizer and scheduler states, the discriminator (GAP-Diff) and
  every random state, so ``--resume`` continues exactly where the run stopped (the same loss curve
  as an uninterrupted run);
- ``log.jsonl``: one line per step with every loss term.

Randomness: the data order of epoch e is a permutation seeded by ``(seed, e)``; timesteps, noise
and preprocessing choices come from one CPU ``torch.Generator`` (saved; every draw happens on its
device, then moves to the accelerator); dropout uses torch's global generator (saved too).

Multi-GPU and multi-node: ``accelerate launch $(which facedefense) train ...``; each process takes its
own slice of every batch of ``batch_size x processes`` images, and the main process writes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from facedefense.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

STATE_FILE = "training_state.pt"
LOG_FILE = "log.jsonl"
PRECISIONS = ("no", "bf16", "fp16")


class Trainer(Protocol):
    """What a method supplies to the loop (built by its :class:`Recipe`)."""

    def step(
        self, images: Tensor, step: int, epoch: int, generator: torch.Generator, *, indices: Tensor
    ) -> dict[str, float]:
        """One optimization step on ``images`` ((B, 3, S, S) in [0, 1]), the data set's images number
        ``indices`` ((B,) int64); returns the loss terms."""

    def state_dict(self) -> dict[str, Any]:
        """Optimizers, schedulers and any further trained module (the discriminator)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Recipe:
    """A method's training ingredients.

    Attributes:
        method: registry name.
        Options: dataclass of its ``-o`` options.
        default_architecture: network arguments before ``-o architecture=...`` overrides.
        build_network: architecture dict -> trainable module.
        image_size: (architecture, options) -> training image side in pixels.
        default_steps: (options, steps per epoch) -> steps when ``--steps`` is not given.
        build_trainer: (network, surrogates, eps, options, pairs, accelerator, settings) -> :class:`Trainer`;
            ``settings.steps`` and ``settings.batch_size`` are resolved (never None) by then.
        prompt: (options) -> the surrogates' prompt.
        uses_pairs: whether ``--pairs`` means anything.
        default_batch_size: images per step and process when ``--batch-size`` is not given (the
            reference's).
    """

    method: str
    Options: type
    default_architecture: dict[str, Any]
    build_network: Callable[[dict[str, Any]], nn.Module]
    image_size: Callable[[dict[str, Any], Any], int]
    default_steps: Callable[[Any, int], int]
    build_trainer: Callable[..., Trainer]
    prompt: Callable[[Any], str]
    uses_pairs: bool = False
    default_batch_size: int = 1


@dataclass
class TrainSettings:
    """Everything ``facedefense train`` was asked for (see its ``--help``)."""

    method: str
    data: Path
    models: list[str]
    output: Path
    eps: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    pairs: Path | None = None
    resume: bool = False
    seed: int = 0
    save_every: int = 400
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    device: str = "auto"
    progress: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    last: dict[str, float]


def parse_options(Options: type, given: dict[str, Any], method: str) -> Any:
    """``-o key=value`` pairs -> the method's options dataclass (unknown keys refused)."""
    known = {f.name: f for f in fields(Options)}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"unknown training option(s) for {method}: {', '.join(unknown)} (known: {', '.join(known)})")
    values = {}
    for key, value in given.items():
        default = known[key].default
        try:
            values[key] = type(default)(value) if not isinstance(default, str) else str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"training option {key}={value!r} is not a {type(default).__name__}") from None
    return Options(**values)


def parse_architecture(text: str) -> dict[str, Any]:
    """``'{"depth": 2}'`` or ``depth=2,hidden_size=32`` -> dict (numbers parsed)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            return dict(json.loads(text))
        except ValueError as exc:
            raise ConfigError(f"architecture is not valid JSON: {exc}") from None
    result: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"architecture entry {item!r} is not key=value")
        try:
            result[key.strip()] = json.loads(value)
        except ValueError:
            result[key.strip()] = value.strip()
    return result


def _atomic_save(write: Callable[[Path], Any], path: Path) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    write(temporary)
    os.replace(temporary, path)


def _checkpoint_path(output: Path, method: str) -> Path:
    return output / f"{method}.safetensors"


def _resume_facts(settings: TrainSettings, recipe: Recipe) -> dict[str, Any]:
    """The sidecar of the run being resumed, checked against the request."""
    from facedefense.checkpoints import read_sidecar

    output, method = settings.output, recipe.method
    state = output / STATE_FILE
    sidecars = sorted(output.glob("*.safetensors.json")) if output.is_dir() else []
    if not state.is_file() or not sidecars:
        raise ConfigError(f"--resume: {output} holds no training run to resume ({STATE_FILE} and a checkpoint)")
    facts = read_sidecar(sidecars[0].with_suffix("")) or {}
    if facts.get("method") != method:
        raise ConfigError(f"--resume: {output} holds a {facts.get('method')} run, not {method}")
    trained = float(facts.get("eps", -1))
    if settings.eps is not None and abs(settings.eps - trained) > 1e-6:
        raise ConfigError(
            f"--resume: {output} was trained for {trained * 255:g}/255, not --eps {settings.eps * 255:g}/255; "
            "drop --eps or start a new --output"
        )
    return facts


def train(settings: TrainSettings, recipe: Recipe) -> TrainResult:
    """Train ``recipe.method``'s network as ``settings`` says (see the module docstring).

    Raises:
        ConfigError: bad settings, too little data, unreadable pairs, or a mismatched ``--resume``.
    """
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from facedefense.checkpoints import save_checkpoint
    from facedefense.runtime import keep_freed_memory, resolve_device
    from facedefense_amortized.training.data import ImageSet, read_pairs
    from facedefense_amortized.training.surrogates import load_surrogates

    method, output = recipe.method, Path(settings.output)
    if settings.mixed_precision not in PRECISIONS:
        raise ConfigError(f"--mixed-precision must be one of {', '.join(PRECISIONS)}")
    if settings.batch_size is None:
        settings = replace(settings, batch_size=recipe.default_batch_size)
    if settings.batch_size < 1 or (settings.steps is not None and settings.steps < 1) or settings.save_every < 1:
        raise ConfigError("--batch-size, --steps and --save-every must be at least 1")
    if not settings.models:
        raise ConfigError("--model names no model")
    if settings.pairs is not None and not recipe.uses_pairs:
        raise ConfigError(f"--pairs is for rid's regression loss; {method} does not use it")
    options = parse_options(recipe.Options, settings.options, method)
    checkpoint = _checkpoint_path(output, method)
    if settings.resume:
        facts = _resume_facts(settings, recipe)
        eps, architecture = float(facts["eps"]), dict(facts.get("architecture", {}))
    else:
        if checkpoint.exists() or (output / STATE_FILE).exists():
            raise ConfigError(f"{output} already holds a training run; pass --resume or choose another --output")
        eps = settings.eps if settings.eps is not None else 8 / 255
        architecture = {**recipe.default_architecture, **parse_architecture(getattr(options, "architecture", ""))}
    if not 0 < eps <= 1:
        raise ConfigError(f"--eps {eps} is outside (0, 1] ([0, 1] units, e.g. 8/255)")

    device = resolve_device(settings.device)
    if device.type == "cpu":
        keep_freed_memory()
    try:
        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=settings.mixed_precision)
    except ValueError:  # an earlier run in this process fixed accelerate's (process-wide) precision
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=settings.mixed_precision)
    size = recipe.image_size(architecture, options)
    world, rank = accelerator.num_processes, accelerator.process_index
    data = ImageSet(settings.data, size, batch_size=settings.batch_size * world)
    pairs = read_pairs(settings.pairs, size) if settings.pairs is not None else None
    steps_per_epoch = len(data) // (settings.batch_size * world)
    total = settings.steps or recipe.default_steps(options, steps_per_epoch)
    settings = replace(settings, steps=total)

    torch.manual_seed(settings.seed)
    network = recipe.build_network(architecture)
    if settings.resume:
        from facedefense.checkpoints import load_network, read_state_dict

        load_network(network, read_state_dict(checkpoint), method=method, checkpoint=checkpoint)
    network.train()
    if settings.gradient_checkpointing and hasattr(network, "gradient_checkpointing"):
        network.gradient_checkpointing = True
    surrogates = load_surrogates(settings.models, recipe.prompt(options), device=accelerator.device, dtype=torch.float32)
    if settings.gradient_checkpointing:
        for surrogate in surrogates:
            surrogate.vae.enable_gradient_checkpointing()
    network = network.to(accelerator.device)
    trainer = recipe.build_trainer(network, surrogates, eps, options, pairs, accelerator, settings)

    generator = torch.Generator().manual_seed(settings.seed * 1000 + rank)
    start = 0
    log_path = output / LOG_FILE
    if settings.resume:
        state = torch.load(output / STATE_FILE, map_location="cpu", weights_only=True)
        start = int(state["step"])
        trainer.load_state_dict(state["trainer"])
        generator.set_state(state["generator"][rank] if rank < len(state["generator"]) else state["generator"][0])
        torch.set_rng_state(state["torch_rng"])
        if log_path.is_file():  # drop what was logged after the saved step
            kept = [line for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line)["step"] <= start]
            log_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    elif accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        log_path.write_text("", encoding="utf-8")
    if start >= total:
        raise ConfigError(f"--resume: the run in {output} already has {start} steps (--steps {total})")

    def save(step: int) -> None:
        generators = accelerator.gather(generator.get_state()[None].to(accelerator.device)).cpu() if world > 1 else generator.get_state()[None]
        if not accelerator.is_main_process:
            return
        facts = {
            "data": str(Path(settings.data).resolve()),
            "images": len(data),
            "models": settings.models,
            "steps": step,
            "batch_size": settings.batch_size * world,
            "seed": settings.seed,
            "pairs": str(Path(settings.pairs).resolve()) if settings.pairs else None,
            "options": {f.name: getattr(options, f.name) for f in fields(options)},
            "trained_with": "facedefense train",
        }
        module = accelerator.unwrap_model(network)
        _atomic_save(lambda p: save_checkpoint(module, p, method=method, eps=eps, architecture=architecture, **facts), checkpoint)
        os.replace(checkpoint.with_name(f".{checkpoint.name}.partial.json"), checkpoint.with_name(checkpoint.name + ".json"))
        state = {
            "step": step,
            "trainer": trainer.state_dict(),
            "generator": list(generators),
            "torch_rng": torch.get_rng_state(),
        }
        _atomic_save(lambda p: torch.save(state, p), output / STATE_FILE)

    bar = tqdm(total=total, initial=start, desc=f"train {method}", disable=not (settings.progress and accelerator.is_main_process))
    last: dict[str, float] = {}
    with log_path.open("a", encoding="utf-8") if accelerator.is_main_process else nullcontext() as log:
        for step in range(start, total):
            epoch, offset = divmod(step, steps_per_epoch)
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(settings.seed * 100_003 + epoch))
            first = (offset * world + rank) * settings.batch_size
            indices = order[first : first + settings.batch_size]
            images = data.images[indices].to(accelerator.device)
            started = time.perf_counter()
            last = trainer.step(images, step, epoch, generator, indices=indices)
            seconds = time.perf_counter() - started
            if log is not None:
                log.write(json.dumps({"step": step + 1, "epoch": epoch, **last, "seconds": round(seconds, 4)}) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4g}")
            if (step + 1) % settings.save_every == 0 or step + 1 == total:
                save(step + 1)
    bar.close()
    return TrainResult(checkpoint, total, last)


def autocast_for(accelerator: Any) -> Callable[[], Any]:
    """A context-manager factory: mixed precision as accelerate was configured, else nothing."""
    if accelerator.mixed_precision == "no":
        return nullcontext
    return accelerator.autocast
