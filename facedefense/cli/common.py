"""Helpers shared by the CLI commands: one-line errors and option plumbing."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from facedefense.errors import FaceDefenseError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def friendly_errors(command: F) -> F:
    """Turn a :class:`FaceDefenseError` (an error the user can fix) into one line and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FaceDefenseError as exc:
            raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper  # type: ignore[return-value]


def progress_default() -> bool:
    """Progress bars by default when stderr is a terminal."""
    return sys.stderr.isatty()


def method_options(
    pairs: list[str] | None, **named: Any
) -> dict[str, Any]:
    """Merge ``-o key=value`` pairs with the named CLI options the user actually passed."""
    from facedefense.config import parse_option_pairs

    options = parse_option_pairs(pairs)
    for key, value in named.items():
        if value is not None:
            if key in options:
                raise FaceDefenseError(f"option '{key}' given twice (as --{key.replace('_', '-')} and -o {key}=...)")
            options[key] = value
    return options
