"""Documentation meta-tests (datasette's pattern): every hook and every method is documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from facedefense import hookspecs
from facedefense.registry import get_registry

DOCS = Path(__file__).resolve().parents[2] / "docs"


def hook_names():
    return [name for name, value in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented(hook):
    assert f"## {hook}\n" in (DOCS / "plugins" / "hooks.md").read_text()


def test_every_registered_method_is_documented():
    index = (DOCS / "methods" / "index.md").read_text()
    missing = [spec.name for spec in get_registry().all_specs() if f"`{spec.name}`" not in index]
    assert not missing, f"add these methods to docs/methods/index.md: {missing}"


def test_every_method_page_is_in_the_navigation():
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert [page for page in pages if page not in nav] == []
