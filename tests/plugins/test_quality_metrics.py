"""Quality and distance metrics: L-infinity, BRISQUE (the brisque package's SVM), LPIPS, FID and
CLIP-S/CLIP-I (random weights: plumbing only), and their missing-weights errors."""

from __future__ import annotations

import importlib.util
from typing import ClassVar

import pytest
import torch

from facedefense.errors import ModelNotFoundError
from facedefense.testing.contracts import MetricContract


def astronaut() -> torch.Tensor:
    from skimage.data import astronaut as load

    return torch.from_numpy(load().copy()).permute(2, 0, 1)[None].float() / 255


class TestLinf(MetricContract):
    registry_name = "linf"

    def make_method(self, request):
        from facedefense_metrics.linf import Linf

        return Linf(device="cpu")


def test_linf_reads_the_budget_in_gray_levels():
    from facedefense_metrics.linf import Linf

    clean = torch.full((2, 3, 16, 16), 0.5)
    protected = clean.clone()
    protected[0, 1, 3, 4] += 8 / 255
    protected[1] -= 3 / 255
    assert Linf(device="cpu").compute(protected, clean).per_image == pytest.approx([8.0, 3.0])


@pytest.mark.skipif(importlib.util.find_spec("brisque") is None, reason="needs the brisque package")
class TestBRISQUE(MetricContract):
    registry_name = "brisque"

    def make_method(self, request):
        from facedefense_metrics.brisque import BRISQUE

        return BRISQUE(device="cpu")

    def test_matches_the_package_and_rises_with_noise_and_blur(self, method):
        import torch.nn.functional as F

        image = astronaut()
        noisy = (image + 25 / 255 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        taps = torch.exp(-torch.arange(-6, 7.0) ** 2 / 8)
        kernel = (taps[:, None] * taps[None] / taps.sum() ** 2).expand(3, 1, 13, 13)
        blurred = F.conv2d(F.pad(image, (6, 6, 6, 6), mode="reflect"), kernel, groups=3)
        clean, worse, blur = (method.compute(x).value for x in (image, noisy, blurred))
        assert clean == pytest.approx(10.79, abs=0.05)  # the package's score of this photo (patched for numpy 2)
        assert worse > clean + 20 and blur > clean + 20


class TestLPIPS(MetricContract):
    registry_name = "lpips"

    def make_method(self, request):
        from facedefense_metrics.lpips import LPIPS

        return LPIPS(device="cpu", net="squeeze", weights="random")


def test_lpips_missing_backbone_names_the_file(tmp_path, monkeypatch):
    from facedefense_metrics.lpips import LPIPS

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    image = astronaut()[..., :64, :64]
    with pytest.raises(ModelNotFoundError, match="alexnet-owt-7be5be79.pth"):
        LPIPS(device="cpu").compute(image, image)
    with pytest.raises(ModelNotFoundError, match="absent.pth"):
        LPIPS(device="cpu", weights=str(tmp_path / "absent.pth")).compute(image, image)


def test_fid_is_zero_for_the_same_set_and_grows_with_distortion():
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_metrics.fid import FID

    metric = FID(device="cpu", weights="random")
    faces = sample_faces(4, 64)
    same = metric.compute(faces, faces)
    different = metric.compute(faces, (1 - faces))
    assert same.value == pytest.approx(0.0, abs=1e-3) and different.value > same.value + 1e-3


def test_fid_missing_weights_names_the_file(tmp_path, monkeypatch):
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_metrics.fid import FID

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="inception_v3_google-0cc3c7bd.pth"):
        FID(device="cpu").compute(sample_faces(2, 32), sample_faces(2, 32))


class CLIPContract(MetricContract):
    image_size: ClassVar[tuple[int, int]] = (64, 64)


class TestCLIPImage(CLIPContract):
    registry_name = "clip_i"

    def make_method(self, request):
        from facedefense_metrics.clip_i import CLIPImage

        return CLIPImage(device="cpu", weights="random")


def test_clip_s_scores_each_image_against_its_prompt_and_needs_weights():
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_metrics.clip_s import CLIPScore

    faces = sample_faces(2, 64)
    result = CLIPScore(device="cpu", weights="random").compute(faces, prompts=["a photo of a person", "a dog"])
    assert len(result.per_image) == 2 and all(-1 <= v <= 1 for v in result.per_image)
    assert result.per_image[0] != result.per_image[1]
    with pytest.raises(ModelNotFoundError, match="ViT-B-32"):
        CLIPScore(device="cpu").compute(faces, prompts="a photo")


def test_clip_iqa_is_a_probability_per_image():
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_metrics.clip_iqa import CLIPIQA

    result = CLIPIQA(device="cpu", weights="random", architecture="ViT-B-32").compute(sample_faces(2, 64))
    assert all(0.0 <= v <= 1.0 for v in result.per_image)


def test_liqe_is_an_expected_level_between_one_and_five_and_needs_its_checkpoint():
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_metrics.liqe import LIQE

    result = LIQE(device="cpu", weights="random").compute(sample_faces(1, 64))
    assert 1.0 <= result.value <= 5.0
    with pytest.raises(ModelNotFoundError, match="LIQE.pt"):
        LIQE(device="cpu").compute(sample_faces(1, 64))
