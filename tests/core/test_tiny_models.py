"""The tiny-model testing kit: tokenizer, builders, sample faces, UNet training, the disk cache."""

from __future__ import annotations

import json

import pytest
import torch

from facedefense.errors import ConfigError
from facedefense.testing import fixtures
from facedefense.testing.tiny_models import build_tiny_sd, sample_faces, train_tiny_unet
from facedefense.testing.tokenizer import build_tiny_tokenizer


def test_tokenizer_merges_prompt_words_and_round_trips(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = build_tiny_tokenizer()
    ids = tokenizer("a photo of sks person").input_ids
    assert len(ids) == 7  # start, five merged words, end
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id == tokenizer.eos_token_id and tokenizer.model_max_length == 77
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a photo of sks person"
    assert len(tokenizer("unmerged wörds!").input_ids) > 4  # falls back to bytes, never unknown
    tokenizer.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(again) == len(tokenizer)
    padded = again("a photo", padding="max_length", max_length=77).input_ids
    assert padded == tokenizer("a photo", padding="max_length", max_length=77).input_ids and len(padded) == 77


def test_tiny_sd_has_real_sd_geometry_and_loads_with_diffusers(tiny_sd_path):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd_path, local_files_only=True)
    assert pipeline.vae_scale_factor == 8 and pipeline.vae.config.scaling_factor == pytest.approx(0.18215)
    assert pipeline.unet.config.sample_size * 8 == 64 and pipeline.unet.config.cross_attention_dim == 32
    assert pipeline.text_encoder.config.vocab_size == len(pipeline.tokenizer)
    assert pipeline.scheduler.config.beta_schedule == "scaled_linear"
    assert pipeline.scheduler.config.num_train_timesteps == 1000
    assert (tiny_sd_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(tiny_sd_path.rglob("*.bin"))


def test_builders_are_seeded_and_sized(tmp_path):
    from safetensors.torch import load_file

    def unet_weights(path):
        return load_file(path / "unet" / "diffusion_pytorch_model.safetensors")

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    one, two = build_tiny_sd(tmp_path / "one", seed=3), build_tiny_sd(tmp_path / "two", seed=3)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG is left alone
    other = build_tiny_sd(tmp_path / "other", seed=4, sample_size=128)
    first, second, third = unet_weights(one), unet_weights(two), unet_weights(other)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)
    assert json.loads((other / "unet" / "config.json").read_text())["sample_size"] == 16
    with pytest.raises(ConfigError, match="multiple of 8"):
        build_tiny_sd(tmp_path / "bad", sample_size=60)


def test_upscaler_vae_downsamples_by_4(tiny_upscaler_path):
    config = json.loads((tiny_upscaler_path / "vae" / "config.json").read_text())
    index = json.loads((tiny_upscaler_path / "model_index.json").read_text())
    assert len(config["block_out_channels"]) == 3 and config["scaling_factor"] == pytest.approx(0.08333)
    assert index["max_noise_level"] == 350 and index["low_res_scheduler"][1] == "DDPMScheduler"
    assert json.loads((tiny_upscaler_path / "unet" / "config.json").read_text())["in_channels"] == 7


def test_sample_faces_are_deterministic_distinct_and_quantized():
    faces = sample_faces(8, 32)
    assert faces.shape == (8, 3, 32, 32) and faces.dtype == torch.float32
    assert 0 <= faces.min() and faces.max() <= 1 and torch.equal(torch.round(faces * 255) / 255, faces)
    assert torch.equal(faces, sample_faces(8, 32))
    assert torch.equal(faces[:2], sample_faces(2, 32))
    distances = (faces[:, None] - faces[None]).abs().flatten(2).mean(-1)
    assert (distances + torch.eye(8)).min() > 0.01


def test_train_tiny_unet_updates_only_the_unet(tmp_path):
    from safetensors.torch import load_file

    path = build_tiny_sd(tmp_path / "sd")
    before = {name: load_file(path / name / file) for name, file in
              [("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors")]}
    train_tiny_unet(path, sample_faces(2, 32), steps=2, seed=0)
    unet = load_file(path / "unet" / "diffusion_pytorch_model.safetensors")
    vae = load_file(path / "vae" / "diffusion_pytorch_model.safetensors")
    assert not all(torch.equal(unet[k], before["unet"][k]) for k in unet)
    assert all(torch.equal(vae[k], before["vae"][k]) for k in vae)
    record = json.loads((path / "unet" / "facedefense_training.json").read_text())
    assert record["steps"] == 2 and len(record["last_losses"]) == 2
    with pytest.raises(ConfigError, match="multiples of 8"):
        train_tiny_unet(path, sample_faces(1, 36), steps=1)


def test_trained_model_cache_is_keyed_and_validated(tmp_path, monkeypatch, trained_tiny_sd_path):
    key = fixtures._cache_key()
    assert len(key) == 16 and key == fixtures._cache_key()
    monkeypatch.setattr(fixtures, "TRAINED_RECIPE", {**fixtures.TRAINED_RECIPE, "steps": 301})
    assert fixtures._cache_key() != key
    assert not fixtures._complete(tmp_path, key)
    (tmp_path / "facedefense_cache.json").write_text(json.dumps({"key": "stale"}))
    assert not fixtures._complete(tmp_path, key)
    assert fixtures._usable(trained_tiny_sd_path) and not fixtures._usable(tmp_path)
    for value in ("", "0"):
        monkeypatch.setenv("FACEDEFENSE_TEST_CACHE", value)
        assert fixtures._cache_root() is None
    monkeypatch.setenv("FACEDEFENSE_TEST_CACHE", str(tmp_path / "cache"))
    assert fixtures._cache_root() == tmp_path / "cache"


def test_cache_keeps_only_recent_models(tmp_path):
    import os

    for index in range(5):
        entry = tmp_path / f"trained-tiny-sd-{index}"
        entry.mkdir()
        os.utime(entry, (index, index))
    fixtures._prune(tmp_path, keep=tmp_path / "trained-tiny-sd-0")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"trained-tiny-sd-{i}" for i in (0, 3, 4)]


def test_one_process_at_a_time_trains_a_cache_entry(tmp_path):
    """The workers of an xdist run wait for the one that trains the model instead of all training it."""
    import threading
    import time

    import torch

    order = []

    def second() -> None:
        with fixtures._training_turn(tmp_path, "k"):
            order.append("second enters")

    with fixtures._training_turn(tmp_path, "k"):
        waiting = threading.Thread(target=second)
        waiting.start()
        time.sleep(0.2)  # the second would be in by now without the lock
        order.append("first leaves")
    waiting.join(timeout=10)
    assert order == ["first leaves", "second enters"]
    with fixtures._training_turn(None, "k"):  # no cache folder: nothing to share, no lock
        pass
    threads = torch.get_num_threads()
    with fixtures._all_cores():
        assert torch.get_num_threads() >= threads
    assert torch.get_num_threads() == threads
