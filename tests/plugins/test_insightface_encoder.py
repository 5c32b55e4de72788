"""insightface's face encoder in its two forms: a tiny IResNet (a few channels, random weights and
batch-norm statistics) is exported to ONNX by torch's exporter, as
arcface_torch's torch2onnx.py exports the released models, then read back into the torch IResNet by
the loader; its embeddings match ONNX Runtime's within 1e-4 cosine distance, and a wrong mapping
does not. The face backend serves both forms (ip_adapter_faceid's face encoder)."""

from __future__ import annotations

import warnings

import pytest

from facedefense.errors import ConfigError, ModelNotFoundError

WIDTHS = (4, 4, 8, 8, 16)  # stem and the four stages (the released models: 64, 64, 128, 256, 512)


def export_tiny(path, layers, *, folded=True, features=32, seed=0):
    """A random IResNet (arcface_torch's training form: conv, then BN) exported to ``path``.
    ``folded``: the exporter's eval mode, which folds each conv's BN into it (the released files);
    else the BNs stay separate nodes."""
    import torch

    from facedefense_metrics.faces.iresnet import IResNet

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = IResNet(layers, WIDTHS, features=features, folded=False)
    for module in network.modules():  # batch norms far from the identity, so a swap shows
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            for tensor, low, high in ((module.weight, 0.5, 1.5), (module.bias, -0.3, 0.3),
                                      (module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0)):
                tensor.data.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    network.eval()
    mode = torch.onnx.TrainingMode.EVAL if folded else torch.onnx.TrainingMode.PRESERVE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(network, torch.zeros(1, 3, 112, 112), str(path), input_names=["data"], dynamo=False,
                          opset_version=11, training=mode, dynamic_axes={"data": {0: "batch"}})
    return network


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """(path, the exported torch network) of a tiny IResNet with two blocks in its second stage
    (the released depths cost seconds to export), BNs folded as released."""
    path = tmp_path_factory.mktemp("insightface") / "w600k_r50.onnx"
    return path, export_tiny(path, (1, 2, 1, 1))


@pytest.fixture(scope="module")
def chips():
    import torch

    return torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.fixture(scope="module")
def onnx_embeddings(r50, chips):
    """ONNX Runtime's embeddings of ``chips`` by the exported file."""
    from facedefense_metrics.faces.insightface import OnnxRuntimeEncoder

    return OnnxRuntimeEncoder(r50[0])(chips)


def cosine_distance(a, b):
    import torch.nn.functional as F

    return 1 - F.cosine_similarity(a.double(), b.double(), dim=1)


def test_torch_form_matches_onnx_runtime(r50, chips, onnx_embeddings):
    import torch

    from facedefense_metrics.faces.iresnet import describe, load_iresnet

    path, exported = r50
    network = load_iresnet(path)
    assert (network.layers, network.widths, network.chip, network.folded) == ((1, 2, 1, 1), WIDTHS, 112, True)
    assert describe(network) == "IResNet (blocks 1-2-1-1)"
    with torch.no_grad():
        torch_form, original = network(chips), exported(chips)
    onnx_form = onnx_embeddings
    assert torch_form.shape == onnx_form.shape == (2, 32)
    assert cosine_distance(torch_form, onnx_form).max() < 1e-4
    assert cosine_distance(torch_form, original).max() < 1e-4


def test_a_wrong_mapping_fails_the_check(r50, chips, onnx_embeddings):
    """Wrong mappings move the embeddings past the 1e-4 tolerance, so the check can see one: the
    batch norms of two blocks of the same width swapped (5x the tolerance at least; the residual
    stream carries most of this small network's signal), or the final BN's scale and shift swapped
    (the order of BatchNormalization's inputs)."""
    import torch

    from facedefense_metrics.faces.iresnet import load_iresnet

    path, expected = r50[0], onnx_embeddings
    blocks, final = load_iresnet(path), load_iresnet(path)
    first, second = blocks.layer1[0].bn1, blocks.layer2[0].bn1
    assert first.num_features == second.num_features
    swapped = {key: value.clone() for key, value in first.state_dict().items()}
    first.load_state_dict(second.state_dict())
    second.load_state_dict(swapped)
    scale = final.bn2.weight.data.clone()
    final.bn2.weight.data.copy_(final.bn2.bias.data)
    final.bn2.bias.data.copy_(scale)
    with torch.no_grad():
        assert cosine_distance(blocks(chips), expected).min() > 5e-4
        assert cosine_distance(final(chips), expected).min() > 0.1


