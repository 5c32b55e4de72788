"""Quality and distance metrics: L-infinity, BRISQUE (the brisque package's SVM), LPIPS and
their missing-weights errors (CLIP metrics: test_clip_metrics.py; FID:
test_fid_and_quality_formulas.py)."""

from __future__ import annotations

import importlib.util

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

        assert method.compute(astronaut()).value == pytest.approx(10.79, abs=0.05)  # the package's score (patched for numpy 2)
        # the rise on the 256 px face crop (a quarter of the 512 px photo's cost; it rises by 60-70 there)
        image = astronaut()[..., :256, 128:384]
        noisy = (image + 25 / 255 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        taps = torch.exp(-torch.arange(-6, 7.0) ** 2 / 8)
        kernel = (taps[:, None] * taps[None] / taps.sum() ** 2).expand(3, 1, 13, 13)
        blurred = F.conv2d(F.pad(image, (6, 6, 6, 6), mode="reflect"), kernel, groups=3)
        clean, worse, blur = (method.compute(x).value for x in (image, noisy, blurred))
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


def test_liqe_averages_patches_and_takes_the_expected_level(monkeypatch):
    """LIQE's arithmetic on a stub model whose image features pick the prompt of one quality level."""
    from facedefense import models
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_metrics import liqe

    levels = len(liqe.QUALITIES)
    per_level = len(liqe.SCENES) * len(liqe.DISTORTIONS)

    class Stub(torch.nn.Module):
        logit_scale = torch.tensor(100.0).log()
        prompt_features = torch.eye(levels).repeat_interleave(per_level, dim=0)  # (495, 5)

        def encode_image(self, patches):
            self.seen = patches.shape
            brightness = patches.mean(dim=(1, 2, 3))
            return torch.stack([brightness < -1.0, brightness >= -1.0, *(torch.zeros_like(brightness),) * 3], -1).float()

    stub = Stub()
    monkeypatch.setattr(models, "shared_model", lambda *a, **k: stub)
    bright, dark = sample_faces(1, 300), torch.zeros(1, 3, 300, 300)
    values = liqe.LIQE(device="cpu", weights="random").compute(torch.cat([bright, dark])).per_image
    assert stub.seen[1:] == (3, 224, 224) and stub.seen[0] == 2 * 9  # 300 px: 3x3 patches at stride 32
    assert values == pytest.approx([2.0, 1.0], abs=1e-3)


def test_liqe_without_its_checkpoint_names_the_file():
    from facedefense.testing.tiny_models import sample_faces
    from facedefense_metrics.liqe import LIQE

    with pytest.raises(ModelNotFoundError, match="LIQE.pt"):
        LIQE(device="cpu").compute(sample_faces(1, 64))
