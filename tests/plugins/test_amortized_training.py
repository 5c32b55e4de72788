"""`facedefense train` / `export` / `pairs` for RID and GAP-Diff on the tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from facedefense.testing.cli import invoke
from facedefense.testing.tiny_models import sample_faces

TINY_DIT = "input_size=32,patch_size=16,hidden_size=32,depth=1,num_heads=2,num_classes=4"
RID_OPTIONS = ["-o", f"architecture={TINY_DIT}", "-o", "warmup_steps=0", "-o", "lr=1e-2"]
GAP_OPTIONS = ["-o", "architecture=ngf=2", "-o", "surrogate_size=32", "-o", "discriminator_width=2",
               "-o", "first_phase_epochs=1", "--batch-size", "1"]


def cli(*args):
    return invoke(*args)


def write_faces(folder, count, size=40, offset=0):
    folder.mkdir(parents=True, exist_ok=True)
    for index, face in enumerate(sample_faces(count + offset, size)[offset:]):
        array = (face.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"face{index}.png")
    return folder


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return write_faces(tmp_path_factory.mktemp("faces"), 3)


def losses(run):
    """The logged loss terms per step (without each step's wall-clock ``seconds``)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(record.pop("seconds") > 0 for record in records)
    return records


def train(method, faces, model, output, *extra):
    options = RID_OPTIONS if method == "rid" else GAP_OPTIONS
    return cli("train", "--method", method, "--data", faces, "--model", model, "--output", output,
               "--no-progress", "--device", "cpu", *options, *extra)


@pytest.mark.parametrize("method,steps,horizon", [("rid", 2, ["-o", "decay_steps=2"]), ("gap_diff", 2, [])])
def test_train_saves_resumes_identically_and_protects(method, steps, horizon, faces, tiny_sd_path, tmp_path):
    from safetensors.torch import load_file

    whole, split = tmp_path / "whole", tmp_path / "split"
    result = train(method, faces, tiny_sd_path, whole, "--steps", steps, "--save-every", 1, *horizon)
    assert result.exit_code == 0, result.output
    assert train(method, faces, tiny_sd_path, split, "--steps", steps - 1, *horizon).exit_code == 0
    result = train(method, faces, tiny_sd_path, split, "--steps", steps, "--resume", *horizon)
    assert result.exit_code == 0, result.output
    assert losses(split) == losses(whole) and len(losses(whole)) == steps
    assert "loss" in losses(whole)[0] and ("sds_0" in losses(whole)[0] or "adv_processed" in losses(whole)[0])
    checkpoint = whole / f"{method}.safetensors"
    weights, resumed = load_file(checkpoint), load_file(split / f"{method}.safetensors")
    assert all(torch.equal(weights[key], resumed[key]) for key in weights)
    sidecar = json.loads((whole / f"{method}.safetensors.json").read_text())
    assert sidecar["method"] == method and sidecar["steps"] == steps and sidecar["eps"] == pytest.approx(8 / 255)
    assert sidecar["models"] == [str(tiny_sd_path)] and sidecar["images"] == 3 and sidecar["batch_size"] == 1

    protected = tmp_path / "protected"
    result = cli("protect", faces / "face0.png", "--method", method, "--checkpoint", checkpoint,
                 "--output", protected, "--device", "cpu", "--dtype", "float32", "--no-progress")
    assert result.exit_code == 0, result.output
    before = np.asarray(Image.open(faces / "face0.png"), dtype=np.int16)
    after = np.asarray(Image.open(protected / "face0.png"), dtype=np.int16)
    assert 0 < np.abs(after - before).max() <= 8


def test_rid_regression_pairs_from_protected_outputs(faces, tiny_sd_path, tmp_path):
    protected = tmp_path / "aspl"  # stands in for `facedefense protect faces/ --method aspl --output aspl/`
    protected.mkdir()
    for path in sorted(faces.glob("*.png"))[:2]:
        array = np.asarray(Image.open(path), dtype=np.int16)
        Image.fromarray(np.clip(array + 6, 0, 255).astype(np.uint8)).save(protected / path.name)
    pairs = tmp_path / "pairs.json"
    result = cli("pairs", faces, protected, "--output", pairs)
    assert result.exit_code == 0 and "wrote 2 pair(s)" in result.output
    written = json.loads(pairs.read_text())
    assert written["command"] == "pairs" and {"source_path", "attacked_path"} <= set(written["pairs"][0])
    result = train("rid", faces, tiny_sd_path, tmp_path / "run", "--steps", 1, "--pairs", pairs,
                   "--mixed-precision", "bf16", "--gradient-checkpointing")
    assert result.exit_code == 0, result.output
    # delta starts at 0: the L1 is |x_protected - x_s| = 6 gray levels, 12/255 in the reference's [-1, 1] units
    assert losses(tmp_path / "run")[0]["reg"] == pytest.approx(12 / 255, rel=0.05)
    # the reference's output_pairs.json, a plain list, gives training the same pairs (`train` reads
    # --pairs with read_pairs alone)
    from facedefense_amortized.training.data import read_pairs

    plain = tmp_path / "reference_pairs.json"
    plain.write_text(json.dumps(written["pairs"]))
    ours, theirs = read_pairs(pairs, 32), read_pairs(plain, 32)
    assert ours[0].shape == (2, 3, 32, 32) and all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_dit_gradient_checkpointing_gives_the_same_gradients():
    from facedefense_amortized.networks import PerturbationDiT

    torch.manual_seed(0)
    network = PerturbationDiT(input_size=32, patch_size=16, hidden_size=32, depth=2, num_heads=2, num_classes=4)
    for parameter in network.parameters():
        parameter.data.normal_(0, 0.1)
    x = torch.rand(2, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        network.zero_grad()
        network.gradient_checkpointing = checkpointing
        network(x).square().sum().backward()
        grads.append(network.blocks[0].attn.qkv.weight.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bad_training_input_gives_one_line_errors(faces, tiny_sd_path, tmp_path):
    def error(*args):
        result = train(*args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
        return result.output

    assert "fewer than --batch-size 4" in error("rid", faces, tiny_sd_path, tmp_path / "a", "--batch-size", 4)
    result = cli("train", "--method", "gap_diff", "--data", faces, "--model", tiny_sd_path, "--output", tmp_path / "g")
    assert result.exit_code == 2 and "fewer than --batch-size 6" in result.output  # the reference's batch
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"source_path": "faces/missing.png", "attacked_path": "x.png"}]))
    assert "does not exist" in error("rid", faces, tiny_sd_path, tmp_path / "b", "--pairs", pairs)
    assert "no training run to resume" in error("rid", faces, tiny_sd_path, tmp_path / "c", "--resume")
    run = tmp_path / "run"
    assert train("rid", faces, tiny_sd_path, run, "--steps", 1, "--eps", "4/255").exit_code == 0
    assert "holds a rid run, not gap_diff" in error("gap_diff", faces, tiny_sd_path, run, "--resume")
    assert "trained for 4/255, not --eps 8/255" in error("rid", faces, tiny_sd_path, run, "--resume", "--eps", "8/255")
    assert "already holds a training run" in error("rid", faces, tiny_sd_path, run, "--steps", 1)
    assert "unknown training option" in error("rid", faces, tiny_sd_path, tmp_path / "d", "-o", "nope=1")
    assert "decay_steps must be at least 0" in error("rid", faces, tiny_sd_path, tmp_path / "d", "-o", "decay_steps=-1")
    result = cli("train", "--method", "jpeg", "--data", faces, "--model", tiny_sd_path, "--output", tmp_path / "e")
    assert result.exit_code == 2