def test_unfolded_export_loads(tmp_path, chips):
    """An export whose BNs stay separate nodes is folded by the loader into the same function."""
    import torch

    from facedefense_metrics.faces.insightface import OnnxRuntimeEncoder
    from facedefense_metrics.faces.iresnet import load_iresnet

    path = tmp_path / "glintr100.onnx"
    export_tiny(path, (1, 1, 1, 1), folded=False, features=16)
    import onnx

    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("BatchNormalization") > ops.count("Add") + 2  # folded: one per block, bn2, features
    network = load_iresnet(path)
    assert network.layers == (1, 1, 1, 1) and network.features.num_features == 16
    with torch.no_grad():
        torch_form = network(chips[:1])
    assert cosine_distance(torch_form, OnnxRuntimeEncoder(path)(chips[:1])).max() < 1e-4


def test_not_an_iresnet_is_one_line(tmp_path):
    import torch

    from facedefense_metrics.faces.iresnet import load_iresnet

    path = tmp_path / "other.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval(),
                          torch.zeros(1, 3, 16, 16), str(path), dynamo=False, opset_version=11)
    with pytest.raises(ConfigError, match=r"other.onnx is not an insightface IResNet ONNX model \(expected PRelu") as caught:
        load_iresnet(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(ModelNotFoundError, match="glintr100.onnx .*non-commercial research"):
        load_iresnet(tmp_path / "missing.onnx")


class FixedFace:
    """A stand-in for RetinaFace: the same five landmarks (insightface's template scaled to the photo)."""

    def __init__(self, **options) -> None:
        pass

    def detect(self, image):
        import torch

        from facedefense_metrics.faces.arcface import TEMPLATE_112
        from facedefense_metrics.faces.base import Face

        scale = image.shape[-1] / 112
        return [Face((0.0, 0.0, 1.0, 1.0), 1.0, torch.tensor(TEMPLATE_112) * scale)]


def test_backend_embeds_with_both_runtimes(r50, monkeypatch):
    """``get_backend("insightface", weights=...)``, the face encoder ip_adapter_faceid names with
    ``-o face_backend=insightface -o face_weights=PATH``, embeds alike in ONNX Runtime and in torch."""
    import torch

    from facedefense_metrics.faces import get_backend, retinaface

    monkeypatch.setattr(retinaface, "RetinaFaceBackend", FixedFace)
    photos = list(torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(2)))
    embeddings = {
        runtime: torch.stack(get_backend("insightface", weights=str(r50[0]), runtime=runtime).embed_largest(photos))
        for runtime in ("onnxruntime", "torch")
    }
    assert embeddings["torch"].shape == (2, 32)
    assert cosine_distance(embeddings["torch"], embeddings["onnxruntime"]).max() < 1e-4
    with pytest.raises(ModelNotFoundError, match="insightface face backend needs its model file"):
        get_backend("insightface")
    with pytest.raises(ConfigError, match="runtime must be one of onnxruntime, torch"):
        get_backend("insightface", weights=str(r50[0]), runtime="tensorrt")


def test_shared_embedder_reads_the_onnx_file(r50):
    """The shared model ``insightface`` (what defenders optimize through) is the torch form, with
    gradients reaching the photo."""
    import torch

    from facedefense.models import shared_model

    embedder = shared_model("insightface", path=str(r50[0]), device="cpu")
    photo = torch.rand(1, 3, 112, 112, requires_grad=True)
    (gradient,) = torch.autograd.grad(embedder(photo).pow(2).sum(), photo)
    assert embedder(photo).shape == (1, 32) and gradient.abs().sum() > 0
    with pytest.raises(ModelNotFoundError, match="insightface needs its model file"):
        shared_model("insightface", device="cpu")


@pytest.mark.integration  # end to end through the CLI with a real detector: about 1-5 s on 2 cores
def test_protect_through_the_cli_with_the_onnx_encoder(r50, tmp_path):
    """``facedefense protect PHOTOS/ --method anti_encoder`` with the encoder read from the ONNX file
    and MTCNN's landmarks (real, in its wheel) on the sample portraits: within budget after 8-bit
    rounding, and each face's embedding moved away from the clean one's."""
    import json

    from facedefense.io import save_image
    from facedefense.testing.cli import invoke
    from facedefense.testing.tiny_models import sample_faces

    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for index, face in enumerate(sample_faces(2, 64)):
        save_image(face, photos / f"face{index}.png")
    result = invoke(*[
        "protect", str(photos), "--method", "anti_encoder", "--output", str(out), "--steps", "2", "--eps", "8/255",
        "--device", "cpu", "-o", f"face_model_path={r50[0]}", "-o", "face_detector=mtcnn",
    ])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "facedefense.json").read_text())
    entries = manifest["images"]
    assert [entry["within_budget"] and entry["linf_gray_levels"] <= 8 for entry in entries] == [True, True]
    assert all(entry["face_found"] and entry["identity_similarity"] < 1 for entry in entries), entries
