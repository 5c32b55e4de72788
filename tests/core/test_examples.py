"""The example scripts run as documented (tiny model, one step, small working resolution)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(script: str, *args: str) -> str:
    command = [sys.executable, str(EXAMPLES / script), *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_scripts_stay_short():
    for script in ("protect_photos.py", "evaluate_protection.py", "custom_defender_inline.py"):
        assert len((EXAMPLES / script).read_text().splitlines()) < 60, script


@pytest.mark.integration
def test_protect_photos(tmp_path, png_folder, tiny_sd_path):
    out = run(
        "protect_photos.py", str(png_folder), str(tmp_path / "out"), "--model", str(tiny_sd_path), "--steps", "1",
        "--resolution", "64",
    )  # fmt: skip
    assert "a.png: max change" in out and (tmp_path / "out" / "facedefense.json").exists()


@pytest.mark.integration
def test_evaluate_protection(tmp_path, png_folder, tiny_sd_path):
    out = run(
        "evaluate_protection.py", str(png_folder / "a.png"), "--model", str(tiny_sd_path), "--steps", "1",
        "--output", str(tmp_path / "saved"), "--resolution", "64",
    )  # fmt: skip
    assert "PSNR" in out and "budget: max change" in out and "JPEG keeps" in out
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["protected.png", "purified.png"]


@pytest.mark.integration
def test_custom_defender_inline(tmp_path, png_folder, tiny_sd_path):
    out = run(
        "custom_defender_inline.py", str(png_folder), str(tmp_path / "out"), "--model", str(tiny_sd_path),
        "--steps", "2", "--resolution", "64",
    )  # fmt: skip
    assert "a.png: latent distance" in out
    manifest = json.loads((tmp_path / "out" / "facedefense.json").read_text())
    assert manifest["method"]["name"] == "latent_push" and manifest["method"]["plugin"] == "__main__"
    assert all(entry["within_budget"] and entry["latent_distance"] > 0 for entry in manifest["images"])