def test_jpeg_simulation_keeps_low_frequencies_and_is_differentiable():
    from facedefense_amortized.training.gap_diff import GaussianBlur, JpegMask

    jpeg = JpegMask(5, 3)
    flat = torch.full((1, 3, 16, 24), 0.25)
    assert torch.allclose(jpeg(flat), flat, atol=1e-5)
    assert torch.allclose(GaussianBlur(2.0)(flat), flat, atol=1e-5)
    from facedefense_amortized.training.gap_diff import _dct_matrix

    basis = _dct_matrix()[5]  # DCT frequency 5: dropped from luma (5x5 kept), gray so no chroma
    pattern = (basis[:, None] * basis[None]).repeat(2, 2) * 0.5
    assert jpeg(pattern.expand(1, 3, 16, 16)).abs().max() < 1e-5
    kept = (_dct_matrix()[4][:, None] * _dct_matrix()[4][None]).repeat(2, 2) * 0.5  # frequency 4: kept
    assert torch.allclose(jpeg(kept.expand(1, 3, 16, 16)), kept.expand(1, 3, 16, 16), atol=1e-5)
    smooth = torch.linspace(-0.5, 0.5, 16).expand(1, 3, 16, 16)
    assert (jpeg(smooth) - smooth).abs().max() < 0.05
    x = torch.rand(1, 3, 13, 21, requires_grad=True)  # not a multiple of 8: padded inside
    out = jpeg(x * 0.5)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- ONNX export and runtime --------------------------------------------------------------------------

