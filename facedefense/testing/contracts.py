"""Contract tests every method's test-suite reuses (pytest mixins, like kornia's BaseTester).

Subclass the mixin in a test module, name the class ``Test...`` and implement ``make_method``::

    class TestPhotoGuard(DefenderContract):
        registry_name = "photoguard"

        def make_method(self, request):
            return PhotoGuard(model=str(request.getfixturevalue("tiny_sd_path")), steps=4, eps=self.eps)

        def objective(self, method, images, generator):
            return per-image objective values (lower is better unless objective_higher_is_better)

The fixtures come from [`facedefense.testing.fixtures`][facedefense.testing.fixtures] (``pytest_plugins =
[...]`` in a conftest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import pytest

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def _generator(seed: int = 0) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(seed)


def on_test_device(method: Any) -> Any:
    """``method`` on the device under test (``$FACEDEFENSE_TEST_DEVICE``, default cpu): a method
    ``make_method`` built on the CPU is rebuilt from its config there; on the CPU nothing changes."""
    from facedefense.testing.fixtures import device_under_test

    device = device_under_test()
    if device == "cpu" or method.device.type != "cpu":
        return method
    moved = type(method)(method.config, device=device)
    moved.plugin, moved.plugin_version = method.plugin, method.plugin_version
    return moved


def _images(count: int, height: int, width: int, seed: int = 0) -> Tensor:
    """Sample faces resized to (height, width), quantized to 8 bits like decoded files."""
    import torch

    from facedefense.imaging import resize
    from facedefense.testing.tiny_models import sample_faces

    faces = resize(sample_faces(count, max(height, width)), (height, width)).clamp(0, 1)
    return torch.round(faces * 255) / 255


class MethodContract:
    """Shared plumbing: a class-scoped ``method`` fixture built by ``make_method``.

    The class-scoped fixtures are classmethods (pytest 10 removes class-scoped fixtures defined as
    instance methods): ``method`` calls ``make_method`` on a fresh instance of the test class, so a
    test class keeps writing ``make_method(self, request)`` and reads class attributes through ``self``.

    Attributes:
        kind: the registry kind the contract is for.
        registry_name: the name the method is registered under (default: ``method.name``); the
            contract checks that the registry gives back the tested class under that name.
    """

    kind: ClassVar[str] = ""
    registry_name: ClassVar[str | None] = None
    image_size: ClassVar[tuple[int, int]] = (64, 64)
    batch: ClassVar[int] = 2

    def make_method(self, request: pytest.FixtureRequest) -> Any:
        raise NotImplementedError("implement make_method(self, request) in the test class")

    @pytest.fixture(scope="class")
    @classmethod
    def method(cls, request: pytest.FixtureRequest) -> Any:
        return on_test_device(cls().make_method(request))

    @pytest.fixture(scope="class")
    @classmethod
    def images(cls) -> Tensor:
        return _images(cls.batch, *cls.image_size)

    @pytest.fixture(scope="class")
    @classmethod
    def clone(cls, method: Any) -> Any:
        """``type(method)(method.config)``, with the plugin facts ``Registry.create`` sets (built once
        per class: a method may load its models when built)."""
        clone = type(method)(method.config)
        clone.plugin, clone.plugin_version = method.plugin, method.plugin_version
        return clone

    def test_config_round_trip(self, method: Any, clone: Any) -> None:
        assert clone.config == method.config

    def test_registered_under_its_name(self, method: Any) -> None:
        from facedefense.registry import get_registry

        assert method.name, "set the class attribute `name` to the registry name"
        name = self.registry_name or method.name
        assert name == method.name, f"registered as {name!r} but the class says name = {method.name!r}"
        assert get_registry().load(self.kind, name) is type(method), (
            f"the registry's {self.kind} '{name}' is not {type(method).__qualname__}"
        )

    def test_config_is_frozen(self, method: Any, clone: Any) -> None:
        import dataclasses

        from facedefense.errors import ConfigError

        first = dataclasses.fields(method.config)[0].name
        with pytest.raises(ConfigError):
            setattr(method.config, first, getattr(method.config, first))
        assert len(method.fingerprint()) == 16 and method.fingerprint() == clone.fingerprint()


class DefenderContract(MethodContract):
    """Contract of a [`Defender`][facedefense.interfaces.defender.Defender].

    Checks: shape, dtype and range; budget after 8-bit quantization; input not modified; same seed,
    same output; odd sizes kept; not a no-op; and the method's own objective beats uniform random
    noise of the same budget (override
    [`objective`][facedefense.testing.contracts.DefenderContract.objective]; return None to skip that check).
    """

    kind: ClassVar[str] = "defender"
    eps: ClassVar[float] = 8 / 255
    odd_size: ClassVar[tuple[int, int]] = (56, 72)
    objective_higher_is_better: ClassVar[bool] = False
    #: The protected images' objective must beat noise's by at least this fraction of |noise - clean|.
    objective_margin: ClassVar[float] = 0.5

    def objective(self, method: Any, images: Tensor, generator: torch.Generator) -> Tensor | None:
        """Per-image objective the defender optimizes, or None (no objective to compare)."""
        return None

    @pytest.fixture(scope="class")
    @classmethod
    def protection(cls, method: Any, images: Tensor) -> tuple[Any, bool]:
        """``method.protect(images)`` once per class, and whether ``images`` came back untouched."""
        before = images.clone()
        result = method.protect(images)
        return result, bool((images == before).all())

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls, protection: tuple[Any, bool]) -> Any:
        return protection[0]

    def test_output_contract(self, result: Any, images: Tensor) -> None:
        import torch

        assert result.images.shape == images.shape
        assert result.images.dtype == torch.float32
        assert result.images.min() >= 0 and result.images.max() <= 1
        assert len(result.linf) == images.shape[0]

    def test_budget_after_quantization(self, result: Any, images: Tensor, method: Any) -> None:
        import torch

        written = torch.round(result.images * 255)
        assert torch.equal(written / 255, result.images), "result must already be on the uint8 grid"
        levels = (written - images * 255).abs().flatten(1).amax(1)
        assert (levels <= method.config.eps * 255 + 1e-3).all(), levels
        assert result.eps == method.config.eps

    def test_changes_the_images(self, result: Any, images: Tensor) -> None:
        assert (result.images != images).any(dim=(1, 2, 3)).all(), "every image must be perturbed"

    def test_input_not_mutated(self, protection: tuple[Any, bool]) -> None:
        assert protection[1], "protect must not modify its input"

    def test_deterministic_with_seed(self, method: Any, images: Tensor, result: Any) -> None:
        """A second run, given a generator seeded like the default one (``config.seed``), repeats
        the first exactly: no global random state, no state kept between calls, the generator used."""
        import torch

        again = method.protect(images, generator=method.make_generator())
        assert torch.equal(again.images, result.images)

    def test_identity_of_mixed_sizes(self, method: Any) -> None:
        """Photos of different sizes with references of other sizes, as the file runner gives them.

        It also keeps odd sizes for both scopes: an image-scoped defender protects each photo with
        ``protect``, and an identity-scoped defender's ``protect`` is this ``protect_identity``."""
        from facedefense.interfaces import IdentitySet

        photos = [_images(1, *self.image_size)[0], _images(1, *self.odd_size, seed=1)[0]]
        references = [_images(1, 48, 40, seed=2)[0]]
        identity = IdentitySet.from_images(photos, names=["a.png", "b.png"], references=references, name="person")
        result = method.protect_identity(identity)
        assert [tuple(x.shape) for x in result.images] == [tuple(x.shape) for x in photos]
        assert result.names == ["a.png", "b.png"]
        assert max(result.linf) <= method.config.eps * 255 + 1e-3
        assert all((out != photo).any() for out, photo in zip(result.images, photos))

    def test_beats_random_noise(self, method: Any, images: Tensor, result: Any) -> None:
        import torch

        from facedefense.budget import quantize_within_budget

        eps = method.config.eps
        clean = self.objective(method, images, _generator(7))
        if clean is None:
            pytest.skip("no objective to compare against random noise")
        noise = torch.rand(images.shape, generator=_generator(3)) * 2 - 1
        noisy = quantize_within_budget((images + noise * eps).clamp(0, 1), images, eps)
        noisy_value = self.objective(method, noisy, _generator(7))
        protected_value = self.objective(method, result.images, _generator(7))
        sign = 1.0 if self.objective_higher_is_better else -1.0
        gain_protected = sign * (protected_value - clean).mean().item()
        gain_noise = sign * (noisy_value - clean).mean().item()
        assert gain_protected > 0, f"protection did not improve the objective: {gain_protected}"
        assert gain_protected > gain_noise + self.objective_margin * abs(gain_noise), (
            f"objective gain {gain_protected:.4g} does not beat same-budget noise {gain_noise:.4g}"
        )


