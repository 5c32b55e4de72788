"""Issue 12, item by item: file modes, manifests that reproduce a run, progress, unchanged outputs,
`info` and `demo`, the pixel limit, library messages (the corpus of bad inputs is test_bad_inputs.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytest
import torch
from PIL import Image

from facedefense.testing.cli import invoke


@pytest.fixture
def photo(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(30, 220, (48, 40, 3), dtype=np.uint8)).save(folder / "face.png")
    return folder / "face.png"


# -- 1. outputs get the umask's mode ---------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_get_the_umask_mode(tmp_path, umask):
    from facedefense.io import save_image, write_json

    previous = os.umask(umask)
    try:
        image = save_image(torch.rand(3, 16, 16), tmp_path / "a.png")
        manifest = write_json({"a": 1}, tmp_path / "a.json")
    finally:
        os.umask(previous)
    assert image.stat().st_mode & 0o777 == 0o666 & ~umask
    assert manifest.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png"]


# -- 0. OS errors name the file; evaluate --json checked first -------------------------------------


def test_write_errors_name_the_file_and_leave_no_temporary(tmp_path, monkeypatch):
    from facedefense.errors import OutputError
    from facedefense.io import write_json

    with pytest.raises(OutputError, match="is a folder"):
        write_json({}, tmp_path)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OutputError, match=r"scores.json: cannot be written \(No space left on device\)"):
        write_json({}, tmp_path / "scores.json")
    assert list(tmp_path.iterdir()) == []


# -- 2./3. manifests: planned, done, status; what reproduces the run -----------------------------


@pytest.fixture
def checkpoint_defender(register_method):
    """``test_weights``: shifts by eps and names a checkpoint and a model folder in its options."""
    from facedefense.interfaces import Defender, DefenderConfig

    @dataclass
    class WeightsConfig(DefenderConfig):
        device: str = "cpu"
        checkpoint: str = ""
        model: str = ""

    class Weights(Defender):
        name: ClassVar[str] = "test_weights"
        Config: ClassVar[type] = WeightsConfig

        def _perturb(self, images, generator):
            return images - self.config.eps

    register_method("defender", Weights)
    return Weights


def test_manifest_records_what_reproduces_the_run(tmp_path, photo, checkpoint_defender, monkeypatch):
    from facedefense.checkpoints import file_sha256

    weights = tmp_path / "net.safetensors"
    weights.write_bytes(b"0123456789")
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "protect", photo, "-m", "test_weights", "--checkpoint", "net.safetensors", "--model", "model",
        "--batch-size", "3", "--seed", "7", "--output", "out",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "facedefense.json").read_text())
    assert manifest["method_files"]["checkpoint"] == {"path": str(weights.resolve()), "sha256": file_sha256(weights), "bytes": 10}
    assert manifest["method_files"]["model"] == {"path": str((tmp_path / "model").resolve())}
    assert manifest["batch_size"] == 3 and manifest["method"]["config"]["seed"] == 7
    assert manifest["output"] == str((tmp_path / "out").resolve())
    assert {"python", "facedefense", "torch", "numpy", "pillow"} <= set(manifest["versions"])
    assert manifest["status"] == "completed" and manifest["finished"]
    (entry,) = manifest["images"]
    assert entry["input"] == str(photo.resolve()) and entry["input_sha256"] == file_sha256(photo)
    assert manifest["inputs"] == [{"input": str(photo.resolve()), "output": "face.png"}]
    assert manifest["summary"] == {
        "planned": 1, "processed": 1, "failed": 0, "not_processed": 0, "unchanged": 0, "completed": True,
    }  # fmt: skip


def test_library_refuses_a_used_folder_by_default(tmp_path, photo, shift_defender):
    from facedefense.batch import protect_files
    from facedefense.errors import OutputError

    defender = shift_defender(eps=2 / 255)
    protect_files(defender, [photo], tmp_path / "out", progress=False)
    with pytest.raises(OutputError, match="existing='overwrite'"):
        protect_files(defender, [photo], tmp_path / "out", progress=False)
    report = protect_files(defender, [photo], tmp_path / "out", progress=False, existing="overwrite")
    assert report.manifest["summary"]["completed"]


# -- 6. a defender that changed nothing ------------------------------------------------------------


@pytest.fixture
def idle_defender(register_method):
    from facedefense.interfaces import Defender, DefenderConfig

    @dataclass
    class IdleConfig(DefenderConfig):
        device: str = "cpu"

    class Idle(Defender):
        name: ClassVar[str] = "test_idle"
        Config: ClassVar[type] = IdleConfig

        def _perturb(self, images, generator):
            return images

    register_method("defender", Idle)
    return Idle


def test_unchanged_output_is_warned_and_recorded(tmp_path, photo, idle_defender):
    result = invoke("protect", photo, "-m", "test_idle", "--output", tmp_path / "out")
    assert result.exit_code == 3 and "NOT protected: 1 of 1 image(s)" in result.stdout  # issue 25: not a success
    assert "warning: 1 protected image(s) are identical to their input (face.png)" in result.stderr
    manifest = json.loads((tmp_path / "out" / "facedefense.json").read_text())
    assert manifest["images"][0]["unchanged"] is True and manifest["summary"]["unchanged"] == 1

    from facedefense.batch import protect_files

    with pytest.warns(UserWarning, match="NOT protected"):
        protect_files(idle_defender(), [photo], tmp_path / "again", progress=False)


# -- 7. progress ----------------------------------------------------------------------------------


@pytest.fixture
def pgd_defender(register_method):
    """``test_pgd``: three sign-gradient steps through facedefense.optim.linf_pgd."""
    from facedefense.interfaces import Defender, DefenderConfig

    @dataclass
    class PgdConfig(DefenderConfig):
        device: str = "cpu"

    class Pgd(Defender):
        name: ClassVar[str] = "test_pgd"
        Config: ClassVar[type] = PgdConfig

        def _perturb(self, images, generator):
            from facedefense.optim import linf_pgd

            adversarial, _, _ = linf_pgd(
                images, lambda x: x.mean(dim=(1, 2, 3)), eps=self.config.eps, steps=3, step_size=1 / 255,
                minimize=False, description="test_pgd",
            )  # fmt: skip
            return adversarial

    register_method("defender", Pgd)
    return Pgd


def test_step_progress_from_python_by_default_and_switchable(pgd_defender, capsys, monkeypatch):
    from facedefense.progress import progress_enabled_as, set_progress

    monkeypatch.delenv("FACEDEFENSE_PROGRESS", raising=False)
    images = torch.full((1, 3, 16, 16), 0.5)
    pgd_defender().protect(images)
    assert "test_pgd" in capsys.readouterr().err and "3/3" not in ""  # the step bar, stderr not a terminal
    with progress_enabled_as(False):
        pgd_defender().protect(images)
    assert capsys.readouterr().err == ""
    set_progress(False)
    try:
        pgd_defender().protect(images)
        assert capsys.readouterr().err == ""
    finally:
        set_progress(None)
    monkeypatch.setenv("FACEDEFENSE_PROGRESS", "0")
    pgd_defender().protect(images)
    assert capsys.readouterr().err == ""


def test_cli_progress_when_asked_even_without_a_terminal(tmp_path, photo, pgd_defender):
    shown = invoke("protect", photo, "-m", "test_pgd", "--output", tmp_path / "a", "--progress")
    assert shown.exit_code == 0 and "test_pgd" in shown.stderr and "protect (test_pgd)" in shown.stderr
    hidden = invoke("protect", photo, "-m", "test_pgd", "--output", tmp_path / "b")
    assert hidden.exit_code == 0 and "test_pgd:" not in hidden.stderr and "protect (test_pgd)" not in hidden.stderr


# -- 9. info, demo, the pixel limit ---------------------------------------------------------------


def test_info_shows_choices_fractions_ranges_and_descriptions(register_method):
    from facedefense.config import option
    from facedefense.interfaces import Defender, DefenderConfig

    @dataclass
    class DocumentedConfig(DefenderConfig):
        """Options.

        Attributes:
            pattern: which texture to draw,
                over two lines.
            cell: cell side in pixels.
        """

        pattern: Literal["noise", "checker"] = "noise"
        cell: int = option(2, min=1, max=64)

    class Documented(Defender):
        """A documented test defender."""

        name: ClassVar[str] = "test_documented"
        Config: ClassVar[type] = DocumentedConfig

    register_method("defender", Documented)
    result = invoke("info", "test_documented")
    assert result.exit_code == 0, result.output
    assert "  eps: float = 8/255" in result.stdout
    assert "  pattern: 'noise' | 'checker' = 'noise'" in result.stdout
    assert "which texture to draw, over two lines." in result.stdout
    assert "  cell: int = 2  [1..64]" in result.stdout and "cell side in pixels." in result.stdout
    assert "L-infinity budget" in result.stdout  # descriptions inherited from the base configs


def test_option_docs_and_values():
    from facedefense.config import format_value, option_docs
    from facedefense.interfaces import IterativeDefenderConfig

    docs = option_docs(IterativeDefenderConfig)
    assert docs["steps"] == "optimization steps per image." and docs["seed"].startswith("seed of the method")
    assert [format_value(v) for v in (8 / 255, 1 / 255, 0.5, 0.2, 1e-5, None, "zero")] == [
        "8/255", "1/255", "0.5", "0.2", "1e-05", "None", "'zero'",
    ]  # fmt: skip


def test_demo_banner_and_a_model_free_defender(tmp_path, photo, shift_defender):
    pytest.importorskip("skimage")
    from facedefense.cli.models import DEMO_BANNER

    assert "--model" not in DEMO_BANNER.split("facedefense protect")[0], "demo has no --model option"
    result = invoke("demo", photo, "--output", tmp_path / "demo", "-m", "test_shift", "--steps", "2")
    assert result.exit_code == 0, result.output
    assert "protected 1 image(s)" in result.stdout and "facedefense protect" in result.stderr
    again = invoke("demo", photo, "--output", tmp_path / "demo", "-m", "test_shift")
    assert again.exit_code == 0, again.output  # the demo replaces its own earlier run


def test_one_pixel_limit_configurable_and_pillows_ignored(tmp_path, monkeypatch):
    from facedefense.errors import ConfigError, ImageError
    from facedefense.io import MAX_PIXELS, load_image

    assert MAX_PIXELS == 100_000_000
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's own limit plays no part
    assert load_image(path).size == (48, 40)
    assert Image.MAX_IMAGE_PIXELS == 100, "restored afterwards"
    monkeypatch.setenv("FACEDEFENSE_MAX_PIXELS", "1000")
    with pytest.raises(ImageError, match="1,920 pixels, over the 1,000-pixel limit"):
        load_image(path)
    monkeypatch.setenv("FACEDEFENSE_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="FACEDEFENSE_MAX_PIXELS"):
        load_image(path)


def test_elongated_working_size_refused_in_one_line():
    from facedefense.errors import ImageError
    from facedefense.imaging import working_size

    assert working_size(600, 400, 512) == (768, 512)
    with pytest.raises(ImageError, match="too elongated"):
        working_size(16, 4000, 512)


# -- 5. messages ---------------------------------------------------------------------------------


def test_library_messages_name_keywords_not_flags(tmp_path):
    import torch as _torch

    from facedefense.checkpoints import read_state_dict
    from facedefense.errors import ModelNotFoundError

    if not _torch.cuda.is_available():
        from facedefense.errors import ConfigError
        from facedefense.runtime import resolve_device

        with pytest.raises(ConfigError) as caught:
            resolve_device("cuda")
        assert "--" not in str(caught.value) and "device 'cpu'" in str(caught.value)
    corrupt = tmp_path / "net.pt"
    _torch.save({"w": _torch.zeros(2), "path": Path("x")}, corrupt)
    with pytest.raises(ModelNotFoundError) as caught:
        read_state_dict(corrupt)
    assert "weights_only" not in str(caught.value) and "Python objects" in str(caught.value)
    truncated = tmp_path / "cut.pt"
    _torch.save({"w": _torch.zeros(2)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(ModelNotFoundError, match="corrupt or truncated"):
        read_state_dict(truncated)


def test_missing_model_reported_before_heavy_imports(tmp_path, photo):
    import subprocess
    import sys

    code = (
        "import sys; from facedefense.cli import main\n"
        "sys.argv = ['facedefense', 'protect', sys.argv[1], '-m', 'photoguard', '--model', './absent', '--output', sys.argv[2]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(photo), str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert result.stderr.strip() == "error: model folder ./absent does not exist"


def test_contract_fixtures_are_classmethods():
    from facedefense.testing import contracts

    for mixin in (contracts.MethodContract, contracts.DefenderContract, contracts.PersonalizerContract):
        for name in ("method", "images", "result", "fitted"):
            raw = mixin.__dict__.get(name)
            if raw is not None:
                assert isinstance(getattr(raw, "__wrapped__", raw), classmethod) or "classmethod" in repr(raw), name

