"""LPIPS backbones found where torchvision caches them (torch.hub's checkpoints folder), never
downloaded: the LPIPS metric and IMPRESS read a state dict saved there under torchvision's file
name; without it, one line naming the file and the folder."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from facedefense.errors import ModelNotFoundError
from facedefense.io import to_uint8
from facedefense.models import shared_model
from facedefense.testing.cli import invoke
from facedefense.testing.tiny_models import sample_faces
from facedefense_metrics.lpips import LPIPS, backbone_file
from facedefense_purifiers.impress import Impress


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch.hub cache: ``$TORCH_HOME/hub/checkpoints``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def _save_backbone(folder, net, filename, seed, dtype=torch.float32):
    """A random torchvision-named state dict (``features.<index>.<param>``) of ``net``'s backbone."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in shared_model("lpips", path="random", device="cpu", net=net).net.state_dict().items():
        state["features." + name.split(".", 1)[1]] = torch.randn(tensor.shape, generator=generator).to(dtype)
    torch.save(state, folder / filename)
    return state


def test_lpips_metric_reads_the_cached_backbone(hub):
    state = _save_backbone(hub, "squeeze", "squeezenet1_1-b8a52dc0.pth", seed=1)
    images, references = sample_faces(2, 32), sample_faces(4, 32)[2:]
    cached = LPIPS(net="squeeze", device="cpu").compute(images, references).per_image
    assert backbone_file(None, "squeeze") == hub / "squeezenet1_1-b8a52dc0.pth"
    model = shared_model("lpips", path=str(backbone_file(None, "squeeze")), device="cpu", net="squeeze")
    for name, tensor in model.net.state_dict().items():
        assert torch.equal(tensor, state["features." + name.split(".", 1)[1]])
    random = LPIPS(net="squeeze", weights="random", device="cpu").compute(images, references).per_image
    assert cached != random  # the file's weights, not the random backbone
    explicit = LPIPS(net="squeeze", weights=str(hub / "squeezenet1_1-b8a52dc0.pth"), device="cpu")
    assert explicit.compute(images, references).per_image == cached


def test_impress_reads_vgg16_from_the_cache(hub, tiny_sd_path):
    state = _save_backbone(hub, "vgg", "vgg16-397923af.pth", seed=2, dtype=torch.float16)  # 29 MB
    purifier = Impress(model=str(tiny_sd_path), iterations=1, device="cpu")
    _, lpips = purifier._load()
    own = lpips.net.state_dict()
    assert len(own) == len(state) == 26  # VGG16's 13 convolutions
    for name, tensor in own.items():
        assert torch.equal(tensor, state["features." + name.split(".", 1)[1]].float())


def test_missing_backbone_is_one_line_naming_file_and_folder(hub, tiny_sd_path, tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        Impress(model=str(tiny_sd_path), device="cpu")  # before any work
    message = str(info.value)
    assert "\n" not in message and "vgg16-397923af.pth" in message and str(hub) in message
    assert "-o lpips_weights=PATH" in message
    with pytest.raises(ModelNotFoundError, match=r"alexnet-owt-7be5be79\.pth .*-o weights=PATH"):
        LPIPS(device="cpu").compute(sample_faces(1, 32), sample_faces(1, 32))

    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(to_uint8(sample_faces(1, 32)[0])).save(folder / "a.png")
    result = invoke(*["purify", str(folder), "-m", "impress", "--model", str(tiny_sd_path),
                                              "--output", str(tmp_path / "out")])
    assert result.exit_code != 0 and "vgg16-397923af.pth" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
