"""IP-Adapter-FaceID on the tiny Stable Diffusion with a tiny random-weight FaceID adapter (FaceID
MLP, key/value projections and LoRA in h94's layout) through diffusers' ``load_ip_adapter``, and the
metrics plugin's ArcFace backend as the face encoder (its alignment and embedding code; the IR-SE50
replaced by a tiny random net and the detector by the sample portraits' known face position, so
the embeddings follow the photos): the embeddings diffusers expects, generation follows the faces,
photos without a face, the CLI and the saved model; FaceID Plus (v1, v2) equals diffusers'
documented recipe."""

from __future__ import annotations

import json

import pytest
import torch

from facedefense.testing.cli import invoke
from facedefense.testing.contracts import PersonalizerContract
from facedefense.testing.tiny_adapters import (
    FACEID_ENCODER_FOLDER,
    FACEID_PLUS_WEIGHT_NAME,
    FACEID_WEIGHT_NAME,
    build_tiny_ip_adapter_faceid,
)

PROMPT = "a photo of person"
#: Random-weight face networks (the threshold 0 lets the random detector find a "face").
FACES = {"face_weights": "random", "detector_weights": "random", "face_threshold": 0.0}
TINY = {"resolution": 32, "inference_steps": 2, "device": "cpu", **FACES}


@pytest.fixture(scope="module")
def faceid_path(tmp_path_factory, tiny_sd_path):
    return build_tiny_ip_adapter_faceid(tmp_path_factory.mktemp("tiny-faceid"), tiny_sd_path)


def make(tiny_sd_path, faceid_path, **options):
    from facedefense.registry import get_registry

    cls = get_registry().load("personalizer", "ip_adapter_faceid")
    return cls(
        model=str(tiny_sd_path),
        **{"adapter": str(faceid_path), "weight_name": FACEID_WEIGHT_NAME, **TINY, **options},
    )


def tiny_recognizer():
    """A random 512-D conv net standing in for ArcFace's IR-SE50 (4 s per pair of photos on a CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layers = [torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 512)]
        return torch.nn.Sequential(*layers).eval()


def centred_face(image):
    """A detector that finds the face where the sample portraits have it: the whole photo, its
    landmarks where the 112 px template puts them (a random RetinaFace finds arbitrary boxes)."""
    from facedefense_metrics.faces.arcface import TEMPLATE_112
    from facedefense_metrics.faces.base import Face

    height, width = image.shape[-2:]
    marks = torch.tensor(TEMPLATE_112) / 112 * torch.tensor([width, height])
    return [Face((0.0, 0.0, float(width), float(height)), 1.0, marks.float())]


def with_tiny_recognizer(method):
    """``method`` prepared with `tiny_recognizer` as its face backend's network and `centred_face`
    as its detector; the backend's alignment and embedding code stay."""
    method.prepare()
    method._backend.model = tiny_recognizer()
    method._backend.detect = centred_face
    return method


@pytest.fixture(scope="module")
def attack(tiny_sd_path, faceid_path):
    return with_tiny_recognizer(make(tiny_sd_path, faceid_path))


@pytest.fixture(scope="module")
def fitted(attack, face_images):
    return attack.fit(list(face_images))


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


class TestIPAdapterFaceIDContract(PersonalizerContract):
    registry_name = "ip_adapter_faceid"
    prompts = (PROMPT,)
    image_size = (32, 32)  # every face is aligned onto the 112 px template whatever the photo's size

    def make_method(self, request):
        return request.getfixturevalue("attack")  # the module's prepared attack (its networks load once)


def test_embeddings_are_the_unit_face_embeddings_shaped_as_diffusers_takes_them(attack, fitted, face_images):
    """(1, N, 1, 512): what diffusers' FaceID guide stacks from ``normed_embedding``s; zeros unconditional."""
    assert fitted.image_embeds.shape == (1, 2, 1, 512) and not fitted.negative_image_embeds.any()
    direct = attack._backend.embed_largest(list(face_images))
    expected = torch.nn.functional.normalize(torch.stack(direct), dim=-1)
    assert torch.allclose(fitted.image_embeds[0, :, 0], expected, atol=1e-6)
    assert torch.allclose(fitted.image_embeds.norm(dim=-1), torch.ones(1, 2, 1), atol=1e-5)
    assert fitted.info["no_face"] == [] and fitted.info["format"] == "ip_adapter"


def test_the_face_embedding_steers_generation_unless_scale_is_zero(tiny_sd_path, faceid_path, fitted):
    flipped = type(fitted)(fitted.pipeline, fitted.info, -fitted.image_embeds, fitted.negative_image_embeds)
    first = fitted.generate([PROMPT], generator=seeded(2))
    assert (first - flipped.generate([PROMPT], generator=seeded(2))).abs().mean() > 1 / 255
    fitted.pipeline.set_ip_adapter_scale(0.0)
    try:  # scale 0: the FaceID LoRA still acts, the face tokens do not
        off = [model.generate([PROMPT], generator=seeded(2)) for model in (fitted, flipped)]
    finally:
        fitted.pipeline.set_ip_adapter_scale(1.0)
    assert torch.allclose(off[0], off[1], atol=1e-6)


