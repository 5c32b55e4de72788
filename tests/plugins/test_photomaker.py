"""PhotoMaker v1 on a tiny SDXL with a tiny adapter (`build_tiny_photomaker`: CLIP vision tower,
both projections, FuseModule, UNet LoRA): the stacked prompt against an independent computation
(the reference's special-token tokenisation, the FuseModule as torch modules), the merge step,
refusals, the contract (the ID photos steer generation, save/reload), and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from facedefense.cli import build_app
from facedefense.errors import ConfigError
from facedefense.testing.contracts import PersonalizerContract
from facedefense.testing.tiny_adapters import PHOTOMAKER_WEIGHT_NAME, build_tiny_photomaker

PROMPT = "a photo of a man img wearing a hat"
TINY = {"resolution": 32, "inference_steps": 3, "device": "cpu"}  # steps 1-2 see the photos


@pytest.fixture(scope="module")
def photomaker_path(tmp_path_factory, tiny_sdxl_path):
    return build_tiny_photomaker(tmp_path_factory.mktemp("tiny-photomaker"), tiny_sdxl_path)


def options(photomaker_path):
    return {"adapter": str(photomaker_path), "weight_name": PHOTOMAKER_WEIGHT_NAME, **TINY}


@pytest.fixture(scope="module")
def attack(tiny_sdxl_path, photomaker_path):
    from facedefense.registry import get_registry

    cls = get_registry().load("personalizer", "photomaker")
    return cls(model=str(tiny_sdxl_path), **options(photomaker_path))


@pytest.fixture(scope="module")
def fitted(attack):
    photos = [torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    return attack.fit(photos)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


class TestPhotoMakerContract(PersonalizerContract):
    registry_name = "photomaker"
    prompts = ("a photo of person img",)
    image_size = (32, 32)  # the ID encoder resizes every photo to its own input size

    def make_method(self, request):
        return request.getfixturevalue("attack")  # the module's prepared attack (its networks load once)


def reference_fuse(weights, prompt_embeds, id_embeds):
    """The FuseModule rebuilt from torch modules (``photomaker/model.py``'s layout)."""
    from torch import nn

    width = prompt_embeds.shape[-1]

    def mlp(name, inputs, residual):
        layers = nn.ModuleDict(
            {
                "layernorm": nn.LayerNorm(inputs),
                "fc1": nn.Linear(inputs, width),
                "fc2": nn.Linear(width, width),
            }
        )
        layers.load_state_dict(
            {k[len(name) + 1 :]: v for k, v in weights.items() if k.startswith(name + ".")}
        )
        return lambda x: layers.fc2(nn.GELU()(layers.fc1(layers.layernorm(x)))) + (x if residual else 0)

    norm = nn.LayerNorm(width)
    norm.load_state_dict({"weight": weights["layer_norm.weight"], "bias": weights["layer_norm.bias"]})
    stacked = mlp("mlp1", 2 * width, False)(torch.cat([prompt_embeds, id_embeds], -1)) + prompt_embeds
    return norm(mlp("mlp2", width, True)(stacked))


def test_the_class_token_is_stacked_and_fused_and_the_trigger_removed(fitted):
    """Tokenised as the reference does (the trigger a special token, removed; the class token
    before it repeated once per photo), both encoders' penultimate states concatenated, and
    exactly the repeated class tokens replaced by the FuseModule's output."""
    import copy

    pipeline, count = fitted.pipeline, fitted.image_embeds.shape[1]
    embeds, pooled, mask = fitted.prompt_embeds(PROMPT)
    hidden = []
    for tokenizer, encoder in (
        (pipeline.tokenizer, pipeline.text_encoder),
        (pipeline.tokenizer_2, pipeline.text_encoder_2),
    ):
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_tokens(["img"], special_tokens=True)
        ids = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
        trigger = ids.index(tokenizer.convert_tokens_to_ids("img"))
        ids = ids[: trigger - 1] + [ids[trigger - 1]] * count + ids[trigger + 1 :]
        ids = (ids + [tokenizer.pad_token_id] * 77)[:77]
        with torch.no_grad():
            output = encoder(torch.tensor([ids]), output_hidden_states=True)
        hidden.append(output.hidden_states[-2][0])
    expected = torch.cat(hidden, -1)
    positions = torch.arange(trigger - 1, trigger - 1 + count)
    assert torch.equal(mask.nonzero().flatten(), positions)
    assert torch.allclose(embeds[0, ~mask], expected[~mask], atol=1e-6)
    with torch.no_grad():
        fused = reference_fuse(pipeline.photomaker_fuse, expected[mask], fitted.image_embeds[0])
    assert torch.allclose(embeds[0, mask], fused, atol=1e-5)
    assert (embeds[0, mask] - expected[mask]).abs().mean() > 0.1  # replaced, not kept
    assert torch.allclose(pooled[0], output[0][0], atol=1e-6)


def test_the_merge_step_switches_from_the_text_only_prompt(fitted):
    """Steps up to ``start_merge_step`` (here 1 of 3: 50 %) see the text-only prompt, the later
    ones the stacked one; the unconditional half stays the negative prompt."""
    from facedefense_attacks.photomaker import start_merge_step

    assert start_merge_step(50, 20) == 10 and start_merge_step(200, 20) == 30
    seen = []
    handle = fitted.pipeline.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True
    )
    fitted.info["style_strength"] = 50.0
    try:
        fitted.generate(PROMPT, steps=3, guidance_scale=5.0, generator=seeded(0))
    finally:
        handle.remove()
        fitted.info["style_strength"] = 20.0
    text, negative, _, _ = fitted.pipeline.encode_prompt(
        "a photo of a man wearing a hat",
        device="cpu",
        do_classifier_free_guidance=True,
        negative_prompt=fitted.info["negative_prompt"],
    )
    stacked = fitted.prompt_embeds(PROMPT)[0]
    assert len(seen) == 3 and all(torch.allclose(step[0], negative[0], atol=1e-6) for step in seen)
    assert torch.allclose(seen[0][1], text[0], atol=1e-6) and torch.allclose(seen[1][1], text[0], atol=1e-6)
    assert torch.allclose(seen[2][1], stacked[0], atol=1e-6)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a photo of a man", "has no trigger word 'img'"),
        ("a man img and a woman img", "has 2 trigger word 'img'"),
        ("img a photo", "has no class word before the trigger word"),
    ],
)
def test_prompts_without_one_trigger_after_a_class_word_are_refused(fitted, prompt, message):
    from facedefense_attacks.photomaker import PhotoMakerConfig

    calls = []
    handle = fitted.pipeline.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ConfigError, match=message) as caught:
            fitted.generate(prompt)
    finally:
        handle.remove()
    assert "\n" not in str(caught.value) and not calls
    with pytest.raises(ConfigError, match=message):
        PhotoMakerConfig(model="m", instance_prompt=prompt)


