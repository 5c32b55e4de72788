"""ims_clip: DiffAdvPerturbationBench's IMS_CLIP (cosine to the normalized mean of the clean photos'
raw CLIP embeddings), on a tiny random-weight ViT CLIP."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from facedefense.testing.contracts import MetricContract

TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    """A tiny ViT CLIP architecture registered with open_clip; returns its name."""
    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    path = tmp_path_factory.mktemp("ims-clip") / "facedefense-test-ims-clip-vit.json"
    path.write_text(json.dumps(TINY_VIT))
    open_clip.add_model_config(path)
    return path.stem


class TestIMSCLIP(MetricContract):
    registry_name = "ims_clip"

    def make_method(self, request):
        from facedefense_metrics.ims_clip import IMSCLIP

        return IMSCLIP(device="cpu", weights="random", architecture=request.getfixturevalue("tiny_vit"))


def test_ims_clip_is_the_cosine_to_the_mean_raw_embedding(tiny_vit):
    from facedefense.imaging import resize
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_metrics._clip import clip_model, image_features
    from facedefense_metrics.ims_clip import IMSCLIP

    metric = IMSCLIP(device="cpu", weights="random", architecture=tiny_vit)
    faces = resize(sample_faces(5, 48), (48, 40)).clamp(0, 1)
    images, references = faces[:2], [faces[2], faces[3] * 0.3, faces[4, :, :40]]  # a dim photo: a short raw embedding
    result = metric.compute(images, references)
    model = clip_model(metric)
    with torch.no_grad():
        raw = torch.cat([image_features(model, r[None], normalize=False) for r in references])
        generated = image_features(model, images)
    expected = generated @ F.normalize(raw.mean(dim=0), dim=-1)
    assert result.per_image == pytest.approx(expected.tolist(), abs=1e-5)
    assert result.protected_if == "lower" and result.details["activation"] in ("GELU", "QuickGELU")


def test_the_centre_is_the_mean_of_raw_embeddings_not_of_unit_ones(monkeypatch):
    """With embeddings chosen by hand (a random CLIP's are all nearly parallel, too close to tell the
    two centres apart): references [10, 0] and [0, 1], an image along [0, 1]. The mean of the raw
    embeddings points almost along [1, 0] (cosine 0.0995); the mean of unit ones would give 0.707."""
    import facedefense_metrics._clip as clip
    from facedefense_metrics.ims_clip import IMSCLIP

    table = {0.1: [10.0, 0.0], 0.2: [0.0, 1.0], 0.3: [0.0, 3.0]}

    def features(model, batch, normalize=True):
        rows = torch.tensor([table[round(float(image[0, 0, 0]), 1)] for image in batch])
        return F.normalize(rows, dim=-1) if normalize else rows

    monkeypatch.setattr(clip, "clip_model", lambda metric: None)
    monkeypatch.setattr(clip, "image_features", features)
    monkeypatch.setattr(clip, "model_details", lambda model: {})
    image = lambda value: torch.full((3, 8, 8), value)  # noqa: E731
    result = IMSCLIP(device="cpu", weights="random").compute([image(0.3)], [image(0.1), image(0.2)])
    assert result.per_image == pytest.approx([1 / 101**0.5], abs=1e-6)  # [0, 1] . normalize([5, 0.5])