def test_photos_without_a_face_are_left_out_and_none_is_refused(attack, face_images, monkeypatch):
    from facedefense.errors import ImageError

    real = attack._backend.embed_largest
    monkeypatch.setattr(attack._backend, "embed_largest", lambda images: [None, *real(images[1:])])
    model = attack.fit(list(face_images))
    assert model.image_embeds.shape == (1, 1, 1, 512) and model.info["no_face"] == [0]
    monkeypatch.setattr(attack._backend, "embed_largest", lambda images: [None] * len(images))
    with pytest.raises(ImageError, match="no face found in any of the 2 photo"):
        attack.fit(list(face_images))


def no_pipeline_load(monkeypatch):
    """Make loading a base pipeline fail the test: a refusal must come before it."""

    def load(model, *args, **kwargs):
        raise AssertionError(f"the base pipeline {model} was loaded before the refusal")

    monkeypatch.setattr("facedefense_attacks.zero_shot.load_checked_pipeline", load)


def test_a_clip_adapter_is_refused_before_the_base_model_loads(tiny_sd_path, tmp_path, monkeypatch):
    from facedefense.errors import ConfigError
    from facedefense.testing.tiny_adapters import SUBFOLDER, WEIGHT_NAME, build_tiny_ip_adapter

    clip = build_tiny_ip_adapter(tmp_path / "clip", tiny_sd_path)
    method = make(tiny_sd_path, clip, subfolder=SUBFOLDER, weight_name=WEIGHT_NAME)
    no_pipeline_load(monkeypatch)
    with pytest.raises(ConfigError, match="is not a FaceID adapter"):
        method.prepare()


def test_a_variant_the_file_is_not_is_refused_before_the_base_model_loads(tiny_sd_path, faceid_path, monkeypatch):
    from facedefense.errors import ConfigError

    no_pipeline_load(monkeypatch)
    with pytest.raises(ConfigError, match="is a plain FaceID adapter, not variant 'plus'"):
        make(tiny_sd_path, faceid_path, variant="plus").prepare()
    with pytest.raises(ConfigError, match="option 'variant' must be one of"):
        make(tiny_sd_path, faceid_path, variant="plus3")


def test_the_adapter_files_header_names_the_projection_diffusers_builds(
    tmp_path, faceid_path, attack, plusv2_attack, monkeypatch
):
    from safetensors.torch import load_file

    from facedefense_attacks.zero_shot import adapter_projection

    for method in (attack, plusv2_attack):
        config, layer = method.config, method._prepared.unet.encoder_hid_proj.image_projection_layers[0]
        assert adapter_projection(config.adapter, config.subfolder, config.weight_name)[0] == type(layer).__name__
    flat = load_file(str(faceid_path / FACEID_WEIGHT_NAME))  # the same weights as a .bin of two dicts
    state = {
        head: {key.split(".", 1)[1]: value for key, value in flat.items() if key.startswith(head + ".")}
        for head in ("image_proj", "ip_adapter")
    }
    torch.save(state, tmp_path / "faceid.bin")
    name, shapes = adapter_projection(str(tmp_path), "", "faceid.bin")
    assert name == "IPAdapterFaceIDImageProjection"
    assert shapes["proj.0.weight"] == tuple(state["image_proj"]["proj.0.weight"].shape)
    # a hub id read from the Hugging Face cache (its layout: refs/main names the snapshot)
    import shutil

    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--facedefense-tests--faceid"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40) / "models").mkdir(parents=True)
    shutil.copy(faceid_path / FACEID_WEIGHT_NAME, repo / "snapshots" / ("0" * 40) / "models" / FACEID_WEIGHT_NAME)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert adapter_projection("facedefense-tests/faceid", "models", FACEID_WEIGHT_NAME)[0] == name
    # not on this machine (a missing file, a hub id not in the cache): left to the load
    assert adapter_projection(str(tmp_path), "", "missing.safetensors") is None
    assert adapter_projection("facedefense-tests/not-cached", "models", FACEID_WEIGHT_NAME) is None


def plus(tiny_sd_path, faceid_path, variant):
    return with_tiny_recognizer(
        make(
            tiny_sd_path,
            faceid_path,
            weight_name=FACEID_PLUS_WEIGHT_NAME,
            variant=variant,
            image_encoder=str(faceid_path / FACEID_ENCODER_FOLDER),
        )
    )


@pytest.fixture(scope="module")
def plusv2_attack(tiny_sd_path, faceid_path):
    return plus(tiny_sd_path, faceid_path, "plusv2")


