"""RID and GAP-Diff: official checkpoint layout, budgets, reproduction of the reference networks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

import facedefense
from facedefense.checkpoints import save_checkpoint, sidecar_path
from facedefense.errors import ConfigError, ModelNotFoundError
from facedefense.testing.contracts import DefenderContract
from facedefense.testing.tiny_models import sample_faces
from facedefense_amortized.gap_diff import GAPDiff
from facedefense_amortized.networks import RID_ARCHITECTURE, GAPGenerator, PerturbationDiT
from facedefense_amortized.networks.dit import engine_paths
from facedefense_amortized.networks.gap_generator import folded_precisions
from facedefense_amortized.rid import RID

SMALL_DIT = {"input_size": 64, "patch_size": 16, "hidden_size": 32, "depth": 2, "num_heads": 4, "num_classes": 10}


# --- test-side references, written in the structure of the reference code --------------------------


class ReferenceDiT(nn.Module):
    """RID's libs/DiT.py structure (timm PatchEmbed/Attention/Mlp, adaLN from a zero vector)."""

    def __init__(self, input_size, patch_size, hidden_size, depth, num_heads, num_classes, in_channels=3, mlp_ratio=4.0):
        super().__init__()
        from facedefense._compat.torchvision_ops import ensure_torchvision_importable

        ensure_torchvision_importable()
        from timm.models.vision_transformer import Attention, Mlp, PatchEmbed

        self.patch_size, self.out_channels = patch_size, in_channels
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            block.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
            block.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            block.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"), drop=0)
            block.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
            self.blocks.append(block)
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.final_layer.linear = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x):
        def modulate(t, shift, scale):
            return t * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

        x = self.x_embedder(x) + self.pos_embed
        c = torch.zeros(x.shape[0], x.shape[-1])
        for b in self.blocks:
            sa, ca, ga, sm, cm, gm = b.adaLN_modulation(c).chunk(6, dim=1)
            x = x + ga.unsqueeze(1) * b.attn(modulate(b.norm1(x), sa, ca))
            x = x + gm.unsqueeze(1) * b.mlp(modulate(b.norm2(x), sm, cm))
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        x = self.final_layer.linear(modulate(self.final_layer.norm_final(x), shift, scale))
        p, c_out, h = self.patch_size, self.out_channels, int(x.shape[1] ** 0.5)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, h, p, p, c_out))
        return x.reshape(x.shape[0], c_out, h * p, h * p)


class ReferenceResnetBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=False), nn.BatchNorm2d(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


class ReferenceGenerator(nn.Module):
    """GAP-Diff's models/Generator.py structure, in-place activations included."""

    def __init__(self, ngf=8):
        super().__init__()
        chans = [3, ngf, ngf * 2, ngf * 4, ngf * 8, ngf * 8, ngf * 8, ngf * 8, ngf * 8]
        for i in range(8):
            setattr(self, f"conv{i + 1}", nn.Conv2d(chans[i], chans[i + 1], 4, 2, 1))
        dec = [(8, 8), (16, 8), (16, 8), (16, 8), (16, 4), (8, 2), (4, 1)]
        for i, (a, b) in enumerate(dec):
            setattr(self, f"dconv{i + 1}", nn.ConvTranspose2d(ngf * a, ngf * b, 4, 2, 1))
        self.dconv8 = nn.ConvTranspose2d(ngf * 2, 3, 4, 2, 1)
        self.bottle_neck = nn.Sequential(*[ReferenceResnetBlock(ngf * 8) for _ in range(4)])
        self.norm, self.norm2, self.norm4, self.norm8 = (nn.BatchNorm2d(ngf * k) for k in (1, 2, 4, 8))
        self.leaky_relu, self.act, self.dropout = nn.LeakyReLU(0.2, True), nn.SELU(True), nn.Dropout(0.5)

    def forward(self, x):
        e1 = self.conv1(x)
        e2 = self.norm2(self.conv2(self.leaky_relu(e1)))
        e3 = self.norm4(self.conv3(self.leaky_relu(e2)))
        e4 = self.norm8(self.conv4(self.leaky_relu(e3)))
        e5 = self.norm8(self.conv5(self.leaky_relu(e4)))
        e6 = self.norm8(self.conv6(self.leaky_relu(e5)))
        e7 = self.norm8(self.conv7(self.leaky_relu(e6)))
        e8 = self.bottle_neck(self.conv8(self.leaky_relu(e7)))
        d1 = torch.cat((self.dropout(self.norm8(self.dconv1(self.act(e8)))), e7), 1)
        d2 = torch.cat((self.dropout(self.norm8(self.dconv2(self.act(d1)))), e6), 1)
        d3 = torch.cat((self.dropout(self.norm8(self.dconv3(self.act(d2)))), e5), 1)
        d4 = torch.cat((self.norm8(self.dconv4(self.act(d3))), e4), 1)
        d5 = torch.cat((self.norm4(self.dconv5(self.act(d4))), e3), 1)
        d6 = torch.cat((self.norm2(self.dconv6(self.act(d5))), e2), 1)
        d7 = torch.cat((self.norm(self.dconv7(self.act(d6))), e1), 1)
        return torch.tanh(self.dconv8(self.act(d7)))


def randomize(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                scale = 0.5 if "running_var" in name else 0.2
                values = torch.randn(tensor.shape, generator=generator) * scale
                tensor.copy_(values.abs() + 0.5 if "running_var" in name else values)
    return module


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rid_checkpoint(tmp_path_factory):
    """An 'official' RID file (torch.save of the reference network's state dict) + sidecar architecture."""
    reference = randomize(ReferenceDiT(**SMALL_DIT)).eval()
    path = tmp_path_factory.mktemp("rid") / "ASDS-eps-12_255.bin"
    torch.save(reference.state_dict(), path)
    sidecar_path(path).write_text(json.dumps({"architecture": SMALL_DIT}))
    return path, reference


def gap_file(folder, ngf):
    """An 'official' GAP-Diff file (the reference generator's state dict under ``generator.``) + sidecar."""
    reference = randomize(ReferenceGenerator(ngf=ngf), seed=1).eval()
    path = folder / "G_per16_pretrain.pth"
    torch.save({f"generator.{k}": v for k, v in reference.state_dict().items()}, path)
    sidecar_path(path).write_text(json.dumps({"architecture": {"ngf": ngf}}))
    return path, reference


@pytest.fixture(scope="module")
def gap_checkpoint(tmp_path_factory):
    """ngf=4: every layer and path of the generator at a quarter of ngf=8's convolution cost (each
    GAP-Diff pass runs it at 512 px)."""
    return gap_file(tmp_path_factory.mktemp("gap"), 4)


@pytest.fixture(scope="module")
def wide_gap_checkpoint(tmp_path_factory):
    """ngf=8, for the int8 engines' error bounds (measured at this width)."""
    return gap_file(tmp_path_factory.mktemp("gap8"), 8)


@pytest.fixture
def gap_network(wide_gap_checkpoint):
    """The ngf=8 checkpoint's weights in facedefense's own `GAPGenerator` (eval mode)."""
    network = GAPGenerator(ngf=8).eval()
    network.load_state_dict(wide_gap_checkpoint[1].state_dict())
    return network


# --- contract ---------------------------------------------------------------------------------------


class TestRIDContract(DefenderContract):
    eps = 6 / 255

    def make_method(self, request):
        path, _ = request.getfixturevalue("rid_checkpoint")
        return RID(checkpoint=str(path), device="cpu", dtype="float32")


class TestGAPDiffContract(DefenderContract):
    def make_method(self, request):
        path, _ = request.getfixturevalue("gap_checkpoint")
        return GAPDiff(checkpoint=str(path), device="cpu", dtype="float32")


@pytest.mark.parametrize("method", ["rid", "gap_diff"])
def test_perturbation_depends_on_the_image(method, rid_checkpoint, gap_checkpoint, face_images):
    """Their objective needs SD models, so no "beats noise" check: at least the network must look at
    the photo (a constant pattern would protect nothing), and the trainable module is kept."""
    path, _ = rid_checkpoint if method == "rid" else gap_checkpoint
    defender = facedefense.create("defender", method, checkpoint=str(path), device="cpu")
    first, second = face_images[:1], face_images[1:2]
    delta_first = defender.protect(first).images - first
    delta_second = defender.protect(second).images - second
    assert (delta_first - delta_second).abs().mean() > 1 / 255
    assert isinstance(defender.network, torch.nn.Module) and sum(p.numel() for p in defender.network.parameters()) > 0
    assert defender.plugin == "amortized"


# --- checkpoints and budgets ------------------------------------------------------------------------


def test_real_size_rid_keys_and_shapes_match_the_reference():
    with torch.device("meta"):
        ours = PerturbationDiT(**RID_ARCHITECTURE).state_dict()
        reference = ReferenceDiT(**{k: RID_ARCHITECTURE[k] for k in ("input_size", "patch_size", "hidden_size", "depth", "num_heads", "num_classes")}).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    parameters = sum(v.numel() for v in ours.values())
    assert parameters == pytest.approx(343.06e6, rel=1e-3)


def test_real_size_gap_keys_and_shapes_match_the_reference():
    with torch.device("meta"):
        ours, reference = GAPGenerator().state_dict(), ReferenceGenerator(ngf=64).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}


def test_rid_budget_comes_from_the_official_name(rid_checkpoint):
    path, _ = rid_checkpoint
    rid = RID(checkpoint=str(path), device="cpu")
    assert rid.config.eps == pytest.approx(6 / 255)
    with pytest.raises(ConfigError, match=r"trained for 6/255 .*\[0, 1\].*12/255 in the reference's \[-1, 1\]"):
        RID(checkpoint=str(path), eps=12 / 255, device="cpu")


def test_rid_budget_from_sidecar_and_unknown(tmp_path):
    network = PerturbationDiT(**SMALL_DIT)
    path = save_checkpoint(network, tmp_path / "mine.safetensors", method="rid", eps=4 / 255, architecture=SMALL_DIT)
    assert RID(checkpoint=str(path), device="cpu").config.eps == pytest.approx(4 / 255)
    anonymous = tmp_path / "weights.bin"
    torch.save(network.state_dict(), anonymous)
    sidecar_path(anonymous).write_text(json.dumps({"architecture": SMALL_DIT}))
    with pytest.raises(ConfigError, match="pass eps"):
        RID(checkpoint=str(anonymous), device="cpu")
    assert RID(checkpoint=str(anonymous), eps=5 / 255, device="cpu").config.eps == pytest.approx(5 / 255)


def test_missing_and_wrong_checkpoints(tmp_path, rid_checkpoint):
    with pytest.raises(ConfigError, match="Guohanzhong/RID"):
        RID(device="cpu")
    with pytest.raises(ConfigError, match="AIASLab/GAP-Diff"):
        GAPDiff(device="cpu")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        RID(checkpoint=str(tmp_path / "nope.bin"), device="cpu")
    garbage = tmp_path / "ASDS-eps-8_255.bin"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(ModelNotFoundError, match="not a weights file"):
        RID(checkpoint=str(garbage), device="cpu")
    path, _ = rid_checkpoint
    with pytest.raises(ModelNotFoundError, match="not a gap_diff checkpoint"):
        GAPDiff(checkpoint=str(path), eps=8 / 255, device="cpu")


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "ASDS-eps-8_255.bin"
    torch.save({"weights": nn.Linear(2, 2)}, path)  # a module object, not tensors
    with pytest.raises(ModelNotFoundError):
        RID(checkpoint=str(path), device="cpu")


# --- reproduction of the reference ------------------------------------------------------------------


def reference_rid_protect(reference, image01, eps_reference):
    """infer.py without its crop: (x + DiT(x)) / 2 + 0.5 with DiT ending in (eps/255) tanh."""
    with torch.no_grad():
        x = image01 * 2 - 1
        attacked = x + torch.tanh(reference(x)) * eps_reference / 255
        return (attacked / 2 + 0.5).clamp(0, 1)


def protect_photo_with_cli(tmp_path, array, *args):
    """Write ``array`` as a PNG, run ``facedefense protect`` on it with ``args``, read the result."""
    from facedefense.testing.cli import invoke

    Image.fromarray(array).save(tmp_path / "photo.png")
    command = ["protect", str(tmp_path / "photo.png"), *args, "--dtype", "float32", "--device", "cpu",
               "--output", str(tmp_path / "out")]
    result = invoke(*command)
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(tmp_path / "out" / "photo.png")).astype(int)


