"""The plugin guide works as written: docs/plugins/writing.md's own code blocks make a plugin whose
contract tests pass.

Every fenced block whose first line is ``# <file name>`` is written to that file of a fresh plugin
folder; the pyproject must be installable (a name, a version, a build backend, the entry point), and
the plugin's tests run in a subprocess, with the class-scoped-fixture deprecation of pytest 10 as an
error. The plugin is imported from that folder (first on ``PYTHONPATH``, ahead of an installed
example plugin) and discovered through the entry point ``example = "facedefense_example_plugin"``:
the installed example plugin's, or a ``.dist-info`` written beside the code when it is not installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins" / "writing.md"


def guide_files() -> dict[str, str]:
    files = {}
    for block in re.findall(r"```(?:python|toml)\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S):
        first, _, rest = block.partition("\n")
        match = re.fullmatch(r"# ([\w./-]+\.(?:py|toml))", first.strip())
        if match:
            files[match.group(1)] = rest
    return files


def test_the_guide_names_a_complete_plugin():
    import tomllib

    files = guide_files()
    assert set(files) == {
        "pyproject.toml",
        "facedefense_example_plugin/__init__.py",
        "facedefense_example_plugin/texture.py",
        "tests/test_example_plugin.py",
    }
    project = tomllib.loads(files["pyproject.toml"])
    assert project["build-system"]["build-backend"] and project["project"]["version"]
    assert project["project"]["entry-points"]["facedefense"] == {"example": "facedefense_example_plugin"}
    assert not re.search(r"= \.\.\.|\.\.\.\)", files["facedefense_example_plugin/texture.py"]), "no placeholder in the method"


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="the contracts need scikit-image")
@pytest.mark.integration
def test_the_guide_plugin_passes_its_contract_tests(tmp_path):
    for name, text in guide_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    installed = any(ep.name == "example" for ep in importlib.metadata.entry_points(group="facedefense"))
    if not installed:
        info = tmp_path / "facedefense_example_plugin-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: facedefense-example-plugin\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text("[facedefense]\nexample = facedefense_example_plugin\n")
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["facedefense.testing.fixtures"]\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::pytest.PytestRemovedIn10Warning", "tests"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"\b(\d+) passed", result.stdout) and "failed" not in result.stdout
    code = "import facedefense_example_plugin.texture as t; print(t.__file__)"
    where = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(tmp_path)), "the guide's code, not the installed plugin, was tested"
