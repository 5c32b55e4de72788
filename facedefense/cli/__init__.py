"""The ``facedefense`` command line (Typer).

Start-up imports no torch: each command imports what it needs when it runs, so ``--help``,
``list`` and ``plugins`` stay fast. Errors a user can fix print one line and exit with status 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from facedefense.cli import attack, benchmark, evaluate, listing, models, run, serve
from facedefense.cli.common import OneLineErrorsGroup, one_line_warnings, quiet_third_party, stop_on_sigterm
from facedefense.registry import call_each_plugin, get_registry

HELP = (
    "Protect portrait photos against diffusion-model personalization and editing.\n\n"
    "Images are read from files or folders and written as lossless PNG with a JSON manifest. "
    "Budgets are L-infinity in [0, 1] pixel units: 8/255 means at most 8 gray levels per pixel and channel."
)


def build_app(*, with_plugins: bool = True) -> typer.Typer:
    """Build the Typer app: core commands, then the commands plugins add (``register_commands``)."""
    app = typer.Typer(
        name="facedefense",
        cls=OneLineErrorsGroup,
        help=HELP,
        no_args_is_help=True,
        add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(show_version)
    for module in (run, attack, evaluate, benchmark, listing, models, serve):
        module.register(app)
    if with_plugins:
        registry = get_registry()
        if registry.plugin_manager is not None:
            failures = call_each_plugin(registry.plugin_manager, "register_commands", lambda plugin: {"app": app})
            for plugin, exc in failures:  # one plugin's bug must not take the CLI down
                typer.echo(f"warning: plugin '{plugin}' failed to add commands: {exc}", err=True)
    return app


def print_version(value: bool) -> None:
    if value:
        from facedefense import __version__

        typer.echo(f"facedefense {__version__}")
        raise typer.Exit()


def show_version(
    version: Annotated[
        bool,
        typer.Option("--version", callback=print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """The app's own options (before the command)."""


def main() -> None:
    """Console-script entry point."""
    stop_on_sigterm()
    one_line_warnings()
    quiet_third_party()
    build_app()(prog_name="facedefense")