def to_uint8_array(image):
    return np.round(image[0].permute(1, 2, 0).numpy() * 255).astype(int)


def test_rid_cli_reproduces_reference_within_one_gray_level(tmp_path, rid_checkpoint):
    path, reference = rid_checkpoint
    array = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ours = protect_photo_with_cli(tmp_path, array, "--method", "rid", "--checkpoint", str(path), "--eps", "6/255")
    expected = to_uint8_array(reference_rid_protect(reference, torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255, 12))
    assert np.abs(ours - expected).max() <= 1
    assert np.abs(ours - array).max() <= 6 and (ours != array).any()


def test_gap_diff_reproduces_reference_within_one_gray_level(gap_checkpoint, face_images):
    path, reference = gap_checkpoint
    images = torch.nn.functional.interpolate(face_images, size=(512, 512), mode="bilinear").clamp(0, 1)
    images = torch.round(images * 255) / 255
    ours = GAPDiff(checkpoint=str(path), eps=8 / 255, device="cpu", dtype="float32").protect(images).images
    with torch.no_grad():
        x = images * 2 - 1
        expected = ((x + reference(x) * 16 / 255).clamp(-1, 1) + 1) / 2
    assert ((ours - expected).abs().max() * 255).item() <= 1.0


def test_gap_diff_train_mode_is_stochastic_but_seeded(gap_checkpoint, face_images):
    path, _ = gap_checkpoint
    defender = GAPDiff(checkpoint=str(path), train_mode=True, device="cpu", dtype="float32")
    generator = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    face = face_images[:1]  # one photo: each GAP-Diff pass runs the generator at 512 px
    first = defender.protect(face, generator=generator(1)).images
    assert torch.equal(first, defender.protect(face, generator=generator(1)).images)
    assert not torch.equal(first, defender.protect(face, generator=generator(2)).images)


