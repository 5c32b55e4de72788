"""The CLI end to end with CliRunner: listing, protect/purify/evaluate, one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facedefense.testing.cli import invoke


def assert_one_line_error(result, code=2, match=""):
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_list_json_lists_builtins():
    result = invoke("list", "--json")
    assert result.exit_code == 0
    listing = json.loads(result.stdout)
    names = {kind: {entry["name"] for entry in entries} for kind, entries in listing.items() if kind != "problems"}
    assert "photoguard" in names["defenders"] and "jpeg" in names["purifiers"]
    assert {"psnr", "ssim"} <= names["metrics"]


def test_list_one_kind_and_plugins():
    result = invoke("list", "metrics")
    assert result.exit_code == 0 and "psnr" in result.stdout and "defenders" not in result.stdout
    plugins = json.loads(invoke("plugins", "--json").stdout)["plugins"]
    assert any("metric:psnr" in row["provides"] for row in plugins)
    assert_one_line_error(invoke("list", "widgets"), match="unknown kind")


def test_version_listing_and_help_import_no_heavy_module_nor_web_framework():
    """``--version``, ``list --json``, then ``--help`` and ``serve --help`` in one fresh interpreter:
    none imports torch, diffusers, transformers or the web framework (fastapi, starlette, uvicorn: the
    serve extra); the modules are listed after each step."""
    import importlib.metadata

    code = (
        "import sys; from facedefense.cli import main; sys.argv = ['facedefense', '--version'];\n"
        "heavy = lambda: sorted(m for m in ('torch', 'diffusers', 'transformers', 'fastapi', 'starlette', 'uvicorn') if m in sys.modules)\n"
        "try: main()\nexcept SystemExit as exc: assert exc.code in (0, None), exc.code\n"
        "print(heavy())\n"
        "from typer.testing import CliRunner; from facedefense.cli import build_app\n"
        "app = build_app(); r = CliRunner().invoke(app, ['list', '--json']); assert r.exit_code == 0, r.output\n"
        "print(heavy())\n"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['serve', '--help']); assert r.exit_code == 0, r.output\n"
        "print(heavy())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [f"facedefense {importlib.metadata.version('facedefense')}", "[]", "[]", "[]"]


def test_closed_stdout_ends_quietly():
    """``facedefense list | head``: the reader is gone before the listing is written; no ``error:``
    line, no traceback, no 'Exception ignored' at exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "facedefense", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()  # before the process writes: its first write meets a closed pipe
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1 and stderr == ""


