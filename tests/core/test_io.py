"""Reading every kind of image file, writing honest PNGs, refusing bad input with one line."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from facedefense.errors import ImageError, OutputError
from facedefense.io import collect_images, load_image, prepare_output_dir, save_image


def rgb(h=32, w=24, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_round_trip_is_exact(tmp_path):
    array = rgb()
    Image.fromarray(array).save(tmp_path / "x.png")
    image = load_image(tmp_path / "x.png")
    assert image.pixels.shape == (1, 3, 32, 24) and image.pixels.dtype == torch.float32
    save_image(image.pixels, tmp_path / "y.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "y.png")), array)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(rgb(20, 40))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (40, 20)


def test_rgba_keeps_alpha(tmp_path):
    array = np.dstack([rgb(), np.full((32, 24), 128, np.uint8)])
    Image.fromarray(array, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.alpha is not None and image.alpha[0, 0] == 128
    save_image(image.pixels, tmp_path / "out.png", alpha=image.alpha)
    assert Image.open(tmp_path / "out.png").mode == "RGBA"


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "LA", "1"])
def test_modes_become_rgb(tmp_path, mode):
    source = Image.fromarray(rgb()).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    source.save(path)
    image = load_image(path)
    assert image.pixels.shape == (1, 3, 32, 24)
    assert 0 <= image.pixels.min() and image.pixels.max() <= 1


def test_sixteen_bit_grayscale(tmp_path):
    array = (np.arange(32 * 24, dtype=np.uint16).reshape(32, 24) * 80).astype(np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    image = load_image(tmp_path / "deep.png")
    assert image.pixels.max().item() == pytest.approx(array.max() / 65535, abs=1e-6)


def test_icc_profile_is_carried(tmp_path):
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rgb()).save(tmp_path / "icc.png", icc_profile=profile)
    image = load_image(tmp_path / "icc.png")
    save_image(image.pixels, tmp_path / "out.png", icc_profile=image.icc_profile)
    assert Image.open(tmp_path / "out.png").info.get("icc_profile") == profile


def bomb_png(path, width=200_000, height=200_000):
    """A tiny PNG whose header declares a gigantic size."""
    Image.fromarray(rgb(16, 16)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then chunk length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("not an image"), "not an image"),
        (lambda p: p.write_bytes(_png_bytes()[:200]), "corrupt or truncated"),
        (lambda p: Image.fromarray(rgb(1, 1)).save(p, format="PNG"), "too small"),
        (lambda p: bomb_png(p), "decompression bomb"),
    ],
    ids=["zero-byte", "non-image", "truncated", "1x1", "bomb"],
)
def test_bad_files_give_one_line_errors(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageError, match=message) as info:
        load_image(path)
    assert "\n" not in str(info.value)


def _png_bytes():
    import io

    buffer = io.BytesIO()
    Image.fromarray(rgb(64, 64)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        collect_images([tmp_path / "nope.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="contains no images"):
        collect_images([tmp_path / "empty"])


def test_output_dir_rules(tmp_path, png_folder):
    inputs = collect_images([png_folder])
    with pytest.raises(OutputError, match="holds the input"):
        prepare_output_dir(png_folder, inputs)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        prepare_output_dir(blocker / "sub", inputs)
    (png_folder / "a.jpg").write_bytes((png_folder / "a.png").read_bytes())
    with pytest.raises(OutputError, match="both be written as a.png"):
        prepare_output_dir(tmp_path / "out", collect_images([png_folder]))


def test_atomic_save_leaves_nothing_on_failure(tmp_path, monkeypatch):
    def failing_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as handle:
            handle.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(torch.zeros(3, 4, 4), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []
