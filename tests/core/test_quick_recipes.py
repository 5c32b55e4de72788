"""The quick recipes of docs/getting-started.md run as written (issue 25 item 6): each heavy command
with the tiny model finishes, and every protect recipe changes every photo within its budget (a
recipe whose network leaves the photos unchanged exits 3 and fails here)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facedefense.cli import build_app
from facedefense.testing.tiny_models import sample_faces

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "getting-started.md"

pytestmark = pytest.mark.integration  # seven commands that train and sample: about 35 s on 2 cores


def recipes() -> list[list[str]]:
    """The commands of the first bash block under '## Quick recipes', continuation lines joined."""
    text = GUIDE.read_text(encoding="utf-8").split("## Quick recipes", 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_recipes_are_facedefense_commands_of_every_heavy_kind():
    commands = recipes()
    assert all(command[0] == "facedefense" for command in commands)
    kinds = {(command[1], command[command.index("--method") + 1] if "--method" in command else "") for command in commands}
    assert {("protect", "aspl"), ("protect", "fsmg"), ("train", "rid"), ("protect", "rid"), ("attack", "")} <= kinds


def test_every_quick_recipe_runs_as_written(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, face in enumerate(sample_faces(3, 64)):
        Image.fromarray((face.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(photos / f"p{index}.png")
    monkeypatch.chdir(tmp_path)
    app = build_app()
    for command in recipes():
        result = CliRunner().invoke(app, command[1:])
        assert result.exit_code == 0, f"{shlex.join(command)}\n{result.output}"
        if command[1] == "protect":
            output = Path(command[command.index("--output") + 1])
            manifest = json.loads((output / "facedefense.json").read_text())
            levels = [entry["linf_gray_levels"] for entry in manifest["images"]]
            assert len(levels) == 3 and all(0 < level <= manifest["budget"]["eps_gray_levels"] + 1e-6 for level in levels)
    assert len(list((tmp_path / "quick-lora" / "images").rglob("*.png"))) == 1
    assert "<img" in (tmp_path / "quick-aspl.html").read_text(encoding="utf-8")
