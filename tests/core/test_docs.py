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


def index_rows() -> dict[str, str]:
    """docs/methods/index.md: method name -> its table row."""
    text = (DOCS / "methods" / "index.md").read_text()
    return {match.group(1): match.group(0) for match in re.finditer(r"^\| `([\w-]+)` \|.*$", text, re.MULTILINE)}


def test_every_registered_method_has_a_row_and_a_page():
    """Each registered method (every kind, shared models too) is a row of docs/methods/index.md whose
    link leads to a page that exists; the example plugin's row names its folder instead."""
    rows = index_rows()
    problems = []
    for spec in get_registry().all_specs():
        row = rows.get(spec.name)
        if row is None:
            problems.append(f"{spec.kind} {spec.name}: no row in docs/methods/index.md")
            continue
        pages = [page.split("#")[0] for page in re.findall(r"\]\(([^)]+)\)", row) if not page.startswith("..")]
        named_folders = [ROOT / path for path in re.findall(r"`(examples/[^`]+)`", row)]
        if not any((DOCS / "methods" / page).is_file() for page in pages) and not any(p.is_dir() for p in named_folders):
            problems.append(f"{spec.kind} {spec.name}: its row links to no existing page ({pages})")
    assert not problems, "\n".join(problems)


def test_every_method_page_is_linked_from_the_index():
    rows = "\n".join(index_rows().values()) + (DOCS / "methods" / "index.md").read_text()
    pages = [page.name for page in (DOCS / "methods").glob("*.md") if page.name != "index.md"]
    assert [page for page in pages if f"]({page}" not in rows] == []


def test_cli_table_lists_every_command():
    """The command table at the top of docs/cli.md names every command, plugins' included."""
    import typer.main

    from facedefense.cli import build_app

    table = (DOCS / "cli.md").read_text().split("\n## ", 1)[0]
    commands = typer.main.get_command(build_app()).commands
    assert [name for name in commands if f"| [`{name}`](#" not in table] == []


def test_home_page_names_every_built_in_method_page():
    """docs/index.md's overview links each defender, purifier with a page, attack and metric page."""
    home = (DOCS / "index.md").read_text()
    rows = index_rows()
    missing = []
    for spec in get_registry().all_specs():
        if spec.kind == "model" or spec.plugin == "example" or spec.name in ("gaussian_blur", "resize", "quantize", "gaussian_noise"):
            continue
        pages = {page.split("#")[0] for page in re.findall(r"\]\(([\w.-]+\.md)", rows.get(spec.name, ""))}
        if not any(f"(methods/{page}" in home for page in pages):
            missing.append(spec.name)
    assert not missing, f"docs/index.md does not link the pages of: {missing}"


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


def test_no_docstring_holds_a_raw_sphinx_role():
    """mkdocstrings shows ``:class:`X``` as is, and so would ``facedefense info``: cross-references are
    ``[`X`][module.X]`` where the target is in the API reference, plain backticks elsewhere."""
    role = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj|const):`")
    sources = [*ROOT.glob("facedefense/**/*.py"), *ROOT.glob("plugins/**/*.py"), *ROOT.glob("examples/**/*.py")]
    offenders = [str(path.relative_to(ROOT)) for path in sources
                 if path.name != "listing.py" and role.search(path.read_text(encoding="utf-8"))]
    assert offenders == []
