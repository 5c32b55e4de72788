"""Zero-shot attacks (IP-Adapter) on the tiny Stable Diffusion with a tiny random-weight adapter in
h94's layout, loaded through diffusers' own ``load_ip_adapter``: generation follows the reference
photos and equals diffusers' ``ip_adapter_image`` path, scale 0 is the base model, the CLI
(encode, generate, resume, refusals), the saved model reloads, and the benchmark runs it."""

from __future__ import annotations

import json

import pytest
import torch

from facedefense.testing.cli import invoke
from facedefense.testing.contracts import PersonalizerContract
from facedefense.testing.tiny_adapters import PLUS_WEIGHT_NAME, WEIGHT_NAME, build_tiny_ip_adapter

PROMPT = "a photo of person"
#: 32 px (4x4 latents), 2 denoising steps: a generation takes a fraction of a second on the tiny model.
TINY = {"resolution": 32, "inference_steps": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def adapter_path(tmp_path_factory, tiny_sd_path):
    return build_tiny_ip_adapter(tmp_path_factory.mktemp("tiny-ip-adapter"), tiny_sd_path)


def make(tiny_sd_path, adapter_path, **options):
    from facedefense.registry import get_registry

    cls = get_registry().load("personalizer", "ip_adapter")
    options = {"adapter": str(adapter_path), "weight_name": WEIGHT_NAME, **TINY, **options}
    return cls(model=str(tiny_sd_path), **options)


@pytest.fixture(scope="module")
def attack(tiny_sd_path, adapter_path):
    method = make(tiny_sd_path, adapter_path)
    method.prepare()
    return method


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def to_pil(image):
    from PIL import Image

    from facedefense.io import to_uint8

    return Image.fromarray(to_uint8(image))


class TestIPAdapterContract(PersonalizerContract):
    registry_name = "ip_adapter"
    prompts = (PROMPT,)
    image_size = (32, 32)  # the image encoder resizes every photo to its own input size

    def make_method(self, request):
        return request.getfixturevalue("attack")  # the module's prepared attack (its networks load once)


@pytest.mark.parametrize("variant", ["plain", "plus"])
def test_embeddings_are_what_diffusers_computes_from_the_photos(
    variant, tiny_sd_path, adapter_path, attack, face_images
):
    """Generating from the saved embeddings equals diffusers' own ``ip_adapter_image`` path (its
    encoder, processor, unconditional embedding and guidance split), same seed: plain (projected
    embeddings, zeros unconditional) and Plus (penultimate hidden states, a black image's unconditional)."""
    if variant == "plus":
        attack = make(tiny_sd_path, adapter_path, weight_name=PLUS_WEIGHT_NAME)
    model = attack.fit(list(face_images))
    if variant == "plain":
        assert model.image_embeds.shape == (1, 2, 16) and not model.negative_image_embeds.any()
    else:  # 16 patches + the class token, width 32
        assert model.image_embeds.shape == (1, 2, 17, 32) and model.negative_image_embeds.abs().sum() > 0
    ours = model.generate([PROMPT], num_images=2, generator=seeded(3))
    theirs = model.pipeline(
        PROMPT,
        ip_adapter_image=[[to_pil(image) for image in face_images]],
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


def test_scale_zero_is_the_base_model_and_scale_one_is_not(tiny_sd_path, adapter_path, attack, face_images):
    from facedefense.diffusion import load_pipeline

    off = make(tiny_sd_path, adapter_path, scale=0.0).fit([face_images[0]])
    base = load_pipeline(str(tiny_sd_path), "text2img")
    plain = base(
        PROMPT,
        negative_prompt=off.info["negative_prompt"],
        num_inference_steps=2,
        guidance_scale=7.5,
        height=32,
        width=32,
        generator=seeded(1),
        output_type="pt",
    ).images
    assert torch.allclose(off.generate([PROMPT], generator=seeded(1)), plain, atol=1e-5)
    on = attack.fit([face_images[0]]).generate([PROMPT], generator=seeded(1))
    assert (on - plain).abs().mean() > 1 / 255


def test_guidance_off_passes_no_unconditional_embeddings(attack, face_images):
    model = attack.fit([face_images[0]])
    guided = model._pipeline_inputs(3, 7.5)
    assert (
        guided["ip_adapter_image_embeds"][0].shape == (6, 1, 16)
        and guided["negative_prompt"] == [model.info["negative_prompt"]] * 3
    )
    plain = model._pipeline_inputs(2, 1.0)
    assert plain["ip_adapter_image_embeds"][0].shape == (2, 1, 16) and plain["negative_prompt"] is None
    images = model.generate([PROMPT, "a dslr portrait of person"], generator=seeded(0), guidance_scale=1.0)
    assert images.shape == (2, 3, 32, 32)



@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, face_images):
    folder = tmp_path_factory.mktemp("photos")
    for index, image in enumerate(face_images):
        to_pil(image).save(folder / f"face{index}.png")
    return folder


def cli_args(tiny_sd_path, adapter_path, photo_dir, output):
    return [
        "attack",
        photo_dir,
        "--personalizer",
        "ip_adapter",
        "--model",
        tiny_sd_path,
        "--output",
        output,
        "-o",
        f"adapter={adapter_path}",
        "-o",
        f"weight_name={WEIGHT_NAME}",
        "-o",
        "resolution=32",
        "-o",
        "inference_steps=2",
        "--num-images",
        "2",
        "--prompt",
        PROMPT,
        "--device",
        "cpu",
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_sd_path, adapter_path, photo_dir):
    out = tmp_path_factory.mktemp("cli") / "out"
    args = cli_args(tiny_sd_path, adapter_path, photo_dir, out)
    return out, args, invoke(*args)


def test_cli_encodes_and_generates(cli_run, adapter_path):
    from facedefense.interfaces.personalizer import read_metadata

    out, _, result = cli_run
    assert result.exit_code == 0, result.output
    assert "ip_adapter encoded 2 photo(s); 2 image(s)" in result.output
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "completed" and "training" not in manifest
    assert {
        "model/image_embeds.safetensors",
        "model/facedefense_personalized.json",
        "images/a_photo_of_person/0000.png",
        "images/a_photo_of_person/0001.png",
    } <= set(manifest["files"])
    metadata = read_metadata(out / "model")
    assert (
        metadata["format"] == "ip_adapter"
        and metadata["adapter"] == str(adapter_path)
        and metadata["references"] == 2
    )


def test_cli_resume_reuses_the_saved_embeddings(cli_run):
    out, args, first = cli_run
    assert first.exit_code == 0, first.output
    embeds = out / "model" / "image_embeds.safetensors"
    stamp = embeds.stat().st_mtime_ns
    (out / "images/a_photo_of_person/0001.png").unlink()
    again = invoke(*args, "--resume")
    assert again.exit_code == 0, again.output
    assert embeds.stat().st_mtime_ns == stamp  # the saved model is reused, not encoded again
    assert (out / "images/a_photo_of_person/0001.png").is_file()


def test_cli_refuses_a_missing_adapter_and_training_steps_before_writing(tmp_path, tiny_sd_path, photo_dir):
    out = tmp_path / "out"
    missing = invoke(*cli_args(tiny_sd_path, tmp_path / "no-adapter", photo_dir, out))
    assert missing.exit_code != 0 and "IP-Adapter" in missing.output and "Traceback" not in missing.output
    assert not out.exists()
    steps = invoke(*cli_args(tiny_sd_path, tmp_path, photo_dir, out), "--steps", "5")
    assert steps.exit_code != 0 and "steps" in steps.output and "Traceback" not in steps.output
    assert not out.exists()


def test_a_damaged_saved_model_is_refused_in_one_line(tmp_path, attack, face_images):
    from facedefense.errors import ModelNotFoundError
    from facedefense.interfaces.personalizer import load_personalized

    folder = tmp_path / "model"
    attack.fit([face_images[0]], output_dir=folder)
    (folder / "image_embeds.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelNotFoundError, match="reference embeddings cannot be read"):
        load_personalized(folder, device="cpu")


BENCH = """\
protocol: {{profile: gap_diff, num_images: 1, resolution: 32, inference_steps: 2, prompts: ["a photo of sks person"]}}
model: {model}
device: cpu
identities: [faces]
defenders: [none]
purifiers: [none]
attacks:
  - personalizer: ip_adapter
    options: {{adapter: {adapter}, weight_name: {weight}}}
metrics: [zs_mean_colour]
seeds: [0]
"""


def test_benchmark_runs_it_as_an_attack(tmp_path, tiny_sd_path, adapter_path, register_method):
    from facedefense.interfaces.metric import Metric
    from facedefense.testing.benchmark_inputs import write_identities

    class MeanColour(Metric):
        name = "zs_mean_colour"
        pairing = "set"
        higher_is_better = False

        def _compute(self, images, references, prompts):
            return [float(image.mean()) for image in images]

    register_method("metric", MeanColour)
    write_identities(tmp_path / "faces", identities=1, per_set=2, size=32)
    config = tmp_path / "bench.yaml"
    config.write_text(
        BENCH.format(model=tiny_sd_path, adapter=adapter_path, weight=WEIGHT_NAME), encoding="utf-8"
    )
    result = invoke("benchmark", config, "--output", tmp_path / "out", "--no-progress")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert rows and {row["status"] for row in rows} == {"ok"}
    assert rows[0]["methods"]["attack"]["name"] == "ip_adapter" and len(rows[0]["per_image"]) == 1
    saved = list((tmp_path / "out" / "cache").rglob("image_embeds.safetensors"))
    assert len(saved) == 1


def test_the_tiny_benchmark_config_lists_it_and_its_inputs_load(tmp_path):
    """benchmarks/configs/tiny.yaml names ip_adapter with the tiny adapter its inputs script writes."""
    import shutil
    from pathlib import Path

    from facedefense.benchmark import load_config
    from facedefense.testing.benchmark_inputs import make_tiny_benchmark_inputs

    config = tmp_path / "tiny.yaml"
    shutil.copy(Path(__file__).resolve().parents[2] / "benchmarks" / "configs" / "tiny.yaml", config)
    make_tiny_benchmark_inputs(tmp_path / "tiny-inputs", identities=1, per_set=1)
    attacks = {attack.method.name: attack.method for attack in load_config(config).attacks}
    assert attacks["ip_adapter"].options["adapter"] == str(
        (tmp_path / "tiny-inputs" / "tiny-ip-adapter").resolve()
    )
    assert (Path(attacks["ip_adapter"].options["adapter"]) / "models" / WEIGHT_NAME).is_file()


def test_the_adapter_files_header_names_the_projection_diffusers_builds(attack):
    from facedefense_attacks.zero_shot import adapter_projection

    config, layer = attack.config, attack._prepared.unet.encoder_hid_proj.image_projection_layers[0]
    assert adapter_projection(config.adapter, config.subfolder, config.weight_name)[0] == type(layer).__name__


def test_a_faceid_adapter_is_refused_before_the_base_model_loads(
    tmp_path, tiny_sd_path, adapter_path, photo_dir, monkeypatch
):
    import shutil

    from facedefense.errors import ConfigError
    from facedefense.testing.tiny_adapters import FACEID_WEIGHT_NAME, build_tiny_ip_adapter_faceid
    from tests.plugins.test_zero_shot_faceid import no_pipeline_load

    faceid = build_tiny_ip_adapter_faceid(tmp_path / "faceid", tiny_sd_path, lora_rank=0)
    with monkeypatch.context() as patched:
        no_pipeline_load(patched)
        with pytest.raises(ConfigError, match="is a FaceID adapter"):
            make(tiny_sd_path, faceid, subfolder="", weight_name=FACEID_WEIGHT_NAME).prepare()
    alone = tmp_path / "alone"  # the CLIP adapter's file without its image encoder: diffusers' load fails
    alone.mkdir()
    shutil.copy(adapter_path / "models" / WEIGHT_NAME, alone / WEIGHT_NAME)
    result = invoke(*cli_args(tiny_sd_path, alone, photo_dir, tmp_path / "out"), "-o", "subfolder=")
    assert result.exit_code != 0 and "cannot be loaded" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
