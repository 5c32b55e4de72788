"""Figures a person looks at: thumbnails in labelled rows.

One drawing code for every picture the library writes: ``compare.png`` of ``protect`` and ``demo``
(original, protected and amplified difference, a row per photo), the benchmark's ``examples.png``
(clean, protected, purified, generated, a row per cell), and the images of the HTML reports
(`facedefense.report_html`). Everything is drawn with Pillow's default font; thumbnails keep the
aspect ratio of their image at a fixed height, so a figure's size is bounded by its row count.

Example:
    >>> from facedefense.figures import labelled_strip, thumbnail
    >>> row = labelled_strip([thumbnail(a, 96), thumbnail(b, 96)], ["original", "protected"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image
    from torch import Tensor

#: Height of the title band above each tile, in pixels.
TITLE_HEIGHT = 14
#: Gap between tiles in a strip, and between rows of a sheet, in pixels.
TILE_GAP, ROW_GAP = 2, 4
#: Width of a character of Pillow's default font, for label columns (pixels).
CHAR_WIDTH = 7
#: Rows of ``compare.png`` at most, and the height of its thumbnails (pixels).
COMPARE_ROWS, COMPARE_HEIGHT = 8, 160


def to_pil(pixels: Tensor) -> Image:
    """A (3, H, W) or (1, 3, H, W) image in [0, 1] as an 8-bit RGB Pillow image (rounded as written)."""
    from PIL import Image as PILImage

    from facedefense.io import to_uint8

    return PILImage.fromarray(to_uint8(pixels.reshape(3, *pixels.shape[-2:])))


def thumbnail(image: Image | Tensor | str | Path, height: int, *, sharp: bool = False) -> Image:
    """``image`` (a Pillow image, a (3, H, W) tensor in [0, 1], or an image file) resized to
    ``height`` pixels, aspect kept; ``sharp`` resizes with the nearest pixel (a difference image
    keeps its per-pixel values instead of averaging them away)."""
    from PIL import Image as PILImage

    if isinstance(image, (str, Path)):
        with PILImage.open(image) as opened:
            picture = opened.convert("RGB")
    elif isinstance(image, PILImage.Image):
        picture = image.convert("RGB")
    else:
        picture = to_pil(image)
    width = max(1, round(picture.width * height / picture.height))
    method = PILImage.Resampling.NEAREST if sharp else PILImage.Resampling.BICUBIC
    return picture.resize((width, height), method)


def labelled_strip(tiles: Sequence[Image], titles: Sequence[str]) -> Image:
    """Tiles of one height side by side, each under its title (a band of ``TITLE_HEIGHT`` pixels)."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    height = max(tile.height for tile in tiles)
    width = sum(tile.width for tile in tiles) + TILE_GAP * (len(tiles) - 1)
    canvas = PILImage.new("RGB", (width, height + TITLE_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for tile, title in zip(tiles, titles):
        canvas.paste(tile, (x, TITLE_HEIGHT))
        draw.text((x + 2, 1), title, fill="black")
        x += tile.width + TILE_GAP
    return canvas


def labelled_sheet(rows: Sequence[tuple[str, Image]]) -> Image:
    """Rows stacked top to bottom, each with its label in a column on the left."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    label_width = 8 + CHAR_WIDTH * max(len(label) for label, _ in rows)
    width = label_width + max(row.width for _, row in rows)
    sheet = PILImage.new("RGB", (width, sum(row.height + ROW_GAP for _, row in rows)), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for label, row in rows:
        draw.text((4, y + row.height // 2), label, fill="black")
        sheet.paste(row, (label_width, y))
        y += row.height + ROW_GAP
    return sheet


#: zlib level of the figures' PNGs: level 1 encodes a compare figure 1.7x as fast as PIL's default 6,
#: for a file 3% larger (a figure is looked at, not archived).
FIGURE_PNG_LEVEL = 1


def save_png(image: Image, path: Path) -> None:
    """Write ``image`` as PNG atomically, with the umask's permissions (`facedefense.io.atomic_path`)."""
    from facedefense.io import atomic_path

    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG", compress_level=FIGURE_PNG_LEVEL)


def amplified_difference(protected: Tensor, original: Tensor, eps: float) -> tuple[Tensor, float]:
    """The perturbation made visible: ``0.5 + gain * (protected - original)`` with ``gain =
    0.5 / eps``, so mid-gray is no change and a change of the whole budget reaches black or white.

    Args:
        protected: (3, H, W) in [0, 1].
        original: (3, H, W) in [0, 1], the size of ``protected``.
        eps: the budget in [0, 1] units (at least one gray level is assumed).

    Returns:
        The difference image in [0, 1] and the gain (how many times the change is amplified).
    """
    gain = 0.5 / max(eps, 1 / 255)
    return (0.5 + gain * (protected - original)).clamp(0, 1), gain


def compare_figure(pairs: Sequence[tuple[str, Tensor, Tensor]], eps: float, *, height: int = COMPARE_HEIGHT,
                   titles: tuple[str, str] = ("original", "protected")) -> Image:
    """Original, protected and amplified difference, a row per photo (at most ``COMPARE_ROWS``).

    Args:
        pairs: ``(label, original, protected)`` per photo; (3, H, W) in [0, 1], same size per pair.
        eps: the budget the difference is scaled to (`amplified_difference`).
        height: thumbnail height in pixels.
        titles: the titles of the first two columns.
    """
    rows = []
    for label, original, protected in list(pairs)[:COMPARE_ROWS]:
        difference, gain = amplified_difference(protected, original, eps)
        tiles = [thumbnail(original, height), thumbnail(protected, height), thumbnail(difference, height, sharp=True)]
        rows.append((label, labelled_strip(tiles, [*titles, f"difference x{gain:.0f}"])))
    return labelled_sheet(rows)


def png_bytes(image: Image) -> bytes:
    """``image`` encoded as PNG (for a data URI)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
