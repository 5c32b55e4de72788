"""The training loop shared by the amortized defenders: data order, randomness, checkpoints,
resuming, JSONL logs, progress, and ``accelerate`` (one or many GPUs, mixed precision).

An output folder holds one run:

- ``<method>.safetensors`` + ``<method>.safetensors.json``: the network and its sidecar (method,
  budget, architecture, data, models, steps), loadable by ``facedefense protect --checkpoint``;
- ``training_state.pt``: step, optimizer and scheduler states, the discriminator (GAP-Diff) and
  every random state, so ``--resume`` continues exactly where the run stopped (the same loss curve
  as an uninterrupted run);
- ``log.jsonl``: one line per step with every loss term;
- ``facedefense.json``: the run's manifest (`facedefense.outputs`, command ``train``): its files,
  ``status`` (``running``, ``completed``, ``interrupted``, ``failed`` with the ``error``) and
  ``saved_step``.

Before it writes anything, a run checks its options, claims ``--output`` (never an input, never a
folder holding files no train run listed; a run folder without a manifest counts as a train run
only when its sidecar says ``facedefense train`` wrote it and it holds nothing else) and loads its
data, models and, with ``--resume``, its state. A save writes checkpoint, sidecar and state to
temporary files (the umask's permissions) and renames them together, Ctrl-C deferred until then.

Randomness: the data order of epoch e is a permutation seeded by ``(seed, e)``; timesteps, noise
and preprocessing choices come from one CPU ``torch.Generator`` (saved; every draw happens on its
device, then moves to the accelerator); dropout uses torch's global generator (saved too).

Multi-GPU and multi-node: ``accelerate launch $(which facedefense) train ...``; each process takes its
own slice of every batch of ``batch_size x processes`` images, and the main process writes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from facedefense.errors import ConfigError, OutputError, ResumeError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

STATE_FILE = "training_state.pt"
LOG_FILE = "log.jsonl"
PRECISIONS = ("no", "bf16", "fp16")
#: The command a run folder's manifest names (`facedefense.outputs`).
COMMAND = "train"
#: Largest ``--seed``: the loop derives per-epoch and per-process seeds from it by multiplication.
MAX_TRAIN_SEED = 2**32 - 1
#: Largest ``--steps``, ``--batch-size`` and ``--save-every``.
MAX_COUNT = 10**9


class Trainer(Protocol):
    """What a method supplies to the loop (built by its ``Recipe``)."""

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
        build_trainer: (network, surrogates, eps, options, pairs, accelerator, settings) -> ``Trainer``;
            ``settings.steps`` and ``settings.batch_size`` are resolved (never None) by then.
        prompt: (options) -> the surrogates' prompt.
        uses_pairs: whether ``--pairs`` means anything.
        default_batch_size: images per step and process when ``--batch-size`` is not given (the
            reference's).
        network_class: the class ``build_network`` builds; its classmethod
            ``architecture_shapes(architecture)`` checks an architecture before anything is built.
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
    network_class: type | None = None


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
    """``-o key=value`` pairs -> the method's options dataclass (unknown keys refused; the dataclass
    checks its own ranges)."""
    known = {f.name: f for f in fields(Options)}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"unknown training option(s) for {method}: {', '.join(unknown)} (known: {', '.join(known)})")
    values = {}
    for key, value in given.items():
        default = known[key].default
        try:
            values[key] = type(default)(value) if not isinstance(default, str) else str(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"training option {key}={value!r} is not a {type(default).__name__}") from None
        if isinstance(values[key], float) and not math.isfinite(values[key]):
            raise ConfigError(f"training option {key}={value!r} is not a finite number")
    return Options(**values)


def parse_architecture(text: str) -> dict[str, Any]:
    """``'{"depth": 2}'`` or ``depth=2,hidden_size=32`` -> dict (numbers parsed)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"architecture is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigError("architecture JSON must be an object of keyword arguments")
        return parsed
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


def check_architecture(recipe: Recipe, architecture: dict[str, Any]) -> None:
    """Refuse an architecture the method's network cannot build (types, bounds, divisibility)
    before anything is loaded or allocated (`Recipe.network_class`'s ``architecture_shapes``)."""
    shapes = getattr(recipe.network_class, "architecture_shapes", None)
    if shapes is not None:
        try:
            shapes(architecture)
        except ConfigError as exc:
            raise ConfigError(f"{recipe.method}: {exc}") from None


def _checkpoint_path(output: Path, method: str) -> Path:
    return output / f"{method}.safetensors"