SMALL_DIT = {"input_size": 64, "patch_size": 16, "hidden_size": 32, "depth": 2, "num_heads": 4, "num_classes": 10}


def random_checkpoint(method, folder, eps):
    from facedefense.checkpoints import save_checkpoint
    from facedefense_amortized.networks import GAPGenerator, PerturbationDiT

    torch.manual_seed(0)
    network, architecture = (PerturbationDiT(**SMALL_DIT), SMALL_DIT) if method == "rid" else (GAPGenerator(ngf=2), {"ngf": 2})
    for parameter in network.parameters():
        parameter.data.normal_(0, 0.1)
    path = folder / f"{method}-random.safetensors"
    return save_checkpoint(network, path, method=method, eps=eps, architecture=architecture)


@pytest.mark.parametrize("method", ["rid", "gap_diff"])
def test_exported_onnx_protects_within_one_gray_level_of_pytorch(method, tmp_path):
    pytest.importorskip("onnxruntime")
    checkpoint = random_checkpoint(method, tmp_path, 6 / 255)
    model = tmp_path / f"{method}.onnx"
    result = cli("export", "--method", method, "--checkpoint", checkpoint, "--output", model)
    assert result.exit_code == 0, result.output
    photos = write_faces(tmp_path / "photos", 1, size=64)
    Image.fromarray(np.asarray(Image.open(photos / "face0.png").resize((96, 300)))).save(photos / "tall.png")
    outputs = {}
    for runtime, weights in (("torch", checkpoint), ("onnx", model)):
        folder = tmp_path / runtime
        result = cli("protect", photos, "--method", method, "--checkpoint", weights, "--runtime", runtime,
                     "--dtype", "float32", "--device", "cpu", "--output", folder, "--no-progress")
        assert result.exit_code == 0, result.output
        outputs[runtime] = {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in folder.glob("*.png")}
    assert set(outputs["onnx"]) == {"face0.png", "tall.png"}
    for name, image in outputs["onnx"].items():
        assert np.abs(image - outputs["torch"][name]).max() <= 1, name
    # the budget travels inside the file
    from facedefense_amortized.onnx_io import read_metadata

    metadata = read_metadata(model)
    assert metadata["facedefense_method"] == method and float(metadata["eps"]) == pytest.approx(6 / 255)
    result = cli("protect", photos, "--method", method, "--checkpoint", model, "--eps", "8/255",
                 "--device", "cpu", "--output", tmp_path / "refused")
    assert result.exit_code == 2 and "exported for 6/255" in result.output


def test_export_needs_a_budget_and_a_known_network(tmp_path):
    pytest.importorskip("onnx")
    checkpoint = random_checkpoint("rid", tmp_path, 6 / 255)
    anonymous = tmp_path / "anonymous.safetensors"
    anonymous.write_bytes(checkpoint.read_bytes())  # same weights, no sidecar
    result = cli("export", "--method", "rid", "--checkpoint", anonymous, "--output", tmp_path / "a.onnx")
    assert result.exit_code == 2 and "cannot tell which budget" in result.output and not (tmp_path / "a.onnx").exists()
    result = cli("export", "--method", "gap_diff", "--checkpoint", checkpoint, "--output", tmp_path / "b.onnx")
    assert result.exit_code == 2 and "not gap_diff" in result.output
    result = cli("export", "--method", "rid", "--checkpoint", checkpoint, "--output", tmp_path / "c.txt")
    assert result.exit_code == 2 and ".onnx" in result.output
    result = cli("export", "--method", "photoguard", "--checkpoint", checkpoint, "--output", tmp_path / "d.onnx")
    assert result.exit_code == 2 and "export_onnx hook" in result.output
