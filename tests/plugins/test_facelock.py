"""FaceLock: contract on the trained tiny model with a random face embedder and a random LPIPS
backbone (the identity similarity of the reconstruction drops below same-budget noise's), the
pluggable face embedder, and bad input."""

from __future__ import annotations

import pytest

from facedefense.errors import ModelNotFoundError
from facedefense.testing.contracts import DefenderContract, _images
from facedefense_iterative.facelock import FaceLock


def make(model, **options):
    defaults = dict(face_model="random_face_embedder", lpips_weights="random", resolution=None, device="cpu", dtype="float32")
    return FaceLock(model=str(model), **{**defaults, **options})


class TestFaceLock(DefenderContract):
    registry_name = "facelock"

    def make_method(self, request):
        return make(request.getfixturevalue("trained_tiny_sd_path"), eps=self.eps, steps=8, step_size=2 / 255)

    def objective(self, method, images, generator):
        import torch

        clean = _images(self.batch, *self.image_size)
        with torch.no_grad():
            return method.identity_similarity(images, clean)


def test_identity_term_lowers_the_similarity(tiny_sd_path, face_images):
    """The identity term alone (from the first step, no LPIPS) lowers the reported similarity."""
    result = make(tiny_sd_path, steps=3, step_size=2 / 255, identity_start=0.0, lpips_weight=0.0).protect(face_images)
    assert all(s["identity_similarity_end"] < s["identity_similarity_start"] for s in result.stats)


def test_embedder_is_shared_and_frozen(tiny_sd_path):
    from facedefense.models import shared_model

    defender = make(tiny_sd_path, steps=1)
    assert defender.embedder is shared_model("random_face_embedder", device="cpu")
    assert not any(p.requires_grad for p in defender.embedder.parameters())


def test_missing_face_embedding_weights(tiny_sd_path, tmp_path):
    missing = tmp_path / "recognition_arcface_ir_se50.pth"
    with pytest.raises(ModelNotFoundError, match=r"arcface: weights file .*recognition_arcface_ir_se50.pth not found .*facexlib"):
        make(tiny_sd_path, face_model="arcface", face_model_path=str(missing))
    with pytest.raises(ModelNotFoundError, match="arcface needs its weights file recognition_arcface_ir_se50.pth"):
        make(tiny_sd_path, face_model="arcface")


def test_missing_lpips_weights(tiny_sd_path, tmp_path):
    with pytest.raises(ModelNotFoundError, match="LPIPS weights file .*vgg16.pth not found"):
        make(tiny_sd_path, lpips_weights=str(tmp_path / "vgg16.pth"))


def test_arcface_loads_weights_by_path(tmp_path):
    """facexlib's architecture with a saved state dict loads through shared_model and embeds 512-D."""
    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable
    from facedefense.models import shared_model

    ensure_torchvision_importable()
    from facexlib.recognition.arcface_arch import Backbone

    path = tmp_path / "recognition_arcface_ir_se50.pth"
    torch.save(Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se").state_dict(), path)
    embedder = shared_model("arcface", path=str(path), device="cpu")
    with torch.no_grad():
        assert embedder(torch.rand(1, 3, 64, 64)).shape == (1, 512)
