"""Helpers shared by the CLI commands: one-line errors, early checks and option plumbing.

Every error a user can fix is ONE line on stderr, ``error: ...``, and exit status 2: the errors of
the library ([`FaceDefenseError`][facedefense.errors.FaceDefenseError]), the argument parser's (a missing
option, ``--batch-size 0``, ``--steps abc``: no usage box), and the operating system's (a full disk,
a permission: the message names the file). 1 means some inputs could not be processed, 130 an
interruption. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on the installed click
    from click import exceptions as click_exceptions

from facedefense.config import check_method_paths, looks_like_local_path  # noqa: F401 (the CLI's names)
from facedefense.errors import FaceDefenseError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def os_error_line(exc: OSError) -> str:
    """An OSError as one line that names the file: ``out/a.png: No space left on device``."""
    reason = exc.strerror or first_line(exc)
    files = [f for f in (exc.filename, getattr(exc, "filename2", None)) if f]
    return f"{' -> '.join(map(str, files))}: {reason}" if files else reason


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def friendly_errors(command: F) -> F:
    """Turn an error the user can fix (a [`FaceDefenseError`][facedefense.errors.FaceDefenseError], an
    ``OSError``, running out of memory) into one line; exit status 2 (1 for memory), 130 for Ctrl-C."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FaceDefenseError as exc:
            raise fail(first_line(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted (the manifest, if any, records what was done)", 130) from None
        except BrokenPipeError:  # stdout's reader left (`facedefense list | head`): the group exits quietly
            raise
        except OSError as exc:
            raise fail(os_error_line(exc)) from None
        except (MemoryError, RuntimeError) as exc:
            if not _out_of_memory(exc):
                raise
            raise fail(f"out of memory ({first_line(exc)[:160]}); try a smaller --batch-size or image", 1) from None

    return wrapper  # type: ignore[return-value]


class OneLineErrorsGroup(TyperGroup):
    """The app's click group: parser errors become one ``error:`` line with status 2 (no usage box);
    help shows plain value labels (`facedefense.cli.helptext`)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # fmt: skip
        from facedefense.cli.helptext import plain_types

        plain_types(self)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        from facedefense.progress import progress_enabled_as

        try:
            with progress_enabled_as(progress_default()):  # the library's bars and status lines: on a terminal
                result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click_exceptions.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            message = exc.format_message().strip().replace("\n", " ").rstrip(".")
            typer.echo(f"error: {message[:1].lower() + message[1:]}{hint}", err=True)
            sys.exit(2)
        except click_exceptions.ClickException as exc:
            typer.echo(f"error: {exc.format_message().strip().splitlines()[0]}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


def stop_on_sigterm() -> None:
    """Treat SIGTERM (``kill``, a service manager stopping the command) like Ctrl-C: the command
    then ends as an interrupted run (its manifest marked ``interrupted``, temporary files removed,
    exit status 130) instead of dying mid-write."""
    import signal
    import threading

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def one_line_warnings() -> None:
    """Show warnings as ``warning: message`` lines on stderr (no file, line and source excerpt)."""
    import warnings

    def formatted(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
        return f"warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}\n"

    warnings.formatwarning = formatted


#: Libraries whose Python warnings and log messages address the people who write code against them
#: (deprecations, dtype casts, "modules that should be kept in float32"), not a person running a command.
NOISY_LIBRARIES = (
    "accelerate", "diffusers", "facexlib", "huggingface_hub", "kornia", "lpips", "open_clip", "peft", "timm",
    "torch", "torchvision", "transformers",
)  # fmt: skip


def quiet_third_party() -> None:
    """Keep the libraries' notes for developers off a command's output; imports none of them.

    diffusers' and transformers' loggers are set to ``error`` through ``DIFFUSERS_VERBOSITY`` and
    ``TRANSFORMERS_VERBOSITY`` (a value the user set wins), other libraries' log records below
    ``error`` are dropped (facedefense logs nothing), and the Python warnings raised from
    ``NOISY_LIBRARIES``, and every ``DeprecationWarning`` and
    ``FutureWarning``, are ignored, unless warnings were asked for (``python -W``, ``PYTHONWARNINGS``).
    facedefense's own warnings (a skipped subfolder, an unchanged image) are still shown.
    """
    import logging
    import re
    import warnings

    for variable in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    if sys.warnoptions:
        return
    logging.getLogger().setLevel(logging.ERROR)
    libraries = "|".join(re.escape(name) for name in NOISY_LIBRARIES)
    warnings.filterwarnings("ignore", module=rf"({libraries})(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def progress_default() -> bool:
    """Progress bars by default when stderr is a terminal (``--progress`` shows them anyway)."""
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


