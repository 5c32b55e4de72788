"""The third-party example plugin (examples/facedefense-example-plugin) is discovered through its
entry point exactly like the built-ins, and works end to end through the installed CLI.

Skipped unless it is installed: ``pip install --no-deps -e examples/facedefense-example-plugin``
(``scripts/setup.sh`` does it).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "examples" / "facedefense-example-plugin"
installed = any(
    ep.name == "example" and ep.value == "facedefense_example_plugin"
    for ep in importlib.metadata.entry_points(group="facedefense")
)
pytestmark = pytest.mark.skipif(not installed, reason="pip install -e examples/facedefense-example-plugin")


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd, timeout=300)


def cli(*args: str) -> subprocess.CompletedProcess:
    """Run the installed ``facedefense`` console script of this interpreter's environment."""
    executable = shutil.which("facedefense", path=str(Path(sys.executable).parent))
    if executable is None:
        return run(sys.executable, "-c", "from facedefense.cli import main; main()", *args)
    return run(executable, *args)


def test_listed_with_its_plugin_name():
    result = cli("list", "defenders", "--json")
    assert result.returncode == 0, result.stderr
    defenders = {entry["name"]: entry for entry in json.loads(result.stdout)["defenders"]}
    entry = defenders["example_texture"]
    assert (entry["plugin"], entry["version"]) == ("example", "0.1.0")
    assert entry["target"] == "facedefense_example_plugin.texture:ExampleTexture"


def test_listing_does_not_import_the_method():
    code = (
        "import sys; from facedefense.registry import get_registry; "
        "spec = get_registry().get('defender', 'example_texture'); "
        "print(sorted(m for m in ('torch', 'facedefense_example_plugin.texture') if m in sys.modules))"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.integration
def test_protects_through_the_cli(tmp_path):
    import numpy as np
    from PIL import Image

    original = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    (tmp_path / "photos").mkdir()
    Image.fromarray(original).save(tmp_path / "photos" / "face.png")
    output = tmp_path / "protected"
    result = cli(
        "protect", str(tmp_path / "photos"), "--method", "example_texture", "--eps", "4/255", "--seed", "3",
        "-o", "pattern=checker", "-o", "cell=2", "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((output / "facedefense.json").read_text())
    assert manifest["command"] == "protect"
    assert manifest["method"]["name"] == "example_texture" and manifest["method"]["plugin"] == "example"
    assert {k: manifest["method"]["config"][k] for k in ("pattern", "cell", "seed")} == {
        "pattern": "checker",
        "cell": 2,
        "seed": 3,
    }
    assert manifest["budget"]["eps_gray_levels"] == 4.0
    (entry,) = manifest["images"]
    assert entry["output"] == "face.png" and (entry["width"], entry["height"]) == (56, 40)
    assert entry["within_budget"] and entry["linf_gray_levels"] <= 4.0 and "clipped_fraction" in entry
    written = np.asarray(Image.open(output / "face.png").convert("RGB")).astype(int)
    assert written.shape == original.shape
    assert 0 < np.abs(written - original).max() <= 4


@pytest.mark.integration
def test_its_own_test_suite_passes():
    result = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=PLUGIN_DIR)
    assert result.returncode == 0, result.stdout[-3000:]