def test_plus_crops_each_face_onto_the_template_at_224_px():
    """Bright dots at five landmarks (the template turned by 0.3 rad, halved, shifted) land on
    insightface's template scaled to 224 px (norm_crop)."""
    import math

    from facedefense_attacks.ip_adapter_faceid import align_face
    from facedefense_metrics.faces.arcface import TEMPLATE_112

    turn = torch.tensor([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    marks = torch.tensor(TEMPLATE_112) @ turn.T * 0.5 + torch.tensor([40.0, 30.0])
    image = torch.zeros(3, 120, 100)
    for x, y in marks.round().long():
        image[:, y, x] = 1.0
    crop = align_face(image, marks)
    assert crop.shape == (3, 224, 224)
    for x, y in (torch.tensor(TEMPLATE_112) * 2).round().long():
        assert crop[0, y - 2 : y + 3, x - 2 : x + 3].max() > 0.2


@pytest.mark.parametrize("variant", [pytest.param("plus", marks=pytest.mark.integration), "plusv2"])
def test_plus_generation_equals_diffusers_documented_recipe(
    variant, tiny_sd_path, faceid_path, plusv2_attack, face_images
):
    """diffusers' FaceID Plus recipe, same seed: the id embeddings stacked (zeros first) as
    ``ip_adapter_image_embeds``; the projection's ``clip_embeds`` from ``prepare_ip_adapter_image_embeds``
    on the face crops with the pipeline's own encoder (its zero-image negative, repeated per image);
    ``shortcut`` True for v2. Two images per prompt, guided."""
    from PIL import Image

    from facedefense.io import to_uint8
    from facedefense_attacks.ip_adapter_faceid import align_face

    attack = plusv2_attack if variant == "plusv2" else plus(tiny_sd_path, faceid_path, "plus")
    model = attack.fit(list(face_images))
    assert model.info["variant"] == variant
    assert model.extra_embeds["clip_embeds"].shape == (1, 2, 17, 32)
    ours = model.generate([PROMPT], num_images=2, generator=seeded(3))

    pipeline = model.pipeline
    crops = [align_face(image, centred_face(image)[0].landmarks) for image in face_images]
    pipeline.image_encoder, pipeline.feature_extractor = attack._image_encoder, attack._processor
    try:
        clip = pipeline.prepare_ip_adapter_image_embeds(
            [[Image.fromarray(to_uint8(crop)) for crop in crops]], None, "cpu", 2, True
        )[0]
    finally:
        pipeline.image_encoder = pipeline.feature_extractor = None
    layer = pipeline.unet.encoder_hid_proj.image_projection_layers[0]
    layer.clip_embeds, layer.shortcut, layer.shortcut_scale = clip, variant == "plusv2", 1.0
    ids = model.image_embeds
    theirs = pipeline(
        PROMPT,
        ip_adapter_image_embeds=[torch.cat([torch.zeros_like(ids), ids])],
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


def test_plus_v2_shortcut_and_the_clip_tokens_change_generation(plusv2_attack, face_images):
    model = plusv2_attack.fit([face_images[0]])
    first = model.generate([PROMPT], generator=seeded(1))
    v1 = type(model)(
        model.pipeline,
        {**model.info, "variant": "plus"},
        model.image_embeds,
        model.negative_image_embeds,
        model.extra_embeds,
    )
    other_clip = {**model.extra_embeds, "clip_embeds": -model.extra_embeds["clip_embeds"]}
    flipped = type(model)(
        model.pipeline, model.info, model.image_embeds, model.negative_image_embeds, other_clip
    )
    for other in (v1, flipped):
        assert (first - other.generate([PROMPT], generator=seeded(1))).abs().mean() > 1 / 255


@pytest.mark.integration  # loads the pipeline again (about 0.7 s of CPU)
def test_plus_saved_model_reloads_with_its_clip_embeddings(tmp_path, plusv2_attack, face_images):
    from facedefense.interfaces.personalizer import load_personalized

    model = plusv2_attack.fit([face_images[1]], output_dir=tmp_path / "model")
    loaded = load_personalized(tmp_path / "model", device="cpu")
    assert torch.equal(loaded.extra_embeds["clip_embeds"], model.extra_embeds["clip_embeds"])
    a, b = (m.generate([PROMPT], generator=seeded(4)) for m in (model, loaded))
    assert torch.allclose(a, b, atol=1e-5)


def test_cli_encodes_generates_and_the_model_reloads(
    tmp_path, tiny_sd_path, faceid_path, face_images, monkeypatch
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
    options = [
        f"-o{key}={value}"
        for key, value in {
            **FACES,
            "adapter": faceid_path,
            "weight_name": FACEID_WEIGHT_NAME,
            "resolution": 32,
            "inference_steps": 2,
        }.items()
    ]
    result = invoke(
        "attack",
        photos,
        "--personalizer",
        "ip_adapter_faceid",
        "--model",
        tiny_sd_path,
        "--output",
        out,
        *options,
        "--num-images",
        "1",
        "--prompt",
        PROMPT,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "ip_adapter_faceid encoded 2 photo(s); 1 image(s)" in result.output
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "completed" and "images/a_photo_of_person/0000.png" in manifest["files"]
    loaded = load_personalized(out / "model", device="cpu")
    assert loaded.image_embeds.shape == (1, 2, 1, 512) and "faceid_0" in loaded.pipeline.unet.peft_config
    assert loaded.generate([PROMPT], generator=seeded(0)).shape == (1, 3, 32, 32)