@pytest.mark.parametrize("size", [(40, 90), (300, 200), (520, 770)])
def test_gap_diff_any_size(gap_checkpoint, size):
    from facedefense.imaging import resize
    from facedefense.testing.tiny_models import sample_faces

    path, _ = gap_checkpoint
    images = torch.round(resize(sample_faces(1, 128), size).clamp(0, 1) * 255) / 255
    result = GAPDiff(checkpoint=str(path), device="cpu", dtype="float32").protect(images)
    assert result.images.shape == images.shape and max(result.linf) <= 8 + 1e-3


def test_rid_keeps_resolution_and_aspect(rid_checkpoint):
    from facedefense.testing.tiny_models import sample_faces

    path, _ = rid_checkpoint
    images = sample_faces(2, 96)[..., :80]
    result = RID(checkpoint=str(path), device="cpu", dtype="float32").protect(images)
    assert result.images.shape == (2, 3, 96, 80) and max(result.linf) <= 6 + 1e-3


def test_rid_low_precision_paths_stay_within_two_gray_levels(rid_checkpoint, face_images):
    path, _ = rid_checkpoint
    exact = RID(checkpoint=str(path), device="cpu", dtype="float32", engine="module").protect(face_images).images
    for engine in ("float32", "bfloat16", "int8", "int8+bf16", "module"):
        if engine != "module" and engine not in engine_paths():
            continue
        dtype = "bfloat16" if engine == "module" else "auto"
        defender = RID(checkpoint=str(path), device="cpu", dtype=dtype, engine=engine)
        fast = defender.protect(face_images).images
        assert (fast - exact).abs().max().item() * 255 <= (0.01 if engine == "float32" else 2.0) + 1e-4, engine


