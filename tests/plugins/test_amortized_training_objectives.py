"""RID and GAP-Diff training does what the references do: it raises the frozen surrogate's denoising
loss on faces it never saw, with the references' learning-rate schedule, regression pairs and units,
and GAP-Diff's discriminator."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from facedefense.testing.tiny_models import sample_faces

TINY_DIT = {"input_size": 32, "patch_size": 16, "hidden_size": 32, "depth": 1, "num_heads": 2, "num_classes": 4}
ARCHITECTURE = ",".join(f"{key}={value}" for key, value in TINY_DIT.items())


def write_faces(folder, faces):
    folder.mkdir(parents=True, exist_ok=True)
    for index, face in enumerate(faces):
        Image.fromarray((face.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{index:02d}.png")
    return folder


def run(recipe, data, model, output, *, steps, batch_size, eps=32 / 255, pairs=None, **options):
    """``facedefense train`` in-process on the CPU; returns the run's log records."""
    from facedefense_amortized.training.loop import TrainSettings, train

    settings = TrainSettings(
        method=recipe.method, data=data, models=[str(model)], output=output, eps=eps, steps=steps,
        batch_size=batch_size, pairs=pairs, device="cpu", options=options,
    )
    train(settings, recipe)
    return [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]


@functools.cache
def frozen(model):
    """The model's components and its prompt-embedding cache, loaded once per test session."""
    from facedefense.diffusion import TextEmbeddingCache, load_components

    parts = load_components(str(model))
    return parts, TextEmbeddingCache(parts.tokenizer, parts.text_encoder)


def denoising_loss_of(model, prompt, images, *, draws=32, seed=1):
    """The frozen model's mean denoising loss on ``images``, over ``draws`` timestep and noise draws
    per image from ``seed``: the same draws for every image set (common random numbers)."""
    from facedefense.diffusion import denoising_loss, encode_latents

    parts, prompts = frozen(model)
    states = prompts(prompt)
    with torch.no_grad():
        # the posterior mean is deterministic: each image is encoded once and its latent repeated
        latents = encode_latents(parts.vae, images).repeat(draws, 1, 1, 1)
        generator = torch.Generator().manual_seed(seed)
        return float(denoising_loss(parts.unet, parts.scheduler, latents, states, generator=generator).mean())


def faces_and_held_out(folder, count):
    """``count`` (at most 12) training faces, written to ``folder``, and 4 held-out ones: sample
    faces 16-19, never trained on (12-15, shifted twins of training crops, are left out)."""
    pool = sample_faces(20, 32)
    return write_faces(folder, pool[:count]), pool[16:]


# --- RID ------------------------------------------------------------------------------------------


def test_rid_training_raises_the_denoising_loss_on_held_out_faces(trained_tiny_sd_path, tmp_path):
    """4 Adv-SDS steps on 10 faces: on 4 other faces the protection raises the frozen model's
    denoising loss over the untrained network's (whose output layer starts at zero: the clean
    faces). With the Adv-SDS gradient's sign flipped, training lowers it and this fails."""
    from facedefense_amortized.rid import RID
    from facedefense_amortized.training.rid import build_network

    faces, held_out = faces_and_held_out(tmp_path / "faces", 10)
    output = tmp_path / "run"
    run(RID.training_recipe(), faces, trained_tiny_sd_path, output, steps=4, batch_size=10,
        architecture=ARCHITECTURE, warmup_steps=0, lr=3e-2)

    assert not build_network(TINY_DIT)(held_out * 2 - 1).any()  # untrained: no perturbation
    protected = RID(checkpoint=str(output / "rid.safetensors"), device="cpu", dtype="float32").protect(held_out).images
    assert (protected - held_out).abs().max() <= 32 / 255 + 1e-6
    clean_loss = denoising_loss_of(trained_tiny_sd_path, " ", held_out)
    protected_loss = denoising_loss_of(trained_tiny_sd_path, " ", protected)
    assert protected_loss > clean_loss * 1.002, (protected_loss, clean_loss)


def test_rid_learning_rate_warms_up_then_decays_linearly_as_the_reference(tiny_sd_path, tmp_path):
    """diffusers' "linear" schedule as the reference uses it: from 0 over the warm-up, then
    linearly to 0 at the run's last step (the logged lr is the one each step used)."""
    from facedefense_amortized.rid import RID

    faces = write_faces(tmp_path / "faces", sample_faces(1, 32))
    records = run(RID.training_recipe(), faces, tiny_sd_path, tmp_path / "run", steps=5, batch_size=1,
                  architecture=ARCHITECTURE, warmup_steps=2, lr=1e-2)
    # warm-up: step/2; decay: (5 - step)/(5 - 2)
    assert [r["lr"] for r in records] == pytest.approx([0, 0.005, 0.01, 0.01 * 2 / 3, 0.01 / 3])
    records = run(RID.training_recipe(), faces, tiny_sd_path, tmp_path / "horizon", steps=3, batch_size=1,
                  architecture=ARCHITECTURE, warmup_steps=0, decay_steps=4, lr=1e-2)
    assert [r["lr"] for r in records] == pytest.approx([0.01, 0.0075, 0.005])


