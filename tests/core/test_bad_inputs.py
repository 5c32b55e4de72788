"""The bad-input corpus: every command against unusual, broken and hostile inputs and outputs.

Each case runs a command in-process (CliRunner) and then checks the invariants every run keeps,
whatever happened:

- no traceback, at most one ``error:`` line, the expected exit status (0 done, 1 some inputs
  skipped, 2 refused before any work, 130 interrupted);
- the inputs are byte-identical afterwards;
- no temporary or half-written file anywhere (``*.tmp``, probe files);
- every written image is within its budget (``protect``) and readable with the umask's mode.

Extension point: a branch that adds a command (``attack``, ``benchmark``) adds an entry to
``COMMANDS`` (name -> function building its argument list from an input path and an output
folder) and the file cases below run against it too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from facedefense.testing.cli import invoke

EPS_LEVELS = 4
UMASK = 0o022



# -- the commands under test ----------------------------------------------------------------------

COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "protect": lambda source, out: ["protect", source, "--method", "test_shift", "--eps", f"{EPS_LEVELS}/255", "--output", out],
    "purify": lambda source, out: ["purify", source, "--method", "jpeg", "--output", out],
}


def evaluate_args(source: Path, out: Path) -> list[str]:
    """``evaluate`` scores the file against a clean copy of the good image under the same stem."""
    from facedefense.errors import ImageError
    from facedefense.io import load_image, save_image

    reference = out.parent / "reference"
    reference.mkdir(exist_ok=True)
    try:
        save_image(load_image(source).pixels, reference / f"{source.stem}.png")
    except ImageError:
        Image.fromarray(rgb(48, 40)).save(reference / f"{source.stem}.png")
    return ["evaluate", source, "--reference", reference, "--metric", "psnr", "--json", out.parent / "scores.json"]


COMMANDS["evaluate"] = evaluate_args


# -- the corpus -----------------------------------------------------------------------------------


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 220, (height, width, 3), dtype=np.uint8)


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (a decompression bomb's header) and no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def write_case(name: str, folder: Path) -> Path:
    """Write the corpus file ``name`` into ``folder`` and return its path."""
    from PIL import ImageCms

    image = Image.fromarray(rgb(48, 40))
    if name == "good":
        path = folder / "good.png"
        image.save(path)
    elif name == "corrupt":
        path = folder / "corrupt.png"
        image.save(path)
        data = bytearray(path.read_bytes())
        data[60:-20] = bytes(len(data) - 80)  # the pixel data zeroed: the checksums fail
        path.write_bytes(bytes(data))
    elif name == "truncated":
        path = folder / "truncated.jpg"
        image.save(folder / "whole.jpg", quality=95)
        path.write_bytes((folder / "whole.jpg").read_bytes()[:300])
        (folder / "whole.jpg").unlink()
    elif name == "zero_bytes":
        path = folder / "empty.png"
        path.write_bytes(b"")
    elif name == "not_an_image":
        path = folder / "notes.png"
        path.write_text("these are not pixels\n")
    elif name == "tiny":
        path = folder / "tiny.png"
        Image.fromarray(rgb(8, 8)).save(path)
    elif name == "huge_header":
        path = folder / "bomb.png"
        path.write_bytes(png_with_header(20_000, 20_000))
    elif name == "extreme_aspect":
        path = folder / "strip.png"
        Image.fromarray(rgb(16, 4000)).save(path)
    elif name == "cmyk":
        path = folder / "cmyk.jpg"
        image.convert("CMYK").save(path, quality=95)
    elif name == "gray16":
        path = folder / "gray16.png"
        Image.fromarray(np.arange(48 * 40, dtype=np.uint16).reshape(48, 40) * 30).save(path)
    elif name == "palette":
        path = folder / "palette.png"
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    elif name == "alpha":
        path = folder / "alpha.png"
        rgba = np.dstack([rgb(48, 40), np.full((48, 40), 128, np.uint8)])
        Image.fromarray(rgba, mode="RGBA").save(path)
    elif name == "exif_rotated":
        path = folder / "rotated.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        image.save(path, exif=exif, quality=95)
    elif name == "icc":
        path = folder / "icc.png"
        profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
        image.save(path, icc_profile=profile)
    else:
        raise ValueError(name)
    return path


#: file case -> (exit status, what the error/skip line says; "" for a success)
FILE_CASES = {
    "good": (0, ""),
    "corrupt": (1, "corrupt or truncated"),
    "truncated": (1, "corrupt or truncated"),
    "zero_bytes": (1, "empty file"),
    "not_an_image": (1, "not an image"),
    "tiny": (1, "too small"),
    "huge_header": (1, "decompression bomb"),
    "extreme_aspect": (1, "extreme aspect ratio"),
    "cmyk": (0, ""),
    "gray16": (0, ""),
    "palette": (0, ""),
    "alpha": (0, ""),
    "exif_rotated": (0, ""),
    "icc": (0, ""),
}


# -- the invariants -------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@dataclass
class Workspace:
    root: Path
    inputs: Path
    before: dict[str, str] | None = None

    def freeze(self) -> None:
        self.before = snapshot(self.inputs)

    def check(self, result, code: int, match: str = "") -> None:
        """The invariants of every run."""
        output = result.output + (result.stderr if result.stderr_bytes is not None else "")
        assert "Traceback" not in output and result.exception is None or isinstance(result.exception, SystemExit), output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) <= 1, result.stderr
        assert result.exit_code == code, output
        if code == 2:
            assert len(errors) == 1 and match in errors[0], result.stderr
        elif match:
            assert match in result.stderr, result.stderr
        assert snapshot(self.inputs) == self.before, "an input was modified"
        leftovers = [p for p in self.root.rglob("*") if p.name.endswith(".tmp") or "facedefense-probe" in p.name]
        assert not leftovers, leftovers
        for path in self.root.rglob("*"):
            if path.is_file() and not path.is_symlink() and self.inputs not in path.parents:
                assert path.stat().st_mode & 0o777 == 0o666 & ~UMASK, (path, oct(path.stat().st_mode))


@pytest.fixture
def workspace(tmp_path, shift_defender):
    previous = os.umask(UMASK)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    try:
        yield Workspace(tmp_path, inputs)
    finally:
        os.umask(previous)


def check_budget_of_outputs(folder: Path, manifest: dict) -> None:
    """Every written image is within the budget of its (decoded) input."""
    from facedefense.io import load_image

    for entry in manifest["images"]:
        written = load_image(folder / entry["output"]).pixels
        original = load_image(entry["input"]).pixels
        assert written.shape == original.shape
        assert ((written - original).abs().max() * 255).round() <= EPS_LEVELS
        assert entry["within_budget"] and entry["linf_gray_levels"] <= EPS_LEVELS


# -- file cases x commands ------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_file_case(workspace, case, command):
    code, match = FILE_CASES[case]
    source = write_case(case, workspace.inputs)
    workspace.freeze()
    out = workspace.root / "out"
    result = invoke(*COMMANDS[command](source, out))
    if command == "evaluate":
        # evaluate refuses a folder with nothing readable (2) and reports a skipped file otherwise
        workspace.check(result, 0 if code == 0 else 2, match)
        if code == 0:
            assert json.loads((workspace.root / "scores.json").read_text())["metrics"]["psnr"]["count"] == 1
        else:
            assert not (workspace.root / "scores.json").exists()
        return
    workspace.check(result, code, match)
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "completed" and manifest["summary"]["completed"]
    assert manifest["summary"]["planned"] == 1
    assert manifest["summary"]["processed"] == (1 if code == 0 else 0)
    assert manifest["summary"]["failed"] == (0 if code == 0 else 1)
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ([f"{source.stem}.png"] if code == 0 else [])
    if code == 0:
        with Image.open(out / written[0]) as image:
            if case == "alpha":
                assert image.mode == "RGBA"
            if case == "exif_rotated":
                assert image.size == (48, 40)  # upright: the 40x48 landscape file displays as portrait
            if case == "icc":
                assert image.info.get("icc_profile")
        if command == "protect":
            check_budget_of_outputs(out, manifest)


# -- inputs: symlinks and names -------------------------------------------------------------------


def test_symlinks_are_named_as_given(workspace):
    source = write_case("good", workspace.inputs)
    (workspace.inputs / "my_face.png").symlink_to(source)
    (workspace.inputs / "also_me.png").symlink_to(source)
    workspace.freeze()
    out = workspace.root / "out"
    links = [workspace.inputs / "my_face.png", workspace.inputs / "also_me.png"]
    result = invoke(*COMMANDS["protect"](links[0], out), links[1])
    workspace.check(result, 0)
    assert sorted(p.name for p in out.glob("*.png")) == ["also_me.png", "my_face.png"]
    manifest = json.loads((out / "facedefense.json").read_text())
    assert {Path(e["input"]).name for e in manifest["inputs"]} == {"my_face.png", "also_me.png"}
    assert all(e["target"] == str(source.resolve()) for e in manifest["inputs"])


def test_broken_symlink(workspace):
    (workspace.inputs / "gone.png").symlink_to(workspace.inputs / "missing.png")
    workspace.freeze()
    out = workspace.root / "out"
    workspace.check(invoke(*COMMANDS["protect"](workspace.inputs / "gone.png", out)), 2, "broken symbolic link")
    assert not out.exists()


@pytest.mark.parametrize("command", ["protect", "purify"])
def test_duplicate_stems_refused_before_work(workspace, command):
    source = write_case("good", workspace.inputs)
    Image.open(source).save(workspace.inputs / "good.jpg", quality=95)
    workspace.freeze()
    out = workspace.root / "out"
    workspace.check(invoke(*COMMANDS[command](workspace.inputs, out)), 2, "would both be written as good.png")
    assert not out.exists()


# -- options and budgets --------------------------------------------------------------------------

BAD_OPTIONS = {
    "no method": (["protect", "{in}", "--output", "{out}"], "missing option '--method'"),
    "purifier as defender": (["protect", "{in}", "-m", "jpeg", "--output", "{out}"], "'jpeg' is a purifier"),
    "defender as purifier": (["purify", "{in}", "-m", "test_shift", "--output", "{out}"], "'test_shift' is a defender"),
    "unknown method": (["protect", "{in}", "-m", "photoguardd", "--output", "{out}"], "photoguard"),
    "misspelled option": (["protect", "{in}", "-m", "test_ranged", "-o", "cel=2", "--output", "{out}"], "did you mean 'cell'"),
    "option out of range": (["protect", "{in}", "-m", "test_ranged", "-o", "cell=100000", "--output", "{out}"], "option 'cell' must be from 1 to 64, got 100000"),
    "option not a number": (["protect", "{in}", "-m", "test_ranged", "-o", "cell=big", "--output", "{out}"], "must be an integer"),
    "bad option syntax": (["protect", "{in}", "-m", "test_shift", "-o", "cell", "--output", "{out}"], "use -o key=value"),
    "zero budget": (["protect", "{in}", "-m", "test_shift", "--eps", "0", "--output", "{out}"], "outside (0, 1]"),
    "budget above one": (["protect", "{in}", "-m", "test_shift", "--eps", "2", "--output", "{out}"], "outside (0, 1]"),
    "budget not a number": (["protect", "{in}", "-m", "test_shift", "--eps", "eight", "--output", "{out}"], "bad budget 'eight'"),
    "budget with zero denominator": (["protect", "{in}", "-m", "test_shift", "--eps", "8/0", "--output", "{out}"], "bad budget '8/0'"),
    "negative seed": (["protect", "{in}", "-m", "test_shift", "--seed", "-1", "--output", "{out}"], "seed"),
    "seed overflow": (["protect", "{in}", "-m", "test_shift", "--seed", "99999999999999999999999", "--output", "{out}"], "seed must be"),
    "batch size zero": (["protect", "{in}", "-m", "test_shift", "--batch-size", "0", "--output", "{out}"], "--batch-size"),
    "steps not a number": (["protect", "{in}", "-m", "test_shift", "--steps", "abc", "--output", "{out}"], "--steps"),
    "unknown device": (["protect", "{in}", "-m", "test_shift", "--device", "tpu", "--output", "{out}"], "device"),
    "missing model folder": (["protect", "{in}", "-m", "test_shift", "--model", "./no/such/model", "--output", "{out}"], "model folder ./no/such/model does not exist"),
    "text file as checkpoint": (["protect", "{in}", "-m", "test_ranged", "--checkpoint", "{in}", "--output", "{out}"], "not a weights file"),
    "missing checkpoint": (["protect", "{in}", "-m", "test_shift", "--checkpoint", "nope.pt", "--output", "{out}"], "does not exist"),
    "overwrite and add": (["protect", "{in}", "-m", "test_shift", "--overwrite", "--add", "--output", "{out}"], "exclude each other"),
    "resume and overwrite": (["protect", "{in}", "-m", "test_shift", "--resume", "--overwrite", "--output", "{out}"], "--resume and --overwrite exclude each other"),
    "missing input": (["protect", "{in}.missing", "-m", "test_shift", "--output", "{out}"], "no such file"),
    "unknown command": (["atack", "{in}"], "no such command"),
    "evaluate without metric reference": (["evaluate", "{in}", "--metric", "psnr"], "reference"),
}


@pytest.fixture
def ranged_defender(register_method):
    """``test_ranged``: a defender whose ``cell`` option declares its range in one line."""
    from facedefense.config import option
    from facedefense.interfaces import Defender, DefenderConfig

    @dataclass
    class RangedConfig(DefenderConfig):
        device: str = "cpu"
        cell: int = option(1, min=1, max=64)
        checkpoint: str = ""

    class Ranged(Defender):
        name: ClassVar[str] = "test_ranged"
        Config: ClassVar[type] = RangedConfig

        def __init__(self, config=None, **options):
            super().__init__(config, **options)
            if self.config.checkpoint:
                from facedefense.checkpoints import read_state_dict

                self.weights = read_state_dict(self.config.checkpoint)

        def _perturb(self, images, generator):
            return images + self.config.eps

    register_method("defender", Ranged)
    return Ranged


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_option(workspace, ranged_defender, case):
    args, match = BAD_OPTIONS[case]
    source = write_case("good", workspace.inputs)
    if case == "text file as checkpoint":
        source = workspace.inputs / "notes.txt"
        source.write_text("not weights\n")
        write_case("good", workspace.inputs)
    workspace.freeze()
    out = workspace.root / "out"
    filled = [a.replace("{in}", str(source if "checkpoint" not in case else workspace.inputs / "good.png")).replace("{out}", str(out)) for a in args]
    if case == "text file as checkpoint":
        filled[filled.index("--checkpoint") + 1] = str(source)
    workspace.check(invoke(*filled), 2, match)
    assert not out.exists(), "nothing may be created before the work starts"


# -- outputs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["protect", "purify"])
def test_output_is_the_input_folder(workspace, command):
    write_case("good", workspace.inputs)
    workspace.freeze()
    workspace.check(invoke(*COMMANDS[command](workspace.inputs, workspace.inputs)), 2, "holds the input")


@pytest.mark.parametrize("command", ["protect", "purify"])
def test_output_under_a_file(workspace, command):
    source = write_case("good", workspace.inputs)
    workspace.freeze()
    blocker = workspace.root / "blocker"
    blocker.write_text("a file")
    workspace.check(invoke(*COMMANDS[command](source, blocker / "out")), 2, "is a file, not a folder")


@pytest.mark.parametrize("flag", [None, "--overwrite"])
def test_output_folder_holds_the_input_folder(workspace, flag):
    """``protect out/photos --output out``: the input folder is one of the output folder's files."""
    write_case("good", workspace.inputs)
    workspace.freeze()
    args = COMMANDS["protect"](workspace.inputs, workspace.root)
    workspace.check(invoke(*args, *([flag] if flag else [])), 2, "holds the input")


