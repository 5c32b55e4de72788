"""InstantID on a tiny SDXL with a tiny Resampler face adapter and a tiny IdentityNet
(``ControlNetModel.from_unet``), the face encoder as in test_zero_shot_faceid (the backend's code,
a tiny recognizer, the sample portraits' known face position): the IdentityNet attends to the
identity tokens (not the text), the keypoint image steers generation, ``draw_kps``'s drawing,
refusals, the CLI and the saved model."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from facedefense.cli import build_app
from facedefense.testing.contracts import PersonalizerContract
from facedefense.testing.tiny_adapters import (
    INSTANTID_CONTROLNET_FOLDER,
    INSTANTID_WEIGHT_NAME,
    build_tiny_instantid,
)
from tests.plugins.test_zero_shot_faceid import FACES, centred_face, tiny_recognizer, with_tiny_recognizer

PROMPT = "a photo of person"
TINY = {"resolution": 32, "inference_steps": 2, "device": "cpu", "face_backend": "arcface", **FACES}


@pytest.fixture(scope="module")
def instantid_path(tmp_path_factory, tiny_sdxl_path):
    return build_tiny_instantid(tmp_path_factory.mktemp("tiny-instantid"), tiny_sdxl_path)


def options(instantid_path):
    return {
        "adapter": str(instantid_path),
        "weight_name": INSTANTID_WEIGHT_NAME,
        "controlnet": str(instantid_path / INSTANTID_CONTROLNET_FOLDER),
        "controlnet_subfolder": "",
        **TINY,
    }


def make(model, instantid_path, **extra):
    from facedefense.registry import get_registry

    cls = get_registry().load("personalizer", "instantid")
    return cls(model=str(model), **{**options(instantid_path), **extra})


@pytest.fixture(scope="module")
def attack(tiny_sdxl_path, instantid_path):
    return with_tiny_recognizer(make(tiny_sdxl_path, instantid_path))


@pytest.fixture(scope="module")
def fitted(attack, face_images):
    return attack.fit(list(face_images))


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


class TestInstantIDContract(PersonalizerContract):
    registry_name = "instantid"
    prompts = (PROMPT,)
    image_size = (32, 32)  # the working resolution: the pose photo's center crop is not resized

    def make_method(self, request):
        return request.getfixturevalue("attack")  # the module's prepared attack (its networks load once)


def test_the_identitynet_attends_to_the_identity_tokens_not_the_text(fitted):
    """The ControlNet's context is the Resampler's 16 tokens of [zeros, the faces] (the reference
    pipeline's ``encoder_hidden_states=prompt_image_emb``), in the pipeline's guidance order."""
    seen = []
    handle = fitted.pipeline.controlnet.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        fitted.generate([PROMPT], num_images=2, generator=seeded(0))
    finally:
        handle.remove()
    assert fitted.image_embeds.shape == (1, 1, 2, 512) and not fitted.negative_image_embeds.any()
    resampler = fitted.pipeline.unet.encoder_hid_proj.image_projection_layers[0]
    with torch.no_grad():
        faces, blank = resampler(fitted.image_embeds[0]), resampler(fitted.negative_image_embeds[0])
    expected = torch.cat([blank.expand(2, -1, -1), faces.expand(2, -1, -1)])
    assert len(seen) == 2 and seen[0].shape == (4, 16, 64)
    assert torch.allclose(seen[0], expected, atol=1e-5)


def test_the_keypoints_steer_generation(fitted):
    """Other keypoints (the drawing mirrored), same faces and seed: other images."""
    moved = dict(fitted.extra_embeds, keypoints=fitted.extra_embeds["keypoints"].flip(-1))
    other = type(fitted)(
        fitted.pipeline, fitted.info, fitted.image_embeds, fitted.negative_image_embeds, moved
    )
    first = fitted.generate([PROMPT], generator=seeded(1))
    assert (first - other.generate([PROMPT], generator=seeded(1))).abs().mean() > 1 / 255


def test_keypoints_are_drawn_as_draw_kps_draws_them():
    """Against InstantID's ``draw_kps`` written with OpenCV's primitives (as the reference calls them)."""
    import math

    import numpy as np

    from facedefense_attacks.instantid import KEYPOINT_COLOURS, LIMBS, draw_keypoints

    cv2 = pytest.importorskip("cv2")
    points = np.array([[70.3, 80.6], [130.2, 78.1], [101.7, 112.9], [78.4, 150.2], [125.9, 148.8]])
    reference = np.zeros([200, 220, 3])
    for start, end in LIMBS:
        x, y = points[[start, end], 0], points[[start, end], 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        polygon = cv2.ellipse2Poly(
            (int(np.mean(x)), int(np.mean(y))), (int(length / 2), 4), int(angle), 0, 360, 1
        )
        reference = cv2.fillConvexPoly(reference.copy(), polygon, KEYPOINT_COLOURS[start])
    reference = (reference * 0.6).astype(np.uint8)
    for (x, y), colour in zip(points, KEYPOINT_COLOURS):
        reference = cv2.circle(reference.copy(), (int(x), int(y)), 10, colour, -1)
    ours = (draw_keypoints(torch.tensor(points), 200, 220) * 255).round().byte().permute(1, 2, 0).numpy()
    differs = (ours != reference).any(-1)
    assert differs.mean() < 0.01 and (reference.any(-1)).sum() > 1500  # edge pixels of the rasterisers


def no_pipeline_load(monkeypatch):
    """Make loading a base pipeline fail the test: a refusal must come before it."""

    def load(model, *args, **kwargs):
        raise AssertionError(f"the base pipeline {model} was loaded before the refusal")

    monkeypatch.setattr("facedefense_attacks.zero_shot.load_checked_pipeline", load)


def test_sd15_base_non_face_adapters_and_faceless_photos_are_refused(
    tmp_path, tiny_sd_path, tiny_sdxl_path, instantid_path, attack, face_images, monkeypatch
):
    from safetensors.torch import save_file

    from facedefense.errors import ConfigError, ImageError
    from facedefense_attacks.zero_shot import adapter_projection

    layer = attack._prepared.unet.encoder_hid_proj.image_projection_layers[0]  # what the header check reads
    name, shapes = adapter_projection(str(instantid_path), "", INSTANTID_WEIGHT_NAME)
    assert (name, shapes["proj_in.weight"][1]) == (type(layer).__name__, layer.proj_in.in_features)
    no_pipeline_load(monkeypatch)
    with pytest.raises(ConfigError, match="instantid needs an SDXL base model"):
        make(tiny_sd_path, instantid_path).prepare()
    # a CLIP IP-Adapter's projection and a Resampler of 32-D inputs, told from the files' headers
    for name, key in [("clip.safetensors", "proj.weight"), ("plus.safetensors", "proj_in.weight")]:
        weights = {f"image_proj.{key}": torch.zeros(8, 32), "ip_adapter.1.to_k_ip.weight": torch.zeros(1)}
        save_file(weights, str(tmp_path / name))
        with pytest.raises(ConfigError, match=f"{name} is not an InstantID face adapter"):
            make(tiny_sdxl_path, instantid_path, adapter=str(tmp_path), weight_name=name).prepare()
    monkeypatch.undo()
    monkeypatch.setattr(attack._backend, "embed_largest", lambda images: [None] * len(images))
    with pytest.raises(ImageError, match="no face found in any of the 2 photo"):
        attack.fit(list(face_images))
    monkeypatch.undo()
    monkeypatch.setattr(attack._backend, "detect", lambda image: [])
    monkeypatch.setattr(attack._backend, "embed_largest", lambda images: [torch.ones(512)] * len(images))
    with pytest.raises(ImageError, match="photo 0 has no face with keypoints in its 32x32 center crop"):
        attack.fit(list(face_images))


@pytest.mark.integration  # about 6 s of CPU; the unit tier reloads through the contract tests
def test_cli_encodes_generates_and_the_model_reloads(
    tmp_path, tiny_sdxl_path, instantid_path, fitted, face_images, monkeypatch
):
    from facedefense.interfaces.personalizer import load_personalized
    from facedefense.io import save_image
    from facedefense_metrics.faces.arcface import ArcFaceBackend

    monkeypatch.setattr(
        ArcFaceBackend, "load_network", staticmethod(lambda weights, device: tiny_recognizer())
    )
    monkeypatch.setattr(ArcFaceBackend, "detect", lambda self, image: centred_face(image))
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, image in enumerate(face_images):
        save_image(image, photos / f"face{index}.png")
    out = tmp_path / "out"
    args = ["attack", photos, "--personalizer", "instantid", "--model", tiny_sdxl_path, "--output", out]
    args += [f"-o{key}={value}" for key, value in options(instantid_path).items() if key != "device"]
    args += ["--num-images", "1", "--prompt", PROMPT, "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(build_app(), [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "instantid encoded 2 photo(s); 1 image(s)" in result.output
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "completed" and "images/a_photo_of_person/0000.png" in manifest["files"]
    loaded = load_personalized(out / "model", device="cpu")
    assert loaded.info["personalizer"] == "instantid" and loaded.info["pose_photo"] == 0
    assert torch.equal(loaded.extra_embeds["keypoints"], fitted.extra_embeds["keypoints"])
    a, b = (m.generate([PROMPT], generator=seeded(2)) for m in (fitted, loaded))
    assert torch.allclose(a, b, atol=1e-5)
