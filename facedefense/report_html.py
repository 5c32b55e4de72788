"""Self-contained HTML reports: one file with inline CSS, its tables, and its images embedded as
data URIs (no network, no CDN, nothing beside it), to open in any browser or attach to a mail.

``facedefense evaluate --html FILE`` writes one with `evaluation_page` (scores, groups, per-image
values with thumbnails, and the images themselves: protected beside original with the difference,
or a sample of the generated images beside the references); the benchmark writes ``report.html``
from its Markdown report with `markdown_page`. Every page carries a generator marker
(``<meta name="generator" content="facedefense COMMAND">``) that `written_by` checks, so a rerun
replaces its own report and never a file it did not write (`facedefense.outputs.claim_file`).

Example:
    >>> html = page("Scores", [table(["metric", "value"], [["psnr", "38.2"]])], command="evaluate")
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.Image import Image

#: Thumbnails per group in an evaluation page, and rows of its per-image table with a thumbnail.
SAMPLE_IMAGES, THUMBNAIL_ROWS = 8, 24
#: Rows of the per-image table at most (the JSON has them all).
TABLE_ROWS = 500
#: Largest image file embedded in a benchmark page (bytes); a larger one is linked instead.
EMBED_LIMIT = 8 * 1024 * 1024

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0 1.2em; }
th, td { border: 1px solid #d0d0d0; padding: .25em .6em; text-align: left; vertical-align: middle; }
th { background: #f3f3f3; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
td.na { color: #999; } .note { color: #555; } code { background: #f3f3f3; padding: 0 .2em; }
img { max-width: 100%; image-rendering: auto; } img.thumb { height: 64px; }
figure { margin: .5em 0 1.5em; } figcaption { color: #555; font-size: .9em; }
"""


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def marker(command: str) -> str:
    """The generator marker of a page written by ``facedefense COMMAND``."""
    return f'<meta name="generator" content="facedefense {escape(command)}">'


def written_by(command: str) -> Callable[[Path], bool]:
    """A ``written_by`` for `facedefense.outputs.claim_file`: the file is an HTML page whose head
    carries ``command``'s generator marker."""

    def check(path: Path) -> bool:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                head = handle.read(4096)
        except OSError:
            return False
        return marker(command) in head

    return check


def data_uri(picture: Image) -> str:
    """``picture`` as a PNG ``data:`` URI."""
    from facedefense.figures import png_bytes

    return "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode("ascii")


def image(picture: Image, alt: str, *, css: str = "", caption: str = "") -> str:
    """An embedded image, in a figure with ``caption`` when given."""
    tag = f'<img src="{data_uri(picture)}" alt="{escape(alt)}"' + (f' class="{css}"' if css else "") + ">"
    return f"<figure>{tag}<figcaption>{escape(caption)}</figcaption></figure>" if caption else tag


def cell(value: Any) -> str:
    """A table cell: numbers right-aligned with 4 significant digits, NaN as a grey ``n/a``,
    ``Markup`` (already HTML) as is."""
    if isinstance(value, Markup):
        return f"<td>{value}</td>"
    if isinstance(value, bool) or value is None:
        return f"<td>{escape('' if value is None else value)}</td>"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return '<td class="number na">n/a</td>'
        return f'<td class="number">{value:.4g}</td>' if isinstance(value, float) else f'<td class="number">{value}</td>'
    return f"<td>{escape(value)}</td>"


class Markup(str):
    """Text that is already HTML (a table cell holding an image)."""


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: Sequence[str], *, command: str) -> str:
    """A whole HTML document: ``body`` fragments under an ``<h1>`` title, with the inline style."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"{marker(command)}<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body><h1>{escape(title)}</h1>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_page(text: str, path: str | Path) -> Path:
    """Write a page atomically with the umask's permissions (`facedefense.io.atomic_path`)."""
    from facedefense.io import atomic_path

    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


# -- evaluate --------------------------------------------------------------------------------------


