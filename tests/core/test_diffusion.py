"""Diffusion toolkit on tiny models: loading and its errors, latents, the loss, the text cache."""

from __future__ import annotations

import shutil

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


def test_module_dtype_and_device_answer_what_diffusers_properties_answer(tiny_sd_path):
    """`module_dtype`/`module_device` (the per-step casts use them: diffusers' properties walk every
    submodule on each call) agree with ``ModelMixin.dtype``/``.device``: float32, bfloat16, frozen
    weights in bfloat16 before float32 trained ones (CAAT's layout), and float32-kept submodules."""
    from facedefense.runtime import module_device, module_dtype

    unet = load_components(str(tiny_sd_path), components=("unet",)).unet
    cases = [lambda: None, lambda: unet.to(torch.bfloat16), lambda: unet.conv_out.to(torch.float32)]
    for change in cases:
        change()
        assert module_dtype(unet) == unet.dtype and module_device(unet) == unet.device
    assert module_dtype(unet) == torch.bfloat16  # conv_in (first) is bfloat16, conv_out float32
    unet.to(torch.float32).conv_in.to(torch.float16)
    unet._keep_in_fp32_modules = ["conv_in"]
    assert module_dtype(unet) == unet.dtype == torch.float32
    assert module_dtype(torch.nn.Identity()) == torch.get_default_dtype()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / "absent", "does not exist"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "has no component 'vae'"),
        (lambda tmp: [(tmp / "file.bin").write_bytes(b"x"), tmp / "file.bin"][1], "is a file"),
    ],
    ids=["missing", "empty", "file"],
)
def test_missing_models_give_one_line(tmp_path, make, message):
    with pytest.raises(ModelNotFoundError, match=message) as info:
        load_components(str(make(tmp_path)), components=("vae",))
    assert "\n" not in str(info.value)


def test_missing_component_is_named(tmp_path, tiny_sd_path):
    broken = tmp_path / "no-unet"
    shutil.copytree(tiny_sd_path, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelNotFoundError, match="component 'unet'"):
        load_components(str(broken), components=("unet",))


@pytest.mark.parametrize(
    "component, damaged",
    [("unet", "unet/diffusion_pytorch_model.safetensors"), ("text_encoder", "text_encoder/model.safetensors"),
     ("vae", "vae/config.json")],
)
def test_damaged_weights_give_one_line(tmp_path, tiny_sd_path, component, damaged):
    broken = tmp_path / "damaged"
    shutil.copytree(tiny_sd_path, broken)
    (broken / damaged).write_bytes(b"not a checkpoint" * 4)
    with pytest.raises(ModelNotFoundError, match=f"component '{component}' cannot be read") as info:
        load_components(str(broken), components=(component,))
    assert "\n" not in str(info.value)


def test_tokenizer_without_vocabulary_is_refused(tmp_path, tiny_sd_path):
    """transformers 5 silently builds a 2-token tokenizer from an empty folder; we refuse it."""
    broken = tmp_path / "no-vocab"
    shutil.copytree(tiny_sd_path, broken)
    for file in (broken / "tokenizer").iterdir():
        file.unlink()
    with pytest.raises(ModelNotFoundError, match="tokenizer"):
        load_components(str(broken), components=("tokenizer",))
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ModelNotFoundError, match="no component 'tokenizer'"):
        load_pipeline(str(broken), "text2img")


def test_scaling_factor_needs_the_vae(tiny_sd_path):
    parts = load_components(str(tiny_sd_path), components=("scheduler",))
    assert parts.vae is None and parts.unet is None
    with pytest.raises(ConfigError, match="VAE"):
        parts.scaling_factor  # noqa: B018


def test_unknown_hub_id_offline_fails_fast(monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("offline loading must not touch the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache") as info:
        load_components("nobody/no-such-model", components=("vae",))
    assert "`hf download nobody/no-such-model`" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ModelNotFoundError, match="offline"):
        load_pipeline("nobody/no-such-model", "inpaint")


def test_unknown_component_and_pipeline_kind(tiny_sd_path):
    with pytest.raises(ConfigError):
        load_components(str(tiny_sd_path), components=("vea",))
    with pytest.raises(ConfigError):
        load_pipeline(str(tiny_sd_path), "txt2img")


