"""facedefense_iterative.face_embedders: ArcFace IR-SE50 loads its checkpoint strictly, without
randomly initializing the network first (built on the meta device)."""

from __future__ import annotations

import pytest

from facedefense.errors import ModelNotFoundError


@pytest.fixture(scope="module")
def arcface_state():
    """The architecture's state dict, a distinct constant per tensor (saved as one broadcast value
    each: a few KB instead of 175 MB)."""
    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    ensure_torchvision_importable()
    from facexlib.recognition.arcface_arch import Backbone

    with torch.device("meta"):
        shapes = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se").state_dict()
    return {name: torch.tensor(index / len(shapes) if value.is_floating_point() else index, dtype=value.dtype).expand(value.shape)
            for index, (name, value) in enumerate(shapes.items())}


def _build(state, tmp_path):
    import torch

    from facedefense_iterative.face_embedders import build_arcface

    path = tmp_path / "recognition_arcface_ir_se50.pth"
    torch.save(state, path)
    return build_arcface(path=str(path), device=torch.device("cpu"), dtype=torch.float32)


def test_arcface_gets_exactly_the_checkpoints_values_without_a_random_initialization(arcface_state, tmp_path):
    import torch

    rng = torch.get_rng_state()
    loaded = _build(arcface_state, tmp_path).network.state_dict()
    assert torch.equal(torch.get_rng_state(), rng)  # a random initialization would draw from the generator
    assert loaded.keys() == arcface_state.keys()
    assert all(torch.equal(loaded[name], value) for name, value in arcface_state.items())


def test_arcface_refuses_a_checkpoint_with_a_missing_or_an_unexpected_key(arcface_state, tmp_path):
    import torch

    first = next(iter(arcface_state))
    missing = {name: value for name, value in arcface_state.items() if name != first}
    with pytest.raises(ModelNotFoundError, match="is not an ArcFace IR-SE50 checkpoint"):
        _build(missing, tmp_path)
    with pytest.raises(ModelNotFoundError, match="is not an ArcFace IR-SE50 checkpoint"):
        _build({**arcface_state, "extra.weight": torch.zeros(1)}, tmp_path)