class PurifierContract(MethodContract):
    """Contract of a [`Purifier`][facedefense.interfaces.purifier.Purifier]: shape/range, odd sizes kept, no
    mutation, determinism, gradient, and ``purify_differentiable`` within ``differentiable_tolerance``
    (mean absolute difference, [0, 1] units, same generator) of ``purify``."""

    odd_size: ClassVar[tuple[int, int]] = (56, 72)
    #: Largest mean |purify - purify_differentiable| allowed (0 for exact or straight-through versions).
    differentiable_tolerance: ClassVar[float] = 0.0

    kind: ClassVar[str] = "purifier"

    @pytest.fixture(scope="class")
    @classmethod
    def purification(cls, method: Any, images: Tensor) -> tuple[Tensor, bool]:
        """``method.purify(images, generator=_generator(5))`` once per class, and whether ``images``
        came back untouched."""
        before = images.clone()
        out = method.purify(images, generator=_generator(5))
        return out, bool((images == before).all())

    def test_output_contract(self, purification: tuple[Tensor, bool], images: Tensor) -> None:
        import torch

        out = purification[0]
        assert out.shape == images.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1

    def test_keeps_odd_size(self, method: Any) -> None:
        images = _images(1, *self.odd_size)
        out = method.purify(images)
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1

    def test_differentiable_close_to_purify(self, method: Any, images: Tensor, purification: tuple[Tensor, bool]) -> None:
        real = purification[0]  # purify with _generator(5)
        approx = method.purify_differentiable(images, generator=_generator(5)).detach()
        gap = (real - approx).abs().mean().item()
        assert gap <= self.differentiable_tolerance + 1e-6, f"mean |purify - differentiable| = {gap:.4g}"

    def test_input_not_mutated(self, purification: tuple[Tensor, bool]) -> None:
        assert purification[1], "purify must not modify its input"

    def test_deterministic_with_seed(self, method: Any, images: Tensor, purification: tuple[Tensor, bool]) -> None:
        import torch

        assert torch.equal(method.purify(images, generator=_generator(5)), purification[0])

    def test_gradient_flows(self, method: Any, images: Tensor) -> None:
        import torch

        x = images.clone().requires_grad_(True)
        out = method.purify_differentiable(x, generator=_generator(1))
        assert out.shape == images.shape
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert grad.abs().sum() > 0


