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


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two small RGB PNGs of different sizes (32x32, 24x40: each its own batch at its own size)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("in")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (32, 32), "c": (24, 40)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


@pytest.mark.parametrize("method", list(CASES))
def test_cli_protects_within_budget(method, tmp_path, tiny_sd_path, photos):
    import json

    import numpy as np
    from PIL import Image

    from facedefense.testing.cli import invoke

    out = tmp_path / "out"
    result = invoke("protect", photos, "--method", method, "--model", tiny_sd_path, "--eps", "4/255",
                    "--steps", "1", "--output", out, "--device", "cpu", "--dtype", "float32",
                    "-o", "resolution=none", *CASES[method])
    assert result.exit_code == 0, result.output
    for source in sorted(photos.glob("*.png")):
        original = np.asarray(Image.open(source)).astype(int)
        protected = np.asarray(Image.open(out / source.name)).astype(int)
        assert protected.shape == original.shape and 0 < np.abs(protected - original).max() <= 4
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["method"]["name"] == method
    assert sorted(entry["output"] for entry in manifest["images"]) == ["a.png", "c.png"]


def test_cli_bad_target_is_one_line(tmp_path, tiny_sd_path, photos):
    from facedefense.testing.cli import invoke

    bad = tmp_path / "bad.png"
    bad.write_text("text")
    result = invoke("protect", photos, "--method", "mist", "--model", tiny_sd_path, "--output",
                    tmp_path / "out", "--device", "cpu", "-o", f"target={bad}")
    assert result.exit_code == 2
    assert "target" in result.output and "Traceback" not in result.output