@pytest.mark.integration  # about 5 s of CPU: a fresh SDXL load through the CLI and a reload
def test_cli_encodes_generates_and_the_model_reloads(tmp_path, tiny_sdxl_path, photomaker_path, fitted):
    from facedefense.interfaces.personalizer import load_personalized
    from facedefense.io import save_image

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(2):
        save_image(torch.rand(3, 40, 48, generator=seeded(index)), photos / f"face{index}.png")
    out, prompt = tmp_path / "out", "a photo of person img"

    def attack(output, prompt):
        args = [
            "attack",
            photos,
            "--personalizer",
            "photomaker",
            "--model",
            tiny_sdxl_path,
            "--output",
            output,
        ]
        args += [f"-o{key}={value}" for key, value in options(photomaker_path).items() if key != "device"]
        args += ["--num-images", "1", "--prompt", prompt, "--device", "cpu", "--no-progress"]
        return CliRunner().invoke(build_app(), [str(a) for a in args])

    result = attack(out, prompt)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "completed" and "images/a_photo_of_person_img/0000.png" in manifest["files"]
    loaded = load_personalized(out / "model", device="cpu")
    assert loaded.info["personalizer"] == "photomaker" and loaded.image_embeds.shape == (1, 2, 64)
    refit = fitted.__class__(fitted.pipeline, fitted.info, loaded.image_embeds, loaded.negative_image_embeds)
    a, b = (m.generate(prompt, generator=seeded(2)) for m in (refit, loaded))
    assert torch.allclose(a, b, atol=1e-5)
    bad = attack(tmp_path / "bad", "a photo of person")
    assert bad.exit_code != 0 and "has no trigger word 'img'" in bad.output


def test_an_sd15_base_model_is_refused_before_it_loads(tiny_sd_path, photomaker_path, monkeypatch):
    from facedefense.registry import get_registry
    from tests.plugins.test_zero_shot_faceid import no_pipeline_load

    no_pipeline_load(monkeypatch)
    cls = get_registry().load("personalizer", "photomaker")
    with pytest.raises(ConfigError, match="photomaker needs an SDXL base model; .* is not one"):
        cls(model=str(tiny_sd_path), **options(photomaker_path)).prepare()


def test_files_that_are_not_photomaker_v1_are_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    from facedefense_attacks.photomaker import read_adapter

    files = {
        "lora_only.safetensors": ({"lora_weights.unet.a": torch.zeros(1)}, "needs id_encoder and lora_weights"),
        "v2.safetensors": (
            {
                "id_encoder.fuse_module.mlp1.fc1.weight": torch.zeros(1),
                "id_encoder.qformer_perceiver.x": torch.zeros(1),
                "lora_weights.unet.a": torch.zeros(1),
            },
            "not a PhotoMaker v1 ID encoder",
        ),
    }
    for name, (weights, message) in files.items():
        save_file(weights, str(tmp_path / name))
        with pytest.raises(ConfigError, match=message) as caught:
            read_adapter(str(tmp_path), "", name, "photomaker")
        assert "\n" not in str(caught.value)