def _thumb(path: Path, height: int) -> Image | None:
    from facedefense.errors import ImageError
    from facedefense.figures import thumbnail
    from facedefense.io import load_image

    try:
        return thumbnail(load_image(path).pixels[0], height)
    except (ImageError, OSError):
        return None


def _strip(paths: Sequence[Path], title: str) -> str:
    """Thumbnails of the first `SAMPLE_IMAGES` readable files in one row, captioned."""
    from facedefense.figures import labelled_strip

    tiles, names = [], []
    for path in paths:
        if len(tiles) == SAMPLE_IMAGES:
            break
        tile = _thumb(path, 128)
        if tile is not None:
            tiles.append(tile)
            names.append(path.name[:18])
    if not tiles:
        return ""
    shown = f"{len(tiles)} of {len(paths)}" if len(paths) > len(tiles) else f"{len(tiles)}"
    return image(labelled_strip(tiles, names), title, caption=f"{title}: {shown} image(s)")


def _comparison(generated: Path, reference: Path, match: str, eps: float | None) -> str:
    """Original, image and amplified difference for the first paired files (`facedefense.figures.compare_figure`)."""
    from facedefense.errors import ImageError
    from facedefense.figures import COMPARE_ROWS, compare_figure
    from facedefense.io import collect_images, load_image
    from facedefense.pairing import pair_by_pattern

    try:
        pairs, _ = pair_by_pattern(collect_images([generated]), collect_images([reference]), match)
    except ImageError:
        return ""
    loaded = []
    for image_path, reference_path in pairs[:COMPARE_ROWS]:
        try:
            picture, original = load_image(image_path).pixels[0], load_image(reference_path).pixels[0]
        except ImageError:
            continue
        if picture.shape == original.shape:
            loaded.append((image_path.name, original, picture))
    if not loaded:
        return ""
    budget = max(eps or max(float((p - o).abs().max()) for _, o, p in loaded), 1 / 255)
    figure = compare_figure(loaded, budget, titles=("reference", "image"))
    return image(figure, "comparison", caption="each image beside its reference, and their difference amplified "
                 f"so that {budget * 255:.3g}/255 is black or white (mid-gray: no change)")


def evaluation_page(results: dict[str, Any], lines: Sequence[str], *, match: str = "{stem}",
                    eps: float | None = None) -> str:
    """The page of ``facedefense evaluate --html``.

    Args:
        results: what `facedefense.evaluation.evaluate_identities` returned.
        lines: the summary lines the command printed (one per metric), shown as the first table's
            explanation column.
        match: the ``--match`` pattern (pairs images with their references for the comparison).
        eps: the protection budget when known (a protect run's manifest), for the difference's scale.
    """
    from facedefense.io import collect_images

    metrics = results["metrics"]
    names = list(metrics)
    generated, reference = results["generated"], results.get("reference")
    body = [f'<p class="note">Images: <code>{escape(generated)}</code>'
            + (f"; references: <code>{escape(reference)}</code>" if reference else "") + ".</p>"]
    body += ["<h2>Scores</h2>", table(
        ["metric", "value", "unit", "what it says", "images"],
        [[name, entry["value"], entry["unit"], lines[index] if index < len(lines) else "", entry["count"]]
         for index, (name, entry) in enumerate(metrics.items())],
    )]
    kind = results.get("grouped_by")
    plural = {"identity": "identities", "prompt": "prompts"}.get(kind or "", "")
    groups: dict[str, Any] = results.get(plural, {}) if plural else {}
    if groups:
        body += [f"<h2>Per {escape(kind)}</h2>", table(
            [kind or "group", *names],
            [[group.get("prompt", name), *(group["metrics"][m]["value"] for m in names)] for name, group in groups.items()]
            + [["mean", *(metrics[m]["value"] for m in names)]],
        )]
    folders = {name: group for name, group in groups.items()} if groups else {"": results}
    per_image_rows = 0
    for name, group in folders.items():
        values = {m: group["metrics"][m].get("per_image") or {} for m in names}
        files = list(dict.fromkeys(f for m in names for f in values[m]))
        if not files:
            continue
        heading = f"Per image: {group.get('prompt', name)}" if name else "Per image"
        rows = []
        for file in files[: max(0, TABLE_ROWS - per_image_rows)]:
            thumb = _thumb(Path(group["generated"]) / file, 64) if per_image_rows + len(rows) < THUMBNAIL_ROWS else None
            shown = Markup(image(thumb, file, css="thumb")) if thumb is not None else ""
            rows.append([shown, file, *(values[m].get(file, math.nan) for m in names)])
        per_image_rows += len(rows)
        more = f'<p class="note">{len(files) - len(rows)} more in the JSON (--json).</p>' if len(rows) < len(files) else ""
        body += [f"<h2>{escape(heading)}</h2>", table(["", "file", *names], rows), more]
    body.append("<h2>Images</h2>")
    paired = any(entry.get("pairing") == "paired" for entry in metrics.values())
    for name, group in folders.items():
        label = group.get("prompt", name)
        folder, refs = Path(group["generated"]), group.get("reference")
        if label:
            body.append(f"<h3>{escape(label)}</h3>")
        if paired and refs:
            body.append(_comparison(folder, Path(refs), match, eps))
        else:
            body.append(_strip(collect_images([folder]), "images"))
            if refs:
                body.append(_strip(collect_images([Path(refs)]), "references"))
    failures = results.get("failures", [])
    if failures:
        body += ["<h2>Not scored</h2>", table(["input", "reason"], [[f["input"], f["error"]] for f in failures])]
    return page(f"facedefense evaluate: {Path(generated).name}", body, command="evaluate")


