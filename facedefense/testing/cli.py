"""Run facedefense's command line in-process, as a user would type it, for tests::

    from facedefense.testing.cli import invoke

    result = invoke("protect", folder, "--method", "rid", "--output", out)
    assert result.exit_code == 0, result.output

Typer converts the app to a click command on every ``CliRunner.invoke`` (about 40 ms: it reads every
command's signature and type hints). Here the command is built once per set of registered plugins, so a
plugin a test registers still adds its commands, and methods a test registers are found as usual
(commands read the registry when they run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click
    from click.testing import Result

_COMMANDS: dict[frozenset, click.Command] = {}


def cli_command() -> click.Command:
    """facedefense's click command with the plugins registered now (built on first use, then reused)."""
    import typer.main

    from facedefense.cli import build_app
    from facedefense.registry import get_registry

    manager = get_registry().plugin_manager
    key = frozenset(manager.get_plugins()) if manager is not None else frozenset()
    if key not in _COMMANDS:
        if len(_COMMANDS) >= 4:  # plugins come and go in tests: keep a few recent sets only
            _COMMANDS.clear()
        _COMMANDS[key] = typer.main.get_command(build_app())
    return _COMMANDS[key]


def invoke(*args: Any, **kwargs: Any) -> Result:
    """``facedefense ARGS...`` in this process; each argument passes through ``str`` (paths, numbers).

    Keyword arguments go to ``click.testing.CliRunner.invoke`` (``input``, ``env``, ``catch_exceptions``).
    Returns click's ``Result``: ``exit_code``, ``output``, ``stdout``, ``stderr``, ``exception``.
    """
    from click.testing import CliRunner

    return CliRunner().invoke(cli_command(), [str(arg) for arg in args], **kwargs)
