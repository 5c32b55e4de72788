"""CIEDE2000 (against Sharma, Wu and Dalal's published test pairs) and L0 (DiffAdvPerturbationBench's
count and share of changed values)."""

from __future__ import annotations

import pytest
import torch

from facedefense.errors import ConfigError
from facedefense.testing.contracts import MetricContract

#: Sharma, Wu, Dalal, Color Res. Appl. 30(1) 2005, Table 1: L1 a1 b1, L2 a2 b2, dE00 (4 decimals).
SHARMA_PAIRS = [
    (50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425),
    (50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615),
    (50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412),
    (50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669),
    (50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461),
    (50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065),
    (50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492),
    (50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977),
    (50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030),
    (50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000),
    (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
    (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
    (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
    (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
    (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
    (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
    (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
    (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
    (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
    (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082),
]


class TestCIEDE2000(MetricContract):
    registry_name = "ciede2000"

    def make_method(self, request):
        from facedefense_metrics.ciede2000 import CIEDE2000

        return CIEDE2000(device="cpu")


class TestL0(MetricContract):
    registry_name = "l0"

    def make_method(self, request):
        from facedefense_metrics.l0 import L0

        return L0(device="cpu")


def test_ciede2000_matches_sharma_test_data():
    """All 34 pairs of the published test data, to their 4 decimals, in both orders (the formula is
    symmetric); pairs 7-16 exercise the hue wrap-around and zero-chroma branches."""
    from facedefense_metrics.ciede2000 import ciede2000

    table = torch.tensor(SHARMA_PAIRS, dtype=torch.float64)
    lab1, lab2 = table[:, 0:3, None, None], table[:, 3:6, None, None]
    expected = table[:, 6]
    assert torch.equal(ciede2000(lab1, lab2).flatten().round(decimals=4), expected)
    assert torch.equal(ciede2000(lab2, lab1).flatten().round(decimals=4), expected)


def test_srgb_to_lab_of_the_primaries_and_scikit_image():
    from facedefense_metrics.ciede2000 import srgb_to_lab

    primaries = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]])[:, :, None, None]
    lab = srgb_to_lab(primaries).flatten(1)
    published = torch.tensor(  # sRGB primaries in CIELAB D65 (Lindbloom's calculator), white, black
        [[53.2408, 80.0925, 67.2032], [87.7347, -86.1827, 83.1793], [32.2970, 79.1875, -107.8602],
         [100, 0, 0], [0, 0, 0]], dtype=torch.float64)
    assert (lab - published).abs().max() < 0.01
    skimage_color = pytest.importorskip("skimage.color")
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = torch.from_numpy(skimage_color.rgb2lab(image[0].permute(1, 2, 0).numpy())).permute(2, 0, 1)
    assert (srgb_to_lab(image)[0] - theirs).abs().max() < 1e-3  # they round the CIE constants 0.008856, 7.787


def test_ciede2000_metric_reduces_the_pixel_map():
    """One changed pixel of 16: the mean is its difference / 16, the norm its difference; a wrong
    channel order (BGR) or a Lab-free distance would give another value."""
    from facedefense_metrics.ciede2000 import CIEDE2000, ciede2000, srgb_to_lab

    clean = torch.full((1, 3, 4, 4), 0.5)
    protected = clean.clone()
    protected[0, :, 1, 2] = torch.tensor([0.9, 0.2, 0.3])
    single = ciede2000(srgb_to_lab(clean[:, :, :1, :1]), srgb_to_lab(protected[:, :, 1:2, 2:3])).item()
    assert single > 20
    assert CIEDE2000(device="cpu").compute(protected, clean).value == pytest.approx(single / 16)
    assert CIEDE2000(device="cpu", reduction="norm").compute(protected, clean).value == pytest.approx(single)
    assert CIEDE2000(device="cpu").compute(clean, clean).value == 0
    with pytest.raises(ConfigError, match="reduction"):
        CIEDE2000(device="cpu", reduction="sum")


def test_l0_counts_changed_values_on_the_8_bit_grid():
    from facedefense_metrics.l0 import L0

    clean = torch.full((2, 3, 4, 4), 128 / 255)
    protected = clean.clone()
    protected[0, 0, 0, 0] += 1 / 255  # one value, one gray level
    protected[0, 1, 2, 3] -= 8 / 255
    protected[1] += 0.4 / 255  # below half a gray level everywhere: no change on the written grid
    assert L0(device="cpu", reduction="count").compute(protected, clean).per_image == [2.0, 0.0]
    assert L0(device="cpu").compute(protected, clean).per_image == pytest.approx([2 / 48, 0.0])
    with pytest.raises(ConfigError, match="reduction"):
        L0(device="cpu", reduction="percent")
