"""The third-party example plugin (examples/facedefense-example-plugin), installed by the setup
script, is discovered through its entry point exactly like the built-ins."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

installed = any(ep.name == "example" for ep in importlib.metadata.entry_points(group="facedefense"))
pytestmark = pytest.mark.skipif(not installed, reason="pip install -e examples/facedefense-example-plugin")


def cli(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("facedefense", path=str(Path(sys.executable).parent))
    return subprocess.run([executable, *args], capture_output=True, text=True, check=False)


def test_listed_with_its_plugin_name():
    result = cli("list", "--json")
    assert result.returncode == 0, result.stderr
    defenders = {entry["name"]: entry for entry in json.loads(result.stdout)["defenders"]}
    assert defenders["sign_noise"]["plugin"] == "example"
    assert defenders["sign_noise"]["version"] == "0.1.0"


def test_protects_through_the_cli(tmp_path, png_folder):
    result = cli("protect", str(png_folder), "--method", "sign_noise", "--eps", "3/255", "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "facedefense.json").read_text())
    assert manifest["method"]["plugin"] == "example" and len(manifest["images"]) == 3
    assert all(entry["linf_gray_levels"] == 3 for entry in manifest["images"])
