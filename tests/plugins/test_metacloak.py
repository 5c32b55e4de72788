"""MetaCloak on the trained tiny model: the contract (budget, beats same-budget noise on the
attacker's loss), tests that fail if its distinctive parts were missing (the transformations
inside the PGD objective, a pool of distinct surrogate states), and bit-for-bit resume."""

from __future__ import annotations

import pytest
import torch

from facedefense.errors import ConfigError
from tests.plugins.test_caat_simac import SmallContract

#: One round over a pool of two states (before and after one training step), one iteration of one
#: PGD step and one surrogate step each: five model steps per run.
FAST = dict(device="cpu", dtype="float32", resolution=32, step_size=4 / 255, num_class_images=2, class_image_steps=2,
            learning_rate=1e-4, steps=1, train_steps=2, interval=2, iterations=1, pgd_steps=1, advance_steps=1)


@pytest.fixture(scope="module")
def metacloak(trained_tiny_sd_path):
    """One MetaCloak (FAST) for the module: loading the surrogate is most of a test's time, and every
    run starts from the base weights (``reset_surrogates``)."""
    from facedefense_iterative.metacloak import MetaCloak

    return MetaCloak(model=str(trained_tiny_sd_path), eps=SmallContract.eps, **FAST)


class TestMetaCloak(SmallContract):
    registry_name = "metacloak"

    def make_method(self, request):
        return request.getfixturevalue("metacloak")

    def test_records_its_pool(self, result):
        """train_steps 2, interval 2: the states before step 0 and after step 1."""
        assert [s["pool_states"] for s in result.stats] == [2, 2]

    def test_resumes_bit_for_bit(self, method, images, result, tmp_path, monkeypatch):
        """A run stopped in its second pool state resumes from the state saved after the first (the
        saved pool is not trained again) and ends where the uninterrupted run (the contract's
        ``result``) ended."""
        from facedefense.interfaces import IdentitySet
        from facedefense_iterative.metacloak import MetaCloak

        real_stage, real_pool, calls, pools = MetaCloak._stage, MetaCloak.build_pool, [], []

        def stopping(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("stopped")
            return real_stage(self, *args, **kwargs)

        monkeypatch.setattr(MetaCloak, "_stage", stopping)
        with pytest.raises(RuntimeError, match="stopped"):
            method.protect_identity(IdentitySet.from_images(list(images)), workdir=tmp_path)
        monkeypatch.setattr(MetaCloak, "_stage", real_stage)
        monkeypatch.setattr(MetaCloak, "build_pool", lambda *a, **k: pools.append(1) or real_pool(*a, **k))
        resumed = method.protect_identity(IdentitySet.from_images(list(images)), workdir=tmp_path)
        assert pools == []
        assert all(torch.equal(a, b) for a, b in zip(result.images, resumed.images))


def test_defaults_and_pool_steps():
    """The reference's defaults; the pool keeps the states at steps 0, 199, ..., 999 of 1000."""
    from facedefense_iterative.metacloak import MetaCloak, pool_steps

    c = MetaCloak.Config()
    assert (c.eps, c.step_size, c.steps, c.train_steps, c.interval) == (11 / 255, 1.1 / 255, 4, 1000, 200)
    assert (c.iterations, c.pgd_steps, c.advance_steps, c.learning_rate) == (100, 6, 2, 5e-7)
    assert (c.blur_kernel, c.flip, c.transform_samples, c.prior_loss_weight) == (7, True, 1, 1.0)
    assert pool_steps(1000, 200) == [0, 199, 399, 599, 799, 999]
    assert pool_steps(2, 1) == [0, 1]
    with pytest.raises(ConfigError, match="blur_kernel"):
        MetaCloak.Config(model="m", blur_kernel=4)


def test_training_transform_blurs_and_flips():
    """Kernel 7 blurs (smooths an image), the flip mirrors it for some draws and not others, and
    both off is the identity."""
    from facedefense_iterative.metacloak import training_transform

    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = training_transform(image, torch.Generator().manual_seed(0), blur_kernel=0, flip=False)
    assert torch.equal(plain, image)
    blurred = training_transform(image, torch.Generator().manual_seed(0), blur_kernel=7, flip=False)
    roughness = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert roughness(blurred) < 0.8 * roughness(image)
    flips = [torch.equal(training_transform(image, torch.Generator().manual_seed(s), blur_kernel=0, flip=True),
                         image.flip(-1)) for s in range(8)]
    assert any(flips) and not all(flips)


def test_pgd_objective_transforms_the_photos(metacloak, face_images, monkeypatch):
    """Every evaluation of the PGD objective passes the photos (with their gradient) through the
    training transformations, once per PGD step and draw; and the objective is the denoising loss
    of the TRANSFORMED photos: with a transform that flips, it equals the loss of the flipped
    photos under the same draws, not the loss of the photos themselves."""
    from facedefense_iterative import metacloak as module
    from facedefense_iterative.surrogate import PhotoBatch

    calls = []
    real = module.training_transform

    def spy(images, generator, **kwargs):
        calls.append(images.requires_grad)
        return real(images, generator, **kwargs)

    monkeypatch.setattr(module, "training_transform", spy)
    metacloak.protect(face_images[:1, :, :32, :32])  # one photo: the count is per size group, not per photo
    assert len(calls) == 2 and all(calls)  # pool states x PGD steps x draws (one size group)

    surrogate = metacloak.surrogates[0]
    photos = PhotoBatch.pack(list(face_images[:2, :, :32, :32]), 32)
    states = surrogate.embed(["a photo of sks person"], grad=False).detach()
    calls.clear()
    module.metacloak_loss(surrogate, photos, photos.padded.clone().requires_grad_(True), states,
                          generator=torch.Generator().manual_seed(3), blur_kernel=7, flip=True, samples=3)
    assert len(calls) == 3 and all(calls)
    monkeypatch.setattr(module, "training_transform", lambda images, generator, **k: images.flip(-1))
    flipped = module.metacloak_loss(surrogate, photos, photos.padded, states, generator=torch.Generator().manual_seed(3),
                                    blur_kernel=7, flip=True)
    mirrored = PhotoBatch.pack(list(face_images[:2, :, :32, :32].flip(-1)), 32)
    monkeypatch.setattr(module, "training_transform", lambda images, generator, **k: images)
    expected = module.metacloak_loss(surrogate, mirrored, mirrored.padded, states, generator=torch.Generator().manual_seed(3),
                                     blur_kernel=7, flip=True)
    untransformed = module.metacloak_loss(surrogate, photos, photos.padded, states,
                                          generator=torch.Generator().manual_seed(3), blur_kernel=7, flip=True)
    assert torch.allclose(flipped, expected, atol=1e-6)
    assert not torch.allclose(flipped, untransformed, atol=1e-6)


def test_pool_holds_the_states_of_one_training_run(metacloak, face_images):
    """The pool's first state is the base model; every later one differs from the previous, and the
    last one is where one uninterrupted training run of as many steps ends (one optimizer)."""
    from facedefense.interfaces import IdentitySet
    from facedefense_iterative.metacloak import pool_steps
    from facedefense_iterative.surrogate import PhotoBatch

    method = metacloak
    method.reset_surrogates()
    identity = IdentitySet.from_images(list(face_images[:2, :, :32, :32]))
    photos = PhotoBatch.pack(identity.images, 32)
    kept = pool_steps(3, 1)
    assert kept == [0, 1, 2]
    base = method.surrogates[0].state_dict()
    pool = method.build_pool(0, photos, identity, torch.Generator().manual_seed(0), kept)
    assert len(pool) == 3 and all(torch.equal(pool[0][k], base[k]) for k in base)
    for before, after in zip(pool, pool[1:]):
        assert any(not torch.equal(before[k], after[k]) for k in base)
    method.reset_surrogates()
    method.class_images_for(0, identity.class_prompt)
    method.train(0, photos.square(photos.padded, 32), identity, torch.Generator().manual_seed(0), 2)
    final = method.surrogates[0].state_dict()
    assert all(torch.equal(pool[-1][k], final[k]) for k in base)
