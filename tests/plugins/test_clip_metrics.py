"""CLIP metrics: weights load with the activation of their origin (OpenAI's TorchScript archives,
read without running them: QuickGELU; open_clip's hub files: their config), and CLIP-S (FaceLock's
directional form), CLIP-T, CLIP-I and CLIP-IQA (pyiqa's) each equal its formula applied by hand to
features computed through the model in the test."""

from __future__ import annotations

import json
import math
import pickle
import zipfile

import pytest
import torch
import torch.nn.functional as F

from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense.testing.contracts import MetricContract

VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}
RESNET = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}
CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
#: pyiqa's clipiqa prompt pairs (pyiqa/archs/clipiqa_arch.py, CLIPIQA.__init__) and piq's / the paper's.
PYIQA_PAIRS = [("Good image", "bad image"), ("Sharp image", "blurry image"), ("sharp edges", "blurry edges"),
               ("High resolution image", "low resolution image"), ("Noise-free image", "noisy image")]
PIQ_PAIRS = [("Good photo.", "Bad photo.")]


def open_clip():
    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    return open_clip


@pytest.fixture(scope="session")
def tiny_archs(tmp_path_factory) -> dict[str, str]:
    """Register the tiny ViT and ResNet CLIPs with open_clip; returns their architecture names."""
    folder = tmp_path_factory.mktemp("clip-configs")
    names = {}
    for kind, config in (("vit", VIT), ("resnet", RESNET)):
        path = folder / f"facedefense-test-clip-{kind}.json"
        path.write_text(json.dumps(config))
        open_clip().add_model_config(path)
        names[kind] = path.stem
    return names


def make_clip(arch: str, quick_gelu: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = open_clip().create_model(arch, quick_gelu=quick_gelu).eval()
    with torch.no_grad():  # BatchNorms away from their initial identity (and zeroed residual branches)
        for name, tensor in model.state_dict().items():
            if "bn" in name and name.endswith(("weight", "running_var")):
                tensor.uniform_(0.5, 1.5)
            elif "bn" in name and name.endswith(("bias", "running_mean")):
                tensor.normal_(0, 0.2)
        model.logit_scale.fill_(math.log(100))  # OpenAI's trained temperature
    return model


@pytest.fixture(scope="session")
def openai_resnet(tmp_path_factory, tiny_archs) -> tuple[str, torch.nn.Module]:
    """A QuickGELU ResNet CLIP saved as a TorchScript archive, as OpenAI releases RN50.pt."""
    model = make_clip(tiny_archs["resnet"], quick_gelu=True, seed=1)
    path = tmp_path_factory.mktemp("openai") / "RN50.pt"
    torch.jit.script(model).save(str(path))
    return str(path), model


@pytest.fixture(scope="session")
def laion_vit(tmp_path_factory, tiny_archs) -> tuple[str, torch.nn.Module]:
    """A GELU ViT CLIP saved as open_clip's hub files (safetensors + open_clip_config.json)."""
    from safetensors.torch import save_file

    model = make_clip(tiny_archs["vit"], quick_gelu=False, seed=2)
    folder = tmp_path_factory.mktemp("laion")
    save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": VIT, "preprocess_cfg": {}}))
    return str(folder / "open_clip_model.safetensors"), model


def build(path: str, arch: str, **options) -> torch.nn.Module:
    from facedefense_metrics._clip import build

    return build(path=path, device=torch.device("cpu"), dtype=torch.float32, architecture=arch, **options)


def activations(model: torch.nn.Module) -> set[str]:
    return {type(block.mlp.gelu).__name__ for block in model.transformer.resblocks}


def faces(count: int, height: int, width: int, first: int = 0) -> torch.Tensor:
    """``count`` test portraits from the ``first``-th on, resized to height x width."""
    from facedefense.imaging import resize
    from facedefense.testing.tiny_models import sample_faces

    return resize(sample_faces(first + count, max(height, width))[first:], (height, width)).clamp(0, 1)


# -- weights and activation (item 18) ---------------------------------------------------------------


def test_openai_torchscript_archive_loads_its_weights_with_quickgelu(openai_resnet, tiny_archs):
    path, original = openai_resnet
    model = build(path, tiny_archs["resnet"])
    assert model.quick_gelu and activations(model) == {"QuickGELU"}
    expected = original.state_dict()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in model.state_dict().items())
    tokens = open_clip().tokenize(["a photo of a person"])
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tokens), original.encode_text(tokens), atol=1e-6)
        gelu = build(path, tiny_archs["resnet"], quick_gelu=False)  # the old activation: other features
        assert activations(gelu) == {"GELU"} and not torch.allclose(gelu.encode_text(tokens), original.encode_text(tokens), atol=1e-3)
    assert gelu.tokenizer is model.tokenizer  # built once per architecture, not per load