# -- benchmark -------------------------------------------------------------------------------------

_NUMERIC = re.compile(r"^(\*\*)?([-+]?\d|-?∞|n/a)")
_INLINE = [(re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"), (re.compile(r"\*(.+?)\*"), r"<em>\1</em>"),
           (re.compile(r"`(.+?)`"), r"<code>\1</code>")]


def _inline(text: str) -> str:
    text = escape(text)
    for pattern, replacement in _INLINE:
        text = pattern.sub(replacement, text)
    return text


def markdown_html(markdown: str) -> str:
    """The Markdown subset the benchmark's ``report.md`` uses (headings, paragraphs, pipe tables,
    bold, italics, code) as HTML fragments."""
    out: list[str] = []
    paragraph: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if rows:
            header, *body = rows
            head = "".join(f"<th>{_inline(c)}</th>" for c in header)
            cells = "".join(
                "<tr>" + "".join(f'<td class="number">{_inline(c)}</td>' if _NUMERIC.match(c) else f"<td>{_inline(c)}</td>"
                                 for c in row) + "</tr>"
                for row in body
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            rows.clear()

    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            if paragraph:
                flush()
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                rows.append(cells)
        elif stripped.startswith("#"):
            flush()
            level = min(len(stripped) - len(stripped.lstrip("#")) + 1, 4)  # the page's h1 is the title
            out.append(f"<h{level}>{_inline(stripped.lstrip('#').strip())}</h{level}>")
        elif not stripped:
            flush()
        else:
            if rows:
                flush()
            paragraph.append(stripped)
    flush()
    return "\n".join(out)


def markdown_page(title: str, markdown: str, images: Sequence[tuple[Path, str]], *, command: str) -> str:
    """A page from a Markdown report and image files (each embedded when at most `EMBED_LIMIT`
    bytes, else linked by its name relative to the page)."""
    body = [markdown_html(markdown.split("\n", 1)[1] if markdown.startswith("# ") else markdown)]
    for path, caption in images:
        if not path.is_file():
            continue
        if path.stat().st_size <= EMBED_LIMIT:
            encoded = base64.b64encode(path.read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{encoded}" alt="{escape(caption)}">'
                        f"<figcaption>{escape(caption)}</figcaption></figure>")
        else:
            body.append(f'<p><a href="{escape(path.name)}">{escape(caption)}</a> (too large to embed)</p>')
    return page(title, body, command=command)
