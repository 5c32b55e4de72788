"""The grown core: frozen configs and fingerprints, one construction path, tags, hooks through pluggy,
shared models, identity sets through the library and the CLI, set and prompt metrics through
``evaluate``, personalized models that load back, editors with masks, purifiers that optimize."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

import facedefense
from facedefense.errors import ConfigError, ImageError, ModelNotFoundError, UnknownMethodError
from facedefense.interfaces import (
    Defender,
    DefenderConfig,
    Editor,
    EditorConfig,
    IdentitySet,
    Metric,
    MetricScores,
    PersonalizedModel,
    Personalizer,
    Perturbation,
    Purifier,
)
from facedefense.testing.cli import invoke
from facedefense.testing.contracts import DefenderContract, EditorContract, PersonalizerContract
from facedefense.testing.fixtures import registered

# -- configs: frozen, replace, fingerprint, one number parser ------------------------------------------


@dataclass
class NudgeConfig(DefenderConfig):
    device: str = "cpu"
    strength: float = 0.5


class Nudge(Defender):
    """Adds ``strength * eps``: an image-scoped test defender."""

    name: ClassVar[str] = "nudge"
    Config: ClassVar[type] = NudgeConfig

    def _perturb(self, images, generator):
        return images + self.config.strength * self.config.eps


def test_config_is_frozen_and_replace_validates():
    nudge = Nudge(eps="4/255")
    with pytest.raises(ConfigError, match="frozen"):
        nudge.config.eps = 0.1
    changed = nudge.config.replace(eps="8/255")
    assert changed.eps == pytest.approx(8 / 255) and nudge.config.eps == pytest.approx(4 / 255)
    with pytest.raises(ConfigError, match="outside"):
        nudge.config.replace(eps=2)
    with pytest.raises(ConfigError, match="frozen"):
        changed.strength = 1.0


def test_fingerprint_is_stable_and_tracks_config():
    assert Nudge(eps=4 / 255).fingerprint() == Nudge(eps="4/255").fingerprint()
    assert Nudge(eps=4 / 255).fingerprint() != Nudge(eps=5 / 255).fingerprint()
    described = Nudge().describe()
    assert described["fingerprint"] == Nudge().fingerprint() and described["plugin"] is None


def test_seed_range_and_fraction_options():
    with pytest.raises(ConfigError, match="seed"):
        Nudge(seed=10**30)
    with pytest.raises(ConfigError, match="seed"):
        Nudge(seed=-1)
    assert Nudge(strength="1/4").config.strength == 0.25
    with pytest.raises(ConfigError, match="did you mean 'strength'"):
        Nudge(strenght=1)


# -- one construction path, tags, kinds ----------------------------------------------------------------


def test_create_records_the_plugin():
    jpeg = facedefense.create("purifier", "jpeg", quality=70)
    assert jpeg.plugin == "purifiers" and jpeg.plugin_version
    assert jpeg.describe()["plugin"] == "purifiers"


def test_create_says_when_a_name_is_of_another_kind():
    with pytest.raises(UnknownMethodError, match="'jpeg' is a purifier, not a defender"):
        facedefense.create("defender", "jpeg")


def test_core_defaults_come_from_tags():
    registry = facedefense.get_registry()
    assert registry.tagged("metric", "default") == ["psnr", "ssim"]
    assert registry.tagged("defender", "demo") == ["photoguard"]
    listing = json.loads(invoke("list", "metrics", "--json").stdout)
    assert {entry["name"]: entry["tags"] for entry in listing["metrics"]}["psnr"] == ["default"]


def test_tracing_prints_each_hook_call_to_stderr():
    env = {**os.environ, "FACEDEFENSE_TRACE_PLUGINS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", "from facedefense.cli import main; import sys; sys.argv=['facedefense','list']; main()"],
        capture_output=True, text=True, env=env, check=True,
    )
    for hook in ("register_defenders", "register_purifiers", "register_metrics"):  # the hooks built-ins implement
        assert f"finish {hook}" in done.stderr, hook
    assert "plugin 'iterative'" in done.stderr and "register_defenders" not in done.stdout


# -- shared models --------------------------------------------------------------------------------------


def build_tiny_embedder(*, path, device, dtype, width=4):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, width)).to(device=device, dtype=dtype)


def test_shared_model_is_built_once_frozen_and_differentiable():
    from facedefense.models import clear_shared_models, shared_model

    with registered("model", build_tiny_embedder, name="tiny_embedder"):
        first = shared_model("tiny_embedder", device="cpu")
        x = torch.rand(2, 3, 8, 8, requires_grad=True)
        assert shared_model("tiny_embedder", device="cpu") is first
        assert shared_model("tiny_embedder", device="cpu", width=5) is not first
        assert not any(p.requires_grad for p in first.parameters()) and not first.training
        (grad,) = torch.autograd.grad(first(x).sum(), x)
        assert grad.abs().sum() > 0
        clear_shared_models()
        assert shared_model("tiny_embedder", device="cpu") is not first
    with pytest.raises(UnknownMethodError, match="unknown model"):
        shared_model("no_such_model")
    clear_shared_models()


# -- identity sets ---------------------------------------------------------------------------------------


@dataclass
class TowardReferencesConfig(DefenderConfig):
    device: str = "cpu"


class TowardReferences(Defender):
    """Identity-scoped test defender: moves every photo toward the mean colour of the clean set and
    records what it saw, so tests can check what the base class hands over."""

    name: ClassVar[str] = "toward_references"
    Config: ClassVar[type] = TowardReferencesConfig
    scope: ClassVar[str] = "identity"

    def _perturb_identity(self, identity, generator, workdir):
        target = torch.stack([image.mean(dim=(1, 2)) for image in identity.clean]).mean(0)
        direction = [(target[:, None, None] - image).sign() * self.config.eps for image in identity.images]
        artifacts = {}
        if workdir is not None:
            note = workdir / "seen.json"
            note.write_text(json.dumps({"identity": identity.name, "references": len(identity.references),
                                        "prompt": identity.instance_prompt}))
            artifacts["seen"] = note
        stats = [{"clean_set": len(identity.clean)} for _ in identity.images]
        return Perturbation([image + d for image, d in zip(identity.images, direction)], stats, artifacts)


class TestTowardReferencesContract(DefenderContract):
    objective_higher_is_better = False

    def make_method(self, request):
        return TowardReferences(eps=self.eps)

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _registered(cls):
        with registered("defender", TowardReferences):
            yield

    def objective(self, method, images, generator):
        target = images.mean(dim=(0, 2, 3))
        return (images - target[None, :, None, None]).abs().flatten(1).mean(1)


def test_identity_of_mixed_sizes_through_the_library():
    photos = [torch.full((3, 20, 24), 0.2), torch.full((3, 30, 18), 0.4)]
    references = [torch.full((3, 40, 40), 0.9)]
    identity = IdentitySet.from_images(photos, names=["a.png", "b.png"], references=references, name="p1")
    result = TowardReferences(eps=4 / 255).protect_identity(identity)
    assert [tuple(x.shape) for x in result.images] == [(3, 20, 24), (3, 30, 18)]
    assert result.linf == [pytest.approx(4.0), pytest.approx(4.0)]
    assert all((x > p).all() for x, p in zip(result.images, photos))  # toward the bright references
    assert result.stats == [{"clean_set": 1}, {"clean_set": 1}]
    # without references, the photos are the clean set
    alone = TowardReferences(eps=4 / 255).protect_identity(IdentitySet.from_images(photos))
    assert alone.stats[0] == {"clean_set": 2}
    # an image-scoped defender protects an identity image by image, in order
    plain = Nudge(eps=4 / 255).protect_identity(identity)
    assert [tuple(x.shape) for x in plain.images] == [(3, 20, 24), (3, 30, 18)]


def test_identity_set_checks_its_input():
    with pytest.raises(ImageError, match="name"):
        IdentitySet([torch.rand(3, 8, 8)], names=[])
    with pytest.raises(ImageError):
        IdentitySet.from_images([torch.rand(3, 8, 8) * 3])


def write_pngs(folder: Path, sizes: dict[str, tuple[int, int]], value: int | None = None, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, (h, w) in sizes.items():
        pixels = np.full((h, w, 3), value, np.uint8) if value is not None else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def test_cli_protects_an_identity_with_references(tmp_path, register_method):
    register_method("defender", TowardReferences)
    photos = write_pngs(tmp_path / "set_B", {"x": (40, 32), "y": (24, 48)}, value=60)
    refs = write_pngs(tmp_path / "set_A", {"r1": (64, 64), "r2": (50, 30), "r3": (20, 20)}, value=250)
    out = tmp_path / "out"
    result = invoke("protect", photos, "--reference", refs, "--method", "toward_references", "--eps", "3/255", "--output", out)
    assert result.exit_code == 0, result.output
    for name, (h, w) in {"x": (40, 32), "y": (24, 48)}.items():
        written = np.asarray(Image.open(out / f"{name}.png"))
        assert written.shape == (h, w, 3) and (written == 63).all()
    manifest = json.loads((out / "facedefense.json").read_text())
    seen = json.loads(Path(manifest["artifacts"]["set_B"]["seen"]).read_text())
    assert seen == {"identity": "set_B", "references": 3, "prompt": "a photo of sks person"}
    assert manifest["references"] == str(refs.resolve())


def test_cli_protects_a_folder_of_identities(tmp_path, register_method):
    register_method("defender", TowardReferences)
    people = tmp_path / "people"
    write_pngs(people / "alice", {"a1": (32, 32), "a2": (40, 24)}, value=100)
    write_pngs(people / "bob", {"b1": (28, 36)}, value=100)
    refs = tmp_path / "refs"
    write_pngs(refs / "alice", {"r": (32, 32)}, value=255)  # bob has none: his photos serve
    out = tmp_path / "out"
    result = invoke("protect", people, "--reference", refs, "--method", "toward_references", "--eps", "2/255", "--output", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "facedefense.json").read_text())
    by_output = {entry["output"]: entry for entry in manifest["images"]}
    assert set(by_output) == {"alice/a1.png", "alice/a2.png", "bob/b1.png"}
    assert by_output["alice/a1.png"]["identity"] == "alice" and by_output["alice/a1.png"]["clean_set"] == 1
    assert by_output["bob/b1.png"]["clean_set"] == 1  # bob's own photo
    assert (np.asarray(Image.open(out / "alice" / "a1.png")) == 102).all()


# -- metrics over sets and prompts through evaluate ----------------------------------------------------------


class ColourDistance(Metric):
    """Set metric: distance of each image's mean colour to the reference set's mean colour."""

    name: ClassVar[str] = "colour_distance"
    pairing: ClassVar[str] = "set"
    higher_is_better: ClassVar[bool] = False

    def _compute(self, images, references, prompts):
        target = torch.stack([r.mean(dim=(1, 2)) for r in references]).mean(0)
        values = [float((image.mean(dim=(1, 2)) - target).abs().mean()) for image in images]
        return MetricScores(per_image=values, details={"references": len(references)})


class PromptLength(Metric):
    """Prompt metric: words in the prompt (needs_prompt), set-level."""

    name: ClassVar[str] = "prompt_length"
    needs_prompt: ClassVar[bool] = True
    per_image: ClassVar[bool] = False

    def _compute(self, images, references, prompts):
        return float(len(prompts[0].split()))


def test_evaluate_compares_a_folder_with_a_reference_set_of_other_sizes(tmp_path, register_method):
    register_method("metric", ColourDistance)
    register_method("metric", PromptLength)
    generated = write_pngs(tmp_path / "gen", {"g1": (32, 32), "g2": (16, 48)}, value=51)
    references = write_pngs(tmp_path / "ref", {"r1": (64, 40), "r2": (20, 20), "r3": (70, 70)}, value=102)
    report = tmp_path / "scores.json"
    result = invoke("evaluate", generated, "--reference", references, "--metric", "colour_distance",
                    "--metric", "prompt_length", "--prompt", "a photo of sks person", "--json", report)
    assert result.exit_code == 0, result.output
    scores = json.loads(report.read_text())["metrics"]
    assert scores["colour_distance"]["per_image"] == {"g1.png": pytest.approx(0.2), "g2.png": pytest.approx(0.2)}
    assert scores["colour_distance"]["details"] == {"references": 3}
    assert scores["colour_distance"]["protected_if"] == "higher"
    assert scores["prompt_length"]["value"] == 5 and scores["prompt_length"]["per_image"] is None
    missing = invoke("evaluate", generated, "--reference", references, "--metric", "prompt_length")
    assert missing.exit_code == 2 and "--prompt" in missing.stderr


def test_paired_metric_refuses_mismatched_sizes():
    psnr = facedefense.create("metric", "psnr", device="cpu")
    with pytest.raises(ConfigError, match="image 1 is 8x6 but its reference is 8x8"):
        psnr.compute([torch.rand(3, 8, 8), torch.rand(3, 6, 8)], [torch.rand(3, 8, 8), torch.rand(3, 8, 8)])
    ok = psnr.compute([torch.rand(3, 8, 8), torch.rand(3, 6, 8)], [torch.rand(3, 8, 8), torch.rand(3, 6, 8)])
    assert len(ok.per_image) == 2


def test_metric_must_return_one_value_per_image():
    class Short(Metric):
        name = "short"

        def _compute(self, images, references, prompts):
            return [0.0]

    with pytest.raises(RuntimeError, match="1 value"):
        Short(device="cpu").compute(torch.rand(2, 3, 4, 4))


# -- personalizers: save, metadata, load back ---------------------------------------------------------------


class MeanColourModel(PersonalizedModel):
    """'Generates' flat images of the mean colour it learnt (format: textual_inversion)."""

    format: ClassVar[str] = "textual_inversion"

    def __init__(self, colour, prompt):
        self.colour, self.prompt = colour, prompt

    def generate(self, prompts, *, num_images=1, generator=None, steps=None, guidance_scale=None):
        return self.colour[None, :, None, None].expand(len(prompts) * num_images, 3, 16, 16).clone()

    def save(self, directory):
        from safetensors.torch import save_file

        from facedefense.interfaces.personalizer import write_metadata

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"<sks>": self.colour.contiguous()}, str(directory / "learned_embeds.safetensors"))
        write_metadata(directory, personalizer="mean_colour", format=self.format, instance_prompt=self.prompt)
        return directory

    @classmethod
    def load(cls, directory, *, device="auto", dtype="auto"):
        from safetensors.torch import load_file

        from facedefense.interfaces.personalizer import read_metadata

        return cls(load_file(str(Path(directory) / "learned_embeds.safetensors"))["<sks>"], read_metadata(directory)["instance_prompt"])


@dataclass
class MeanColourConfig(facedefense.PersonalizerConfig):
    device: str = "cpu"
    model: str = "none"


class MeanColour(Personalizer):
    name: ClassVar[str] = "mean_colour"
    Config: ClassVar[type] = MeanColourConfig
    Model: ClassVar[type] = MeanColourModel

    def _fit(self, images, *, instance_prompt, class_images, class_prompt, output_dir, generator):
        model = MeanColourModel(torch.stack([image.mean(dim=(1, 2)) for image in images]).mean(0), instance_prompt)
        if output_dir is not None:
            model.save(output_dir)
        return model


class TestMeanColourContract(PersonalizerContract):
    def make_method(self, request):
        return MeanColour()

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _registered(cls):
        with registered("personalizer", MeanColour):
            yield


def test_load_personalized_refuses_a_folder_without_metadata(tmp_path):
    with pytest.raises(ModelNotFoundError, match="facedefense_personalized.json"):
        facedefense.load_personalized(tmp_path)


# -- editors take masks; purifiers that need gradients -------------------------------------------------------


@dataclass
class FillConfig(EditorConfig):
    device: str = "cpu"
    model: str = "none"


class Fill(Editor):
    """Paints the masked region white (everything without a mask)."""

    name: ClassVar[str] = "fill"
    Config: ClassVar[type] = FillConfig

    def _edit(self, images, prompt, mask, generator):
        assert images.device == self.device and (mask is None or mask.device == self.device)
        weight = torch.ones_like(images[:, :1]) if mask is None else mask
        return images * (1 - weight) + weight


class TestFillContract(EditorContract):
    def make_method(self, request):
        return Fill()

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _registered(cls):
        with registered("editor", Fill):
            yield


def test_editor_mask_is_checked_and_applied():
    images = torch.zeros(2, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    out = Fill().edit(images, "paint", mask=mask)
    assert (out[..., :4] == 1).all() and (out[..., 4:] == 0).all()
    with pytest.raises(ImageError, match="does not fit"):
        Fill().edit(images, "paint", mask=torch.zeros(1, 1, 4, 4))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        Fill().edit(images, "paint", mask=mask * 2)


class Sharpen(Purifier):
    """Optimizes inside purify (like IMPRESS): needs autograd."""

    name: ClassVar[str] = "sharpen_test"
    needs_grad: ClassVar[bool] = True

    def _purify(self, images, generator):
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((x - 0.5).pow(2).sum(), x)
        return (images + 0.01 * grad.sign()).detach()


def test_purifier_that_needs_gradients_gets_them():
    out = Sharpen(device="cpu").purify(torch.full((1, 3, 4, 4), 0.7))
    assert torch.allclose(out, torch.full((1, 3, 4, 4), 0.71))
