"""Documentation meta-tests (datasette's pattern): hooks, methods, CLI options and modules are
documented, and every page is in the navigation. The strict mkdocs build (``.ci/run``) checks links."""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import pytest

import facedefense
from facedefense import hookspecs
from facedefense.registry import get_registry

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: Modules deliberately left out of docs/api.md (internal helpers), with the reason.
UNDOCUMENTED_MODULES = {
    "facedefense.testing.tokenizer": "builds the tiny models' tokenizer; internal to tiny_models",
}


def hook_names() -> list[str]:
    return sorted(name for name, value in vars(hookspecs).items() if hasattr(value, "facedefense_spec"))


def sections(path: Path) -> dict[str, str]:
    """``## heading`` -> the text up to the next ``## `` heading."""
    parts = re.split(r"^## +(.+?)\s*$", path.read_text(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_hookspecs_are_found():
    assert "register_defenders" in hook_names() and "register_commands" in hook_names()


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented(hook):
    documented = sections(DOCS / "plugins" / "hooks.md")
    assert hook in documented, f"add a '## {hook}' section to docs/plugins/hooks.md"
    for argument in getattr(hookspecs, hook).__code__.co_varnames[: getattr(hookspecs, hook).__code__.co_argcount]:
        assert f"**{argument}**" in documented[hook], f"describe the argument '{argument}' of {hook}"


def test_every_registered_method_is_documented():
    index = (DOCS / "methods" / "index.md").read_text()
    missing = [
        f"{spec.kind} {spec.name}"
        for spec in get_registry().all_specs()
        if not (DOCS / "methods" / f"{spec.name}.md").exists() and f"| `{spec.name}` |" not in index
    ]
    assert not missing, f"give these methods a page in docs/methods/ or a row in docs/methods/index.md: {missing}"


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert [page for page in pages if f": {page}" not in nav] == []


def test_every_cli_command_and_option_is_documented():
    import typer.main

    from facedefense.cli import build_app

    documented = sections(DOCS / "cli.md")
    command = typer.main.get_command(build_app(with_plugins=False))
    missing = []
    for name, subcommand in command.commands.items():
        if name not in documented:
            missing.append(f"## {name}")
            continue
        for param in subcommand.params:
            if param.param_type_name == "option":
                missing += [f"{name} {opt}" for opt in (*param.opts, *param.secondary_opts) if opt not in documented[name]]
    assert not missing, f"document in docs/cli.md: {missing}"


def test_every_module_is_in_the_api_reference():
    api = (DOCS / "api.md").read_text()
    modules = [
        info.name
        for info in pkgutil.walk_packages(facedefense.__path__, "facedefense.")
        if not info.ispkg and not any(part.startswith("_") for part in info.name.split("."))
        and not info.name.startswith("facedefense.cli.")
    ]
    missing = [m for m in modules if f"::: {m}\n" not in api and m not in UNDOCUMENTED_MODULES]
    assert not missing, f"add to docs/api.md (or to UNDOCUMENTED_MODULES with a reason): {missing}"
