"""The attacks plugin: personalizers and editors through the CLI on the tiny models, the saved
formats through diffusers' own loaders, bad input, and the contracts (that every personalizer
learns is in ``test_attacks_training.py``)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from facedefense.testing.cli import invoke
from facedefense.testing.contracts import EditorContract, PersonalizerContract

#: Fast training/generation settings for the tiny models (32 px: 4x4 latents, 1 step, 1 class image).
TINY = ["-o", "resolution=32", "-o", "num_class_images=1", "-o", "class_inference_steps=1",
        "-o", "inference_steps=1", "--steps", "1", "--device", "cpu"]
PROMPTS = {"dreambooth": "a dslr portrait of sks person", "lora": "a dslr portrait of sks person",
           "textual_inversion": "a dslr portrait of <new1> person", "lora_ti": "a dslr portrait of <new1> person"}



def assert_one_line_error(result, match, code=2):
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and match in lines[0], result.stderr
    assert "Traceback" not in result.output


def save_png(tensor, path):
    array = (tensor.permute(1, 2, 0) * 255).round().byte().numpy()
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """Four sample faces of mixed sizes (they are resized and center-cropped, not refused)."""
    from facedefense.imaging import resize
    from facedefense.testing.tiny_models import sample_faces

    folder = tmp_path_factory.mktemp("photos")
    for index, (face, size) in enumerate(zip(sample_faces(4, 48), [(32, 32), (40, 32), (32, 48), (36, 36)])):
        save_png(resize(face[None], size)[0].clamp(0, 1), folder / f"face{index}.png")
    return folder


@pytest.fixture(scope="module")
def class_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("class-cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_sd_path, photo_dir, class_cache):
    """Each personalizer trained through the CLI once: name -> output folder."""
    outputs = {}
    for name, prompt in PROMPTS.items():
        output = tmp_path_factory.mktemp(f"attack-{name}")
        result = invoke("attack", photo_dir, "--personalizer", name, "--output", output, "--model", tiny_sd_path,
                        "--prompt", prompt, "--prompt", "a photo of person", "--num-images", 2, "--seed", 1,
                        "-o", f"class_cache={class_cache}", *TINY)
        assert result.exit_code == 0, result.output
        outputs[name] = output
    return outputs


@pytest.fixture(scope="module")
def base_pipeline(tiny_sd_path):
    """The tiny base model loaded once; tests read it, and copy it (``copy.deepcopy``, or a new
    pipeline object over its networks) before changing anything."""
    from facedefense.diffusion import load_pipeline

    return load_pipeline(str(tiny_sd_path))


def _render(pipe, prompt):
    return pipe(prompt, num_inference_steps=1, height=32, width=32, generator=torch.Generator().manual_seed(3),
                output_type="pt").images


class TestTrainedThroughTheCLI:
    """Each personalizer trained once through the CLI (the module's ``trained`` fixture); a class, so
    that ``-n auto`` runs these tests on one worker and trains once."""

    @pytest.mark.parametrize("name", list(PROMPTS))
    def test_personalizer_cli_writes_weights_images_manifest(self, trained, name):
        output = trained[name]
        manifest = json.loads((output / "facedefense.json").read_text())
        assert manifest["status"] == "completed" and manifest["method"]["name"] == name
        assert len(manifest["inputs"]) == 4 and manifest["training"]["steps"] == 1
        for entry in manifest["prompts"]:
            images = sorted((output / entry["folder"]).glob("*.png"))
            assert [p.name for p in images] == ["0000.png", "0001.png"]
            assert Image.open(images[0]).size == (32, 32)
        expected = {"dreambooth": "model_index.json", "lora": "pytorch_lora_weights.safetensors",
                    "textual_inversion": "learned_embeds.safetensors", "lora_ti": "learned_embeds.safetensors"}[name]
        assert (output / "model" / expected).is_file()
        metadata = json.loads((output / "model" / "facedefense_personalized.json").read_text())
        assert metadata["personalizer"] == name and metadata["format"] == ("pipeline" if name == "dreambooth" else name)

    @pytest.mark.parametrize("name", ["lora", "textual_inversion", "lora_ti"])
    def test_saved_adapters_load_with_diffusers_loaders(self, trained, base_pipeline, name):
        import copy

        from facedefense.interfaces.personalizer import load_personalized

        folder = trained[name] / "model"
        prompt = PROMPTS[name]
        pipe = copy.deepcopy(base_pipeline)  # the loaders below change it
        before = _render(pipe, prompt)
        if name != "lora":
            pipe.load_textual_inversion(folder / "learned_embeds.safetensors", token="<new1>")
        if name != "textual_inversion":
            pipe.load_lora_weights(folder)
        after = _render(pipe, prompt)
        assert not torch.allclose(before, after, atol=1e-6), "the loaded personalization must change the output"
        ours = load_personalized(folder, device="cpu").generate(
            [prompt], num_images=1, steps=1, guidance_scale=pipe.guidance_scale, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(ours, after.float(), atol=1e-5), "diffusers' loaders and ours must give the same model"

    def test_dreambooth_folder_loads_with_from_pretrained(self, trained, base_pipeline):
        from diffusers import StableDiffusionPipeline

        tuned = StableDiffusionPipeline.from_pretrained(trained["dreambooth"] / "model", safety_checker=None)
        base = base_pipeline
        changed = [not torch.equal(a, b) for a, b in zip(tuned.unet.parameters(), base.unet.parameters())]
        assert any(changed), "DreamBooth must change the UNet"
        assert not torch.equal(tuned.text_encoder.get_input_embeddings().weight, base.text_encoder.get_input_embeddings().weight)

    def test_finished_output_is_refused_then_resumed(self, trained, tiny_sd_path, photo_dir):
        output = trained["lora"]
        again = ["attack", photo_dir, "--personalizer", "lora", "--output", output, "--model", tiny_sd_path,
                 "--prompt", PROMPTS["lora"], "--prompt", "a photo of person", "--num-images", 2, "--seed", 1, *TINY]
        assert_one_line_error(invoke(*again), "already holds an earlier run of attack")
        weights = output / "model" / "pytorch_lora_weights.safetensors"
        stamp = weights.stat().st_mtime_ns
        image = next(iter(sorted((output / "images").glob("*/0001.png"))))
        original = image.read_bytes()
        image.unlink()
        result = invoke(*again, "--resume")
        assert result.exit_code == 0, result.output
        assert weights.stat().st_mtime_ns == stamp, "resume must reuse the saved model, not train again"
        assert image.read_bytes() == original, "a resumed image is the one the first run wrote"


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_sd_path, tiny_ip2p_path, photo_dir):
    empty = tmp_path / "broken"
    empty.mkdir()
    (empty / "a.png").write_bytes(b"not an image")
    base = ["--output", tmp_path / "out", "--model", tiny_sd_path, *TINY]
    assert_one_line_error(invoke("attack", empty, "--personalizer", "lora", *base), "no usable image")
    assert_one_line_error(
        invoke("attack", photo_dir, "--personalizer", "lora", "--instance-prompt", "a photo of a person", *base),
        "does not contain the identifier 'sks'")
    assert_one_line_error(
        invoke("attack", photo_dir, "--personalizer", "dreambooth", "--output", tmp_path / "o2", "--model",
               tmp_path / "missing-model", *TINY), "does not exist")
    assert_one_line_error(
        invoke("attack", photo_dir, "--personalizer", "dreambooth", "--output", tmp_path / "o3", "--model",
               tiny_ip2p_path, *TINY), "is an InstructPix2Pix model")
    assert_one_line_error(invoke("attack", photo_dir, "--editor", "sdedit", "--output", tmp_path / "o4"), "needs an instruction")
    assert_one_line_error(invoke("attack", photo_dir, "--output", tmp_path / "o5"), "exactly one of")
    assert_one_line_error(  # img2img would run int(2 * 0.3) = 0 denoising steps
        invoke("attack", photo_dir, "--editor", "sdedit", "--prompt", "a photo", "--model", tiny_sd_path,
               "-o", "steps=2", "-o", "strength=0.3", "--output", tmp_path / "o6"),
        "runs no denoising step; use steps >= 4")


@pytest.mark.parametrize(
    ("editor", "fixture", "extra"),
    [("instruct_pix2pix", "tiny_ip2p_path", []), ("sdedit", "tiny_sd_path", []), ("inpaint", "tiny_inpaint_path", ["mask"])],
)
def test_editor_cli_keeps_size_and_name(request, tmp_path, png_folder, editor, fixture, extra):
    model = request.getfixturevalue(fixture)
    options = ["--steps", 2, "-o", "resolution=32", "--device", "cpu", "--model", model]
    if extra:
        mask = tmp_path / "mask.png"
        white_left = Image.new("L", (20, 20), 0)
        white_left.paste(255, (0, 0, 10, 20))
        white_left.save(mask)
        options += ["--mask", mask]
    output = tmp_path / "edited"
    result = invoke("attack", png_folder, "--editor", editor, "--prompt", "make it a statue", "--output", output, *options)
    assert result.exit_code == 0, result.output
    for source in sorted(png_folder.glob("*.png")):
        edited = Image.open(output / source.name)
        assert edited.size == Image.open(source).size
        assert edited.tobytes() != Image.open(source).convert("RGB").tobytes()
    manifest = json.loads((output / "facedefense.json").read_text())
    assert manifest["status"] == "completed" and len(manifest["images"]) == 3


def test_editor_refuses_wrong_model_kind(tmp_path, png_folder, tiny_sd_path):
    result = invoke("attack", png_folder, "--editor", "instruct_pix2pix", "--prompt", "x", "--output", tmp_path / "o",
                    "--model", tiny_sd_path, "--device", "cpu")
    assert_one_line_error(result, "is a text-to-image model")




@pytest.mark.parametrize(("editor", "fixture"), [("sdedit", "tiny_sd_path"), ("inpaint", "tiny_inpaint_path")])
def test_strength_sets_where_denoising_starts(request, editor, fixture):
    """Strength s noises the photo to about s * T and denoises from there: at 0.5 the UNet runs
    about half the steps, from a timestep under 0.6 T; at 1.0 all of them, from above 0.8 T."""
    from facedefense.registry import get_registry
    from facedefense.testing.tiny_models import sample_faces

    model = str(request.getfixturevalue(fixture))
    extra = {"auto_mask": "all"} if editor == "inpaint" else {}

    def timesteps(strength):
        method = get_registry().create("editor", editor, model=model, steps=6, strength=strength, resolution=None,
                                       device="cpu", dtype="float32", **extra)
        seen = []
        method.pipeline.unet.register_forward_pre_hook(lambda module, args: seen.append(int(args[1].flatten()[0])))
        method.edit(sample_faces(1, 32), "a person at the beach")
        return seen

    half, full = timesteps(0.5), timesteps(1.0)
    total = 1000
    assert half[0] < 0.6 * total and full[0] > 0.8 * total, (half, full)
    assert abs(len(half) - len(full) / 2) <= 1, (half, full)


def test_automatic_face_mask_keeps_the_face_and_inpaint_returns_it_unchanged(tiny_inpaint_path, monkeypatch):
    """The automatic background mask keeps the face box, and inpainting with it gives those pixels
    back exactly, at the photo's size, though the model works at 32 pixels (not the pipeline's VAE
    re-encoding). One test, and the detector runs once (0.4 s): the later masks of the same photo
    reuse its boxes."""
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_attacks import masks
    from facedefense_attacks.inpaint import Inpaint
    from facedefense_attacks.masks import face_mask

    face = sample_faces(1, 256)
    detect, found = masks.face_boxes, []

    def detect_once(image):
        assert torch.equal(image, face[0]), "every mask here is of the same photo"
        found[:] = found or [detect(image)]
        return found[0]

    monkeypatch.setattr(masks, "face_boxes", detect_once)
    background = face_mask(face[0], "background")
    assert background.shape == (1, 256, 256)
    assert background[0, 60, 110] == 0, "the astronaut's face is kept"
    assert background[0, 250, 5] == 1, "the corner is repainted"
    assert torch.equal(face_mask(face[0], "face"), 1 - background)

    inpaint = Inpaint(model=str(tiny_inpaint_path), steps=2, resolution=32, device="cpu")
    edited = inpaint.edit(face, "a person at a party")
    kept = background[0] == 0
    assert kept.float().mean() > 0.1, "the detector finds the face"
    assert torch.equal(edited[0][:, kept], face[0][:, kept]), "the face is the photo's own"
    assert (edited[0][:, ~kept] != face[0][:, ~kept]).any(), "the background is repainted"


def test_class_images_are_cached_and_grow(tmp_path, tiny_sd_path, base_pipeline):
    from facedefense_attacks.lora import LoRAConfig
    from facedefense_attacks.training import generate_class_images

    pipe = base_pipeline
    config = LoRAConfig(model=str(tiny_sd_path), resolution=32, num_class_images=1, class_inference_steps=1,
                        class_cache=str(tmp_path))
    first = generate_class_images(pipe, config, "a photo of person")
    stamp = next(tmp_path.rglob("00000.png")).stat().st_mtime_ns
    more = generate_class_images(pipe, config.replace(num_class_images=2), "a photo of person")
    assert len(first) == 1 and len(more) == 2 and torch.equal(first[0], more[0])
    assert next(tmp_path.rglob("00000.png")).stat().st_mtime_ns == stamp, "cached images are reused, not redone"


def test_class_images_show_every_denoising_step(tmp_path, tiny_sd_path, base_pipeline, monkeypatch):
    """Issue 25 item 5: the bar moves with each denoising step, not once per image, and the
    pipeline's own bar is back as it was afterwards."""
    import facedefense.progress
    from facedefense_attacks.lora import LoRAConfig
    from facedefense_attacks.training import generate_class_images

    bars, updates, make_bar = [], [], facedefense.progress.bar

    def recording_bar(*args, **kwargs):
        bar = make_bar(*args, **kwargs)
        bars.append(bar)
        original = bar.update
        bar.update = lambda n=1: (updates.append(n), original(n))[1]
        return bar

    monkeypatch.setattr(facedefense.progress, "bar", recording_bar)
    pipe = type(base_pipeline)(**base_pipeline.components)  # the base's networks, a bar setting of its own
    pipe.set_progress_bar_config(leave=True)
    config = LoRAConfig(model=str(tiny_sd_path), resolution=32, num_class_images=5, class_inference_steps=2,
                        class_cache=str(tmp_path))
    assert len(generate_class_images(pipe, config, "a photo of person", progress=True)) == 5
    assert len(bars) == 1 and bars[0].total == 2 * 2 and updates == [1] * 4  # 2 batches (4 + 1) x 2 steps
    assert "5/5" in bars[0].desc and pipe._progress_bar_config == {"leave": True}
    generate_class_images(pipe, config, "a photo of person", progress=True)
    assert len(bars) == 1  # all cached: nothing to show


