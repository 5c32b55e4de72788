"""``--help`` a person reads: each option's value shown as ``TEXT``, ``PATH``, ``INTEGER`` or
``NUMBER`` (a flag such as ``--overwrite`` or ``--progress/--no-progress`` shows none), arguments
by their name, instead of typer's ``<bool>``, ``<str>`` and ``<list[Path]>``; a command's
paragraphs wrapped to the terminal's width, not at its docstring's line breaks.

Every command's docstring ends with an ``Example:`` line; `facedefense.cli.build_app` offers shell
completion (``facedefense --install-completion``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

#: Annotation -> what the help shows for the option's value.
LABELS: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH"}


def plain_types(command: Any) -> None:
    """Show ``command``'s parameters (and its subcommands', recursively) with plain value labels,
    and its help with the docstring's line breaks joined (`unwrapped`).

    The labels are set when the help asks for the parameters (click adds ``--help`` itself then), so
    plugins' commands get them too. Idempotent.
    """
    original = command.get_params
    if not getattr(original, "plain_types", False):

        def get_params(ctx: Any) -> list[Any]:
            params = original(ctx)
            for param in params:
                _plain(param)
            return params

        get_params.plain_types = True  # type: ignore[attr-defined]
        command.get_params = get_params
    if getattr(command, "help", None):
        command.help = unwrapped(command.help)
    for sub in getattr(command, "commands", {}).values():
        plain_types(sub)


def unwrapped(text: str) -> str:
    """``text`` with the line breaks inside each paragraph joined, so the terminal wraps it to its
    width (typer keeps a docstring's breaks). Paragraphs are separated by blank lines; one that
    starts with click's ``\\b`` marker is kept as written.

    Examples:
        >>> unwrapped("Writes PNGs and a manifest. An output\\nfolder is refused.\\n\\nExample: x")
        'Writes PNGs and a manifest. An output folder is refused.\\n\\nExample: x'
    """
    import inspect

    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _plain(param: Any) -> None:
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        label = ""
    else:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or descriptor.is_choice:
            return  # choices show their values
        annotation = descriptor.annotation
        if get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        label = LABELS.get(annotation)
        if label is None:
            return
    if param.param_type_name == "argument" and param.metavar is None:
        param.metavar = param.name.upper()
    param.display_type_rich = lambda ctx=None: label