@pytest.mark.parametrize("method", ["rid", "gap_diff"])
def test_dtype_auto_runs_the_measured_fastest_path_and_explicit_dtype_wins(
    method, rid_checkpoint, gap_checkpoint, monkeypatch, tmp_path
):
    from facedefense import autotune

    monkeypatch.setenv("FACEDEFENSE_CACHE", str(tmp_path))
    path = str((rid_checkpoint if method == "rid" else gap_checkpoint)[0])
    Defender = RID if method == "rid" else GAPDiff
    seen = []

    candidates = engine_paths() if method == "rid" else folded_precisions()
    # the measured winner: bf16 where this CPU runs it, else any path but float32 (none on AVX2-only CPUs)
    winner = "bfloat16" if "bfloat16" in candidates else next((c for c in candidates if c != "float32"), "float32")

    def measure(probes):
        seen.append(sorted(probes))
        for probe in probes.values():
            probe()  # every candidate really runs
        return {name: (0.1 if name == winner else 1.0) for name in probes}

    with autotune.use_measurement(measure):
        chosen = Defender(checkpoint=path, device="cpu")
        again = Defender(checkpoint=path, device="cpu")
        explicit = Defender(checkpoint=path, device="cpu", dtype="float32")
    if len(candidates) > 1:
        assert len(seen) == 1 and seen[0] == sorted(candidates)
        assert not chosen.choice.cached and again.choice.cached
    assert chosen.choice.name == winner and winner in chosen.path
    assert explicit.choice is None and "float32" in explicit.path
    assert chosen.protect(sample_faces(1, 64)).images.shape == (1, 3, 64, 64)


def test_dit_engine_splits_large_batches_into_preferred_row_counts(rid_checkpoint, monkeypatch):
    from facedefense.checkpoints import read_state_dict
    from facedefense_amortized.networks import dit

    if "float32" not in dit.engine_paths():
        pytest.skip("no oneDNN linear kernels in this torch build")
    network = PerturbationDiT(**SMALL_DIT).eval()
    network.load_state_dict(read_state_dict(rid_checkpoint[0]))
    x = torch.rand(5, 3, 64, 64) * 2 - 1
    engine = dit.DiTEngine(network, "float32")
    whole = engine(x)
    rows = []
    original = dit.DenseLinear.__call__
    monkeypatch.setattr(dit, "ROW_CHUNK", 32)  # 16 tokens per image: two images per call
    monkeypatch.setattr(dit.DenseLinear, "__call__", lambda self, x, *a: rows.append(len(x)) or original(self, x, *a))
    split = engine(x)
    assert max(rows) == 32 and torch.allclose(split, whole, atol=1e-5)


def test_bf16_attention_matches_the_fused_kernel_in_score_chunks(monkeypatch):
    from facedefense_amortized.networks import dit

    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(3, 5, 2, 16, 8, generator=generator)  # (q/k/v, batch, heads, tokens, head dim)
    fused = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=1.0)
    assert torch.equal(dit._attention(qkv), fused)  # fp32 takes the fused kernel
    whole = dit._attention(qkv.to(torch.bfloat16))
    monkeypatch.setattr(dit, "SCORE_CHUNK", 2 * 16 * 16 * 2)  # two images' scores per product
    chunked = dit._attention(qkv.to(torch.bfloat16))
    assert chunked.dtype == torch.bfloat16 and chunked.shape == fused.shape and torch.equal(chunked, whole)
    assert (chunked.float() - fused).abs().max().item() < 0.05


def test_sincos_embedding_matches_mae_layout():
    from facedefense_amortized.networks.dit import sincos_position_embedding

    embedding = sincos_position_embedding(8, 2)
    # token (row 0, column 1): first half encodes the column, second half the row
    assert embedding[1, 0].item() == pytest.approx(math.sin(1.0))
    assert embedding[1, 4].item() == pytest.approx(0.0)
    assert embedding[2, 4].item() == pytest.approx(math.sin(1.0))


def test_gap_diff_bf16_within_two_gray_levels(gap_checkpoint, face_images):
    path, _ = gap_checkpoint
    face = face_images[:1]  # one photo: each GAP-Diff pass runs the generator at 512 px
    exact = GAPDiff(checkpoint=str(path), device="cpu", dtype="float32").protect(face).images
    fast = GAPDiff(checkpoint=str(path), device="cpu", dtype="bfloat16").protect(face).images
    assert (fast - exact).abs().max().item() * 255 <= 2.0 + 1e-4


