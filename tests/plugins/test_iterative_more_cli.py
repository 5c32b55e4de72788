"""`facedefense protect --method NAME` on the tiny model for mist, sds, photoguard's diffusion attack
and facelock: within budget after 8-bit saving, with a manifest."""

from __future__ import annotations

import pytest

CASES = {
    "mist": [],
    "sds": ["-o", "mode=+", "-o", "target=pattern"],
    "photoguard": ["-o", "attack=diffusion", "-o", "diffusion_steps=1", "-o", "guidance_scale=2"],
    "facelock": ["-o", "face_model=random_face_embedder", "-o", "lpips_weights=random", "-o", "identity_start=0", "-o", "face_detector=mtcnn"],
}


@pytest.mark.parametrize("method", list(CASES))
def test_cli_protects_within_budget(method, tmp_path, tiny_sd_path, png_folder):
    import json

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from facedefense.cli import build_app

    out = tmp_path / "out"
    args = ["protect", str(png_folder), "--method", method, "--model", str(tiny_sd_path), "--eps", "4/255",
            "--steps", "1", "--output", str(out), "--device", "cpu", "--dtype", "float32",
            "-o", "resolution=none", *CASES[method]]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    for source in sorted(png_folder.glob("*.png")):
        original = np.asarray(Image.open(source)).astype(int)
        protected = np.asarray(Image.open(out / source.name)).astype(int)
        assert protected.shape == original.shape and 0 < np.abs(protected - original).max() <= 4
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["method"]["name"] == method


def test_cli_bad_target_is_one_line(tmp_path, tiny_sd_path, png_folder):
    from typer.testing import CliRunner

    from facedefense.cli import build_app

    bad = tmp_path / "bad.png"
    bad.write_text("text")
    args = ["protect", str(png_folder), "--method", "mist", "--model", str(tiny_sd_path), "--output",
            str(tmp_path / "out"), "--device", "cpu", "-o", f"target={bad}"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 2
    assert "target" in result.output and "Traceback" not in result.output
