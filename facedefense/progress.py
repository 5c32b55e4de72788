"""Progress bars, one switch for the whole library.

Long work (optimization steps, files) shows a tqdm bar on stderr. From Python the bars are on by
default, on a terminal or not; switch them off with [`set_progress`][facedefense.progress.set_progress]
(``set_progress(False)``), for a block with [`progress_enabled_as`][facedefense.progress.progress_enabled_as],
or with the environment variable ``FACEDEFENSE_PROGRESS=0``. The CLI shows them when stderr is a terminal, and
always with ``--progress`` (``--no-progress`` hides them).

Work that comes before its first bar (loading a model, a long first step) says what it does on one
stderr line first, under the same switch ([`status`][facedefense.progress.status]): no command
stays silent while it loads.

Examples:
    >>> from facedefense.progress import bar, set_progress
    >>> set_progress(False)
    >>> for step in bar(range(3), desc="PGD"):
    ...     pass
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_setting: bool | None = None


def set_progress(enabled: bool | None) -> None:
    """Show (True) or hide (False) progress bars; None restores the default (on unless
    ``FACEDEFENSE_PROGRESS`` is 0, false, off or no)."""
    global _setting
    _setting = enabled


def progress_enabled() -> bool:
    """Whether bars are shown now."""
    if _setting is not None:
        return _setting
    return os.environ.get("FACEDEFENSE_PROGRESS", "1").strip().lower() not in ("0", "false", "off", "no")


@contextlib.contextmanager
def progress_enabled_as(enabled: bool | None) -> Iterator[None]:
    """Within the block, bars are shown when ``enabled`` (None: leave the setting alone)."""
    global _setting
    previous = _setting
    if enabled is not None:
        _setting = enabled
    try:
        yield
    finally:
        _setting = previous


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "step",
        leave: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar on stderr, shown when [`progress_enabled`][facedefense.progress.progress_enabled] (on a
    terminal or not); its advances are also reported to this thread's
    [`listening`][facedefense.progress.listening] callback, if any."""
    from tqdm.auto import tqdm

    made = tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=not progress_enabled(),
                dynamic_ncols=True, **kwargs)
    listener = getattr(_listeners, "callback", None)
    return made if listener is None else _Reported(made, listener)


_listeners = threading.local()


@contextlib.contextmanager
def listening(callback: Callable[[str, int, int | None], None]) -> Iterator[None]:
    """Within the block, every bar this thread makes calls ``callback(desc, done, total)`` as it
    advances, shown or not (``facedefense serve`` reports a job's steps this way). The callback
    may raise to stop the work (a cancelled job): the exception comes out of the bar's ``update``
    or iteration."""
    previous = getattr(_listeners, "callback", None)
    _listeners.callback = callback
    try:
        yield
    finally:
        _listeners.callback = previous


class _Reported:
    """A tqdm bar whose advances are also reported to a `listening` callback."""

    def __init__(self, inner: Any, callback: Callable[[str, int, int | None], None]) -> None:
        self._inner, self._callback, self._done = inner, callback, 0

    def _advance(self, count: float) -> None:
        self._done += int(count)
        self._callback(str(self._inner.desc or ""), self._done, self._inner.total)

    def update(self, n: float = 1) -> Any:
        result = self._inner.update(n)
        self._advance(n)
        return result

    def __iter__(self) -> Iterator[Any]:
        for item in self._inner:
            yield item
            self._advance(1)

    def __enter__(self) -> _Reported:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: object) -> Any:
        return self._inner.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def status(message: str) -> None:
    """Say in one stderr line what starts now (``loading model ...``), when bars are shown. Written
    through tqdm, so an open bar is redrawn below the line instead of being broken by it."""
    if progress_enabled():
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


def denoising_callback(progress: Any) -> Callable[..., dict[str, Any]]:
    """A diffusers ``callback_on_step_end`` that advances the bar ``progress`` by one per denoising
    step (a pipeline call of 50 steps then shows 50 updates, not one at the end)."""

    def callback(pipeline: Any, step: int, timestep: Any, outputs: dict[str, Any]) -> dict[str, Any]:
        progress.update(1)
        return outputs

    return callback