def test_open_clip_hub_files_load_with_the_activation_their_config_names(laion_vit, tiny_archs, tmp_path):
    path, original = laion_vit
    model = build(path, tiny_archs["vit"])
    assert not model.quick_gelu and activations(model) == {"GELU"}
    images = faces(2, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), original.encode_image(images), atol=1e-6)
    openai_on_hub = tmp_path / "openai"  # OpenAI's weights converted to the hub say quick_gelu: true
    openai_on_hub.mkdir()
    torch.save(original.state_dict(), openai_on_hub / "open_clip_pytorch_model.bin")
    (openai_on_hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**VIT, "quick_gelu": True}}))
    assert build(str(openai_on_hub / "open_clip_pytorch_model.bin"), tiny_archs["vit"]).quick_gelu
    bare = tmp_path / "weights.bin"  # no config: the architecture's own activation
    torch.save(original.state_dict(), bare)
    assert activations(build(str(bare), tiny_archs["vit"])) == {"GELU"}


def test_archive_reader_refuses_code_and_runs_none(tmp_path, tiny_archs):
    marker = tmp_path / "ran"
    archive = tmp_path / "evil.pt"
    payload = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("evil/data.pkl", payload)
        zf.writestr("evil/constants.pkl", pickle.dumps(()))
        zf.writestr("evil/code/__torch__.py", "")
    with pytest.raises(ConfigError, match=r"os\.system.*refused"):
        build(str(archive), tiny_archs["vit"])
    assert not marker.exists()
    with pytest.raises(ModelNotFoundError, match="ViT-B-32"):
        build(None, "ViT-B-32")


# -- CLIP-S, CLIP-T, CLIP-I: the formulas on features computed here (item 19) -------------------------


