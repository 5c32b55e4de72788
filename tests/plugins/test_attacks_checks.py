"""The attacks' checks before any work (issue 26): option ranges, the model loaded and checked by
``prepare`` (and trained by the next ``fit`` without a second load), a refused pickle named in one
line by every loader, and the working size bounded. The CLI cases (nothing written before these
checks pass; saved model files with the umask's mode) are in ``tests/core/test_bad_inputs.py``."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from facedefense.errors import ConfigError, ImageError, ModelNotFoundError


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("sdedit", {"resolution": 65536}, "must be from 8 to 4096"),
        ("sdedit", {"steps": 5000}, "must be from 1 to 1000"),
        ("inpaint", {"steps": 1, "strength": 0.5}, "runs no denoising step"),
        ("inpaint", {"eta": 2.0}, "must be from 0 to 1"),
        ("instruct_pix2pix", {"image_guidance_scale": float("inf")}, "must be from 0 to 100"),
        ("lora", {"resolution": 65536}, "must be from 8 to 4096"),
        ("lora", {"rank": 0}, "must be from 1 to 1024"),
        ("dreambooth", {"inference_steps": 1001}, "must be from 1 to 1000"),
        ("textual_inversion", {"learning_rate": float("nan")}, "must be from 0 to 1"),
    ],
)
def test_option_ranges_refused_when_built(name, options, match):
    from facedefense.registry import get_registry

    with pytest.raises(ConfigError, match=match):
        get_registry().create("editor" if name in ("sdedit", "inpaint", "instruct_pix2pix") else "personalizer", name,
                              model="m", **options)


def test_resolution_within_the_image_size_limit(monkeypatch):
    from facedefense_attacks.sdedit import SDEdit

    monkeypatch.setenv("FACEDEFENSE_MAX_PIXELS", "5000")
    with pytest.raises(ConfigError, match="over the image-size limit of 5000"):
        SDEdit(model="m", resolution=128)
    SDEdit(model="m", resolution=64)  # 4096 pixels


def test_prepare_loads_once_and_fit_trains_that_pipeline(tiny_sd_path, face_images, monkeypatch):
    from facedefense_attacks import training
    from facedefense_attacks.lora import LoRA

    loads = []
    load = training.load_checked_pipeline
    monkeypatch.setattr(training, "load_checked_pipeline", lambda *a, **k: loads.append(1) or load(*a, **k))
    lora = LoRA(model=str(tiny_sd_path), steps=1, resolution=32, rank=2, prior_preservation=False, device="cpu")
    lora.prepare()
    assert len(loads) == 1
    lora.fit(face_images[:1])
    assert len(loads) == 1, "fit trains the pipeline prepare loaded"
    assert lora._prepared is None, "a pipeline trained once is never trained again"


def test_prepare_refuses_before_loading_or_after_checking_the_model(tiny_sd_path, tiny_ip2p_path):
    from facedefense_attacks.lora import LoRA
    from facedefense_attacks.sdedit import SDEdit

    with pytest.raises(ConfigError, match="does not contain the identifier"):
        LoRA(model=str(tiny_sd_path)).prepare(instance_prompt="a photo of a person")
    with pytest.raises(ModelNotFoundError, match="is an InstructPix2Pix model"):
        LoRA(model=str(tiny_ip2p_path)).prepare()
    with pytest.raises(ModelNotFoundError, match="is an InstructPix2Pix model"):
        SDEdit(model=str(tiny_ip2p_path)).prepare()


def test_a_refused_pickle_is_one_line_naming_the_file(tiny_sd_path, tmp_path):
    """A pickled text encoder was blocked by weights_only but printed as an UnpicklingError traceback."""
    import shutil

    from facedefense.diffusion import load_components, load_pipeline

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "payload-ran"),))

    model = tmp_path / "model"
    shutil.copytree(tiny_sd_path, model)
    (model / "text_encoder" / "model.safetensors").unlink()
    weights = model / "text_encoder" / "pytorch_model.bin"
    weights.write_bytes(pickle.dumps(Payload()))
    for load in (lambda: load_components(str(model), components=("text_encoder",)), lambda: load_pipeline(str(model))):
        with pytest.raises(ModelNotFoundError) as caught:
            load()
        message = str(caught.value)
        assert "\n" not in message and f"{weights} is not a plain weights file" in message
    assert not (tmp_path / "payload-ran").exists()


def test_working_size_is_bounded(tiny_sd_path, monkeypatch):
    """With resolution=None an editor works at the photo's own size: a photo too large for that is
    skipped (ImageError), not sent to the model."""
    from facedefense_attacks import editing
    from facedefense_attacks.sdedit import SDEdit

    monkeypatch.setattr(editing, "MAX_RESOLUTION", 32)
    editor = SDEdit(model=str(tiny_sd_path), resolution=None, steps=2, device="cpu")
    with pytest.raises(ImageError, match="over 32x32 pixels"):
        editor.edit(torch.rand(1, 3, 48, 40), "a painting")
    assert editor.edit(torch.rand(1, 3, 32, 32), "a painting").shape == (1, 3, 32, 32)
