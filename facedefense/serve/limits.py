"""What ``facedefense serve`` accepts: upload limits, the bounded queue, batching, the bind rule, the token.

Imports nothing heavy: the CLI checks these before FastAPI, torch or any model loads.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass, field

from facedefense.errors import ConfigError

#: The environment variable that holds the API token (``--token`` wins over it).
TOKEN_VARIABLE = "FACEDEFENSE_TOKEN"


def _default_max_pixels() -> int:
    from facedefense.io import max_pixels

    return max_pixels()


@dataclass(frozen=True)
class Limits:
    """The service's limits.

    Attributes:
        max_upload_bytes: largest upload accepted, in bytes (the whole request body); larger is 413.
            Default: 25 MB.
        max_pixels: largest image accepted, width x height; larger is 413 before it is decoded.
            Default: ``FACEDEFENSE_MAX_PIXELS`` or the library's limit (`facedefense.io.max_pixels`).
        max_files: most images in one batch request. Default: 32.
        queue_size: most images admitted at once (being decoded, waiting, protected or encoded);
            one more is answered 503 with ``Retry-After`` instead of waiting. Default: 64.
        max_batch: most images of one size protected in one forward pass by an amortized defender.
            Default: 8.
        max_wait_ms: how long the first image of a batch waits for others, in milliseconds. Default: 5.
        retry_after_s: the ``Retry-After`` of a 503, in seconds. Default: 1.
        png_level: zlib level of the PNG answers, 0-9. Default: 6, as ``facedefense protect``; the
            pixels are the same at every level (1 encodes about 1.45x faster for about 9% more bytes).
    """

    max_upload_bytes: int = 25_000_000
    max_pixels: int = field(default_factory=_default_max_pixels)
    max_files: int = 32
    queue_size: int = 64
    max_batch: int = 8
    max_wait_ms: float = 5.0
    retry_after_s: int = 1
    png_level: int = 6

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_files", "queue_size", "max_batch", "retry_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.png_level, bool) or not isinstance(self.png_level, int) or not 0 <= self.png_level <= 9:
            raise ConfigError(f"png_level must be an integer from 0 to 9, got {self.png_level!r}")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise ConfigError(f"max_wait_ms must be between 0 and 10000 milliseconds, got {self.max_wait_ms!r}")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def resolve_token(token: str | None) -> str | None:
    """The token: ``token`` if given, else ``FACEDEFENSE_TOKEN``, else None (an empty value is none)."""
    value = token if token is not None else os.environ.get(TOKEN_VARIABLE)
    return value or None


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token.

    Raises:
        ConfigError: ``host`` is not a loopback address and there is no token.
    """
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"--host {host} accepts connections from other machines: set a token (--token or "
            f"{TOKEN_VARIABLE}) that clients send as 'Authorization: Bearer TOKEN', or bind 127.0.0.1"
        )


def token_matches(expected: str | None, authorization: str | None) -> bool:
    """Whether the ``Authorization`` header carries ``Bearer <expected>`` (constant-time comparison);
    always True when no token is set."""
    if not expected:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())
