"""``facedefense serve``: protect photos from a web page and over HTTP.

[`create_app`][facedefense.serve.app.create_app] builds the ASGI app (FastAPI, the ``serve``
extra: ``pip install 'facedefense[serve]'``); `facedefense.serve.service` holds what it serves,
independent of the framework. Importing this package imports neither FastAPI nor torch.

Examples:
    >>> from facedefense.serve import create_app  # doctest: +SKIP
    >>> app = create_app({"rid": {"checkpoint": "ASDS-eps-8_255.bin"}})  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from facedefense.serve.limits import Limits

__all__ = ["Limits", "create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """[`facedefense.serve.app.create_app`][facedefense.serve.app.create_app] (imported on first use)."""
    try:
        from facedefense.serve.app import create_app as build
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in ("fastapi", "starlette", "multipart", "python_multipart", "uvicorn"):
            raise  # not a missing extra: a bug, with its traceback
        from facedefense.errors import MissingDependencyError

        raise MissingDependencyError(
            f"facedefense serve needs FastAPI and uvicorn ({exc.name} is missing): pip install 'facedefense[serve]'"
        ) from exc
    return build(*args, **kwargs)
