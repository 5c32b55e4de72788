"""PhotoGuard encoder attack: contract, objective, options."""

from __future__ import annotations

import pytest

from facedefense.errors import ConfigError
from facedefense.testing.contracts import DefenderContract
from facedefense_iterative.photoguard import PhotoGuard


class TestPhotoGuard(DefenderContract):
    def make_method(self, request):
        model = str(request.getfixturevalue("tiny_sd_path"))
        return PhotoGuard(model=model, eps=self.eps, steps=6, step_size=2 / 255, resolution=None, device="cpu", dtype="float32")

    def objective(self, method, images, generator):
        import torch

        from facedefense.diffusion import latent_mean
        from facedefense.imaging import resize, working_size

        size = working_size(*images.shape[-2:], method.config.resolution)
        with torch.no_grad():
            return latent_mean(method.vae, resize(images, size)).flatten(1).norm(dim=1)


def test_requires_a_model():
    with pytest.raises(ConfigError, match="needs a surrogate model"):
        PhotoGuard(device="cpu")


def test_bad_target(tiny_sd_path):
    with pytest.raises(ConfigError, match="target"):
        PhotoGuard(model=str(tiny_sd_path), target="nowhere.png", device="cpu")


def test_gray_target_moves_latent_toward_gray(tiny_sd_path, face_images):
    import torch

    from facedefense.diffusion import latent_mean

    defender = PhotoGuard(
        model=str(tiny_sd_path), target="gray", steps=5, step_size=2 / 255, resolution=None, device="cpu", dtype="float32"
    )
    result = defender.protect(face_images)
    gray = torch.full_like(face_images[:1], 0.5)
    with torch.no_grad():
        target = latent_mean(defender.vae, gray)
        before = (latent_mean(defender.vae, face_images) - target).flatten(1).norm(dim=1)
        after = (latent_mean(defender.vae, result.images) - target).flatten(1).norm(dim=1)
    assert (after < before).all()
    assert all(s["objective_end"] < s["objective_start"] for s in result.stats)


def test_cli_protects_a_folder_within_budget(tmp_path, tiny_sd_path, png_folder):
    """The issue's acceptance command on a folder of small portraits."""
    import json

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from facedefense.cli import build_app

    out = tmp_path / "out"
    args = ["protect", str(png_folder), "--method", "photoguard", "--model", str(tiny_sd_path), "--eps", "8/255",
            "--steps", "5", "--output", str(out), "--device", "cpu", "--dtype", "float32", "-o", "resolution=none"]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    for source in sorted(png_folder.glob("*.png")):
        original = np.asarray(Image.open(source)).astype(int)
        protected = np.asarray(Image.open(out / source.name)).astype(int)
        assert protected.shape == original.shape
        assert 0 < np.abs(protected - original).max() <= 8
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["method"]["name"] == "photoguard" and manifest["method"]["config"]["steps"] == 5
    assert all(entry["within_budget"] for entry in manifest["images"])
