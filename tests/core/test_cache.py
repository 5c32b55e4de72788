"""facedefense's cache folder: one variable, ``FACEDEFENSE_CACHE`` (``FACEDEFENSE_CACHE_DIR`` still
read), used by every cache (class images, ``--dtype auto``, the tests' tiny models) and the only
name the docs give."""

from __future__ import annotations

import re
from pathlib import Path

from facedefense import autotune
from facedefense.io import cache_dir
from facedefense.testing import fixtures

ROOT = Path(__file__).resolve().parents[2]


def test_one_variable_moves_every_cache(monkeypatch, tmp_path):
    from facedefense_iterative.surrogate import cache_root

    monkeypatch.delenv("FACEDEFENSE_TEST_CACHE", raising=False)
    monkeypatch.setenv("FACEDEFENSE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("FACEDEFENSE_CACHE_DIR", str(tmp_path / "old"))
    assert cache_dir() == autotune.cache_dir() == cache_root() == tmp_path / "c"
    assert autotune.cache_path().parent == tmp_path / "c" and fixtures._cache_root() == tmp_path / "c" / "tests"
    monkeypatch.delenv("FACEDEFENSE_CACHE")
    assert cache_dir() == tmp_path / "old"  # the former name still works
    monkeypatch.delenv("FACEDEFENSE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "facedefense"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "facedefense"


def test_the_class_image_cache_follows_the_variable(monkeypatch, tmp_path):
    from facedefense_attacks.training import TrainingConfig, class_cache_dir

    monkeypatch.setenv("FACEDEFENSE_CACHE", str(tmp_path))
    assert class_cache_dir(TrainingConfig(model="m"), "a photo").parent == tmp_path / "class_images"


def test_no_other_code_decides_where_the_cache_is():
    """Only facedefense.io builds the default cache path; the code reads no other cache variable."""
    sources = [*ROOT.glob("facedefense/**/*.py"), *ROOT.glob("plugins/**/*.py")]
    offenders = [
        str(path.relative_to(ROOT))
        for path in sources
        if path != ROOT / "facedefense" / "io.py"
        and re.search(r'"\.cache"|environ(\.get)?\(\s*"FACEDEFENSE_CACHE', path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_the_docs_name_one_cache_variable():
    pages = [*ROOT.glob("docs/**/*.md"), ROOT / "README.md"]
    texts = {str(page.relative_to(ROOT)): page.read_text(encoding="utf-8") for page in pages}
    old_name = [name for name, text in texts.items() if re.search(r"FACEDEFENSE_CACHE_DIR", text) and name != "docs/cli.md"]
    assert old_name == []  # docs/cli.md mentions it once, as the former name
    assert texts["docs/cli.md"].count("FACEDEFENSE_CACHE_DIR") == 1
    assert "`FACEDEFENSE_CACHE=DIR`" in texts["docs/cli.md"] and "~/.cache/facedefense/tests" in texts["README.md"]