def test_latents_have_real_sd_geometry(parts):
    images = torch.rand(1, 3, 96, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = encode_latents(parts.vae, images)
        assert latents.shape == (1, 4, 12, 8)  # SD's factor 8 (512 px: 64x64 latents), each side on its own
        assert torch.allclose(latents, latent_mean(parts.vae, images) * parts.scaling_factor)
        decoded = decode_latents(parts.vae, latents[..., :4, :6])  # a corner: the decoder's x8 without 512 px
    assert decoded.shape == (1, 3, 32, 48) and 0 <= decoded.min() and decoded.max() <= 1


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


def test_denoising_loss_explicit_draws_and_gradient(parts, face_images):
    states = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)("a photo")
    latents = encode_latents(parts.vae, face_images).requires_grad_(True)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
    scalar = denoising_loss(parts.unet, parts.scheduler, latents, states, timesteps=torch.tensor(500), noise=noise)
    vector = denoising_loss(parts.unet, parts.scheduler, latents, states, timesteps=torch.tensor([500, 500]), noise=noise)
    assert torch.equal(scalar, vector)
    (gradient,) = torch.autograd.grad(scalar.sum(), latents)
    assert gradient.abs().sum() > 0


def test_sample_timesteps_range(parts):
    from facedefense.diffusion import sample_timesteps

    drawn = sample_timesteps(parts.scheduler, 500, generator=torch.Generator().manual_seed(0), low=200, high=300)
    assert drawn.dtype == torch.int64 and drawn.min() >= 200 and drawn.max() < 300
    with pytest.raises(ConfigError):
        sample_timesteps(parts.scheduler, 1, low=0, high=2000)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_loss_target_follows_prediction_type(parts, prediction_type):
    """With a UNet predicting zeros the loss is the mean square of the target itself."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    class ZeroUNet(torch.nn.Module):  # no weights: it computes in the default dtype, float32
        def forward(self, sample, timestep, states):
            return SimpleNamespace(sample=torch.zeros_like(sample))

    scheduler = DDPMScheduler.from_config(parts.scheduler.config, prediction_type=prediction_type)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10, 900])
    loss = denoising_loss(ZeroUNet(), scheduler, latents, torch.zeros(1, 77, 32), timesteps=t, noise=noise)
    alpha = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    target = {"epsilon": noise, "v_prediction": alpha.sqrt() * noise - (1 - alpha).sqrt() * latents,
              "sample": latents}[prediction_type]
    assert torch.allclose(loss, target.pow(2).flatten(1).mean(1), rtol=1e-5)


def test_unsupported_prediction_type_is_a_config_error(parts):
    from types import SimpleNamespace

    scheduler = SimpleNamespace(config=SimpleNamespace(prediction_type="flow", num_train_timesteps=1000))
    with pytest.raises(ConfigError, match="flow"):
        denoising_loss(parts.unet, scheduler, torch.zeros(1, 4, 8, 8), torch.zeros(1, 77, 32))


def test_text_cache_encodes_each_prompt_once(parts):
    cache = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)
    first = cache(["a photo of sks person", "a photo", "a photo of sks person"])
    assert first.shape == (3, 77, 32) and cache.encoder_calls == 2
    assert torch.equal(cache("a photo")[0], first[1]) and cache.encoder_calls == 2
    assert cache.uncond.shape == (1, 77, 32) and cache.encoder_calls == 3 and len(cache) == 3
    with pytest.raises(ConfigError):
        cache([])


@pytest.mark.parametrize("fixture, kind", [("tiny_sd_path", "text2img"), ("tiny_sd_path", "img2img"),
                                           ("tiny_ip2p_path", "instruct_pix2pix"), ("tiny_inpaint_path", "inpaint"),
                                           ("tiny_upscaler_path", "upscale_x4")])
def test_every_pipeline_kind_generates(request, fixture, kind, face_images):
    pipeline = load_pipeline(str(request.getfixturevalue(fixture)), kind)
    generator = torch.Generator().manual_seed(0)
    common = {"num_inference_steps": 2, "output_type": "pt", "generator": generator}
    image = face_images[:1, :, ::2, ::2]  # 32 px: 4x4 latents
    if kind == "text2img":
        out = pipeline("a photo of sks person", height=32, width=32, **common)
    elif kind == "img2img":
        out = pipeline("a photo", image=image, strength=0.5, **common)
    elif kind == "instruct_pix2pix":
        out = pipeline("make it gray", image=image, **common)
    elif kind == "inpaint":
        out = pipeline("a photo", image=image, mask_image=torch.ones(1, 1, 32, 32), height=32, width=32, **common)
    else:
        out = pipeline("a photo", image=face_images[:1, :, :8, :8], **common)
    assert out.images.shape == (1, 3, 32, 32)


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
        repeats = [denoising_loss(parts.unet, parts.scheduler, latents, states, generator=generator) for _ in range(3)]
        return torch.stack(repeats).mean(0)

    eps = 8 / 255
    adversarial, _, _ = linf_pgd(faces, loss, eps=eps, steps=3, step_size=2 / 255, minimize=False)
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
