"""Anti-DreamBooth family (aspl, fsmg) and advdm: contracts on the trained tiny model, identity
sets, targeted and ensemble variants, resume, bad input."""

from __future__ import annotations

import pytest
import torch

from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense.testing.contracts import DefenderContract

PROMPT = "a photo of sks person"
FAST = dict(device="cpu", dtype="float32", resolution=64, step_size=2 / 255)
SET_FAST = dict(FAST, num_class_images=2, class_image_steps=2, learning_rate=1e-4)


@pytest.fixture(autouse=True, scope="module")
def _class_image_cache(tmp_path_factory):
    """Class images of these tests go to a private cache (never the user's)."""
    import os

    before = os.environ.get("FACEDEFENSE_CACHE")
    os.environ["FACEDEFENSE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("FACEDEFENSE_CACHE", None)
    else:
        os.environ["FACEDEFENSE_CACHE"] = before


def attacker_loss(model_path: str, images: torch.Tensor, generator: torch.Generator, prompt: str = PROMPT) -> torch.Tensor:
    """The attacker's (base model's) denoising loss per image, averaged over 4 draws of (t, eps)."""
    from facedefense.diffusion import TextEmbeddingCache, denoising_loss, encode_latents, load_components
    from facedefense.imaging import resize

    parts = _parts(model_path)
    with torch.no_grad():
        latents = encode_latents(parts.vae, resize(images, (64, 64)))
        states = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)(prompt)
        return sum(denoising_loss(parts.unet, parts.scheduler, latents, states, generator=generator) for _ in range(4)) / 4


_PARTS: dict = {}


def _parts(model_path: str):
    from facedefense.diffusion import load_components

    if model_path not in _PARTS:
        _PARTS[model_path] = load_components(model_path)
    return _PARTS[model_path]


class TestAdvDM(DefenderContract):
    registry_name = "advdm"
    objective_higher_is_better = True

    def make_method(self, request):
        from facedefense_iterative.advdm import AdvDM

        return AdvDM(model=str(request.getfixturevalue("trained_tiny_sd_path")), eps=self.eps, steps=3, prompt=PROMPT, **FAST)

    def objective(self, method, images, generator):
        return attacker_loss(method.config.model, images, generator)


def test_advdm_options_and_eot(trained_tiny_sd_path, face_images):
    from facedefense_iterative.advdm import AdvDM

    defender = AdvDM(model=str(trained_tiny_sd_path), steps=2, eot="none,jpeg", momentum=0.5, schedule="cosine", **FAST)
    assert defender.eot.names == ["none", "jpeg"]
    result = defender.protect(face_images[:1])
    assert max(result.linf) <= 16 + 1e-3 and result.stats[0]["objective_end"] > 0
    with pytest.raises(ConfigError, match="schedule"):
        AdvDM(model=str(trained_tiny_sd_path), schedule="exponential", **FAST)
    with pytest.raises(ConfigError, match="needs a surrogate model"):
        AdvDM(device="cpu")