def _run_files(method: str) -> list[str]:
    """The files a run of ``method`` writes into its folder (besides the manifest)."""
    checkpoint = f"{method}.safetensors"
    return [checkpoint, checkpoint + ".json", STATE_FILE, LOG_FILE]


def _holds_a_run(output: Path) -> bool:
    return (output / STATE_FILE).exists() or any(output.glob("*.safetensors"))


def _legacy_run(output: Path) -> bool:
    """Whether ``output`` is a run folder written before run folders had a manifest, provably:
    no manifest, only a run's files, a sidecar that says ``facedefense train`` wrote it, and its
    training state. Anything else without a manifest is a folder of unknown origin."""
    from facedefense.checkpoints import sidecar_path
    from facedefense.outputs import MANIFEST_NAME, visible_files

    if not output.is_dir() or (output / MANIFEST_NAME).exists() or not (output / STATE_FILE).is_file():
        return False
    sidecars = sorted(output.glob("*.safetensors.json"))
    if len(sidecars) != 1:
        return False
    try:
        facts = json.loads(sidecars[0].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(facts, dict) or facts.get("trained_with") != "facedefense train" or not isinstance(facts.get("method"), str):
        return False
    checkpoint = sidecars[0].with_suffix("")
    if checkpoint.name != f"{facts['method']}.safetensors" or not checkpoint.is_file() or sidecar_path(checkpoint) != sidecars[0]:
        return False
    return {p.name for p in visible_files(output)} <= set(_run_files(facts["method"]))


def _resume_facts(settings: TrainSettings, recipe: Recipe) -> dict[str, Any]:
    """The sidecar of the run being resumed, checked against the request and against its weights'
    shapes (read from the file's header, before anything is allocated)."""
    from facedefense.checkpoints import check_architecture as fits
    from facedefense.checkpoints import read_sidecar, safetensors_shapes

    output, method = settings.output, recipe.method
    state = output / STATE_FILE
    sidecars = sorted(output.glob("*.safetensors.json")) if output.is_dir() else []
    if not state.is_file() or not sidecars:
        raise ConfigError(f"--resume: {output} holds no training run to resume ({STATE_FILE} and a checkpoint)")
    checkpoint = _checkpoint_path(output, method)
    facts = read_sidecar(checkpoint if checkpoint.with_name(checkpoint.name + ".json").is_file() else sidecars[0].with_suffix("")) or {}
    if facts.get("method") != method:
        raise ConfigError(f"--resume: {output} holds a {facts.get('method')} run, not {method}")
    if not checkpoint.is_file():
        raise ConfigError(f"--resume: {output} has no {checkpoint.name} to resume from")
    if "eps" not in facts:
        raise ConfigError(f"--resume: {checkpoint.name}'s metadata records no budget (eps); start a new --output")
    trained = float(facts["eps"])
    if settings.eps is not None and abs(settings.eps - trained) > 1e-6:
        raise ConfigError(
            f"--resume: {output} was trained for {trained * 255:g}/255, not --eps {settings.eps * 255:g}/255; "
            "drop --eps or start a new --output"
        )
    steps = facts.get("steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"--resume: {checkpoint.name}'s metadata records no step count; start a new --output")
    architecture = dict(facts.get("architecture", {}))
    if recipe.network_class is not None:
        fits(recipe.network_class, architecture, safetensors_shapes(checkpoint), method=method, checkpoint=checkpoint)
    return facts


def _read_state(output: Path, saved_step: int) -> dict[str, Any]:
    """The training state of a resumed run, its structure checked, and at its checkpoint's step.

    Raises:
        ResumeError: unreadable, code in the pickle, not a training state, or a save cut short.
    """
    import torch

    from facedefense.checkpoints import load_torch_file

    path = output / STATE_FILE
    state = load_torch_file(path, what="training state", error=ResumeError)
    generators = state.get("generator") if isinstance(state, dict) else None
    valid = (
        isinstance(state, dict)
        and isinstance(state.get("step"), int) and not isinstance(state["step"], bool) and state["step"] >= 0
        and isinstance(state.get("trainer"), dict)
        and isinstance(generators, (list, tuple)) and len(generators) > 0
        and all(isinstance(g, torch.Tensor) and g.dtype == torch.uint8 for g in generators)
        and isinstance(state.get("torch_rng"), torch.Tensor) and state["torch_rng"].dtype == torch.uint8
    )
    if not valid:
        raise ResumeError(f"--resume: {path} is not a facedefense training state (step, trainer, generator, torch_rng)")
    if state["step"] != saved_step:
        raise ResumeError(
            f"--resume: {path} is at step {state['step']} but the checkpoint beside it at step {saved_step} "
            "(a save was cut short); start a new --output (the checkpoint itself is usable)"
        )
    return state


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends, then interrupt: the files of one save are
    renamed into place together (checkpoint, sidecar and state always of the same step)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    signals = [signal.SIGINT, *([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])]
    saved = {number: signal.getsignal(number) for number in signals}
    for number in signals:
        signal.signal(number, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
    if received:
        raise KeyboardInterrupt


class RunFolder:
    """A training run's folder under the output claim (`facedefense.outputs`, command ``train``):
    its manifest (``facedefense.json``: status ``running``, ``completed``, ``interrupted`` or
    ``failed``, the files, the last saved step) and its log. Only the main process has one.

    Use `open` once everything is checked and loaded (it claims and locks the folder, writes
    the manifest and prepares the log), then `log`, `saved`, and `finish` (always).
    """

    def __init__(self, settings: TrainSettings, method: str, existing: str, inputs: list[Path]) -> None:
        self.settings, self.method, self.existing, self.inputs = settings, method, existing, inputs
        self.path = Path(settings.output)
        self.manifest: dict[str, Any] = {}
        self.claim: Any = None
        self.log_file: Any = None

    def open(self, *, total: int, start: int, eps: float, adopt: bool) -> None:
        from facedefense.batch import versions
        from facedefense.io import atomic_path, write_json
        from facedefense.outputs import MANIFEST_NAME, OutputFolder

        if adopt:  # a run folder from before manifests: list exactly its files, then claim it
            write_json({"command": COMMAND, "method": self.method, "status": "interrupted", "files": _run_files(self.method),
                        "adopted": "a run folder written before run folders had a manifest"}, self.path / MANIFEST_NAME)
        self.claim = OutputFolder.claim(self.path, COMMAND, inputs=self.inputs, existing=self.existing)
        earlier = self.claim.earlier
        self.manifest = {
            "command": COMMAND,
            "method": self.method,
            "status": "running",
            "created": _now(),
            "finished": None,
            "argv": list(sys.argv),
            "files": _run_files(self.method),
            "eps": eps,
            "data": str(Path(self.settings.data).resolve()),
            "models": self.settings.models,
            "steps": total,
            "saved_step": start if self.settings.resume else None,
            "versions": versions(),
        }
        if earlier is not None:
            runs = earlier.get("earlier_runs") if isinstance(earlier.get("earlier_runs"), list) else []
            previous = {key: earlier.get(key) for key in ("created", "finished", "status", "saved_step")}
            self.manifest["earlier_runs"] = [*runs, previous][-20:]
        write_json(self.manifest, self.path / MANIFEST_NAME)
        log = self.path / LOG_FILE
        kept = _log_lines(log, start) if self.settings.resume and log.is_file() else []
        with atomic_path(log) as temporary:  # a resumed run drops what was logged after its saved step
            temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        try:
            self.log_file = log.open("a", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{log}: cannot be written ({exc.strerror or exc})") from exc

    def log(self, record: dict[str, Any]) -> None:
        try:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()
        except OSError as exc:
            raise OutputError(f"{self.path / LOG_FILE}: cannot be written ({exc.strerror or exc})") from exc

    def saved(self, step: int) -> None:
        from facedefense.io import write_json
        from facedefense.outputs import MANIFEST_NAME

        self.manifest["saved_step"] = step
        write_json(self.manifest, self.path / MANIFEST_NAME)

    def finish(self, status: str, error: BaseException | None = None) -> None:
        """Record how the run ended (best effort: a full disk may refuse even that) and unlock."""
        from facedefense.io import write_json
        from facedefense.outputs import MANIFEST_NAME

        try:
            if self.log_file is not None:
                with suppress(OSError):
                    self.log_file.close()
            if self.manifest:
                self.manifest.update(status=status, finished=_now())
                if error is not None:
                    text = str(error).strip()
                    self.manifest["error"] = text.splitlines()[0] if text else type(error).__name__
                with suppress(OSError):
                    write_json(self.manifest, self.path / MANIFEST_NAME)
        finally:
            if self.claim is not None:
                self.claim.release()


def _log_lines(path: Path, step: int) -> list[str]:
    """The log's lines up to ``step`` (lines that do not parse, e.g. cut by a crash, are dropped)."""
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    return kept


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _claim_mode(settings: TrainSettings) -> tuple[str, bool]:
    """How the output claim treats what ``--output`` holds, and whether it is a run folder from
    before manifests to adopt (``--resume`` only).

    Raises:
        ConfigError: a fresh run into a folder that holds a resumable run.
    """
    from facedefense.outputs import read_manifest

    output = Path(settings.output)
    legacy = _legacy_run(output)
    earlier = read_manifest(output) if output.is_dir() else None
    ours = legacy or (earlier is not None and earlier.get("command") == COMMAND)
    if settings.resume:
        return "add", legacy
    if ours and _holds_a_run(output):
        raise ConfigError(f"{output} already holds a training run; pass --resume or choose another --output")
    # an earlier run that saved nothing to resume from (stopped before its first save) is replaced
    return ("overwrite" if ours else "refuse"), False


def _check_settings(settings: TrainSettings, recipe: Recipe) -> tuple[TrainSettings, Any]:
    """Every check that needs neither the data nor a model: options, ranges, paths."""
    method = recipe.method
    if settings.mixed_precision not in PRECISIONS:
        raise ConfigError(f"--mixed-precision must be one of {', '.join(PRECISIONS)}")
    if settings.batch_size is None:
        settings = replace(settings, batch_size=recipe.default_batch_size)
    for name, value in (("--batch-size", settings.batch_size), ("--steps", settings.steps), ("--save-every", settings.save_every)):
        if value is not None and not 1 <= value <= MAX_COUNT:
            raise ConfigError(f"{name} must be from 1 to {MAX_COUNT:,}, got {value}")
    if not 0 <= settings.seed <= MAX_TRAIN_SEED:
        raise ConfigError(f"--seed must be an integer from 0 to {MAX_TRAIN_SEED}, got {settings.seed}")
    if settings.eps is not None and not 0 < settings.eps <= 1:
        raise ConfigError(f"--eps {settings.eps} is outside (0, 1] ([0, 1] units, e.g. 8/255)")
    if not settings.models:
        raise ConfigError("--model names no model")
    if settings.pairs is not None and not recipe.uses_pairs:
        raise ConfigError(f"--pairs is for rid's regression loss; {method} does not use it")
    if settings.pairs is not None and not Path(settings.pairs).is_file():
        raise ConfigError(f"--pairs {settings.pairs} is not a file")
    if not Path(settings.data).is_dir():
        raise ConfigError(f"--data {settings.data} is not a folder")
    options = parse_options(recipe.Options, settings.options, method)
    return settings, options


def _inputs(settings: TrainSettings) -> list[Path]:
    """What the run reads: the output may be none of them, lie in none and hold none."""
    models = [Path(model).expanduser() for model in settings.models if Path(model).expanduser().exists()]
    return [Path(settings.data), *([Path(settings.pairs)] if settings.pairs else []), *models]


def train(settings: TrainSettings, recipe: Recipe) -> TrainResult:
    """Train ``recipe.method``'s network as ``settings`` says (see the module docstring).

    Everything is checked and loaded before the first write (options, paths, the output claim,
    the architecture, the data, the models, a resumed run's state); the run folder's manifest then
    records the run (``running``), and how it ended (``completed``, ``interrupted``, ``failed``).

    Raises:
        ConfigError: bad settings, too little data, unreadable pairs, or a mismatched ``--resume``.
        OutputError: the output claim refuses ``--output``, or a write fails (one line).
        ResumeError: a resumed run's state cannot be read or does not fit.
    """
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from facedefense.checkpoints import load_network, read_state_dict, save_checkpoint
    from facedefense.io import atomic_path
    from facedefense.outputs import OutputFolder, check_location
    from facedefense.runtime import keep_freed_memory, resolve_device
    from facedefense_amortized.training.data import ImageSet, read_pairs
    from facedefense_amortized.training.surrogates import load_surrogates

    method, output = recipe.method, Path(settings.output)
    settings, options = _check_settings(settings, recipe)
    existing, adopt = _claim_mode(settings)
    inputs = _inputs(settings)
    if adopt:  # proven a run of facedefense train: the claim follows once its manifest is written
        check_location(output, inputs)
    else:
        OutputFolder.claim(output, COMMAND, inputs=inputs, existing=existing, dry_run=True)
    checkpoint = _checkpoint_path(output, method)
    facts: dict[str, Any] = {}
    if settings.resume:
        facts = _resume_facts(settings, recipe)
        eps, architecture = float(facts["eps"]), dict(facts.get("architecture", {}))
    else:
        eps = settings.eps if settings.eps is not None else 8 / 255
        architecture = {**recipe.default_architecture, **parse_architecture(getattr(options, "architecture", ""))}
    check_architecture(recipe, architecture)
    size = recipe.image_size(architecture, options)
    state = _read_state(output, facts["steps"]) if settings.resume else None

    device = resolve_device(settings.device)
    if device.type == "cpu":
        keep_freed_memory()
    try:
        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=settings.mixed_precision)
    except ValueError:  # an earlier run in this process fixed accelerate's (process-wide) precision
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=settings.mixed_precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    data = ImageSet(settings.data, size, batch_size=settings.batch_size * world)
    pairs = read_pairs(settings.pairs, size) if settings.pairs is not None else None
    steps_per_epoch = len(data) // (settings.batch_size * world)
    total = settings.steps or recipe.default_steps(options, steps_per_epoch)
    settings = replace(settings, steps=total)
    start = int(state["step"]) if state is not None else 0
    if start >= total:
        raise ConfigError(f"--resume: the run in {output} already has {start} steps (--steps {total})")

    torch.manual_seed(settings.seed)
    weights = read_state_dict(checkpoint) if settings.resume else None
    network = recipe.build_network(architecture)
    if weights is not None:
        load_network(network, weights, method=method, checkpoint=checkpoint)
    network.train()
    if settings.gradient_checkpointing and hasattr(network, "gradient_checkpointing"):
        network.gradient_checkpointing = True
    if settings.progress and accelerator.is_main_process:  # loading the diffusion models takes a while
        from facedefense.progress import progress_enabled_as, status

        with progress_enabled_as(True):
            status(f"train {method}: loading {', '.join(settings.models)} ...")
    surrogates = load_surrogates(settings.models, recipe.prompt(options), device=accelerator.device, dtype=torch.float32)
    if settings.gradient_checkpointing:
        for surrogate in surrogates:
            surrogate.vae.enable_gradient_checkpointing()
    network = network.to(accelerator.device)
    trainer = recipe.build_trainer(network, surrogates, eps, options, pairs, accelerator, settings)

    generator = torch.Generator().manual_seed(settings.seed * 1000 + rank)
    if state is not None:
        try:
            trainer.load_state_dict(state["trainer"])
            generator.set_state(state["generator"][rank] if rank < len(state["generator"]) else state["generator"][0])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ResumeError(f"--resume: {output / STATE_FILE} does not fit this run ({text[:160]})") from None

    # Everything is checked and loaded: from here on the run writes (the main process only).
    run = RunFolder(settings, method, existing, inputs) if accelerator.is_main_process else None
    status, failure = "failed", None
    try:
        if run is not None:
            run.open(total=total, start=start, eps=eps, adopt=adopt)

        def save(step: int) -> None:
            generators = accelerator.gather(generator.get_state()[None].to(accelerator.device)).cpu() if world > 1 else generator.get_state()[None]
            if run is None:
                return
            sidecar = {
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
            saved = {"step": step, "trainer": trainer.state_dict(), "generator": list(generators), "torch_rng": torch.get_rng_state()}
            with _signals_deferred():  # the three files are renamed into place together, never half
                with atomic_path(output / STATE_FILE) as temporary:
                    with open(temporary, "wb") as handle:  # a full disk is an OSError here, not torch's RuntimeError
                        torch.save(saved, handle)
                    save_checkpoint(module, checkpoint, method=method, eps=eps, architecture=architecture, **sidecar)
                run.saved(step)

        bar = tqdm(total=total, initial=start, desc=f"train {method}", disable=not (settings.progress and run is not None))
        last: dict[str, float] = {}
        for step in range(start, total):
            epoch, offset = divmod(step, steps_per_epoch)
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(settings.seed * 100_003 + epoch))
            first = (offset * world + rank) * settings.batch_size
            indices = order[first : first + settings.batch_size]
            images = data.images[indices].to(accelerator.device)
            started = time.perf_counter()
            last = trainer.step(images, step, epoch, generator, indices=indices)
            seconds = time.perf_counter() - started
            if run is not None:
                run.log({"step": step + 1, "epoch": epoch, **last, "seconds": round(seconds, 4)})
            bar.update(1)
            bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4g}")
            if (step + 1) % settings.save_every == 0 or step + 1 == total:
                save(step + 1)
        bar.close()
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if run is not None:
            run.finish(status, failure)
    return TrainResult(checkpoint, total, last)


def autocast_for(accelerator: Any) -> Callable[[], Any]:
    """A context-manager factory: mixed precision as accelerate was configured, else nothing."""
    if accelerator.mixed_precision == "no":
        return nullcontext
    return accelerator.autocast