def test_third_party_notes_are_quiet_and_facedefense_warnings_are_not():
    code = (
        "import logging, os, sys, warnings\n"
        "from facedefense.cli.common import one_line_warnings, quiet_third_party\n"
        "one_line_warnings(); quiet_third_party()\n"
        "warnings.warn_explicit('cast', UserWarning, 'x.py', 1, module='diffusers.models.modeling_utils')\n"
        "warnings.warn_explicit('old', FutureWarning, 'x.py', 1, module='facedefense.batch')\n"
        "warnings.warn_explicit('subfolder skipped', UserWarning, 'x.py', 1, module='facedefense.batch')\n"
        "logging.getLogger('open_clip').warning('pretrained weights')\n"
        "print(os.environ['DIFFUSERS_VERBOSITY'], os.environ['TRANSFORMERS_VERBOSITY'])"
    )  # diffusers and transformers read their *_VERBOSITY when first imported (not imported here: slow)
    env = {key: value for key, value in os.environ.items() if not key.endswith("_VERBOSITY") and key != "PYTHONWARNINGS"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert run.stdout.split() == ["error", "error"] and run.stderr == "warning: subfolder skipped\n"
    env.update(PYTHONWARNINGS="default", DIFFUSERS_VERBOSITY="warning")  # asked for: shown, and the user's level kept
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert run.stdout.split() == ["warning", "error"] and "warning: cast" in run.stderr


def test_protect_writes_pngs_and_manifest(tmp_path, png_folder, shift_defender):
    out = tmp_path / "out"
    result = invoke("protect", png_folder, "--method", "test_shift", "--output", out, "--eps", "4/255", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["budget"]["eps_gray_levels"] == pytest.approx(4)
    assert [entry["output"] for entry in manifest["images"]] == ["a.png", "b.png", "c.png"]
    for entry in manifest["images"]:
        original = np.asarray(Image.open(png_folder / entry["output"])).astype(int)
        protected = np.asarray(Image.open(out / entry["output"])).astype(int)
        assert protected.shape == original.shape
        assert np.abs(protected - original).max() <= 4 and (protected != original).any()
        assert entry["within_budget"] and entry["linf_gray_levels"] <= 4


def test_bad_files_are_reported_and_good_ones_protected(tmp_path, png_folder, shift_defender):
    (png_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (png_folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = invoke("protect", png_folder, "--method", "test_shift", "--output", out)
    assert result.exit_code == 1
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]
    manifest = json.loads((out / "facedefense.json").read_text())
    assert {entry["input"].rsplit("/", 1)[-1] for entry in manifest["failures"]} == {"broken.png", "empty.jpg"}
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, match",
    [
        (["--method", "photogaurd"], "Did you mean: photoguard"),
        (["--method", "test_shift", "--eps", "0"], "outside (0, 1]"),
        (["--method", "test_shift", "--eps", "1.5"], "outside (0, 1]"),
        (["--method", "test_shift", "--steps", "3"], "no option 'steps'"),
        (["--method", "test_shift", "-o", "bogus"], "use -o key=value"),
    ],
)
def test_protect_user_errors(tmp_path, png_folder, shift_defender, args, match):
    assert_one_line_error(invoke("protect", png_folder, "--output", tmp_path / "out", *args), match=match)


def test_protect_refuses_input_folder_as_output(png_folder, shift_defender):
    before = {p.name: p.read_bytes() for p in png_folder.iterdir()}
    assert_one_line_error(invoke("protect", png_folder, "--method", "test_shift", "--output", png_folder), match="holds the input")
    assert {p.name: p.read_bytes() for p in png_folder.iterdir()} == before


def test_protect_unwritable_output(tmp_path, png_folder, shift_defender):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    assert_one_line_error(invoke("protect", png_folder, "--method", "test_shift", "--output", blocker / "out"), match="is a file, not a folder")


def test_protect_missing_input_and_empty_folder(tmp_path, shift_defender):
    assert_one_line_error(invoke("protect", tmp_path / "nope", "--method", "test_shift", "--output", tmp_path / "o"), match="no such")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke("protect", tmp_path / "empty", "--method", "test_shift", "--output", tmp_path / "o"), match="no images")


@pytest.mark.parametrize("model", ["missing-folder", "empty-folder"])
def test_protect_missing_model(tmp_path, png_folder, model):
    path = tmp_path / model
    if model == "empty-folder":
        path.mkdir()
    result = invoke("protect", png_folder, "--method", "photoguard", "--model", path, "--output", tmp_path / "out")
    assert_one_line_error(result, match=str(path.name))


def test_purify_and_evaluate(tmp_path, png_folder):
    out = tmp_path / "jpeg"
    result = invoke("purify", png_folder, "--method", "jpeg", "-o", "quality=50", "--output", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]
    report = tmp_path / "scores.json"
    result = invoke("evaluate", out, "--reference", png_folder, "--metric", "psnr", "--metric", "ssim", "--json", report)
    assert result.exit_code == 0, result.output
    scores = json.loads(report.read_text())["metrics"]
    assert 10 < scores["psnr"]["value"] < 100 and scores["psnr"]["count"] == 3
    assert 0 < scores["ssim"]["value"] < 1


def test_evaluate_needs_reference_for_psnr(png_folder):
    assert_one_line_error(invoke("evaluate", png_folder, "--metric", "psnr"), match="need reference images")


def test_info_shows_documentation_and_options():
    result = invoke("info", "jpeg")
    assert result.exit_code == 0 and "quality: int = 75" in result.stdout and "purifier 'jpeg'" in result.stdout
    assert_one_line_error(invoke("info", "jpg"), match="Did you mean: jpeg")


RAW_MARKUP = re.compile(r":(func|class|meth|data|mod|attr|exc|obj):`|``|\]\[[\w.]*\]")


def test_info_of_every_registered_method_is_clean(capsys):
    """``info`` over the whole registry: every option has its own description (none left empty, none
    holding another option's ``name: text``), and no docstring markup reaches the terminal."""
    import dataclasses

    from facedefense.cli.listing import info
    from facedefense.config import option_docs
    from facedefense.registry import get_registry

    problems = []
    for spec in get_registry().all_specs():
        where = f"{spec.kind} {spec.name}"
        try:  # the command's function itself: typer would rebuild the whole app for each of ~50 calls
            info(spec.name, kind=spec.kind)
        except Exception as exc:  # noqa: BLE001 - every method's failure is listed
            problems.append(f"{where}: {type(exc).__name__} {exc} {capsys.readouterr().err[-300:]}")
            continue
        problems += [f"{where}: raw markup {m.group(0)!r}" for m in RAW_MARKUP.finditer(capsys.readouterr().out)]
        if spec.kind == "model":
            continue
        config = spec.load().Config
        names = [field.name for field in dataclasses.fields(config)]
        docs = option_docs(config)
        problems += [f"{where}: option '{name}' has no description" for name in names if not docs.get(name)]
        problems += [f"{where}: '{name}' is documented but is no option" for name in docs if name not in names]
        problems += [
            f"{where}: the description of '{name}' holds '{other}:'"
            for name in names
            for other in names
            if other != name and re.search(rf"(^|[\s.;,(]){other}:\s", docs.get(name, ""))
        ]
    assert not problems, "\n".join(problems)


def test_info_parses_grouped_and_continued_entries():
    from facedefense.config import docstring_section

    doc = """Summary.

    Attributes:
        alpha, r: the sigmoid's
            slope and centre.
        steps (int): optimizer steps.
        empty:
            text on the next line.

    Examples:
        >>> x: 1
    """
    assert docstring_section(doc, "Attributes") == {
        "alpha": "the sigmoid's slope and centre.",
        "r": "the sigmoid's slope and centre.",
        "steps": "optimizer steps.",
        "empty": "text on the next line.",
    }


def test_make_tiny_model(tmp_path):
    result = invoke("make-tiny-model", tmp_path / "ip2p", "--kind", "instruct_pix2pix")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ip2p" / "model_index.json").exists() and (tmp_path / "ip2p" / "unet").is_dir()
    assert_one_line_error(invoke("make-tiny-model", tmp_path / "x", "--kind", "sdxl"), match="unknown tiny model kind")


def test_demo_takes_an_amortized_defenders_checkpoint(tmp_path, png_folder, monkeypatch):
    """``demo -m gap_diff`` needs the checkpoint its error asks for, and ``demo`` has the option."""
    import torch

    monkeypatch.setenv("FACEDEFENSE_AUTOTUNE", "0")  # --dtype auto: no timing of the precisions

    from facedefense.checkpoints import save_checkpoint
    from facedefense_amortized.networks.gap_generator import GAPGenerator

    no_checkpoint = invoke("demo", png_folder, "-m", "gap_diff", "--output", tmp_path / "a")
    assert_one_line_error(no_checkpoint, match="needs --checkpoint")
    assert_one_line_error(
        invoke("demo", png_folder, "-m", "gap_diff", "--checkpoint", tmp_path / "none.pth", "--output", tmp_path / "b"),
        match="does not exist",
    )
    torch.manual_seed(0)
    checkpoint = save_checkpoint(GAPGenerator(ngf=4), tmp_path / "gap.safetensors", method="gap_diff", eps=4 / 255,
                                 architecture={"ngf": 4})  # fmt: skip
    result = invoke("demo", png_folder / "a.png", "-m", "gap_diff", "--checkpoint", checkpoint, "-o", "engine=module",
                    "--output", tmp_path / "c")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "budget 4/255" in result.stdout and (tmp_path / "c" / "protected" / "a.png").exists()
    assert_one_line_error(
        invoke("demo", png_folder, "--checkpoint", checkpoint, "--output", tmp_path / "d"), match="takes no --checkpoint"
    )


def test_demo_runs_end_to_end(tmp_path, png_folder):
    result = invoke("demo", png_folder, "--output", tmp_path / "demo", "--steps", "1", "-o", "resolution=32")
    assert result.exit_code == 0, result.output
    assert "DEMO" in result.stderr and "psnr" in result.stdout
    assert sorted(p.name for p in (tmp_path / "demo" / "protected").glob("*.png")) == ["a.png", "b.png", "c.png"]
    compare = tmp_path / "demo" / "protected" / ".facedefense-work" / "compare.png"
    assert compare.is_file() and f"side by side (original, protected, difference): {compare}" in result.stdout


def test_evaluate_says_which_metric_it_scores_before_it_starts(png_folder, capsys):
    """Issue 25 item 5: a model-based metric may load a network for a minute; a line comes first."""
    from facedefense.evaluation import evaluate_folder
    from facedefense.progress import progress_enabled_as

    with progress_enabled_as(True):
        evaluate_folder(png_folder, png_folder, ["psnr", "ssim"])
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in lines if "scoring" in line] == ["psnr", "ssim"]
    with progress_enabled_as(False):
        evaluate_folder(png_folder, png_folder, ["psnr"])
    assert "scoring" not in capsys.readouterr().err


def test_command_help_wraps_its_paragraphs_to_the_terminal_width():
    """typer keeps a docstring's line breaks; help joins them, so a wide terminal shows whole lines."""
    wide = invoke("protect", "--help", env={"COLUMNS": "250"})
    assert wide.exit_code == 0, wide.output
    assert "An output folder that holds files is refused unless --overwrite or --add says what to do." in wide.stdout
