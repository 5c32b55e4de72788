"""`facedefense purify` with every purifier on the tiny models, chains, and option routing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from facedefense.io import load_image, to_uint8
from facedefense.testing.cli import invoke
from facedefense.testing.tiny_models import sample_faces
from facedefense_purifiers.gaussian_noise import GaussianNoise
from facedefense_purifiers.jpeg import JPEG


@pytest.fixture(scope="module")
def faces_folder(tmp_path_factory):
    """Two sample faces of different sizes (16x24, 24x16: the smallest photos allowed are 16x16)."""
    folder = tmp_path_factory.mktemp("faces")
    faces = sample_faces(2, 40)
    for name, face in {"a": faces[0, :, 12:28, 8:32], "b": faces[1, :, 8:32, 12:28]}.items():
        Image.fromarray(to_uint8(face)).save(folder / f"{name}.png")
    return folder


def _tiny_options(request):
    ddpm = str(request.getfixturevalue("tiny_pixel_ddpm_path"))
    return {
        "jpeg": [], "gaussian_blur": [], "resize": [], "quantize": [], "gaussian_noise": [],
        "adverse_cleaner": ["-o", "bilateral_steps=2"], "tvm": ["-o", "max_iter=2"],
        "diffpure": ["--model", ddpm, "-o", "steps=1"],
        "gridpure": ["--model", ddpm, "-o", "crop=16", "-o", "stride=8", "-o", "iterations=1", "-o", "steps=1"],
        "noisy_upscale": ["--model", request.getfixturevalue("tiny_upscaler_path"), "-o", "steps=1"],
        "impress": ["--model", request.getfixturevalue("tiny_sd_path"), "-o", "iterations=1", "-o", "lpips_weights=random"],
    }


def test_every_purifier_runs_through_the_cli(request, faces_folder, tmp_path):
    from facedefense.registry import get_registry

    options = _tiny_options(request)
    assert set(options) >= set(get_registry().names("purifier"))
    for name, extra in options.items():
        out = tmp_path / name
        result = invoke("purify", faces_folder, "--method", name, *extra, "--device", "cpu", "--output", out)
        assert result.exit_code == 0, (name, result.output)
        for stem in ("a", "b"):
            assert Image.open(out / f"{stem}.png").size == Image.open(faces_folder / f"{stem}.png").size
        assert json.loads((out / "facedefense.json").read_text())["method"]["name"] == name


def test_a_chain_equals_the_methods_one_after_the_other(faces_folder, tmp_path):
    out = tmp_path / "chain"
    result = invoke(
        "purify", faces_folder, "-m", "jpeg", "-m", "gaussian_noise", "-o", "jpeg.quality=40", "-o", "sigma=0.03",
        "--seed", "7", "--device", "cpu", "--output", out,
    )
    assert result.exit_code == 0, result.output
    jpeg, noise = JPEG(quality=40, seed=7, device="cpu"), GaussianNoise(sigma=0.03, seed=7, device="cpu")
    for stem in ("a", "b"):
        pixels = load_image(faces_folder / f"{stem}.png").pixels
        expected = to_uint8(noise.purify(jpeg.purify(pixels)))
        assert np.array_equal(np.asarray(Image.open(out / f"{stem}.png").convert("RGB")), expected)
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["method"]["name"] == "jpeg+gaussian_noise"
    chain = manifest["method"]["chain"]
    assert [m["name"] for m in chain] == ["jpeg", "gaussian_noise"]
    assert chain[0]["config"]["quality"] == 40 and chain[1]["config"]["sigma"] == 0.03
    assert chain[0]["config"]["seed"] == chain[1]["config"]["seed"] == 7


def test_options_by_position_and_plain_keys_reach_every_method():
    from facedefense.cli.run import chain_options

    routed = chain_options(["jpeg", "jpeg", "gaussian_noise"], ["quality=90", "2.quality=30"], seed=1)
    assert routed == [{"quality": "90", "seed": 1}, {"quality": "30", "seed": 1}, {"seed": 1}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "jpeg", "-o", "sigma=0.1"], "no method in the chain (jpeg) has an option 'sigma'"),
        (["-m", "jpeg", "-m", "resize", "-o", "blur.sigma=1"], "no method 'blur' in the chain"),
        (["-m", "jpeg", "-o", "jpeg.factor=0.5"], "jpeg has no option 'factor'"),
        (["-m", "jpeg", "--model", "x"], "has an option 'model'"),
        (["-m", "quantize", "-o", "bits=9"], "1..8"),
        (["-m", "jpeg", "-m", "gausian_blur"], "gaussian_blur"),
        (["-m", "diffpure", "--model", "m", "-o", "strength=0"], "strength must be in (0, 1]"),
    ],
)
def test_bad_options_are_one_line_errors(faces_folder, tmp_path, args, message):
    result = invoke("purify", faces_folder, *args, "--output", tmp_path / "out")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_pixel_ddpm_for_impress_is_a_one_line_error(faces_folder, tmp_path, tiny_pixel_ddpm_path):
    result = invoke(
        "purify", faces_folder, "-m", "impress", "--model", tiny_pixel_ddpm_path, "-o", "lpips_weights=random",
        "--output", tmp_path / "out",
    )
    assert result.exit_code == 2, result.output
    assert "pixel-space DDPM" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