class MetricContract(MethodContract):
    """Contract of a [`Metric`][facedefense.interfaces.metric.Metric]: one finite value per image (images of
    different sizes in one call), deterministic, identical inputs at the good end (paired metrics), set
    metrics against a reference set of another size and count."""

    kind: ClassVar[str] = "metric"
    prompt: ClassVar[str] = "a photo of a person"

    def _references(self, method: Any, images: list) -> Any:
        if method.pairing == "paired":
            return images
        if method.pairing == "set":
            return [_images(1, 48, 40, seed=5)[0], _images(1, 56, 56, seed=6)[0], _images(1, 40, 48, seed=7)[0]]
        return None

    def test_values(self, method: Any, images: Tensor) -> None:
        import math

        listed = [*images.unbind(0), _images(1, 40, 56, seed=4)[0]]
        references = self._references(method, listed)
        prompts = self.prompt if method.needs_prompt else None
        result = method.compute(listed, references, prompts=prompts)
        if method.per_image:
            assert result.per_image is not None and len(result.per_image) == len(listed)
            assert all(math.isfinite(v) for v in result.per_image)
            assert method.compute(listed, references, prompts=prompts).per_image == result.per_image
        else:
            assert result.per_image is None
        assert math.isfinite(result.value)
        assert result.protected_if in ("higher", "lower")
        assert method.edit_reference in ("clean_edit", "source")  # what the benchmark pairs an edit with

    def test_identical_scores_at_good_end(self, method: Any, images: Tensor) -> None:
        import torch

        if method.pairing != "paired":
            pytest.skip("only paired metrics compare an image with itself")
        noisy = (images + 0.1 * torch.randn(images.shape, generator=_generator(2))).clamp(0, 1)
        same = method.compute(images, images).value
        different = method.compute(noisy, images).value
        assert (same > different) if method.higher_is_better else (same < different)

    def test_rejects_missing_references(self, method: Any, images: Tensor) -> None:
        from facedefense.errors import ConfigError

        if method.pairing == "none":
            pytest.skip("no-reference metric")
        with pytest.raises(ConfigError):
            method.compute(images, None, prompts=self.prompt if method.needs_prompt else None)


