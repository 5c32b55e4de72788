"""FaceLock on the trained tiny model with a random face embedder, a random LPIPS backbone and a
stand-in face detector: the contract (the identity similarity of the reconstruction drops below
same-budget noise's); against the reference: the identity term sees the face aligned from the clean
photo's landmarks (a differentiable warp), a photo without a face gets no identity term, and the
identity, latent and LPIPS terms each push the way the reference's signs say; the pluggable face
embedder and bad input."""

from __future__ import annotations

import math

import pytest

from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense.testing.contracts import DefenderContract, _images
from facedefense_iterative.facelock import FaceLock
from facedefense_metrics.faces.base import Face, FaceBackend


class FixedLandmarks(FaceBackend):
    """A face detector stand-in: the same 5 landmarks (photo pixels) for every photo, or no face."""

    name = "fixed"

    def __init__(self, landmarks=None) -> None:
        self.landmarks = landmarks

    def detect(self, image):
        if self.landmarks is None:
            return []
        return [Face((0.0, 0.0, 1.0, 1.0), 1.0, self.landmarks.clone())]


def five_points(center=(22.0, 22.0), scale=0.3, angle=0.2):
    """insightface's 112x112 template moved by a similarity transform into a photo: (5, 2)."""
    import torch

    from facedefense_metrics.faces.arcface import TEMPLATE_112

    template = torch.tensor(TEMPLATE_112) - 56.0
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return template @ rotation.T * scale + torch.tensor(center)


def make(model, landmarks="default", **options):
    defaults = dict(
        face_model="random_face_embedder", face_detector="mtcnn", lpips_weights="random", resolution=None,
        device="cpu", dtype="float32",
    )
    defender = FaceLock(model=str(model), **{**defaults, **options})
    defender.detector = FixedLandmarks(five_points() if landmarks == "default" else landmarks)
    return defender


def dots(landmarks, size=64):
    """A black (1, 3, size, size) photo with a white 3x3 dot on each landmark."""
    import torch

    image = torch.zeros(1, 3, size, size)
    for x, y in landmarks.round().long().tolist():
        image[..., y - 1 : y + 2, x - 1 : x + 2] = 1.0
    return image


def test_identity_term_sees_the_face_aligned_to_the_template(tiny_sd_path):
    """The embedder's input is the 112x112 chip in which the clean photo's landmarks sit on the
    template (not the whole photo resized: the dots would sit at landmarks * 112 / 64)."""
    import torch

    from facedefense_metrics.faces.arcface import TEMPLATE_112

    defender = make(tiny_sd_path)
    inputs = []
    hook = defender.embedder.network.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    try:
        landmarks = five_points()
        photo = dots(landmarks)
        with torch.no_grad():
            defender.identity_similarity(photo, photo, landmarks[None])
    finally:
        hook.remove()
    clean_chip = (inputs[-1][0] + 1) / 2  # the clean photo's chip, back in [0, 1]
    assert clean_chip.shape == (3, 112, 112)
    on_template = torch.stack([clean_chip[:, round(y), round(x)] for x, y in TEMPLATE_112])
    assert (on_template > 0.9).all(), on_template
    assert clean_chip.mean() < 0.1


def test_identity_gradient_reaches_the_face_pixels_only(tiny_sd_path):
    """Gradients flow through the warp to the pixels of the face region, and nowhere far from it."""
    import torch

    defender = make(tiny_sd_path)
    landmarks = five_points()
    clean = dots(landmarks)
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    similarity = torch.nn.functional.cosine_similarity(
        defender.embed(pixels, landmarks[None]), defender.embed(clean, landmarks[None])
    )
    (gradient,) = torch.autograd.grad(similarity.sum(), pixels)
    magnitude = gradient.abs().sum(1)[0]
    assert magnitude[10:34, 10:34].sum() > 0
    assert magnitude[44:, :].sum() == 0 and magnitude[:, 44:].sum() == 0
    # and through the VAE reconstruction to the photo
    photo = clean.clone().requires_grad_(True)
    (through_vae,) = torch.autograd.grad(defender.identity_similarity(photo, clean, landmarks[None]).sum(), photo)
    assert through_vae.abs().sum() > 0


