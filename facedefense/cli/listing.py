"""``facedefense list`` and ``facedefense plugins``: read the registry, import no method."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import typer

from facedefense.cli.common import friendly_errors


@friendly_errors
def list_methods(
    kind: Annotated[
        str | None, typer.Argument(help="defenders, purifiers, personalizers, editors or metrics.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the registered methods and the plugin that supplies each."""
    from facedefense.registry import KINDS, get_registry, normalize_kind

    registry = get_registry()
    kinds = [normalize_kind(kind)] if kind else list(KINDS)
    listing = {f"{k}s": [spec.to_dict() for spec in registry.all_specs(k)] for k in kinds}
    if as_json:
        typer.echo(json.dumps({**listing, "problems": registry.problems}, indent=2))
        return
    for heading, specs in listing.items():
        typer.echo(f"{heading}:")
        if not specs:
            typer.echo("  (none)")
        width = max((len(s["name"]) for s in specs), default=0)
        for spec in specs:
            aliases = f" (aliases: {', '.join(spec['aliases'])})" if spec["aliases"] else ""
            typer.echo(f"  {spec['name']:<{width}}  {spec['summary']}{aliases}  [{spec['plugin']}]")
    for problem in registry.problems:
        typer.echo(f"warning: {problem}", err=True)


@friendly_errors
def plugins(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the installed plugins, what each registers, and those that failed to load."""
    from facedefense.registry import get_registry

    registry = get_registry()
    provided: dict[str, list[str]] = {}
    for spec in registry.all_specs():
        provided.setdefault(spec.plugin, []).append(f"{spec.kind}:{spec.name}")
    rows = [
        {
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "module": info.module,
            "provides": provided.get(info.name, []),
            "error": info.error,
        }
        for info in registry.plugins
    ]
    if as_json:
        typer.echo(json.dumps({"plugins": rows, "problems": registry.problems}, indent=2))
        return
    for row in rows:
        status = f"FAILED: {row['error']}" if row["error"] else ", ".join(row["provides"]) or "(registers nothing)"
        typer.echo(f"{row['name']} ({row['distribution']} {row['version']}): {status}")
    for problem in registry.problems:
        typer.echo(f"warning: {problem}", err=True)


@friendly_errors
def info(
    name: Annotated[str | None, typer.Argument(help="Method name (any kind).", show_default=False)] = None,
    kind: Annotated[str | None, typer.Option(help="Kind, when the name exists in several.")] = None,
    hardware: Annotated[
        bool, typer.Option("--hardware", help="Show this machine and the precisions --dtype auto measured for it.")
    ] = False,
) -> None:
    """Show a method's documentation and its options: type (choices), default, range, description."""
    import inspect

    from facedefense.errors import UnknownMethodError
    from facedefense.registry import KINDS, get_registry

    if hardware:
        from facedefense.autotune import hardware_report

        for line in hardware_report():
            typer.echo(line)
        if name is None:
            return
    if name is None:
        raise UnknownMethodError("name a method (see `facedefense list`) or pass --hardware")
    registry = get_registry()
    kinds = [kind] if kind else [k for k in KINDS if name in registry.specs[k] or name in registry.aliases[k]]
    if not kinds:
        import difflib

        known = sorted({n for k in KINDS for n in (*registry.specs[k], *registry.aliases[k])})
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownMethodError(f"unknown method '{name}'.{hint}")
    spec = registry.get(kinds[0], name)
    method = spec.load()
    typer.echo(f"{spec.kind} '{spec.name}' from plugin '{spec.plugin}' ({spec.target_path})\n")
    typer.echo(plain_text(inspect.getdoc(method) or "(no documentation)"))
    if spec.kind == "model":
        typer.echo(f"\nbuilt once per process by facedefense.models.shared_model({spec.name!r}, ...) with:")
        lines = argument_lines(method)
    else:
        typer.echo("\noptions (-o key=value):")
        lines = option_lines(method.Config)
    for line in lines:
        typer.echo(line)


_CROSS_REFERENCE = re.compile(r"\[([^\[\]]+)\]\[[\w.]*\]")
_SPHINX_ROLE = re.compile(r":(?:func|class|meth|data|mod|attr|exc|obj|const):`(~?)([^`]+)`")


def plain_text(text: str) -> str:
    """Docstring markup as a terminal shows it: a cross-reference ``[`name`][module.name]`` and a
    Sphinx role (``:class:`~a.Name```, a third party's docstring) become the name; double
    backticks are dropped."""
    text = _CROSS_REFERENCE.sub(lambda match: match.group(1).strip("`"), text)
    text = _SPHINX_ROLE.sub(lambda match: match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2), text)
    return text.replace("``", "")


def _described(head: str, description: str) -> list[str]:
    """``head`` then its description wrapped under it."""
    import textwrap

    lines = [head]
    if description:
        lines += textwrap.wrap(
            plain_text(description), width=96, initial_indent="      ", subsequent_indent="      ", break_on_hyphens=False
        )
    return lines


def argument_lines(factory: Any) -> list[str]:
    """A shared model factory's keyword arguments (``path`` and its own, not ``device``/``dtype``):
    ``  name = default`` then the description from its ``Args:`` section."""
    import inspect

    from facedefense.config import docstring_section, format_value

    docs = docstring_section(inspect.getdoc(factory) or "", "Args")
    lines = []
    for name, parameter in inspect.signature(factory).parameters.items():
        if name in ("device", "dtype") or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        default = "(required)" if parameter.default is parameter.empty else format_value(parameter.default)
        lines += _described(f"  {name} = {default}", docs.get(name, ""))
    return lines


def option_lines(config_class: type) -> list[str]:
    """``  name: type = default  [range]`` then the description from the config's docstring."""
    import dataclasses

    from facedefense.config import config_fields, describe_type, format_value, option_docs, option_range

    docs = option_docs(config_class)
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    lines = []
    for name, annotation in config_fields(config_class).items():
        field = fields[name]
        if field.default is not dataclasses.MISSING:
            default = format_value(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = format_value(field.default_factory())
        else:
            default = "(required)"
        low, high = option_range(field)
        bounds = ""
        if low is not None or high is not None:
            bounds = f"  [{'' if low is None else format_value(low)}..{'' if high is None else format_value(high)}]"
        lines += _described(f"  {name}: {describe_type(annotation)} = {default}{bounds}", docs.get(name, ""))
    return lines


def register(app: typer.Typer) -> None:
    app.command("list")(list_methods)
    app.command()(plugins)
    app.command()(info)
