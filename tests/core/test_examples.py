"""The example scripts run as documented (tiny model, few steps)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(script: str, *args: str) -> str:
    command = [sys.executable, str(EXAMPLES / script), *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_protect_photos(tmp_path, png_folder, tiny_sd_path):
    out = run("protect_photos.py", str(png_folder), str(tmp_path / "out"), "--model", str(tiny_sd_path), "--steps", "1")
    assert "a.png: max change" in out and (tmp_path / "out" / "facedefense.json").exists()


def test_evaluate_protection(png_folder, tiny_sd_path):
    out = run("evaluate_protection.py", str(png_folder / "a.png"), "--model", str(tiny_sd_path), "--steps", "1")
    assert "PSNR" in out and "budget respected" in out