def test_output_is_a_file(workspace):
    source = write_case("good", workspace.inputs)
    workspace.freeze()
    target = workspace.root / "taken"
    target.write_text("x")
    workspace.check(invoke(*COMMANDS["protect"](source, target)), 2, "exists and is not a folder")


@pytest.mark.parametrize("where", ["folder", "under_a_file", "missing_folder"])
def test_evaluate_json_unwritable(workspace, where):
    source = write_case("good", workspace.inputs)
    reference = workspace.root / "reference"
    reference.mkdir()
    Image.open(source).save(reference / "good.png")
    workspace.freeze()
    (workspace.root / "blocker").write_text("x")
    (workspace.root / "a_folder").mkdir()
    target = {"folder": "a_folder", "under_a_file": "blocker/scores.json", "missing_folder": "nowhere/scores.json"}[where]
    match = {"folder": "is a folder", "under_a_file": "is not a folder", "missing_folder": "does not exist"}[where]
    result = invoke("evaluate", workspace.inputs, "--reference", reference, "--metric", "psnr", "--json", workspace.root / target)
    workspace.check(result, 2, match)
    assert "psnr" not in result.stdout, "checked before the work"


@pytest.mark.parametrize("command", ["protect", "purify"])
def test_full_disk(workspace, command, monkeypatch):
    source = write_case("good", workspace.inputs)
    workspace.freeze()

    save = Image.Image.save

    def no_space(self, fp, *args, **kwargs):
        if str(fp).endswith(".tmp"):  # the files the runner writes, not the in-memory JPEG round trip
            raise OSError(28, "No space left on device")
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", no_space)
    out = workspace.root / "out"
    workspace.check(invoke(*COMMANDS[command](source, out)), 2, f"{out / 'good.png'}: cannot be written (No space left on device)")
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "failed" and not manifest["summary"]["completed"]
    assert "No space left" in manifest["error"] and not list(out.glob("*.png"))


# -- reruns and interruptions ---------------------------------------------------------------------


def test_rerun_needs_a_decision(workspace):
    for seed, name in enumerate(("a", "b")):
        Image.fromarray(rgb(48, 40, seed)).save(workspace.inputs / f"{name}.png")
    workspace.freeze()
    out = workspace.root / "out"
    workspace.check(invoke(*COMMANDS["protect"](workspace.inputs, out)), 0)
    # a second run into the same folder is refused, then replaces the earlier run when asked to
    only_a = workspace.inputs / "a.png"
    workspace.check(invoke(*COMMANDS["protect"](only_a, out)), 2, "--overwrite")
    workspace.check(invoke(*COMMANDS["protect"](only_a, out), "--overwrite"), 0)
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png"], "the earlier run's b.png is gone"
    manifest = json.loads((out / "facedefense.json").read_text())
    assert [Path(e["input"]).name for e in manifest["images"]] == ["a.png"]
    # --add keeps the earlier outputs and lists them
    workspace.check(invoke(*COMMANDS["protect"](workspace.inputs / "b.png", out), "--add"), 0)
    manifest = json.loads((out / "facedefense.json").read_text())
    assert sorted(e["output"] for e in manifest["images"]) == ["a.png", "b.png"]
    assert manifest["summary"]["earlier_outputs_kept"] == 1 and len(manifest["earlier_runs"]) == 1
    # a file no run wrote is never deleted
    (out / "holiday.jpg").write_bytes(b"mine")
    workspace.check(invoke(*COMMANDS["protect"](only_a, out), "--overwrite"), 2, "holiday.jpg")
    assert (out / "holiday.jpg").read_bytes() == b"mine"