class EditorContract(MethodContract):
    """Contract of an ``Editor``: same shape and range, input untouched, seeded; pixels outside a
    mask kept (within 1 gray level) and the masked region edited."""

    kind: ClassVar[str] = "editor"
    prompt: ClassVar[str] = "make it a painting"

    def test_keeps_pixels_outside_the_mask(self, method: Any, images: Tensor) -> None:
        import torch

        mask = torch.zeros(1, 1, *images.shape[-2:])
        mask[..., : images.shape[-1] // 2] = 1  # edit the left half
        out = method.edit(images, self.prompt, mask=mask, generator=_generator(1))
        kept = (mask == 0).expand_as(images)
        assert (out[kept] - images[kept]).abs().max() * 255 <= 1, "pixels outside the mask must be kept"
        assert (out[~kept] != images[~kept]).any(), "the masked region must be edited"

    @pytest.fixture(scope="class")
    @classmethod
    def edited(cls, method: Any, images: Tensor) -> tuple[Tensor, bool]:
        """``method.edit(images, prompt, generator=_generator(1))`` once per class, and whether
        ``images`` came back untouched."""
        before = images.clone()
        out = method.edit(images, cls.prompt, generator=_generator(1))
        return out, bool((images == before).all())

    def test_output_contract(self, edited: tuple[Tensor, bool], images: Tensor) -> None:
        out, untouched = edited
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
        assert untouched, "edit must not modify its input"

    def test_deterministic_with_seed(self, method: Any, images: Tensor, edited: tuple[Tensor, bool]) -> None:
        import torch

        assert torch.equal(edited[0], method.edit(images, self.prompt, generator=_generator(1)))

    def test_rejects_empty_prompt(self, method: Any, images: Tensor) -> None:
        from facedefense.errors import ConfigError

        with pytest.raises(ConfigError):
            method.edit(images, "  ")


class PersonalizerContract(MethodContract):
    """Contract of a [`Personalizer`][facedefense.interfaces.personalizer.Personalizer]: fits photos of mixed
    sizes, generates the requested count, saves in its format with metadata and loads back to the same
    images."""

    kind: ClassVar[str] = "personalizer"
    prompts: ClassVar[tuple[str, ...]] = ("a photo of sks person",)

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, method: Any, images: Tensor, tmp_path_factory: pytest.TempPathFactory) -> Any:
        photos = [*images.unbind(0), _images(1, 56, 72, seed=3)[0]]
        return method.fit(photos, output_dir=tmp_path_factory.mktemp("personalized"))

    def test_generates_requested_count(self, fitted: Any) -> None:
        out = fitted.generate(list(self.prompts), num_images=2, generator=_generator(0))
        assert out.ndim == 4 and out.shape[0] == 2 * len(self.prompts) and out.shape[1] == 3
        assert out.min() >= 0 and out.max() <= 1

    def test_save_and_load_round_trip(self, fitted: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
        import torch

        from facedefense.interfaces.personalizer import METADATA_NAME, load_personalized, read_metadata
        from facedefense.testing.fixtures import device_under_test

        folder = fitted.save(tmp_path_factory.mktemp("saved"))
        metadata = read_metadata(folder)
        assert (folder / METADATA_NAME).is_file() and metadata["format"] == fitted.format
        loaded = load_personalized(folder, device=device_under_test())
        a = fitted.generate(list(self.prompts), generator=_generator(4))
        b = loaded.generate(list(self.prompts), generator=_generator(4))
        assert torch.allclose(a, b, atol=2 / 255)

    def test_zero_shot_generation_follows_the_photos(self, method: Any, fitted: Any, images: Tensor) -> None:
        """A personalizer that trains nothing (``trains`` False) must condition on its photos: the
        same photos give the same images, other photos other images (same seed)."""
        import torch

        if method.trains:
            pytest.skip(f"{method.name} trains (the check is for zero-shot personalizers)")
        photos = [*images.unbind(0), _images(1, 56, 72, seed=3)[0]]
        again = method.fit(photos).generate(list(self.prompts), generator=_generator(5))
        other = method.fit([torch.full_like(images[0], 0.5)]).generate(list(self.prompts), generator=_generator(5))
        first = fitted.generate(list(self.prompts), generator=_generator(5))
        assert torch.allclose(first, again, atol=1e-5), "the same photos must give the same images"
        assert (first - other).abs().mean() > 1 / 255, "other photos, same seed: the images must change"