def test_bf16_mixed_precision_and_checkpointing_train(tiny_sd_path, face_images):
    """LoRA+TI under bf16 autocast with gradient checkpointing: half UNet, float32 text encoder."""
    from facedefense_attacks.lora_ti import LoRATI

    personalizer = LoRATI(model=str(tiny_sd_path), steps=1, resolution=32, prior_preservation=False, inference_steps=1,
                          mixed_precision="bf16", gradient_checkpointing=True, device="cpu")
    model = personalizer.fit(face_images)
    assert all(torch.isfinite(torch.tensor(personalizer.last_training.losses)))
    assert model.generate(["a photo of <new1> person"], generator=torch.Generator().manual_seed(0)).shape == (1, 3, 32, 32)


def test_eight_bit_optimizer_needs_cuda():
    from facedefense.errors import ConfigError
    from facedefense_attacks.training import TrainingConfig, _optimizer

    with pytest.raises(ConfigError, match="CUDA"):
        _optimizer(TrainingConfig(optimizer="adamw_8bit"), [torch.nn.Parameter(torch.zeros(1))], torch.device("cpu"))


# -- contracts ---------------------------------------------------------------------------------

TINY_TRAINING = dict(steps=1, resolution=32, num_class_images=1, class_inference_steps=1, inference_steps=1,
                     device="cpu")