@pytest.mark.parametrize("command", ["protect", "purify"])
def test_interrupted_run(workspace, command, monkeypatch):
    for seed, name in enumerate(("a", "b", "c")):
        Image.fromarray(rgb(48, 40, seed)).save(workspace.inputs / f"{name}.png")
    workspace.freeze()

    from facedefense import batch

    calls = []
    checksum = batch._sha256

    def interrupt_second(path):  # Ctrl-C reaches the main thread while it records the second image
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return checksum(path)

    monkeypatch.setattr(batch, "_sha256", interrupt_second)
    out = workspace.root / "out"
    workspace.check(invoke(*COMMANDS[command](workspace.inputs, out)), 130)
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["summary"] == {**manifest["summary"], "planned": 3, "processed": 1, "not_processed": 2, "completed": False}
    assert len(manifest["inputs"]) == 3 and sorted(p.name for p in out.glob("*.png")) == ["a.png"]
    monkeypatch.undo()
    workspace.check(invoke(*COMMANDS[command](workspace.inputs, out)), 2, "earlier run")
    workspace.check(invoke(*COMMANDS[command](workspace.inputs, out), "--add"), 0)
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["summary"]["completed"] and manifest["summary"]["processed"] == 3


@pytest.mark.parametrize("command", ["protect", "purify"])
def test_a_failed_write_stops_the_run_and_the_manifest_lists_exactly_the_files_written(workspace, command, monkeypatch):
    names = [f"{index:02d}" for index in range(12)]
    for seed, name in enumerate(names):
        Image.fromarray(rgb(48, 40, seed)).save(workspace.inputs / f"{name}.png")
    workspace.freeze()
    from facedefense import batch, io
    from facedefense.errors import OutputError

    save = io.save_image

    def full_disk_at_the_third(pixels, path, **kwargs):  # runs in a writer thread
        if Path(path).name == "02.png":
            raise OutputError(f"{path}: cannot be written (No space left on device)")
        return save(pixels, path, **kwargs)

    monkeypatch.setattr(batch, "save_image", full_disk_at_the_third)
    monkeypatch.setattr(batch, "io_workers", lambda: 3)
    out = workspace.root / "out"
    workspace.check(invoke(*COMMANDS[command](workspace.inputs, out)), 2, "No space left on device")
    manifest = json.loads((out / "facedefense.json").read_text())
    listed = sorted(Path(entry["output"]).name for entry in manifest["images"])
    assert manifest["status"] == "failed" and "02.png" not in listed and {"00.png", "01.png"} <= set(listed)
    assert listed == sorted(p.name for p in out.glob("*.png"))  # the writes already under way are kept
    assert len(listed) < len(names)  # the run stopped: at most 2 x 3 writes ran past the failure


# ==================================================================================================
# benchmark and evaluate --json (issue 26): outputs claimed like protect's, configs checked before
# any work. Each case keeps the invariants above (`Workspace.check`).
# ==================================================================================================

BENCH = """\
protocol: {profile: facedefense, num_images: 1}
identities: [faces]
defenders: [none, {label: other_tool, precomputed: published}]
attacks: [{editor: test_copy, instructions: ["a painting"]}]
metrics: [psnr]
"""


@pytest.fixture
def copy_editor(register_method):
    """``test_copy``: an editor that returns its input; ``behaviour: fail`` raises, ``interrupt`` is Ctrl-C."""
    from facedefense.interfaces.editor import Editor, EditorConfig

    @dataclass
    class CopyConfig(EditorConfig):
        model: str = "none"
        device: str = "cpu"
        behaviour: str = "copy"

    class Copy(Editor):
        name: ClassVar[str] = "test_copy"
        Config: ClassVar[type] = CopyConfig

        def _edit(self, images, prompt, mask, generator):
            if self.config.behaviour == "interrupt":
                raise KeyboardInterrupt
            if self.config.behaviour == "fail":
                raise RuntimeError("the editor broke")
            return images

    register_method("editor", Copy)
    return Copy


def bench_inputs(workspace: Workspace, data: str | bytes = BENCH) -> Path:
    """One identity (one photo per set), precomputed protections and the config, all inputs."""
    from facedefense.testing.benchmark_inputs import write_identities, write_precomputed

    write_identities(workspace.inputs / "faces", identities=1, per_set=1, size=32)
    write_precomputed(workspace.inputs / "faces", workspace.inputs / "published")
    config = workspace.inputs / "bench.yaml"
    config.write_bytes(data if isinstance(data, bytes) else data.encode())
    return config


def bench(config: Path, out: Path, *extra):
    return invoke("benchmark", config, "--output", out, "--no-progress", *extra)


def _laughs() -> str:
    """A billion laughs: nine aliases of nine aliases ... (9^9 values from a few hundred bytes)."""
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    return "\n".join(lines) + "\n" + BENCH.replace("metrics: [psnr]", "metrics: [{name: psnr, options: {device: *i}}]")


#: config case -> (config text or bytes, what the error line says); each is refused before any work.
BENCH_CONFIG_CASES = {
    "invalid UTF-8": (BENCH.encode() + b"seeds: [0]  # caf\xe9\n", "bench.yaml:6: not UTF-8 text (byte 0xe9)"),
    "binary garbage": (bytes(range(256)) * 4, "bench.yaml:1: holds a NUL byte"),
    "a NUL character": (BENCH.encode().replace(b"[psnr]", b"[ps\0nr]"), "bench.yaml:5: holds a NUL byte"),
    "a control character": (BENCH.encode().replace(b"[psnr]", b"[ps\x07nr]"), "bench.yaml:5: not valid YAML: control character U+0007"),
    "billion laughs": (_laughs(), "bench.yaml:6: aliases (*name) here expand the config to more than 100,000 values"),
    "an alias loop": (BENCH + "loop: &loop [*loop]\n", "bench.yaml:6: an alias (*name) here refers to a value that holds it"),
    "a list as a key": (BENCH + "? [a, b]\n: 1\n", "bench.yaml:6: a key is a name, not a list"),
    "NUL and newline in a label": (BENCH.replace("[psnr]", '[{name: psnr, label: "a\\0b\\nc"}]'), "bench.yaml:5: a NUL character in 'a\\x00b\\nc'"),
    "newline in a label": (BENCH.replace("[psnr]", '[{name: psnr, label: "two\\nlines"}]'), "bench.yaml:5: metric label 'two\\nlines' holds the control character '\\n'"),
    "300-character label": (BENCH.replace("label: other_tool", "label: " + "x" * 300), "is 300 characters long; at most 100"),
    "path separator in a label": (BENCH.replace("instructions:", "label: ../../x, instructions:"), "bench.yaml:4: editor label '../../x' holds a path separator"),
    "missing model folder": (BENCH + "model: ./no/such/model\n", "bench.yaml:6: model folder"),
    "missing model in an option": (BENCH.replace("instructions:", "options: {model: ./nope}, instructions:"), "bench.yaml:4: editor 'test_copy': model folder"),
    "seed out of range": (BENCH + "seeds: [99999999999999999999]\n", "bench.yaml:6: seeds are integers from 0 to"),
    "resolution out of range": (BENCH.replace("num_images: 1", "num_images: 1, resolution: 65536"), "protocol resolution must be a non-negative integer up to 4,096"),
    "num_images out of range": (BENCH.replace("num_images: 1", "num_images: 100000000"), "protocol num_images must be a non-negative integer up to 10,000"),
    "examples not an integer": (BENCH + "examples: 2.5\n", "bench.yaml:6: 'examples' must be an integer"),
}


@pytest.mark.parametrize("case", sorted(BENCH_CONFIG_CASES))
def test_benchmark_config_refused_before_any_work(workspace, copy_editor, case):
    data, match = BENCH_CONFIG_CASES[case]
    config = bench_inputs(workspace, data)
    workspace.freeze()
    out = workspace.root / "out"
    workspace.check(bench(config, out), 2, match)
    assert not out.exists(), "nothing may be created before the work starts"


def test_benchmark_identity_folder_named_with_a_newline(workspace, copy_editor):
    config = bench_inputs(workspace)
    (workspace.inputs / "faces" / "id0").rename(workspace.inputs / "faces" / "id\n0")
    (workspace.inputs / "published" / "id0").rename(workspace.inputs / "published" / "id\n0")
    workspace.freeze()
    out = workspace.root / "out"
    workspace.check(bench(config, out), 2, "bench.yaml:2: identity folder name 'id\\n0' holds the control character")
    assert not out.exists()


