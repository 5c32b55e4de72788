"""The CLI end to end with CliRunner: listing, protect/purify/evaluate, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facedefense.cli import build_app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(build_app(), [str(a) for a in args])


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


def test_listing_imports_no_heavy_module():
    code = (
        "import sys; from typer.testing import CliRunner; from facedefense.cli import build_app;"
        "r = CliRunner().invoke(build_app(), ['list', '--json']); assert r.exit_code == 0, r.output;"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


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
    assert_one_line_error(invoke("protect", png_folder, "--method", "test_shift", "--output", blocker / "out"), match="not writable")


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
    assert_one_line_error(invoke("evaluate", png_folder, "--metric", "psnr"), match="need --reference")


def test_info_shows_documentation_and_options():
    result = invoke("info", "jpeg")
    assert result.exit_code == 0 and "quality: int = 75" in result.stdout and "purifier 'jpeg'" in result.stdout
    assert_one_line_error(invoke("info", "jpg"), match="Did you mean: jpeg")


def test_make_tiny_model(tmp_path):
    result = invoke("make-tiny-model", tmp_path / "ip2p", "--kind", "instruct_pix2pix")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ip2p" / "model_index.json").exists() and (tmp_path / "ip2p" / "unet").is_dir()
    assert_one_line_error(invoke("make-tiny-model", tmp_path / "x", "--kind", "sdxl"), match="unknown tiny model kind")


def test_demo_runs_end_to_end(tmp_path, png_folder):
    result = invoke("demo", png_folder, "--output", tmp_path / "demo", "--steps", "1", "-o", "resolution=64")
    assert result.exit_code == 0, result.output
    assert "DEMO" in result.stderr and "psnr" in result.stdout
    assert sorted(p.name for p in (tmp_path / "demo" / "protected").glob("*.png")) == ["a.png", "b.png", "c.png"]
