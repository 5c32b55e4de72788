"""Diffusion toolkit on tiny models: loading and its errors, latents, the loss, the text cache."""

from __future__ import annotations

import json

import pytest
import torch

from facedefense.diffusion import (
    TextEmbeddingCache,
    decode_latents,
    denoising_loss,
    encode_latents,
    latent_mean,
    load_components,
    load_pipeline,
)
from facedefense.errors import ConfigError, ModelNotFoundError


@pytest.fixture(scope="module")
def parts(tiny_sd_path):
    return load_components(str(tiny_sd_path))


def test_components_are_frozen_and_typed(tiny_sd_path):
    vae = load_components(str(tiny_sd_path), components=("vae",), dtype=torch.bfloat16).vae
    assert vae.dtype == torch.bfloat16 and not vae.training
    assert not any(p.requires_grad for p in vae.parameters())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "absent", "does not exist"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "cannot be loaded"),
        (lambda tmp: [(tmp / "file.bin").write_bytes(b"x"), tmp / "file.bin"][1], "is a file"),
    ],
    ids=["missing", "empty", "file"],
)
def test_missing_models_give_one_line(tmp_path, make, message):
    with pytest.raises(ModelNotFoundError, match=message) as info:
        load_components(str(make(tmp_path)), components=("vae",))
    assert "\n" not in str(info.value)


def test_missing_component_is_named(tmp_path, tiny_sd_path):
    import shutil

    broken = tmp_path / "no-unet"
    shutil.copytree(tiny_sd_path, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelNotFoundError, match="component 'unet'"):
        load_components(str(broken), components=("unet",))


def test_unknown_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download nobody/no-such-model"):
        load_components("nobody/no-such-model", components=("vae",))


def test_unknown_component_and_pipeline_kind(tiny_sd_path):
    with pytest.raises(ConfigError):
        load_components(str(tiny_sd_path), components=("vea",))
    with pytest.raises(ConfigError):
        load_pipeline(str(tiny_sd_path), "txt2img")


def test_latents_have_real_sd_geometry(parts):
    images = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = encode_latents(parts.vae, images)
        assert latents.shape == (1, 4, 64, 64)
        assert torch.allclose(latents, latent_mean(parts.vae, images) * parts.scaling_factor)
        decoded = decode_latents(parts.vae, latents)
    assert decoded.shape == images.shape and 0 <= decoded.min() and decoded.max() <= 1


def test_sampled_latents_follow_the_generator(parts, face_images):
    with torch.no_grad():
        first = encode_latents(parts.vae, face_images, sample=True, generator=torch.Generator().manual_seed(1))
        again = encode_latents(parts.vae, face_images, sample=True, generator=torch.Generator().manual_seed(1))
        mean = encode_latents(parts.vae, face_images)
    assert torch.equal(first, again) and not torch.equal(first, mean)


def test_denoising_loss_common_random_numbers(parts, face_images):
    cache = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)
    states = cache("a photo of sks person")
    with torch.no_grad():
        latents = encode_latents(parts.vae, face_images)
        one = denoising_loss(parts.unet, parts.scheduler, latents, states, generator=torch.Generator().manual_seed(0))
        two = denoising_loss(parts.unet, parts.scheduler, latents, states, generator=torch.Generator().manual_seed(0))
        mean = denoising_loss(
            parts.unet, parts.scheduler, latents, states, generator=torch.Generator().manual_seed(0), reduction="mean"
        )
    assert one.shape == (2,) and torch.equal(one, two) and mean == pytest.approx(one.mean().item())


def test_v_prediction_target(parts, face_images, tiny_sd_path):
    from diffusers import DDPMScheduler

    config = json.loads((tiny_sd_path / "scheduler" / "scheduler_config.json").read_text())
    config.pop("_class_name", None), config.pop("_diffusers_version", None)
    scheduler = DDPMScheduler(**{**config, "prediction_type": "v_prediction"})
    states = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)("a photo")
    with torch.no_grad():
        latents = encode_latents(parts.vae, face_images)
        eps = denoising_loss(parts.unet, parts.scheduler, latents, states, generator=torch.Generator().manual_seed(0))
        v = denoising_loss(parts.unet, scheduler, latents, states, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(eps, v)


def test_text_cache_encodes_each_prompt_once(parts):
    cache = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)
    first = cache(["a photo of sks person", "a photo", "a photo of sks person"])
    assert first.shape == (3, 77, 32) and cache.encoder_calls == 2
    assert torch.equal(cache("a photo")[0], first[1]) and cache.encoder_calls == 2


@pytest.mark.parametrize("fixture, kind", [("tiny_sd_path", "text2img"), ("tiny_sd_path", "img2img"),
                                           ("tiny_ip2p_path", "instruct_pix2pix"), ("tiny_inpaint_path", "inpaint"),
                                           ("tiny_upscaler_path", "upscale_x4")])
def test_every_pipeline_kind_generates(request, fixture, kind, face_images):
    pipeline = load_pipeline(str(request.getfixturevalue(fixture)), kind)
    generator = torch.Generator().manual_seed(0)
    common = {"num_inference_steps": 2, "output_type": "pt", "generator": generator}
    image = face_images[:1]
    if kind == "text2img":
        out = pipeline("a photo of sks person", height=64, width=64, **common)
    elif kind == "img2img":
        out = pipeline("a photo", image=image, strength=0.5, **common)
    elif kind == "instruct_pix2pix":
        out = pipeline("make it gray", image=image, **common)
    elif kind == "inpaint":
        out = pipeline("a photo", image=image, mask_image=torch.ones(1, 1, 64, 64), height=64, width=64, **common)
    else:
        out = pipeline("a photo", image=face_images[:1, :, :16, :16], **common)
    assert out.images.shape == (1, 3, 64, 64)


def test_trained_tiny_unet_responds_to_attacks(trained_tiny_sd_path, face_images):
    """DESIGN.md section 7: after training, a few PGD steps raise the denoising loss far more than
    same-budget uniform noise (common random numbers for both)."""
    from facedefense.optim import linf_pgd

    parts = load_components(str(trained_tiny_sd_path))
    states = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)("a photo of sks person")
    faces = torch.nn.functional.interpolate(face_images, size=(128, 128), mode="bilinear")

    def loss(images, seed=0):
        generator = torch.Generator().manual_seed(seed)
        latents = encode_latents(parts.vae, images)
        repeats = [denoising_loss(parts.unet, parts.scheduler, latents, states, generator=generator) for _ in range(4)]
        return torch.stack(repeats).mean(0)

    eps = 8 / 255
    adversarial, _, _ = linf_pgd(faces, loss, eps=eps, steps=4, step_size=2 / 255, minimize=False)
    noise = (faces + (torch.rand(faces.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1) * eps).clamp(0, 1)
    with torch.no_grad():
        clean, attacked, noisy = loss(faces, 9).mean(), loss(adversarial, 9).mean(), loss(noise, 9).mean()
    gain_attack, gain_noise = (attacked / clean - 1).item(), (noisy / clean - 1).item()
    print(f"denoising loss gain: PGD {gain_attack:.1%}, uniform noise {gain_noise:.1%}")
    assert gain_attack > 0.05 and gain_attack > 3 * abs(gain_noise)


def test_unreachable_hub_fails_fast_without_retries(monkeypatch):
    import facedefense.diffusion.loading as loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelNotFoundError, match="hub is unreachable"):
        load_components("nobody/not-cached-model", components=("vae",))