def _user_files(root: Path, folder: str, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_bytes(data)
    return root / folder


#: where -> (--output, extra arguments, what the error line says), given the workspace root
BENCH_OUTPUT_CASES = {
    "output among the photos": (lambda r: r / "inputs/faces/id0/set_B", [], "lies inside the input folder"),
    "output is the identities folder": (lambda r: r / "inputs/faces", [], "is the input"),
    "output holds the config": (lambda r: r / "inputs", [], "holds the input"),
    "output holds a user's files": (lambda r: _user_files(r, "album", {"e0.png": b"mine", "e1.png": b"mine too"}), [], "holds files no facedefense benchmark run wrote there (e0.png, e1.png, holiday.jpg)"),
    "output holds another command's run": (
        lambda r: _user_files(r, "protected", {"facedefense.json": b'{"command": "protect", "images": [{"output": "a.png"}]}', "a.png": b"protected"}),
        [], "holds a run of another command (protect)",
    ),
    "cache among the photos": (lambda r: r / "out", ["--cache", "{root}/inputs/faces/id0/set_A"], "lies inside the input folder"),
    "cache holds a user's files": (lambda r: r / "out", ["--cache", "{root}/album"], "holds files no facedefense benchmark-cache run wrote there"),
    "cache is the output": (lambda r: r / "out", ["--cache", "{root}/out"], "is the output folder"),
    "output inside the cache": (lambda r: r / "cache/out", ["--cache", "{root}/cache"], "lies inside the cache folder"),
    "an earlier output as the cache": (lambda r: r / "out", ["--cache", "{root}/earlier"], "holds a run of another command (benchmark)"),
    "cache in place of the report": (lambda r: r / "out", ["--cache", "{root}/out/report.md"], "would take the place of the benchmark's report.md"),
}


@pytest.mark.parametrize("case", sorted(BENCH_OUTPUT_CASES))
def test_benchmark_output_refused_before_any_work(workspace, copy_editor, case):
    """``benchmark CFG --output ids/alice/set_B`` wrote its report and cache among the photos."""
    config = bench_inputs(workspace)
    workspace.freeze()
    root = workspace.root
    _user_files(root, "album", {"holiday.jpg": b"mine"})
    _user_files(root, "earlier", {"facedefense.json": b'{"command": "benchmark", "files": ["report.md"]}', "report.md": b"# an earlier run"})
    target, extra, match = BENCH_OUTPUT_CASES[case]
    out = target(root)
    outside = snapshot(root)
    workspace.check(bench(config, out, *[arg.replace("{root}", str(root)) for arg in extra]), 2, match)
    assert snapshot(root) == outside, "nothing written, nothing replaced"
    assert not (root / "out").exists() and not (root / "cache").exists()


def test_benchmark_failed_stage_fails_the_run(workspace, copy_editor):
    """The attack fails: a failed run, exit 1, the report marked incomplete. (PSNR also scores each
    edit against the clean edit, so both cells read a failed stage; a failed stage that no cell reads
    is test_benchmark.py's test_a_failed_stage_is_a_failed_run_even_when_no_cell_reads_it.)"""
    config = bench_inputs(workspace, BENCH.replace("instructions:", "options: {behaviour: fail}, instructions:"))
    workspace.freeze()
    out = workspace.root / "out"
    result = bench(config, out)
    workspace.check(result, 1, "the editor broke")
    assert "error: 2 stage(s) failed, 2 cell(s) failed" in result.stderr
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "failed" and manifest["summary"]["failed"] == 2
    assert "**Incomplete: 2 stage(s) failed**" in (out / "report.md").read_text()


def test_benchmark_interrupted_then_continued(workspace, copy_editor):
    config = bench_inputs(workspace, BENCH.replace("instructions:", "options: {behaviour: interrupt}, instructions:"))
    workspace.freeze()
    out = workspace.root / "out"
    workspace.check(bench(config, out), 130)
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["finished"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "no unfinished stage left"
    config.write_text(BENCH)  # the user fixes the config and runs again into the same folder
    workspace.freeze()
    workspace.check(bench(config, out), 0)
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "completed" and manifest["earlier_runs"][-1]["status"] == "interrupted"
    assert manifest["summary"]["cached"] > 0  # the stages finished before Ctrl-C are reused


def test_benchmark_full_disk_while_writing_the_report(workspace, copy_editor, monkeypatch):
    config = bench_inputs(workspace)
    workspace.freeze()
    write_text = Path.write_text

    def no_space(self, *args, **kwargs):
        if self.name.startswith(".report.md."):
            raise OSError(28, "No space left on device")
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", no_space)
    out = workspace.root / "out"
    workspace.check(bench(config, out), 2, f"{out / 'report.md'}: cannot be written (No space left on device)")
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "failed" and "No space left" in manifest["error"] and not (out / "report.md").exists()


#: --json target -> (exit status, what the error line says), given the workspace root
EVALUATE_JSON_CASES = {
    "a photo in the scored folder": ("inputs/gen/good.png", 2, "lies inside the input folder"),
    "a new file in the scored folder": ("inputs/gen/scores.json", 2, "lies inside the input folder"),
    "a reference photo": ("reference/good.png", 2, "lies inside the input folder"),
    "the scored file itself": ("inputs/gen/good.png", 2, "is the input"),
    "a user's file": ("notes.json", 2, "already exists and no facedefense evaluate run wrote it"),
    "another command's JSON": ("pairs.json", 2, "no facedefense evaluate run wrote it"),
    "a symbolic link": ("link.json", 2, "exists and is not a plain file"),
    "its own earlier JSON": ("scores.json", 0, ""),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_JSON_CASES))
def test_evaluate_json_never_replaces_what_it_did_not_write(workspace, case):
    """``evaluate GEN/ ... --json GEN/a.png`` replaced a photo with JSON."""
    target, code, match = EVALUATE_JSON_CASES[case]
    root = workspace.root
    (workspace.inputs / "gen").mkdir()
    source = write_case("good", workspace.inputs / "gen")
    reference = root / "reference"
    reference.mkdir()
    (reference / "good.png").write_bytes(source.read_bytes())
    (root / "notes.json").write_text('{"mine": true}\n')
    (root / "pairs.json").write_text('{"command": "pairs"}\n')
    (root / "target.json").write_text("{}\n")
    (root / "link.json").symlink_to(root / "target.json")
    if case == "its own earlier JSON":
        workspace.freeze()
        workspace.check(invoke("evaluate", workspace.inputs / "gen", "--reference", reference, "--metric", "psnr", "--json", root / target), 0)
    workspace.freeze()
    scored = source if case == "the scored file itself" else workspace.inputs / "gen"
    outside = snapshot(root)
    result = invoke("evaluate", scored, "--reference", reference, "--metric", "psnr", "--json", root / target)
    workspace.check(result, code, match)
    if code == 2:
        assert snapshot(root) == outside and "psnr" not in result.stdout, "refused before the work"
    else:
        assert json.loads((root / target).read_text())["command"] == "evaluate"


# ==================================================================================================
# train, export and pairs (issue 26): outputs claimed like protect's (a train run folder through its
# manifest, export and pairs files through claim_file), every check before the first write, a
# consistent folder after a full disk or Ctrl-C. Each case keeps the invariants above.
# ==================================================================================================

TINY_DIT = "input_size=32,patch_size=16,hidden_size=32,depth=1,num_heads=2,num_classes=4"
NO_SPACE = OSError(28, "No space left on device")


@functools.cache
def _face_pngs(count: int) -> tuple[bytes, ...]:
    """``count`` 40-pixel sample faces as PNG files (drawn once per module: every train case reads them)."""
    from facedefense.testing.tiny_models import sample_faces

    files = []
    for face in sample_faces(count, 40):
        buffer = BytesIO()
        Image.fromarray((face.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return tuple(files)


def faces_folder(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(_face_pngs(count)):
        (folder / f"face{index}.png").write_bytes(data)
    return folder


def train_cli(data: Path, model: Path, out: Path, *extra):
    """``train`` of a tiny RID (or with ``--method gap_diff`` in ``extra``, a tiny GAP-Diff)."""
    extra = list(extra)
    method = extra.pop(extra.index("--method") + 1) if "--method" in extra else "rid"
    extra = [arg for arg in extra if arg != "--method"]
    tiny = ["-o", f"architecture={TINY_DIT}", "-o", "warmup_steps=0"] if method == "rid" else ["-o", "architecture=ngf=4", "--batch-size", "1"]
    return invoke("train", "--method", method, "--data", data, "--model", model, "--output", out, "--no-progress",
                  "--device", "cpu", *tiny, *extra)


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "facedefense.json").read_text())


def no_partial_files(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.name.startswith(".") and p.name != ".facedefense.lock" or ".partial" in p.name]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_sd_path):
    """A finished one-step RID run folder (written under the corpus' umask), to copy into a case."""
    previous = os.umask(UMASK)
    try:
        root = tmp_path_factory.mktemp("trained")
        result = train_cli(faces_folder(root / "faces"), tiny_sd_path, root / "run", "--steps", 1)
        assert result.exit_code == 0, result.output
    finally:
        os.umask(previous)
    return root / "run"


def copy_run(trained_run: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(trained_run, target)
    return target


def _write(root: Path, name: str, data: bytes | str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


#: case -> (--output relative to the root, extra arguments, what the error line says); every case
#: is refused before any work: nothing is created, nothing replaced.
TRAIN_REFUSED = {
    "output holds a user's log.jsonl": ("album", [], "holds files no facedefense train run wrote there (log.jsonl)"),
    "resume into a user's folder": ("album", ["--resume"], "holds files no facedefense train run wrote there (log.jsonl)"),
    "output is the data folder": ("inputs/faces", [], "is the input"),
    "output inside the data folder": ("inputs/faces/run", [], "lies inside the input folder"),
    "output holds the data folder": ("inputs", [], "holds the input"),
    "output holds another command's run": ("protected", [], "holds a run of another command (protect)"),
    "output is a file": ("album/log.jsonl", [], "exists and is not a folder"),
    "output is the pairs file's folder": ("inputs", ["--pairs", "{root}/inputs/pairs.json"], "holds the input"),
    "resume of nothing": ("new", ["--resume"], "holds no training run to resume"),
    "hidden_size not a multiple of 4": ("new", ["-o", "architecture=hidden_size=33,num_heads=2"], "rid: architecture hidden_size=33 must be a multiple of 4"),
    "hidden_size not a multiple of the heads": ("new", ["-o", "architecture=input_size=32,patch_size=16,hidden_size=36,num_heads=8"], "and of num_heads=8"),
    "hidden_size 1e8": ("new", ["-o", "architecture=hidden_size=1e8"], "architecture hidden_size must be an integer, got 100000000.0"),
    "hidden_size too large": ("new", ["-o", "architecture=hidden_size=100000000"], "hidden_size=100000000 is outside [4, 16384]"),
    "input_size not a multiple of the patch": ("new", ["-o", "architecture=input_size=40,patch_size=16,hidden_size=32,num_heads=2"], "input_size=40 must be a multiple of patch_size=16"),
    "unknown architecture argument": ("new", ["-o", "architecture=width=3"], "unknown architecture argument(s) width"),
    "architecture JSON not an object": ("new", ["-o", "architecture={\"a\": [}"], "architecture is not valid JSON"),
    "steps zero": ("new", ["--steps", "0"], "--steps must be from 1"),
    "save-every zero": ("new", ["--save-every", "0"], "--save-every must be from 1"),
    "negative seed": ("new", ["--seed", "-1"], "--seed must be an integer from 0 to 4294967295"),
    "seed overflow": ("new", ["--seed", "99999999999999"], "--seed must be an integer from 0 to 4294967295"),
    "lr not a number": ("new", ["-o", "lr=nan"], "training option lr='nan' is not a finite number"),
    "lr negative": ("new", ["-o", "lr=-1"], "rid: lr must be positive"),
    "unknown option": ("new", ["-o", "nope=1"], "unknown training option(s) for rid: nope"),
    "mixed precision": ("new", ["--mixed-precision", "fp8"], "--mixed-precision must be one of"),
    "zero budget": ("new", ["--eps", "0"], "outside (0, 1]"),
    "missing data folder": ("new", ["--data", "{root}/nowhere"], "--data {root}/nowhere is not a folder"),
    "data without photos": ("new", ["--data", "{root}/album"], "has 0 image(s), fewer than --batch-size 1"),
    "missing model folder": ("new", ["--model", "./no/such/model"], "model folder './no/such/model' does not exist"),
    "model is a photo": ("new", ["--model", "{root}/inputs/faces/face0.png"], "is a file, not a diffusers folder"),
    "pairs not JSON": ("new", ["--pairs", "{root}/inputs/notes.json"], "cannot be read as JSON"),
    "pairs missing": ("new", ["--pairs", "{root}/inputs/none.json"], "is not a file"),
    "pairs name a missing photo": ("new", ["--pairs", "{root}/inputs/broken_pairs.json"], "which does not exist"),
    "pairs for gap_diff": ("new", ["--method", "gap_diff", "--pairs", "{root}/inputs/pairs.json"], "gap_diff does not use it"),
    "gap_diff size": ("new", ["--method", "gap_diff", "-o", "size=300"], "gap_diff: size must be a multiple of 256"),
    "gap_diff width": ("new", ["--method", "gap_diff", "-o", "architecture=ngf=100000"], "gap_diff: architecture ngf=100000 is outside [1, 512]"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_REFUSED))
def test_train_refused_before_any_work(workspace, tiny_sd_path, case):
    target, extra, match = TRAIN_REFUSED[case]
    root = workspace.root
    faces = faces_folder(workspace.inputs / "faces")
    _write(workspace.inputs, "pairs.json", json.dumps({"command": "pairs", "pairs": [{"source_path": "faces/face0.png", "attacked_path": "faces/face1.png"}]}))
    _write(workspace.inputs, "broken_pairs.json", json.dumps([{"source_path": "faces/gone.png", "attacked_path": "faces/face1.png"}]))
    _write(workspace.inputs, "notes.json", "not json")
    workspace.freeze()
    _write(root, "album/log.jsonl", '{"my": "notes"}\n')
    _write(root, "protected/facedefense.json", '{"command": "protect", "images": [{"output": "a.png"}]}')
    _write(root, "protected/a.png", b"protected")
    outside = snapshot(root)
    extra = [arg.replace("{root}", str(root)) for arg in extra]
    result = train_cli(faces, tiny_sd_path, root / target, *extra)
    workspace.check(result, 2, match.replace("{root}", str(root)))
    assert snapshot(root) == outside, "nothing written, nothing replaced"
    assert not (root / "new").exists(), "nothing may be created before the work starts"


#: case -> (how the copied run folder is damaged, what the error line says); --resume refuses it in
#: one line and leaves it byte-identical.
def _pickle_with_code(path: Path) -> None:
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned > owned.txt",))

    path.write_bytes(pickle.dumps(Payload()))


def _edit_sidecar(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if key == "architecture":
            data["architecture"].update(value)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def _save_state(value) -> Callable[[Path], None]:
    def save(path: Path) -> None:
        import torch

        torch.save(value, path / "training_state.pt")

    return save


RESUME_REFUSED = {
    "a pickle with code as training state": (lambda run: _pickle_with_code(run / "training_state.pt"), "training state {run}/training_state.pt holds Python objects besides tensors"),
    "a list as training state": (_save_state([1, 2, 3]), "is not a facedefense training state"),
    "a truncated training state": (lambda run: (run / "training_state.pt").write_bytes((run / "training_state.pt").read_bytes()[:200]), "training state {run}/training_state.pt is corrupt or truncated"),
    "a save cut short (state and checkpoint of different steps)": (lambda run: _edit_sidecar(run / "rid.safetensors.json", steps=5), "is at step 1 but the checkpoint beside it at step 5"),
    "a sidecar naming hidden_size 1e8": (lambda run: _edit_sidecar(run / "rid.safetensors.json", architecture={"hidden_size": 1e8}), "its metadata names an architecture rid cannot build (architecture hidden_size must be an integer"),
    "a sidecar not matching its weights": (lambda run: _edit_sidecar(run / "rid.safetensors.json", architecture={"hidden_size": 64}), "rid.safetensors does not match the architecture its metadata names: x_embedder.proj.weight is (32, 3, 16, 16) in the file, (64, 3, 16, 16)"),
    "a sidecar that is a list": (lambda run: (run / "rid.safetensors.json").write_text("[1]"), "is not a JSON object"),
    "a sidecar without a step count": (lambda run: _edit_sidecar(run / "rid.safetensors.json", steps=None), "records no step count"),
    "another method's run": (lambda run: None, "holds a rid run, not gap_diff"),
    "a user's file beside the run": (lambda run: (run / "notes.txt").write_text("mine"), "holds files no facedefense train run wrote there (notes.txt)"),
    "a manifest of another command": (lambda run: (run / "facedefense.json").write_text('{"command": "attack", "files": []}'), "holds a run of another command (attack)"),
}


@pytest.mark.parametrize("case", sorted(RESUME_REFUSED))
def test_train_resume_refused_in_one_line(workspace, tiny_sd_path, trained_run, case, monkeypatch):
    damage, match = RESUME_REFUSED[case]
    faces = faces_folder(workspace.inputs / "faces")
    workspace.freeze()
    run = copy_run(trained_run, workspace.root / "run")
    damage(run)
    before = snapshot(workspace.root)
    monkeypatch.chdir(workspace.root)
    extra = ["--method", "gap_diff"] if case == "another method's run" else []
    workspace.check(train_cli(faces, tiny_sd_path, run, "--resume", "--steps", 2, *extra), 2, match.replace("{run}", str(run)))
    assert snapshot(workspace.root) == before and not (workspace.root / "owned.txt").exists()


def test_sidecar_naming_a_huge_network_is_refused_before_anything_is_built(workspace, trained_run, monkeypatch):
    """A RID sidecar naming hidden_size=1e8 reached 7.3 GB before "out of memory"."""
    from facedefense_amortized.networks import PerturbationDiT

    source = write_case("good", workspace.inputs)
    run = copy_run(trained_run, workspace.inputs / "run")
    _edit_sidecar(run / "rid.safetensors.json", architecture={"hidden_size": 100_000_000, "num_heads": 1})
    workspace.freeze()
    import functools

    built = []
    original = PerturbationDiT.__init__

    @functools.wraps(original)
    def recorded(self, *args, **kwargs):
        built.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(PerturbationDiT, "__init__", recorded)
    checkpoint = run / "rid.safetensors"
    for args in (["protect", source, "--method", "rid", "--checkpoint", checkpoint, "--device", "cpu", "--output", workspace.root / "out"],
                 ["export", "--method", "rid", "--checkpoint", checkpoint, "--output", workspace.root / "rid.onnx"]):
        workspace.check(invoke(*args), 2, "rid.safetensors: its metadata names an architecture rid cannot build (architecture hidden_size=100000000 is outside")
    _edit_sidecar(run / "rid.safetensors.json", architecture={"hidden_size": 4096, "num_heads": 1})
    workspace.freeze()
    workspace.check(invoke("export", "--method", "rid", "--checkpoint", checkpoint, "--output", workspace.root / "rid.onnx"), 2,
                    "x_embedder.proj.weight is (32, 3, 16, 16) in the file, (4096, 3, 16, 16)")
    assert not built and not (workspace.root / "out").exists() and not (workspace.root / "rid.onnx").exists()


def test_train_interrupted_then_resumed(workspace, tiny_sd_path, monkeypatch):
    """Ctrl-C (or SIGTERM) in the second step: an interrupted manifest, the first step's checkpoint,
    no temporary file; --resume then finishes the run."""
    from facedefense_amortized.training import rid

    faces = faces_folder(workspace.inputs / "faces")
    workspace.freeze()
    out = workspace.root / "out"
    step, calls = rid.RIDTrainer.step, []

    def interrupt_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(rid.RIDTrainer, "step", interrupt_second)
    workspace.check(train_cli(faces, tiny_sd_path, out, "--steps", 2, "--save-every", 1), 130)
    manifest = manifest_of(out)
    assert manifest["status"] == "interrupted" and manifest["saved_step"] == 1 and manifest["finished"]
    assert sorted(p.name for p in out.iterdir()) == ["facedefense.json", "log.jsonl", "rid.safetensors", "rid.safetensors.json", "training_state.pt"]
    no_partial_files(workspace.root)
    workspace.check(train_cli(faces, tiny_sd_path, out, "--steps", 2), 2, "already holds a training run; pass --resume")
    monkeypatch.setattr(rid.RIDTrainer, "step", step)
    workspace.check(train_cli(faces, tiny_sd_path, out, "--steps", 2, "--resume"), 0)
    manifest = manifest_of(out)
    assert manifest["status"] == "completed" and manifest["saved_step"] == 2
    assert manifest["earlier_runs"][-1]["status"] == "interrupted"
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("where", ["checkpoint", "state", "log"])
def test_train_full_disk(workspace, tiny_sd_path, monkeypatch, where):
    """A full disk while writing the checkpoint, the state or the log: one line naming the file, a
    failed manifest, no temporary file; the earlier save (if any) intact and resumable, or, with
    nothing saved, a fresh run into the same folder."""
    import io as stdio

    import safetensors.torch
    import torch

    faces = faces_folder(workspace.inputs / "faces")
    workspace.freeze()
    out = workspace.root / "out"
    calls = []

    def second_call_fails(original):
        def fails(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise NO_SPACE
            return original(*args, **kwargs)

        return fails

    if where == "checkpoint":
        monkeypatch.setattr(safetensors.torch, "save_file", second_call_fails(safetensors.torch.save_file))
        failing = out / "rid.safetensors"
    elif where == "state":
        monkeypatch.setattr(torch, "save", second_call_fails(torch.save))
        failing = out / "training_state.pt"
    else:
        class FullDisk(stdio.StringIO):
            def write(self, text):
                calls.append(1)
                if len(calls) == 2:
                    raise NO_SPACE
                return len(text)

        opened = Path.open
        monkeypatch.setattr(Path, "open", lambda self, *a, **k: FullDisk() if self.name == "log.jsonl" else opened(self, *a, **k))
        failing = out / "log.jsonl"
    workspace.check(train_cli(faces, tiny_sd_path, out, "--steps", 3, "--save-every", 1), 2,
                    f"{failing}: cannot be written (No space left on device)")
    manifest = manifest_of(out)
    assert manifest["status"] == "failed" and "No space left" in manifest["error"] and manifest["saved_step"] == 1
    no_partial_files(workspace.root)
    from safetensors.torch import load_file

    assert json.loads((out / "rid.safetensors.json").read_text())["steps"] == 1 and load_file(out / "rid.safetensors")
    monkeypatch.undo()
    workspace.check(train_cli(faces, tiny_sd_path, out, "--steps", 2, "--resume"), 0)
    assert manifest_of(out)["status"] == "completed"


def test_train_with_nothing_saved_is_replaced_by_a_fresh_run(workspace, tiny_sd_path, monkeypatch):
    """A run that failed before its first save leaves a failed manifest and its log; the corrected
    rerun into the same folder is not refused ("pass --resume") but replaces it."""
    import safetensors.torch

    faces = faces_folder(workspace.inputs / "faces")
    workspace.freeze()
    out = workspace.root / "out"

    def full(*args, **kwargs):
        raise NO_SPACE

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    workspace.check(train_cli(faces, tiny_sd_path, out, "--steps", 1), 2, "No space left on device")
    assert manifest_of(out)["status"] == "failed" and not (out / "rid.safetensors").exists()
    monkeypatch.undo()
    workspace.check(train_cli(faces, tiny_sd_path, out, "--steps", 1), 0)
    assert manifest_of(out)["status"] == "completed" and (out / "rid.safetensors").is_file()


def test_train_run_folder_from_before_manifests(workspace, tiny_sd_path, trained_run):
    """A run folder without a manifest is a train run only when facedefense provably wrote it (its
    sidecar says so, it holds its training state and nothing else): then --resume adopts it."""
    faces = faces_folder(workspace.inputs / "faces")
    workspace.freeze()
    legacy = copy_run(trained_run, workspace.root / "legacy")
    (legacy / "facedefense.json").unlink()
    workspace.check(train_cli(faces, tiny_sd_path, legacy, "--steps", 2), 2, "already holds a training run; pass --resume")
    mixed = copy_run(legacy, workspace.root / "mixed")
    (mixed / "holiday.jpg").write_bytes(b"mine")
    workspace.check(train_cli(faces, tiny_sd_path, mixed, "--steps", 2, "--resume"), 2, "holds files no facedefense train run wrote there")
    unproven = copy_run(legacy, workspace.root / "unproven")
    _edit_sidecar(unproven / "rid.safetensors.json", trained_with="something else")
    workspace.check(train_cli(faces, tiny_sd_path, unproven, "--steps", 2, "--resume"), 2, "holds files no facedefense train run wrote there")
    assert not (mixed / "facedefense.json").exists() and not (unproven / "facedefense.json").exists()
    workspace.check(train_cli(faces, tiny_sd_path, legacy, "--steps", 2, "--resume"), 0)
    manifest = manifest_of(legacy)
    assert manifest["status"] == "completed" and manifest["saved_step"] == 2 and manifest["earlier_runs"][-1]["status"] == "interrupted"


def test_a_save_is_never_half_renamed(monkeypatch):
    """Ctrl-C or SIGTERM during a save waits until its files are in place, then interrupts."""
    import signal

    from facedefense_amortized.training.loop import _signals_deferred

    done = []
    with pytest.raises(KeyboardInterrupt):
        with _signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            done.append("renamed")
    assert done == ["renamed"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- export ---------------------------------------------------------------------------------------


def tiny_checkpoint(folder: Path) -> Path:
    import torch

    from facedefense.checkpoints import save_checkpoint
    from facedefense_amortized.networks import PerturbationDiT

    architecture = {"input_size": 32, "patch_size": 16, "hidden_size": 32, "depth": 1, "num_heads": 2, "num_classes": 4}
    torch.manual_seed(0)
    return save_checkpoint(PerturbationDiT(**architecture), folder / "rid.safetensors", method="rid", eps=6 / 255, architecture=architecture)


def plain_onnx(path: Path) -> Path:
    """An ONNX model another program wrote (no facedefense metadata)."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "user", [value], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))
    return path


#: --output -> (exit status, what the error line says); the files are made by the test
EXPORT_CASES = {
    "the checkpoint itself": ("inputs/w.onnx", 2, "is the input"),
    "the sidecar": ("inputs/rid.safetensors.json", 2, "--output must end in .onnx"),
    "a user's file": ("mine.onnx", 2, "already exists and no facedefense export run wrote it"),
    "another program's ONNX model": ("other.onnx", 2, "already exists and no facedefense export run wrote it"),
    "a folder": ("folder.onnx", 2, "is a folder"),
    "a missing folder": ("nowhere/rid.onnx", 2, "does not exist"),
    "a symbolic link": ("link.onnx", 2, "exists and is not a plain file"),
    "its own earlier export": ("earlier.onnx", 0, ""),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_never_replaces_what_it_did_not_write(workspace, case):
    """``export --checkpoint w.onnx --output w.onnx`` overwrote the checkpoint."""
    pytest.importorskip("onnx")
    target, code, match = EXPORT_CASES[case]
    root = workspace.root
    checkpoint = tiny_checkpoint(workspace.inputs)
    (workspace.inputs / "w.onnx").write_bytes(b"an exported model")
    (root / "mine.onnx").write_bytes(b"mine")
    plain_onnx(root / "other.onnx")
    (root / "folder.onnx").mkdir()
    (root / "link.onnx").symlink_to(root / "mine.onnx")
    if case == "its own earlier export":
        workspace.freeze()
        workspace.check(invoke("export", "--method", "rid", "--checkpoint", checkpoint, "--output", root / target), 0)
    source = workspace.inputs / "w.onnx" if case == "the checkpoint itself" else checkpoint
    workspace.freeze()
    outside = snapshot(root)
    workspace.check(invoke("export", "--method", "rid", "--checkpoint", source, "--output", root / target), code, match)
    if code == 2:
        assert snapshot(root) == outside, "nothing written, nothing replaced"
    else:
        from facedefense_amortized.onnx_io import exported_by_facedefense

        assert exported_by_facedefense(root / target)


@pytest.mark.parametrize("fault", ["full disk", "Ctrl-C"])
def test_export_fault_leaves_no_partial_file(workspace, monkeypatch, fault):
    pytest.importorskip("onnx")
    import torch

    checkpoint = tiny_checkpoint(workspace.inputs)
    workspace.freeze()
    error = NO_SPACE if fault == "full disk" else KeyboardInterrupt()
    export = torch.onnx.export

    def fails(model, args, path, *rest, **kwargs):
        export(model, args, path, *rest, **kwargs)  # the temporary file is written, then the fault
        raise error

    monkeypatch.setattr(torch.onnx, "export", fails)
    out = workspace.root / "rid.onnx"
    result = invoke("export", "--method", "rid", "--checkpoint", checkpoint, "--output", out)
    workspace.check(result, 2 if fault == "full disk" else 130, f"{out}: cannot be written (No space left on device)" if fault == "full disk" else "")
    assert not out.exists()
    no_partial_files(workspace.root)


# -- pairs ----------------------------------------------------------------------------------------

#: --output -> (exit status, what the error line says); paths relative to the root
PAIRS_CASES = {
    "a photo in the clean folder": ("inputs/clean/d0.png", 2, "lies inside the input folder"),
    "a new file in the protected folder": ("inputs/protected/pairs.json", 2, "lies inside the input folder"),
    "the clean folder": ("inputs/clean", 2, "is the input"),
    "a folder holding the inputs": ("inputs", 2, "holds the input"),
    "a user's JSON": ("notes.json", 2, "already exists and no facedefense pairs run wrote it"),
    "evaluate's JSON": ("scores.json", 2, "already exists and no facedefense pairs run wrote it"),
    "a user's photo": ("photo.png", 2, "already exists and no facedefense pairs run wrote it"),
    "not a JSON name": ("pairs.txt", 2, "--output must be a .json file"),
    "a missing folder": ("nowhere/pairs.json", 2, "does not exist"),
    "a symbolic link": ("link.json", 2, "exists and is not a plain file"),
    "its own earlier pairs": ("pairs.json", 0, ""),
}


@pytest.mark.parametrize("case", sorted(PAIRS_CASES))
def test_pairs_never_replaces_what_it_did_not_write(workspace, case):
    """``pairs CLEAN/ PROT/ --output CLEAN/d0.png`` replaced a photo with JSON."""
    target, code, match = PAIRS_CASES[case]
    root = workspace.root
    for folder in ("clean", "protected"):
        (workspace.inputs / folder).mkdir()
        Image.fromarray(rgb(48, 40)).save(workspace.inputs / folder / "d0.png")
    (root / "notes.json").write_text('{"mine": true}\n')
    (root / "scores.json").write_text('{"command": "evaluate"}\n')
    Image.fromarray(rgb(48, 40)).save(root / "photo.png")
    (root / "link.json").symlink_to(root / "notes.json")
    args = ["pairs", workspace.inputs / "clean", workspace.inputs / "protected", "--output", root / target]
    if case == "its own earlier pairs":
        workspace.freeze()
        workspace.check(invoke(*args), 0)
    workspace.freeze()
    outside = snapshot(root)
    workspace.check(invoke(*args), code, match)
    if code == 2:
        assert snapshot(root) == outside, "nothing written, nothing replaced"
    else:
        written = json.loads((root / target).read_text())
        assert written["command"] == "pairs" and written["pairs"] == [{"source_path": "inputs/clean/d0.png", "attacked_path": "inputs/protected/d0.png"}]


def test_pairs_missing_folder(workspace):
    workspace.freeze()
    result = invoke("pairs", workspace.inputs / "none", workspace.inputs, "--output", workspace.root / "pairs.json")
    workspace.check(result, 2, f"clean folder {workspace.inputs / 'none'} is not a folder")
    assert not (workspace.root / "pairs.json").exists()


# ==================================================================================================
# attack (issue 26): the output claimed like protect's (never a user's file, --resume/--overwrite for
# an earlier run), everything checked before any work (model, mask, prompts, option ranges), and a
# run that ends early marks its manifest. Each case keeps the invariants above (`Workspace.check`).
# ==================================================================================================

ATTACK_EDIT = ["--prompt", "a painting", "--steps", "2", "-o", "resolution=32", "--device", "cpu", "--no-progress"]
ATTACK_LORA = ["--prompt", "a photo of sks person", "--num-images", "1", "--steps", "1", "-o", "resolution=32",
               "-o", "prior_preservation=false", "-o", "inference_steps=1", "--device", "cpu", "--no-progress"]


def attack_photos(workspace: Workspace) -> Path:
    folder = workspace.inputs / "photos"
    folder.mkdir()
    for seed in range(2):
        Image.fromarray(rgb(48, 40, seed)).save(folder / f"e{seed}.png")
    return folder


def edit(photos: Path, out: Path, model: Path, *extra, editor: str = "sdedit"):
    return invoke("attack", photos, "--editor", editor, "--model", model, "--output", out, *ATTACK_EDIT, *extra)


def personalize(photos: Path, out: Path, model: Path, *extra, personalizer: str = "lora"):
    rank = ["-o", "rank=2"] if personalizer == "lora" else []
    return invoke("attack", photos, "--personalizer", personalizer, "--model", model, "--output", out, *ATTACK_LORA, *rank, *extra)


def damaged_model(source: Path, folder: Path, how: str) -> Path:
    """A copy of the tiny model ``source`` in ``folder``, damaged as ``how`` says."""
    import shutil

    model = folder / f"model-{how}"
    shutil.copytree(source, model)
    if how == "half-written":
        shutil.rmtree(model / "unet")
    elif how == "truncated-unet":
        weights = model / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "pickled-text-encoder":
        import pickle

        class Payload:  # what a malicious checkpoint carries: a call made when it is unpickled
            def __reduce__(self):
                return (os.mkdir, (str(folder / "payload-ran"),))

        (model / "text_encoder" / "model.safetensors").unlink()
        (model / "text_encoder" / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    elif how == "100-timesteps":
        config = model / "scheduler" / "scheduler_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "num_train_timesteps": 100}))
    return model


#: case -> (command, model, extra arguments, what the error line says). Models: "sd", "inpaint",
#: "ip2p" (the tiny ones), "photos", "a photo", "unet" (a component folder), "missing", or a
#: `damaged_model` kind; "OUT" in an argument is the output folder.
ATTACK_REFUSALS = {
    "model: a photo folder": ("edit", "photos", [], "has no model_index.json"),
    "model: a file": ("lora", "a photo", [], "is a file"),
    "model: a component folder": ("lora", "unet", [], "has no model_index.json"),
    "model: missing": ("edit", "missing", [], "does not exist"),
    "model: half-written": ("lora", "half-written", [], "has no component 'unet'"),
    "model: truncated UNet": ("edit", "truncated-unet", [], "pipeline cannot be read (Unable to load weights"),
    "model: a pickled text encoder": ("lora", "pickled-text-encoder", [], "pytorch_model.bin is not a plain weights file"),
    "model: InstructPix2Pix for lora": ("lora", "ip2p", [], "is an InstructPix2Pix model"),
    "model: text-to-image for inpaint": ("inpaint", "sd", ["--mask", "face"], "is a text-to-image model"),
    "model: the output folder": ("edit", "sd", ["--output-is-model"], "is the input"),
    "steps: more than the model's timesteps (editor)": ("edit", "100-timesteps", ["--steps", "200"], "has only 100 timesteps"),
    "steps: more than the model's timesteps (lora)": ("lora", "100-timesteps", ["-o", "inference_steps=200"], "has only 100 timesteps"),
    "steps: inpaint strength x steps < 1": ("inpaint", "inpaint", ["--mask", "face", "-o", "strength=0.5", "--steps", "1"], "runs no denoising step"),
    "resolution 65536 (editor)": ("edit", "sd", ["-o", "resolution=65536"], "must be from 8 to 4096"),
    "resolution 65536 (lora)": ("lora", "sd", ["-o", "resolution=65536"], "must be from 8 to 4096"),
    "resolution over FACEDEFENSE_MAX_PIXELS": ("edit", "sd", ["-o", "resolution=64", "--max-pixels=1000"], "over the image-size limit"),
    "guidance out of range": ("edit", "sd", ["-o", "guidance_scale=1e9"], "must be from 0 to 100"),
    "learning rate out of range": ("lora", "sd", ["-o", "learning_rate=5"], "must be from 0 to 1"),
    "LoRA rank 0": ("lora", "sd", ["-o", "rank=0"], "must be from 1 to 1024"),
    "fp16 training on the CPU": ("lora", "sd", ["-o", "mixed_precision=fp16"], "fp16 needs a GPU"),
    "mask: a folder": ("inpaint", "inpaint", ["--mask", "photos"], "is a folder"),
    "mask: missing": ("inpaint", "inpaint", ["--mask", "missing.png"], "no such file"),
    "mask: not an image": ("inpaint", "inpaint", ["--mask", "notes.png"], "not an image"),
    "prompt: instance prompt without the identifier": ("lora", "sd", ["--instance-prompt", "a photo of a person"], "does not contain the identifier 'sks'"),
    "prompt: an empty generation prompt": ("lora", "sd", ["--prompt", " "], "a --prompt is empty"),
    "prompt: a token the tokenizer knows": ("ti", "sd", ["-o", "identifier=<|endoftext|>", "--instance-prompt", "a photo of <|endoftext|> person"], "already in the tokenizer"),
    "class cache inside the output": ("lora", "sd", ["-o", "class_cache=OUT/cache", "-o", "prior_preservation=true"], "holds the input"),
    "--resume and --overwrite": ("edit", "sd", ["--resume", "--overwrite"], "exclude each other"),
}


@pytest.mark.parametrize("case", sorted(ATTACK_REFUSALS))
def test_attack_refused_before_any_work(workspace, tiny_sd_path, tiny_inpaint_path, tiny_ip2p_path, monkeypatch, case):
    """13 refusals wrote a 'running' manifest first, and the corrected rerun was then refused."""
    command, model, extra, match = ATTACK_REFUSALS[case]
    photos = attack_photos(workspace)
    (workspace.inputs / "notes.png").write_text("not pixels\n")
    out = workspace.root / "out"
    models = {"sd": tiny_sd_path, "inpaint": tiny_inpaint_path, "ip2p": tiny_ip2p_path, "photos": photos,
              "a photo": photos / "e0.png", "unet": tiny_sd_path / "unet", "missing": workspace.inputs / "nowhere"}
    path = models[model] if model in models else damaged_model(tiny_sd_path, workspace.inputs, model)
    if "--output-is-model" in extra:
        extra, out = [], path
    if "--max-pixels=1000" in extra:
        extra = [arg for arg in extra if arg != "--max-pixels=1000"]
        monkeypatch.setenv("FACEDEFENSE_MAX_PIXELS", "1000")
    extra = [arg.replace("OUT", str(out)) for arg in extra]
    extra = [str(workspace.inputs / arg) if arg in ("photos", "missing.png", "notes.png") else arg for arg in extra]
    workspace.freeze()
    if command == "lora" or command == "ti":
        result = personalize(photos, out, path, *extra, personalizer="lora" if command == "lora" else "textual_inversion")
    else:
        result = edit(photos, out, path, *extra, editor="sdedit" if command == "edit" else "inpaint")
    workspace.check(result, 2, match)
    assert out == path or not out.exists(), "nothing is written before the checks pass"
    assert not (workspace.inputs / "payload-ran").exists(), "the pickle's call never runs"


def test_attack_editor_never_replaces_a_users_photos(workspace, tiny_sd_path):
    """`attack --editor sdedit PHOTOS/ --output ALBUM/` overwrote the user's e0.png and e1.png."""
    photos = attack_photos(workspace)
    album = workspace.root / "album"
    album.mkdir()
    for name in ("e0.png", "e1.png"):
        (album / name).write_bytes(b"the user's photo")
    workspace.freeze()
    for flag in ([], ["--resume"], ["--overwrite"]):
        workspace.check(edit(photos, album, tiny_sd_path, *flag), 2, "holds files no facedefense attack run wrote there")
    assert sorted(p.name for p in album.iterdir()) == ["e0.png", "e1.png"]
    assert all((album / name).read_bytes() == b"the user's photo" for name in ("e0.png", "e1.png"))


@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]])
def test_attack_personalizer_never_replaces_or_trusts_a_users_files(workspace, tiny_sd_path, flag):
    """`attack --personalizer lora --output F [--resume]` overwrote the user's LoRA weights and counted
    their images/<prompt>/0000.png as generated."""
    photos = attack_photos(workspace)
    out = workspace.root / "F"
    (out / "model").mkdir(parents=True)
    (out / "images" / "a_photo_of_sks_person").mkdir(parents=True)
    (out / "model" / "pytorch_lora_weights.safetensors").write_bytes(b"the user's weights")
    (out / "images" / "a_photo_of_sks_person" / "0000.png").write_bytes(b"the user's image")
    before = snapshot(out)
    workspace.freeze()
    workspace.check(personalize(photos, out, tiny_sd_path, *flag), 2, "holds files no facedefense attack run wrote there")
    assert snapshot(out) == before and not (out / "facedefense.json").exists()


def _fail_on_second_save(monkeypatch, error: BaseException) -> None:
    """The second image file written (an edit or a generated image) raises ``error``."""
    from facedefense import io

    save = io.save_image
    calls = []

    def second_fails(pixels, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise error
        return save(pixels, path, **kwargs)

    monkeypatch.setattr(io, "save_image", second_fails)


@pytest.mark.parametrize("ending", ["interrupted", "full disk"])
def test_attack_editor_ended_early_then_continued(workspace, tiny_sd_path, monkeypatch, ending):
    photos = attack_photos(workspace)
    out = workspace.root / "out"
    workspace.freeze()
    if ending == "interrupted":
        _fail_on_second_save(monkeypatch, KeyboardInterrupt())
        workspace.check(edit(photos, out, tiny_sd_path), 130)
    else:
        save = Image.Image.save

        def no_space(self, fp, *args, **kwargs):
            if str(fp).endswith(".tmp") and Path(str(fp)).name.startswith(".e1.png"):
                raise OSError(28, "No space left on device")
            return save(self, fp, *args, **kwargs)

        monkeypatch.setattr(Image.Image, "save", no_space)
        workspace.check(edit(photos, out, tiny_sd_path), 2, f"{out / 'e1.png'}: cannot be written (No space left on device)")
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == ("interrupted" if ending == "interrupted" else "failed") and manifest["finished"]
    assert ending == "interrupted" or "No space left" in manifest["error"]
    assert [e["output"] for e in manifest["images"]] == ["e0.png"] and sorted(p.name for p in out.glob("*.png")) == ["e0.png"]
    monkeypatch.undo()
    workspace.check(edit(photos, out, tiny_sd_path), 2, "continue it (--resume")
    workspace.check(edit(photos, out, tiny_sd_path, "--resume", "--seed", "7"), 2, "cannot resume")  # not mixed
    first = (out / "e0.png").read_bytes()
    workspace.check(edit(photos, out, tiny_sd_path, "--resume"), 0)
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "completed" and sorted(e["output"] for e in manifest["images"]) == ["e0.png", "e1.png"]
    assert (out / "e0.png").read_bytes() == first, "a listed edit is not redone"


def _files_on_disk(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "facedefense.json")


def test_attack_personalizer_ended_before_its_model_was_saved_is_simply_run_again(workspace, tiny_sd_path, monkeypatch):
    """Ctrl-C while training, then (the plain rerun is not refused) a full disk while saving the
    model: one line each, the manifest says so and lists exactly the files on disk (none), no
    temporary or hidden work files; the next plain run completes."""
    from facedefense_attacks import lora, training

    photos = attack_photos(workspace)
    out = workspace.root / "out"
    workspace.freeze()

    def interrupt_training():
        monkeypatch.setattr(training, "train", lambda *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt()))

    def no_space(unet, directory):
        (directory / lora.LORA_WEIGHTS).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    endings = [
        (interrupt_training, 130, "interrupted", "interrupted"),
        (lambda: monkeypatch.setattr(lora, "save_lora", no_space), 2, "the model cannot be written (No space left on device)", "failed"),
    ]
    for fault, code, match, status in endings:
        fault()
        workspace.check(personalize(photos, out, tiny_sd_path), code, match)
        manifest = json.loads((out / "facedefense.json").read_text())
        assert manifest["status"] == status and manifest["files"] == _files_on_disk(out) == [], "a run that saved no model wrote nothing"
        assert not (out / ".facedefense-work").exists(), "no half-saved model left"
        monkeypatch.undo()
    workspace.check(personalize(photos, out, tiny_sd_path), 0)
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "completed" and manifest["files"] == _files_on_disk(out)


def test_attack_personalizer_cut_while_generating_resumes_and_lists_its_files(workspace, tiny_sd_path, monkeypatch):
    """Ctrl-C while generating the second image: the manifest says so and lists exactly the files on
    disk; --resume finishes it. A finished run lists its files and continues from them: a listed image
    that is gone is generated again (the same bytes) with the saved model, a damaged saved model is one
    line, --overwrite removes the run's files (only those) and trains again."""
    photos = attack_photos(workspace)
    out = workspace.root / "out"
    workspace.freeze()
    _fail_on_second_save(monkeypatch, KeyboardInterrupt())
    workspace.check(personalize(photos, out, tiny_sd_path, "--num-images", "2"), 130, "interrupted")
    manifest, on_disk = json.loads((out / "facedefense.json").read_text()), _files_on_disk(out)
    assert manifest["status"] == "interrupted" and manifest["files"] == on_disk
    assert not (out / ".facedefense-work").exists(), "no half-saved model left"
    assert len([name for name in on_disk if name.startswith("images/")]) == 1
    monkeypatch.undo()
    workspace.check(personalize(photos, out, tiny_sd_path, "--num-images", "2"), 2, "--resume")
    workspace.check(personalize(photos, out, tiny_sd_path, "--num-images", "2", "--resume"), 0)
    manifest, on_disk = json.loads((out / "facedefense.json").read_text()), _files_on_disk(out)
    assert manifest["status"] == "completed" and manifest["files"] == on_disk
    assert {"model/pytorch_lora_weights.safetensors", "model/facedefense_personalized.json"} <= set(on_disk)
    assert not (out / ".facedefense-work").exists()
    workspace.check(personalize(photos, out, tiny_sd_path, "--num-images", "2"), 2, "--overwrite")
    # an image the manifest lists but that is gone is generated again; the saved model is reused
    weights = out / "model" / "pytorch_lora_weights.safetensors"
    stamp = weights.stat().st_mtime_ns
    image = out / "images" / "a_photo_of_sks_person" / "0001.png"
    first = image.read_bytes()
    image.unlink()
    workspace.check(personalize(photos, out, tiny_sd_path, "--num-images", "2", "--resume"), 0)
    assert weights.stat().st_mtime_ns == stamp and image.read_bytes() == first
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["files"] == on_disk and manifest["earlier_runs"][-1]["status"] == "completed"
    # a damaged saved model is one line, before anything is written
    weights.write_bytes(weights.read_bytes()[:100])
    workspace.check(personalize(photos, out, tiny_sd_path, "--resume"), 2, "the saved lora model cannot be read")
    # --overwrite removes the run's files (only those) and trains again
    workspace.check(personalize(photos, out, tiny_sd_path, "--overwrite"), 0)
    assert sorted(json.loads((out / "facedefense.json").read_text())["files"]) == _files_on_disk(out)
    assert not image.exists(), "the earlier run's second image is gone"


def test_attack_bad_mask_is_one_error_not_a_skip_per_photo(workspace, tiny_inpaint_path):
    """A bad --mask was reported per photo as 'skipped' with exit 1."""
    photos = attack_photos(workspace)
    mask = workspace.inputs / "mask.png"
    mask.write_bytes(b"\x89PNG broken")
    out = workspace.root / "out"
    workspace.freeze()
    result = edit(photos, out, tiny_inpaint_path, "--mask", mask, editor="inpaint")
    workspace.check(result, 2, "--mask")
    assert "skipped" not in result.stderr and not out.exists()
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(mask)  # the user fixes the mask: the same folder works
    workspace.freeze()
    workspace.check(edit(photos, out, tiny_inpaint_path, "--mask", mask, editor="inpaint"), 0)