class _Personalizer(PersonalizerContract):
    image_size = (32, 32)  # the training resolution: no resize on the way in

    def make_method(self, request):
        from facedefense.registry import get_registry

        cache = request.getfixturevalue("class_cache")  # the CLI runs' class image: generated once
        personalizer = get_registry().load("personalizer", self.registry_name)
        return personalizer(model=str(request.getfixturevalue("tiny_sd_path")), class_cache=str(cache), **TINY_TRAINING)


class TestDreamBoothContract(_Personalizer):
    registry_name = "dreambooth"


class TestLoRAContract(_Personalizer):
    registry_name = "lora"


class TestTextualInversionContract(_Personalizer):
    registry_name = "textual_inversion"
    prompts = ("a photo of <new1> person",)


class TestLoRATIContract(_Personalizer):
    registry_name = "lora_ti"
    prompts = ("a photo of <new1> person",)


class _Editor(EditorContract):
    image_size = (32, 32)  # 4x4 latents
    fixture: str = "tiny_sd_path"
    options: dict = {}

    def make_method(self, request):
        from facedefense.registry import get_registry

        model = str(request.getfixturevalue(self.fixture))
        editor = get_registry().load("editor", self.registry_name)
        return editor(model=model, steps=2, resolution=None, device="cpu", **self.options)

    def test_prompt_changes_the_edit(self, method, images, edited):
        first = edited[0]  # the contract's edit with self.prompt and seed 1
        other = method.edit(images, "a person at the beach", generator=torch.Generator().manual_seed(1))
        assert (first - other).abs().mean() * 255 > 1, "another prompt, same seed: the edit must change"


class TestInstructPix2PixContract(_Editor):
    registry_name = "instruct_pix2pix"
    fixture = "tiny_ip2p_path"


class TestSDEditContract(_Editor):
    registry_name = "sdedit"


class TestInpaintContract(_Editor):
    registry_name = "inpaint"
    fixture = "tiny_inpaint_path"
    options = {"auto_mask": "all"}