# --- CPU inference engines ----------------------------------------------------------------------------


def test_int8_paths_gelu_form_is_within_half_a_step_of_the_next_layers_int8_input():
    from facedefense_amortized.networks import dit

    x = torch.linspace(-12, 12, 240_001, dtype=torch.float64)
    gap = (F.gelu(x) - F.gelu(x, approximate="tanh")).abs()  # erf form vs the network's tanh form
    assert dit.GELU_INT8 == "none"
    assert gap.max().item() < 0.5 * 0.25 / 254  # half a step once the activations span 0.25 or more
    block = PerturbationDiT(**SMALL_DIT).blocks[0]
    if dit.int8_supported():
        assert dit._EngineBlock(block, "int8", "bfloat16").gelu == dit.GELU_INT8
    if dit.onednn_linear_supported():
        assert dit._EngineBlock(block, "float32", "float32").gelu == "tanh"  # the exact path keeps tanh


def test_dit_engine_refuses_a_path_this_torch_cannot_run(monkeypatch):
    from facedefense_amortized.networks import dit

    monkeypatch.setattr(dit, "engine_paths", lambda: ["float32"])
    with pytest.raises(ValueError, match="needs oneDNN kernels"):
        dit.DiTEngine(PerturbationDiT(**SMALL_DIT), "int8")
    with pytest.raises(ValueError, match="unknown engine path"):
        dit.DiTEngine(PerturbationDiT(**SMALL_DIT), "int4")