def clip_features(model, images: torch.Tensor) -> torch.Tensor:
    """Raw image projections after OpenAI's preprocessing, written with torchvision's transforms."""
    import torchvision.transforms.functional as TF

    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    x = TF.resize(images, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    x = TF.center_crop(x, [size, size])
    return model.encode_image((x - CLIP_MEAN) / CLIP_STD)


def text_embedding(model, prompts: list[str]) -> torch.Tensor:
    return model.encode_text(open_clip().tokenize(prompts))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


@pytest.fixture(scope="module")
def edits() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Non-square sources, their "edits" (a shift of color and a blur) and the instructions."""
    sources = faces(2, 48, 64, first=3)
    edited = sources.clone()
    edited[0, 0] = (edited[0, 0] + 0.3).clamp(0, 1)
    edited[1] = F.avg_pool2d(edited[1:2], 5, stride=1, padding=2, count_include_pad=False)[0]
    return edited, sources, ["Turn the person's hair pink", "Let the person turn bald"]


def test_clip_s_is_facelocks_directional_cosine_on_raw_projections(laion_vit, tiny_archs, edits):
    from facedefense_metrics.clip_s import CLIPScore

    path, model = laion_vit
    edited, sources, prompts = edits
    result = CLIPScore(device="cpu", weights=path, architecture=tiny_archs["vit"]).compute(edited, sources, prompts=prompts)
    with torch.no_grad():
        edit_features, source_features = clip_features(model, edited), clip_features(model, sources)
        texts = text_embedding(model, prompts)
    expected = cosine(edit_features - source_features, texts)
    assert result.per_image == pytest.approx(expected.tolist(), abs=1e-5)
    assert result.details["activation"] == "GELU"
    plain = cosine(edit_features, texts)  # the old clip_s
    unit = cosine(F.normalize(edit_features, dim=-1) - F.normalize(source_features, dim=-1), texts)
    for wrong in (plain, unit):
        assert not torch.allclose(torch.tensor(result.per_image), wrong, atol=1e-3)


def test_clip_t_and_clip_i_are_plain_cosines(laion_vit, tiny_archs, edits):
    from facedefense_metrics.clip_i import CLIPImage
    from facedefense_metrics.clip_t import CLIPText

    path, model = laion_vit
    edited, sources, prompts = edits
    options = {"device": "cpu", "weights": path, "architecture": tiny_archs["vit"]}
    with torch.no_grad():
        edit_features = clip_features(model, edited)
        expected_t = cosine(edit_features, text_embedding(model, prompts))
        expected_i = cosine(edit_features, clip_features(model, sources))
    assert CLIPText(**options).compute(edited, prompts=prompts).per_image == pytest.approx(expected_t.tolist(), abs=1e-5)
    assert CLIPImage(**options).compute(edited, sources).per_image == pytest.approx(expected_i.tolist(), abs=1e-5)
    with pytest.raises(ModelNotFoundError, match="ViT-B-32"):
        CLIPText(device="cpu").compute(edited, prompts="a photo")


# -- CLIP-IQA: pyiqa's clipiqa by hand (item 20) -----------------------------------------------------


def pool_by_hand(pool, features: torch.Tensor, table: torch.Tensor | None) -> torch.Tensor:
    """The attention pool's output for the mean token, with the heads written out."""
    n, c = features.shape[:2]
    tokens = features.flatten(2).transpose(1, 2)
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
    if table is not None:
        tokens = tokens + table
    heads, width = pool.num_heads, c // pool.num_heads
    q = pool.q_proj(tokens[:, :1]).view(n, 1, heads, width).transpose(1, 2)
    k = pool.k_proj(tokens).view(n, -1, heads, width).transpose(1, 2)
    v = pool.v_proj(tokens).view(n, -1, heads, width).transpose(1, 2)
    attended = ((q @ k.transpose(-1, -2)) / width**0.5).softmax(dim=-1) @ v
    return pool.c_proj(attended.transpose(1, 2).reshape(n, c))


def clip_iqa_by_hand(model, images: torch.Tensor, pairs, pos_embedding: bool) -> torch.Tensor:
    visual = model.visual
    with torch.no_grad():
        x = (images - CLIP_MEAN) / CLIP_STD  # pyiqa: no resize
        for block in (visual.stem, visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = block(x)
        table = None
        if pos_embedding:  # pyiqa's AttentionPool2d with pos_embedding=True
            table = F.interpolate(visual.attnpool.positional_embedding[None, None], size=(x.shape[2] * x.shape[3] + 1, x.shape[1]), mode="bicubic")[0, 0]
        image = pool_by_hand(visual.attnpool, x, table)
        texts = text_embedding(model, [text for pair in pairs for text in pair])
    logits = model.logit_scale.exp() * cosine(image[:, None], texts[None])
    return logits.view(len(images), len(pairs), 2).softmax(dim=-1)[..., 0].mean(dim=1)


def test_clip_iqa_is_pyiqas_clipiqa_at_the_images_size(openai_resnet, tiny_archs):
    from facedefense_metrics.clip_iqa import CLIPIQA

    path, model = openai_resnet
    images = faces(2, 96, 80, first=4)  # not the model's 64 x 64
    options = {"device": "cpu", "weights": path, "architecture": tiny_archs["resnet"]}
    piq = {"positives": "Good photo.", "negatives": "Bad photo."}
    for pairs, pos_embedding, prompts in ((PYIQA_PAIRS, False, {}), (PYIQA_PAIRS, True, {}), (PIQ_PAIRS, False, piq)):
        result = CLIPIQA(**options, **prompts, pos_embedding=pos_embedding).compute(images)
        expected = clip_iqa_by_hand(model, images, pairs, pos_embedding)
        assert result.per_image == pytest.approx(expected.tolist(), abs=1e-5)
        assert result.details["activation"] == "QuickGELU"
    default = CLIPIQA(**options).compute(images).per_image
    resized = F.interpolate(images, size=(64, 64), mode="bicubic", antialias=True).clamp(0, 1)
    old = clip_iqa_by_hand(model, resized, PIQ_PAIRS, pos_embedding=True)  # the old: resized, one pair
    assert not torch.allclose(torch.tensor(default), old, atol=1e-4)


def test_clip_iqa_pool_equals_open_clips_at_the_models_size(openai_resnet, tiny_archs):
    """At the model's input size the resized table is the table: open_clip's own forward agrees."""
    from facedefense_metrics.clip_iqa import resnet_features

    _, model = openai_resnet
    images = faces(2, 64, 64, first=6)
    with torch.no_grad():
        expected = F.normalize(model.encode_image((images - CLIP_MEAN) / CLIP_STD), dim=-1)
        assert torch.allclose(resnet_features(model.visual, images, pos_embedding=True), expected, atol=1e-5)
        assert not torch.allclose(resnet_features(model.visual, images, pos_embedding=False), expected, atol=1e-3)


def test_clip_iqa_refuses_vits_small_images_and_unpaired_prompts(laion_vit, openai_resnet, tiny_archs):
    from facedefense_metrics.clip_iqa import CLIPIQA

    with pytest.raises(ConfigError, match="ResNet"):
        CLIPIQA(device="cpu", weights=laion_vit[0], architecture=tiny_archs["vit"]).compute(faces(1, 64, 64))
    with pytest.raises(ConfigError, match="32 x 32"):
        CLIPIQA(device="cpu", weights=openai_resnet[0], architecture=tiny_archs["resnet"]).compute(faces(1, 24, 40))
    with pytest.raises(ConfigError, match="one negative per positive"):
        CLIPIQA(device="cpu", positives="Good photo.,Sharp photo.", negatives="Bad photo.")


# -- contracts ---------------------------------------------------------------------------------------


class TestCLIPScore(MetricContract):
    registry_name = "clip_s"

    def make_method(self, request):
        from facedefense_metrics.clip_s import CLIPScore

        path = request.getfixturevalue("laion_vit")[0]
        return CLIPScore(device="cpu", weights=path, architecture=request.getfixturevalue("tiny_archs")["vit"])

    def test_identical_scores_at_good_end(self, method, images):
        """Directional: there is no best end; an edit that changed nothing has no direction: 0."""
        result = method.compute(images, images, prompts=self.prompt)
        assert result.per_image == [0.0] * len(images)


class TestCLIPText(MetricContract):
    registry_name = "clip_t"

    def make_method(self, request):
        from facedefense_metrics.clip_t import CLIPText

        path = request.getfixturevalue("laion_vit")[0]
        return CLIPText(device="cpu", weights=path, architecture=request.getfixturevalue("tiny_archs")["vit"])


class TestCLIPImage(MetricContract):
    registry_name = "clip_i"

    def make_method(self, request):
        from facedefense_metrics.clip_i import CLIPImage

        path = request.getfixturevalue("laion_vit")[0]
        return CLIPImage(device="cpu", weights=path, architecture=request.getfixturevalue("tiny_archs")["vit"])


class TestCLIPIQA(MetricContract):
    registry_name = "clip_iqa"

    def make_method(self, request):
        from facedefense_metrics.clip_iqa import CLIPIQA

        path = request.getfixturevalue("openai_resnet")[0]
        return CLIPIQA(device="cpu", weights=path, architecture=request.getfixturevalue("tiny_archs")["resnet"])
