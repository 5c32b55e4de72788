"""Issue 25 item 12: what a person looks at. ``protect`` draws ``compare.png`` (original, protected,
amplified difference) out of the photos' folder, ``evaluate --html`` and the benchmark write one
self-contained page."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from facedefense.figures import COMPARE_HEIGHT, amplified_difference, compare_figure
from facedefense.testing.cli import invoke


def test_the_difference_is_amplified_to_the_budget():
    original = torch.full((3, 4, 4), 0.5)
    protected = original.clone()
    protected[:, 0, 0] += 8 / 255  # the whole budget: white
    protected[:, 0, 1] -= 8 / 255  # black
    protected[:, 0, 2] += 2 / 255  # a quarter of it: a quarter of the way to white
    difference, gain = amplified_difference(protected, original, 8 / 255)
    assert gain == pytest.approx(255 / 16)
    assert difference[0, 0, 0] == pytest.approx(1.0) and float(difference[0, 0, 1]) == pytest.approx(0.0, abs=1e-6)
    assert difference[0, 0, 2] == pytest.approx(0.625) and difference[0, 1, 1] == pytest.approx(0.5)  # mid-gray: no change


def test_the_figure_has_a_row_per_photo_and_three_columns():
    pairs = [(f"{i}.png", torch.rand(3, 32, 24), torch.rand(3, 32, 24)) for i in range(3)]
    figure = compare_figure(pairs, 8 / 255, height=40)
    one_row = compare_figure(pairs[:1], 8 / 255, height=40)
    assert figure.height > 2.5 * one_row.height  # three rows, each at least as tall as its thumbnails
    assert one_row.width >= 3 * 30 and one_row.height >= 40  # three 30x40 thumbnails side by side


def test_protect_draws_compare_png_out_of_the_photos_folder(tmp_path, png_folder):
    out = tmp_path / "out"
    result = invoke("protect", png_folder, "-m", "example_texture", "--output", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "facedefense.json").read_text())
    compare = out / manifest["compare"]
    assert manifest["compare"] == ".facedefense-work/compare.png" and manifest["compare"] in manifest["files"]
    assert f"{compare}" in result.stdout and "do not publish" in result.stdout
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]  # only the photos beside each other
    with Image.open(compare) as figure:
        assert figure.height >= 3 * COMPARE_HEIGHT  # one row per photo
        drawn = np.asarray(figure.convert("RGB"))
    assert drawn.std() > 10  # not a blank canvas
    # The protected folder given back as input holds exactly its photos, and a rerun replaces its own figure.
    again = invoke("protect", out, "-m", "example_texture", "--output", tmp_path / "twice")
    assert again.exit_code == 0, again.output
    twice = json.loads((tmp_path / "twice" / "facedefense.json").read_text())
    assert sorted(entry["output"] for entry in twice["images"]) == ["a.png", "b.png", "c.png"]
    rerun = invoke("protect", png_folder, "-m", "example_texture", "--output", out, "--overwrite")
    assert rerun.exit_code == 0, rerun.output


def embedded_images(page: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


def test_evaluate_html_is_one_self_contained_page(tmp_path, png_folder):
    protected = tmp_path / "protected"
    assert invoke("protect", png_folder, "-m", "example_texture", "--output", protected).exit_code == 0
    report = tmp_path / "report.html"
    result = invoke("evaluate", protected, "--reference", png_folder, "--metric", "psnr", "--metric", "linf",
                    "--html", report, "--json", tmp_path / "scores.json")
    assert result.exit_code == 0, result.output
    assert "how visible the change is" in result.stdout  # budget metrics of a protect output say what they measure
    page = report.read_text(encoding="utf-8")
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert "<html" in page and "psnr" in page and "linf" in page
    assert f"{scores['metrics']['psnr']['value']:.4g}"[:4] in page  # the value the terminal showed
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing outside the file
    images = embedded_images(page)
    assert len(images) >= 2  # thumbnails and the side-by-side comparison
    assert max(image.width for image in images) > 3 * min(image.width for image in images)  # the comparison is wide
    # A rerun replaces the page it wrote; a file evaluate did not write is refused before any scoring.
    assert invoke("evaluate", protected, "--reference", png_folder, "--metric", "psnr", "--html", report).exit_code == 0
    mine = tmp_path / "notes.html"
    mine.write_text("<p>my notes</p>")
    refused = invoke("evaluate", protected, "--reference", png_folder, "--metric", "psnr", "--html", mine)
    assert refused.exit_code != 0 and mine.read_text() == "<p>my notes</p>"
    assert len(refused.stderr.strip().splitlines()) == 1


def test_png_level_changes_the_bytes_not_the_pixels(tmp_path, png_folder):
    """Issue 24 item 6: --png-level trades encoding time for size; the written pixels are the same."""
    default, level0 = tmp_path / "default", tmp_path / "level0"
    assert invoke("purify", png_folder, "-m", "quantize", "--output", default).exit_code == 0
    assert invoke("purify", png_folder, "-m", "quantize", "--png-level", "0", "--output", level0).exit_code == 0
    for name in ("a.png", "b.png", "c.png"):
        assert np.array_equal(np.asarray(Image.open(default / name)), np.asarray(Image.open(level0 / name)))
        assert (level0 / name).stat().st_size > (default / name).stat().st_size  # level 0 stores, 6 compresses
    assert json.loads((level0 / "facedefense.json").read_text())["png_level"] == 0
    refused = invoke("purify", png_folder, "-m", "quantize", "--png-level", "10", "--output", tmp_path / "x")
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