def test_photo_without_a_face_gets_no_identity_term(tiny_sd_path, face_images):
    """No face found: a warning, ``face_found: false``, no similarity, and exactly the protection
    that the latent and LPIPS terms alone give."""
    import torch

    options = dict(steps=2, step_size=2 / 255, identity_start=0.0)
    face_images = _resized(face_images[:1])  # one photo: the check is per photo
    faceless = make(tiny_sd_path, landmarks=None, **options)
    with pytest.warns(UserWarning, match="no face found in 1 of 1 photos"):
        result = faceless.protect(face_images, generator=torch.Generator().manual_seed(0))
    assert [s["face_found"] for s in result.stats] == [False]
    assert all(s["identity_similarity_end"] is None for s in result.stats)
    without_identity = make(tiny_sd_path, identity_weight=0.0, **options).protect(
        face_images, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(result.images, without_identity.images)


def _resized(images, size=32):
    """The sample faces at ``size`` x ``size`` on the 8-bit grid: the checks below hold at 32 px too (48
    for the identity term alone), at a quarter of the cost of LPIPS's VGG (the identity term's fixed
    landmarks, 22 +- 6 px, need no more either)."""
    import torch

    from facedefense.imaging import resize

    return torch.round(resize(images, (size, size)).clamp(0, 1) * 255) / 255


def _noisy(images, eps):
    import torch

    from facedefense.budget import quantize_within_budget

    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    return quantize_within_budget((images + noise * eps).clamp(0, 1), images, eps)


def test_latent_term_pushes_the_latent_away(trained_tiny_sd_path, face_images):
    """The latent term alone is ascended: MSE(mu_E(x'), mu_E(x)) beats same-budget noise's."""
    import torch

    face_images = _resized(face_images)
    defender = make(trained_tiny_sd_path, steps=4, step_size=2 / 255, identity_weight=0.0, lpips_weight=0.0)
    protected = defender.protect(face_images).images
    with torch.no_grad():
        clean, _ = defender.reconstruct(face_images)

        def distance(images):
            return (defender.reconstruct(images)[0] - clean).pow(2).flatten(1).mean(1)

        assert (distance(protected) > 2 * distance(_noisy(face_images, defender.config.eps))).all()


def test_lpips_term_distorts_the_reconstruction(trained_tiny_sd_path, face_images):
    """The LPIPS term alone is ascended: LPIPS(R(x'), x) beats same-budget noise's (3 steps at 32 px;
    one photo: the term is per photo)."""
    import torch

    face_images = _resized(face_images[:1])

    defender = make(
        trained_tiny_sd_path, steps=3, step_size=2 / 255, identity_weight=0.0, latent_weight=0.0, lpips_start=0.0
    )
    protected = defender.protect(face_images).images
    with torch.no_grad():

        def distance(images):
            return defender.lpips(defender.reconstruct(images)[1] * 2 - 1, face_images * 2 - 1).flatten()

        clean, noisy = distance(face_images), distance(_noisy(face_images, defender.config.eps))
        assert (distance(protected) - clean > 2 * (noisy - clean).abs()).all()


def test_detector_must_give_the_embedders_landmarks(tiny_sd_path):
    with pytest.raises(ConfigError, match="aligned with five_point landmarks, which face_detector 'dlib' does not give"):
        FaceLock(model=str(tiny_sd_path), face_model="random_face_embedder", face_detector="dlib", device="cpu")


class TestFaceLock(DefenderContract):
    registry_name = "facelock"
    image_size = (48, 48)  # latent 6x6: the identity term still beats noise (it no longer does at 32x32)
    batch = 1  # one photo per protect (the mixed-sizes check still protects two)
    odd_size = (24, 40)  # shape and budget only

    def make_method(self, request):
        # 5 steps: the latent term from step 1, identity from step 3 (the default 0.35), LPIPS from
        # step 5 (the reference: from step 3 of 8): all three terms run, and its VGG, two thirds of
        # a step's cost at 64 px, runs once instead of four times
        return make(request.getfixturevalue("trained_tiny_sd_path"), eps=self.eps, steps=5, step_size=2 / 255,
                    lpips_start=0.75)

    def objective(self, method, images, generator):
        import torch

        clean = _images(self.batch, *self.image_size)
        with torch.no_grad():
            return method.identity_similarity(images, clean)


def test_identity_term_lowers_the_similarity(tiny_sd_path, face_images):
    """The identity term alone (from the first step, no LPIPS) lowers the reported similarity."""
    result = make(tiny_sd_path, steps=3, step_size=2 / 255, identity_start=0.0, lpips_weight=0.0).protect(
        _resized(face_images, 48)
    )
    assert all(s["identity_similarity_end"] < s["identity_similarity_start"] for s in result.stats)


def test_embedder_is_shared_and_frozen(tiny_sd_path):
    from facedefense.models import shared_model

    defender = make(tiny_sd_path, steps=1)
    assert defender.embedder is shared_model("random_face_embedder", device="cpu")
    assert not any(p.requires_grad for p in defender.embedder.parameters())


def test_missing_face_embedding_weights(tiny_sd_path, tmp_path):
    missing = tmp_path / "recognition_arcface_ir_se50.pth"
    with pytest.raises(ModelNotFoundError, match=r"arcface: weights file .*recognition_arcface_ir_se50.pth not found .*facexlib"):
        make(tiny_sd_path, face_model="arcface", face_model_path=str(missing))
    with pytest.raises(ModelNotFoundError, match="arcface needs its weights file recognition_arcface_ir_se50.pth"):
        make(tiny_sd_path, face_model="arcface")


def test_missing_lpips_weights(tiny_sd_path, tmp_path):
    with pytest.raises(ModelNotFoundError, match="facelock: weights file .*vgg16.pth not found"):
        make(tiny_sd_path, lpips_weights=str(tmp_path / "vgg16.pth"))


def test_arcface_loads_weights_by_path(tmp_path):
    """facexlib's architecture with a saved state dict loads through shared_model and embeds 512-D."""
    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable
    from facedefense.models import shared_model

    ensure_torchvision_importable()
    from facexlib.recognition.arcface_arch import Backbone

    # the architecture's state dict with a constant per tensor, each saved as one broadcast value (a
    # few KB instead of 175 MB, and no random initialization): the load still checks every name and shape
    with torch.device("meta"):
        shapes = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se").state_dict()
    state = {name: torch.tensor(0.5 if value.is_floating_point() else 0, dtype=value.dtype).expand(value.shape)
             for name, value in shapes.items()}
    path = tmp_path / "recognition_arcface_ir_se50.pth"
    torch.save(state, path)
    embedder = shared_model("arcface", path=str(path), device="cpu")
    assert all((parameter == 0.5).all() for parameter in embedder.parameters())
    with torch.no_grad():
        assert embedder(torch.rand(1, 3, 64, 64)).shape == (1, 512)
