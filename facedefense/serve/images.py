"""Uploads in, protected PNGs out, with the library's guarantees (`facedefense.io`, `facedefense.batch`).

An upload is decoded in memory by [`load_image`][facedefense.io.load_image] (EXIF orientation
applied, alpha and ICC profile kept aside), after its format was recognised from its first bytes
(never from its name or content type) and its declared size checked against the pixel limit. The
answer is the PNG [`png_bytes`][facedefense.io.png_bytes] encodes (alpha and ICC profile carried
over), whose 8-bit values are checked against the budget exactly as ``facedefense protect`` checks
the files it writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from facedefense.errors import ImageError
from facedefense.serve.errors import ServeError

if TYPE_CHECKING:
    from torch import Tensor

    from facedefense.io import LoadedImage

#: Formats accepted, by the first bytes of the file: (Pillow's format name, prefix, offset of the prefix).
SIGNATURES = (
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("JPEG", b"\xff\xd8\xff", 0),
    ("WEBP", b"WEBP", 8),
    ("GIF", b"GIF87a", 0),
    ("GIF", b"GIF89a", 0),
    ("BMP", b"BM", 0),
    ("TIFF", b"II*\x00", 0),
    ("TIFF", b"MM\x00*", 0),
    ("PPM", b"P6", 0),
    ("PPM", b"P5", 0),
)
ACCEPTED = "PNG, JPEG, WebP, GIF, BMP, TIFF, PPM/PGM"


def sniff_format(data: bytes) -> str | None:
    """Pillow's name of the image format ``data`` starts with, or None (not an accepted image)."""
    for name, prefix, offset in SIGNATURES:
        if data[offset : offset + len(prefix)] == prefix and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    return None


def safe_name(filename: str | None) -> str:
    """The upload's file name without folders or control characters (``image`` when none is left)."""
    name = PurePath((filename or "").replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()
    return name or "image"


def output_name(filename: str) -> str:
    """``portrait.jpg`` -> ``portrait.png`` (the name ``facedefense protect`` writes)."""
    stem = PurePath(filename).stem or "image"
    return f"{stem}.png"


def decode_upload(data: bytes, filename: str | None, max_pixels: int) -> LoadedImage:
    """Decode one upload in memory.

    Raises:
        ServeError: 400 empty, 415 not an accepted image format, 413 over ``max_pixels``, 422 an image
            the library refuses (corrupt, truncated, too small, extreme aspect ratio).
    """
    import io

    from PIL import Image

    from facedefense.io import load_image

    name = safe_name(filename)
    if not data:
        raise ServeError(400, f"{name}: empty upload (0 bytes)")
    found = sniff_format(data)
    if found is None:
        raise ServeError(415, f"{name}: not an image this service accepts ({ACCEPTED}); the format is read from the bytes")
    try:
        with Image.open(io.BytesIO(data), formats=[found]) as header:  # the header only: nothing decoded yet
            width, height = header.size
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ServeError(422, f"{name}: corrupt or truncated {found} image") from exc
    if width * height > max_pixels:
        raise ServeError(413, f"{name}: {width}x{height} is {width * height:,} pixels, over this service's {max_pixels:,}-pixel limit")
    try:
        return load_image(name, data)
    except ImageError as exc:
        raise ServeError(422, str(exc)) from exc


@dataclass
class Protected:
    """One protected image as the service answers it.

    Attributes:
        name: the PNG's file name (the upload's stem).
        png: the PNG file's bytes.
        facts: what ``facedefense protect`` records per image (``linf_gray_levels``, ``within_budget``,
            ``unchanged``, the method's stats), plus ``input``, ``output``, ``width`` and ``height``.
    """

    name: str
    png: bytes
    facts: dict[str, Any]


def encode_protected(
    loaded: LoadedImage, protected: Tensor, eps: float, stats: dict[str, Any] | None = None, *, png_level: int = 6
) -> Protected:
    """The PNG of ``protected`` (1, 3, H, W) with ``loaded``'s alpha and ICC profile, after checking
    its 8-bit values against ``eps`` (raises `facedefense.errors.BudgetViolationError`); ``png_level``
    is the zlib level (0-9)."""
    from facedefense.batch import budget_stats, written_levels
    from facedefense.io import png_bytes

    levels = written_levels(protected, loaded.pixels, eps)
    facts = budget_stats(levels, [stats or {}])[0]
    name = output_name(loaded.path.name)
    png = png_bytes(protected, alpha=loaded.alpha, icc_profile=loaded.icc_profile, compress_level=png_level)
    height, width = loaded.size
    return Protected(name, png, {"input": loaded.path.name, "output": name, "width": width, "height": height, **facts})