def test_rid_regresses_every_image_to_its_own_pair_in_the_references_units(tiny_sd_path, tmp_path):
    """Image i of the data set regresses to pair i mod P (the reference's ``idx % len(pairs)``),
    every image of the batch, and the L1 is measured in [-1, 1] units (twice [0, 1]'s), so
    ``reg_weight`` weighs it as the reference's weight does."""
    from facedefense_amortized.rid import RID

    faces = sample_faces(3, 32)
    folder = write_faces(tmp_path / "faces", faces)
    pairs, expected = [], []
    for index, shift in enumerate((3, 9)):  # two pairs for three images: images 0, 1, 2 use pairs 0, 1, 0
        clean = np.asarray(Image.open(folder / f"{index:02d}.png"), dtype=np.int16)
        protected = np.clip(clean + shift, 0, 255).astype(np.uint8)
        Image.fromarray(protected).save(tmp_path / f"protected{index}.png")
        pairs.append({"source_path": f"faces/{index:02d}.png", "attacked_path": f"protected{index}.png"})
        expected.append(np.abs(protected - clean).mean() * 2 / 255)
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    records = run(RID.training_recipe(), folder, tiny_sd_path, tmp_path / "run", steps=1, batch_size=3,
                  pairs=tmp_path / "pairs.json", architecture=ARCHITECTURE, lr=1e-2)
    # the network starts at delta = 0, so the L1 is the pairs' own perturbation
    assert records[0]["reg"] == pytest.approx((2 * expected[0] + expected[1]) / 3, rel=1e-4)


# --- GAP-Diff -------------------------------------------------------------------------------------


def test_gap_diff_training_raises_the_denoising_loss_on_held_out_faces(trained_tiny_sd_path, tmp_path):
    """4 GAP-Diff steps (second phase: protected and preprocessed terms, discriminator, JPEG and
    blur simulation, the real loop and trainer) on 10 faces raise the frozen model's denoising loss
    on 4 other faces over the untrained network's (zero output: the clean faces). With the
    adversarial objective's sign flipped, training lowers it and this fails.

    The generator is a stand-in, the tiny DiT with a tanh (GAP-Diff's U-Net needs at least 512x512
    photos, about 0.4 s per photo and step on a CPU; it trains in test_amortized_training.py)."""
    from facedefense_amortized.gap_diff import GAPDiff
    from facedefense_amortized.networks import PerturbationDiT
    from facedefense_amortized.training.gap_diff import PROMPT

    def generator(architecture):
        return nn.Sequential(PerturbationDiT(**TINY_DIT), nn.Tanh())

    recipe = dataclasses.replace(GAPDiff.training_recipe(), build_network=generator, image_size=lambda *_: 32)
    faces, held_out = faces_and_held_out(tmp_path / "faces", 10)
    output = tmp_path / "run"
    run(recipe, faces, trained_tiny_sd_path, output, steps=4, batch_size=10, lr=4e-2,
        first_phase_epochs=0, discriminator_width=4)

    from safetensors.torch import load_file

    network = generator({})
    assert not network(held_out * 2 - 1).any()  # untrained: no perturbation
    network.load_state_dict(load_file(output / "gap_diff.safetensors"))
    with torch.no_grad():
        protected = (held_out + 32 / 255 * network(held_out * 2 - 1)).clamp(0, 1)
    clean_loss = denoising_loss_of(trained_tiny_sd_path, PROMPT, held_out)
    protected_loss = denoising_loss_of(trained_tiny_sd_path, PROMPT, protected)
    assert protected_loss > clean_loss * 1.002, (protected_loss, clean_loss)


class ReferenceDiscriminator(nn.Module):
    """``models/Discriminator.py`` of AIASLab/GAP-Diff, ``Discriminator(blocks=4, in_channels=3)``,
    in the reference's structure."""

    def __init__(self, blocks=4, in_channels=3, ngf=64):
        super().__init__()
        self.blocks = blocks
        self.conv_init = nn.Conv2d(in_channels, ngf, kernel_size=3, stride=1, padding=1)
        self.conv = nn.Conv2d(ngf, ngf, kernel_size=3, stride=1, padding=1)
        self.bn = nn.BatchNorm2d(ngf)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.linear = nn.Linear(ngf, 1)

    def forward(self, image):
        x = self.relu(self.bn(self.conv_init(image)))
        for _ in range(self.blocks - 1):
            x = self.relu(self.bn(self.conv(x)))
        return self.linear(self.pool(x).squeeze(3).squeeze(2))


def test_gap_diff_discriminator_is_the_references_with_one_shared_batch_norm():
    from facedefense_amortized.training.gap_diff import build_discriminator

    torch.manual_seed(0)
    ours, reference = build_discriminator(64), ReferenceDiscriminator()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 38_913
    reference.load_state_dict(ours.state_dict(), strict=True)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(ours(images), reference(images), atol=1e-6)  # train mode: batch statistics
    assert int(ours.bn.num_batches_tracked) == 4  # one norm, four uses per forward
    ours.eval(), reference.eval()
    assert torch.allclose(ours.bn.running_mean, reference.bn.running_mean) and torch.allclose(ours(images), reference(images), atol=1e-6)