def test_dit_engine_on_pytorch_kernels_matches_the_module(rid_checkpoint):
    """The GPU engine's form (PyTorch's kernels, fused attention, no row chunks), checked on the CPU."""
    from facedefense_amortized.networks.dit import DiTEngine, TorchLinear

    path, _ = rid_checkpoint
    x = torch.rand(5, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        exact = torch.tanh(_loaded(path)(x))
    for precision, tolerance in (("float32", 1e-3), ("bfloat16", 1 / 6), ("float16", 1 / 6)):
        engine = DiTEngine(_loaded(path), precision, kernels="torch")
        assert not engine.split_rows and not any(block.split_rows for block in engine.blocks)
        assert isinstance(engine.blocks[0].fc1, TorchLinear) and engine.blocks[0].fc1.weight.dtype == getattr(torch, precision)
        with torch.no_grad():
            fast = torch.tanh(engine(x))
        # at most 6 gray levels of tanh's range; float32 within rounding, half precision within one level
        assert (fast - exact).abs().max().item() * 6 <= tolerance, precision
    with pytest.raises(ValueError, match="unknown engine path 'int8' for torch kernels"):
        DiTEngine(_loaded(path), "int8", kernels="torch")
    with pytest.raises(ValueError, match="'onednn' \\(CPU only\\)"):
        DiTEngine(_loaded(path), "float32", device="meta", kernels="onednn")
    with pytest.raises(ConfigError, match="engine=float16 needs a GPU"):
        RID(checkpoint=str(path), device="cpu", engine="float16")


def _loaded(path) -> PerturbationDiT:
    from facedefense.checkpoints import read_state_dict

    network = PerturbationDiT(**SMALL_DIT).eval()
    network.load_state_dict(read_state_dict(path))
    return network


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rid_on_a_gpu_runs_the_engine_within_two_gray_levels(rid_checkpoint, face_images):
    path, _ = rid_checkpoint
    exact = RID(checkpoint=str(path), device="cpu", dtype="float32", engine="module").protect(face_images).images
    auto = RID(checkpoint=str(path), device="cuda")
    expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    assert auto.path == expected and auto.choice is None  # a GPU's precision is not measured
    for defender in (auto, RID(checkpoint=str(path), device="cuda", dtype="float32"),
                     RID(checkpoint=str(path), device="cuda", engine="module")):
        fast = defender.protect(face_images.cuda()).images.cpu()
        assert (fast - exact).abs().max().item() * 255 <= 2.0 + 1e-4, defender.path
    with pytest.raises(ConfigError, match="engine=int8 needs the CPU"):
        RID(checkpoint=str(path), device="cuda", engine="int8")


@pytest.mark.integration  # starts a Python process (the integration tier: bash scripts/test.sh --integration)
def test_loading_a_network_does_not_import_the_compiler(rid_checkpoint, gap_checkpoint):
    """Built on the meta device with initializers skipped: no PyTorch reference kernel runs, so
    ``torch._dynamo`` (1 s of start-up on a 2-core CPU) is not imported; the initializers come back."""
    import subprocess
    import sys

    from facedefense.checkpoints import skipped_init

    script = (
        "import sys\n"
        "from facedefense_amortized.rid import RID\n"
        "from facedefense_amortized.gap_diff import GAPDiff\n"
        f"RID(checkpoint={str(rid_checkpoint[0])!r}, device='cpu', dtype='float32')\n"
        f"GAPDiff(checkpoint={str(gap_checkpoint[0])!r}, device='cpu', dtype='float32')\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    normal = torch.nn.init.normal_
    with skipped_init():
        weight = torch.zeros(3)
        assert torch.nn.init.normal_(weight) is weight and not weight.any()
    assert torch.nn.init.normal_ is normal


def test_int8_dit_matches_the_module(rid_checkpoint):
    from facedefense.checkpoints import read_state_dict
    from facedefense_amortized.networks.dit import DiTEngine, int8_supported

    if not int8_supported():
        pytest.skip("no oneDNN int8 kernels in this torch build, or a CPU without VNNI")
    path, _ = rid_checkpoint
    network = PerturbationDiT(**SMALL_DIT).eval()
    network.load_state_dict(read_state_dict(path))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        exact = torch.tanh(network(x))
        fast = torch.tanh(DiTEngine(network, "int8")(x))
    # the budget scales tanh: 12/255 in [-1, 1] -> at most 6 gray levels; allow 1/6 of that range
    assert (fast - exact).abs().max().item() * 6 <= 1.0
    assert all(isinstance(block, nn.Identity) for block in network.blocks)  # consumed, fp32 released


def test_folded_gap_generator_matches_the_module(gap_network):
    from facedefense_amortized.networks.gap_generator import FoldedGAPGenerator, folding_supported

    if not folding_supported():
        pytest.skip("no oneDNN convolution kernels in this torch build")
    network = gap_network
    x = (torch.rand(1, 3, 512, 768) * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        exact = network(x)
        folded = FoldedGAPGenerator(network)(x)
    assert folded.shape == exact.shape
    assert (folded - exact).abs().max().item() < 1e-4


def test_gap_diff_auto_can_choose_the_int8_engine(wide_gap_checkpoint, face_images, monkeypatch, tmp_path):
    from facedefense import autotune
    from facedefense_amortized.networks.gap_generator import int8_convolution_supported

    if not int8_convolution_supported():
        pytest.skip("no oneDNN int8 convolution kernels in this torch build, or a CPU without VNNI")
    monkeypatch.setenv("FACEDEFENSE_CACHE", str(tmp_path))
    path = str(wide_gap_checkpoint[0])
    with autotune.use_measurement(lambda probes: {name: 0.1 if name == "int8" else 1.0 for name in probes}):
        chosen = GAPDiff(checkpoint=path, device="cpu")
    assert chosen.choice.name == "int8" and chosen.path == "folded int8" and chosen.engine_dtype == torch.float32
    exact = GAPDiff(checkpoint=path, device="cpu", dtype="float32").protect(face_images).images
    assert (chosen.protect(face_images).images - exact).abs().max().item() * 255 <= 2.0 + 1e-4
    assert GAPDiff(checkpoint=path, device="cpu", engine="int8").path == "folded int8"  # forced, no measurement
    assert GAPDiff(checkpoint=path, device="cpu", dtype="float32", engine="module").path == "module"
    with pytest.raises(ConfigError, match="engine must be one of"):
        GAPDiff(checkpoint=path, device="cpu", engine="int4")


def test_transposed_convolution_as_four_output_phases_is_exact():
    from facedefense_amortized.networks.gap_generator import _interleave, _phase_kernels

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 9, 7, generator=generator)
    weight, bias = torch.randn(6, 5, 4, 4, generator=generator), torch.randn(5, generator=generator)
    expected = torch.nn.functional.conv_transpose2d(x, weight, bias, stride=2, padding=1)
    phases = torch.nn.functional.conv2d(x, _phase_kernels(weight), bias.repeat(4), padding=1)
    assert torch.allclose(_interleave(phases), expected, atol=1e-4)


@pytest.mark.parametrize("precision", ["int8", "int8+bf16"])
def test_folded_gap_generator_int8_within_a_gray_level(gap_network, precision):
    from facedefense_amortized.networks.gap_generator import (
        FoldedGAPGenerator,
        folding_supported,
        int8_convolution_supported,
    )

    if not (folding_supported() and int8_convolution_supported()):
        pytest.skip("no oneDNN int8 convolution kernels in this torch build, or a CPU without VNNI")
    network = gap_network
    x = (torch.rand(1, 3, 512, 768) * 2 - 1).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        exact = network(x)
        engine = FoldedGAPGenerator(network, precision)
        fast = engine(x.to(engine.dtype)).float()
    assert engine.dtype == (torch.float32 if precision == "int8" else torch.bfloat16) and fast.shape == exact.shape
    assert engine.int8_layers == 8  # encoder 2-5 and decoder 4-7: the heavy ones
    # 8/255 scales the output: a difference of 1/8 in [-1, 1] is one gray level
    assert (fast - exact).abs().max().item() * 8 <= 1.0


def test_folded_gap_engines_share_converted_layers(gap_network):
    from facedefense_amortized.networks.gap_generator import FoldedGAPGenerator, folded_precisions

    if "int8+bf16" not in folded_precisions():
        pytest.skip("no oneDNN int8 convolution kernels in this torch build, or a CPU without VNNI")
    network = gap_network
    x = (torch.rand(1, 3, 512, 512) * 2 - 1).contiguous(memory_format=torch.channels_last)
    shared: dict = {}
    int8 = FoldedGAPGenerator(network, "int8", shared=shared)
    mixed = FoldedGAPGenerator(network, "int8+bf16", shared=shared)
    assert int8.encoder[1].weight is mixed.encoder[1].weight  # converted once
    assert int8.encoder[1].dtype == torch.float32 and mixed.encoder[1].dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(int8(x), FoldedGAPGenerator(network, "int8")(x))


def test_gap_diff_max_side(gap_checkpoint):
    from facedefense.testing.tiny_models import sample_faces

    path, _ = gap_checkpoint
    with pytest.raises(ConfigError, match="max_side"):
        GAPDiff(checkpoint=str(path), max_side=100, device="cpu")
    images = torch.round(sample_faces(1, 128).clamp(0, 1) * 255) / 255
    images = torch.nn.functional.interpolate(images, size=(600, 520), mode="bilinear").clamp(0, 1)
    capped = GAPDiff(checkpoint=str(path), max_side=512, device="cpu", dtype="float32").protect(images)
    full = GAPDiff(checkpoint=str(path), max_side=0, device="cpu", dtype="float32").protect(images)
    assert capped.images.shape == full.images.shape == images.shape
    assert max(capped.linf) <= 8 + 1e-3 and not torch.equal(capped.images, full.images)


def test_gap_diff_cli_reproduces_reference_within_one_gray_level(tmp_path, gap_checkpoint):
    path, reference = gap_checkpoint
    array = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    ours = protect_photo_with_cli(tmp_path, array, "--method", "gap_diff", "--checkpoint", str(path), "--eps", "8/255")
    with torch.no_grad():  # generate.py: Normalize(0.5), x + 16/255 * G(x), clamp to [-1, 1]
        x = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 127.5 - 1
        expected = to_uint8_array(((x + reference(x) * 16 / 255).clamp(-1, 1) + 1) / 2)
    assert np.abs(ours - expected).max() <= 1
    assert np.abs(ours - array).max() <= 8 and (ours != array).any()
