"""Zero-shot attacks on a tiny SDXL (two text encoders, added time ids) with tiny adapters fitted to
its UNet: IP-Adapter equals diffusers' own ``ip_adapter_image`` path of the SDXL pipeline, an SD 1.5
adapter is refused, and FaceID Plus v2 runs through the CLI and reloads as SDXL (integration tier;
InstantID's contract tests reload an SDXL model in the unit tier)."""

from __future__ import annotations

import json

import pytest
import torch

from facedefense.testing.cli import invoke
from facedefense.testing.tiny_adapters import (
    FACEID_ENCODER_FOLDER,
    FACEID_PLUS_WEIGHT_NAME,
    WEIGHT_NAME,
    build_tiny_ip_adapter,
    build_tiny_ip_adapter_faceid,
)

PROMPT = "a photo of person"
TINY = {"resolution": 32, "inference_steps": 2, "device": "cpu"}


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def sdxl_ip_adapter(tmp_path_factory, tiny_sdxl_path, face_images):
    from facedefense.registry import get_registry

    adapter = build_tiny_ip_adapter(tmp_path_factory.mktemp("tiny-ip-sdxl"), tiny_sdxl_path)
    cls = get_registry().load("personalizer", "ip_adapter")
    return cls(model=str(tiny_sdxl_path), adapter=str(adapter), weight_name=WEIGHT_NAME, **TINY)


def test_ip_adapter_on_sdxl_equals_diffusers_own_path(sdxl_ip_adapter, face_images):
    from PIL import Image

    from facedefense.io import to_uint8

    model = sdxl_ip_adapter.fit(list(face_images))
    assert type(model.pipeline).__name__ == "StableDiffusionXLPipeline"
    assert model.info["pipeline"] == "sdxl_text2img"
    ours = model.generate([PROMPT], num_images=2, generator=seeded(3))
    theirs = model.pipeline(
        PROMPT,
        ip_adapter_image=[[Image.fromarray(to_uint8(image)) for image in face_images]],
        num_images_per_prompt=2,
        num_inference_steps=2,
        guidance_scale=7.5,
        negative_prompt=model.info["negative_prompt"],
        height=32,
        width=32,
        generator=seeded(3),
        output_type="pt",
    ).images
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_an_sd15_adapter_on_sdxl_is_refused_in_one_line(tmp_path, tiny_sd_path, tiny_sdxl_path):
    from facedefense.errors import ModelNotFoundError
    from facedefense.registry import get_registry

    adapter = build_tiny_ip_adapter(tmp_path / "sd15", tiny_sd_path)
    cls = get_registry().load("personalizer", "ip_adapter")
    method = cls(model=str(tiny_sdxl_path), adapter=str(adapter), weight_name=WEIGHT_NAME, **TINY)
    with pytest.raises(ModelNotFoundError, match="cannot be loaded") as info:
        method.prepare()
    assert "\n" not in str(info.value)


@pytest.mark.integration  # the CLI path is the unit tier's on SD 1.5; this adds SDXL + Plus v2
def test_faceid_plus_v2_on_sdxl_through_the_cli(tmp_path, tiny_sdxl_path, face_images, monkeypatch):
    from facedefense.interfaces.personalizer import load_personalized
    from facedefense.io import save_image
    from facedefense_metrics.faces.arcface import ArcFaceBackend
    from tests.plugins.test_zero_shot_faceid import FACES, centred_face, tiny_recognizer

    monkeypatch.setattr(
        ArcFaceBackend, "load_network", staticmethod(lambda weights, device: tiny_recognizer())
    )
    monkeypatch.setattr(ArcFaceBackend, "detect", lambda self, image: centred_face(image))
    adapter = build_tiny_ip_adapter_faceid(tmp_path / "faceid", tiny_sdxl_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    save_image(face_images[0], photos / "face0.png")
    options = {
        **FACES,
        "adapter": adapter,
        "weight_name": FACEID_PLUS_WEIGHT_NAME,
        "variant": "plusv2",
        "image_encoder": adapter / FACEID_ENCODER_FOLDER,
        "resolution": 32,
        "inference_steps": 2,
    }
    out = tmp_path / "out"
    args = [
        "attack",
        photos,
        "--personalizer",
        "ip_adapter_faceid",
        "--model",
        tiny_sdxl_path,
        "--output",
        out,
    ]
    args += [f"-o{key}={value}" for key, value in options.items()]
    args += ["--num-images", "1", "--prompt", PROMPT, "--device", "cpu", "--no-progress"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "facedefense.json").read_text())
    assert "images/a_photo_of_person/0000.png" in manifest["files"]
    loaded = load_personalized(out / "model", device="cpu")
    assert loaded.info["variant"] == "plusv2" and loaded.info["pipeline"] == "sdxl_text2img"
    assert loaded.extra_embeds["clip_embeds"].shape == (1, 1, 17, 32)
    assert loaded.generate([PROMPT], generator=seeded(0)).shape == (1, 3, 32, 32)
