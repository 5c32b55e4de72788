"""The one error type of the service: a one-line message and its HTTP status."""

from __future__ import annotations


class ServeError(Exception):
    """An answer that is an error: ``{"error": message}`` with ``status`` (and extra ``headers``).

    Attributes:
        status: the HTTP status code (400 bad request, 401 token, 404 unknown method, 413 too large,
            415 not an image, 422 an image that cannot be protected, 503 queue full).
        headers: extra response headers (``Retry-After`` of a 503).
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}

    @property
    def message(self) -> str:
        text = str(self).strip()
        return text.splitlines()[0] if text else "error"
