"""RID's perturbation network: a DiT (Peebles & Xie, arXiv:2212.09748) with its conditioning removed.

Parameter names and shapes follow the reference ``libs/DiT.py`` of Guohanzhong/RID, so the
official checkpoints load with ``strict=True``. The reference feeds a zero conditioning vector, so
every adaLN-Zero modulation ``Linear(SiLU(0))`` reduces to that layer's bias: the forward pass uses
the biases directly (exactly the same result, no wasted matrix products). The timestep and label
embedders are never used; they exist only so that checkpoints keep their keys.

``PerturbationDiT`` is the trainable network. ``DiTEngine`` is a CPU inference engine
built from it: the constant modulations folded into layer-norm affines and into the output rows of
the gated layers, and the transformer's linear layers run as oneDNN products with prepacked
weights in fp32, bf16 or int8 (see ``ENGINE_PATHS``).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facedefense.errors import ConfigError

#: The released RID architecture.
RID_ARCHITECTURE = {
    "input_size": 512,
    "patch_size": 16,
    "in_channels": 3,
    "hidden_size": 1152,
    "depth": 14,
    "num_heads": 8,
    "mlp_ratio": 4.0,
    "num_classes": 1000,
}


def sincos_position_embedding(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE/DiT layout): (grid * grid, dim), float32, on
    the default device (computed on the CPU: on the meta device PyTorch's reference kernels would
    import its compiler)."""
    half = dim // 2
    frequencies = 1.0 / 10000 ** (torch.arange(half // 2, dtype=torch.float64, device="cpu") / (half / 2))
    coordinates = torch.arange(grid, dtype=torch.float64, device="cpu")
    rows, columns = torch.meshgrid(coordinates, coordinates, indexing="ij")

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * frequencies.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    embedding = torch.cat([encode(columns), encode(rows)], dim=1).float()
    return embedding.to(torch.empty(0).device)  # the device of an enclosing ``with torch.device(...)``


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: (N, C, H, W) -> (N, H*W/p^2, D)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """Linear -> GELU (tanh approximation) -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _modulation(hidden_size: int, chunks: int) -> nn.Sequential:
    return nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, chunks * hidden_size))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero modulation (here: learned constant shift/scale/gate)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = _modulation(hidden_size, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation[1].bias.chunk(6)
        x = x + gate_a * self.attn(self.norm1(x) * (1 + scale_a) + shift_a)
        return x + gate_m * self.mlp(self.norm2(x) * (1 + scale_m) + shift_m)


class FinalLayer(nn.Module):
    """LayerNorm -> modulation -> Linear to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = _modulation(hidden_size, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation[1].bias.chunk(2)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class TimestepEmbedder(nn.Module):
    """Unused by RID (zero conditioning); kept so checkpoints keep their ``t_embedder.*`` keys."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))


class LabelEmbedder(nn.Module):
    """Unused by RID; kept for the ``y_embedder.embedding_table`` key (classes + 1 dropout row)."""

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)


class PerturbationDiT(nn.Module):
    """The RID defender network: image in [-1, 1] -> raw perturbation logits.

    ``delta = scale * tanh(network(x))`` with ``scale`` in [-1, 1] units (applied by the defender).

    Args:
        input_size: image side in pixels (square). Default 512.
        patch_size: patch side. Default 16 (32 x 32 = 1024 tokens at 512).
        in_channels: image channels. Default 3.
        hidden_size: token width. Default 1152.
        depth: transformer blocks. Default 14.
        num_heads: attention heads. Default 8.
        mlp_ratio: MLP width / token width. Default 4.
        num_classes: size of the unused label table (checkpoint compatibility). Default 1000.

    Shape:
        (N, 3, input_size, input_size) in [-1, 1] -> same shape, unbounded.
    """

    def __init__(
        self,
        input_size: int = 512,
        patch_size: int = 16,
        in_channels: int = 3,
        hidden_size: int = 1152,
        depth: int = 14,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.input_size, self.patch_size, self.channels = input_size, patch_size, in_channels
        grid = input_size // patch_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.pos_embed = nn.Parameter(sincos_position_embedding(hidden_size, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels)
        #: Recompute each block's activations in the backward pass (training memory / time trade).
        self.gradient_checkpointing = False
        self.reset_parameters()

    #: Bounds of the architecture's values (``architecture_shapes``): generous around the released
    #: network (512 px, patch 16, width 1152, 14 blocks), so a wrong value fails before allocation.
    LIMITS = {
        "input_size": (1, 4096),
        "patch_size": (1, 512),
        "in_channels": (3, 3),
        "hidden_size": (4, 16384),
        "depth": (1, 256),
        "num_heads": (1, 1024),
        "mlp_ratio": (1 / 64, 64),
        "num_classes": (0, 1_000_000),
    }
    #: Most tokens (patches per image) accepted: attention is quadratic in them (the released network: 1024).
    MAX_TOKENS = 16384

    @classmethod
    def architecture_shapes(cls, architecture: dict[str, Any]) -> dict[str, tuple[int, ...] | None]:
        """Check an architecture (this class's keyword arguments) without building anything, and
        return the shapes of the tensors that pin it down (None: a name that must be absent).

        Raises:
            ConfigError: a value of the wrong type or out of `LIMITS`, ``input_size`` not a
                multiple of ``patch_size``, more than `MAX_TOKENS` patches, or ``hidden_size``
                not a multiple of 4 (the 2-D sine-cosine position embedding) and of ``num_heads``.
        """
        from facedefense_amortized.networks.architecture import checked_values

        values = checked_values(cls, architecture, cls.LIMITS)
        size, patch, hidden, heads = values["input_size"], values["patch_size"], values["hidden_size"], values["num_heads"]
        if size % patch:
            raise ConfigError(f"architecture input_size={size} must be a multiple of patch_size={patch}")
        if (size // patch) ** 2 > cls.MAX_TOKENS:
            raise ConfigError(f"architecture input_size={size}, patch_size={patch} makes {(size // patch) ** 2} patches; at most {cls.MAX_TOKENS}")
        if hidden % 4 or hidden % heads:
            raise ConfigError(
                f"architecture hidden_size={hidden} must be a multiple of 4 (the 2-D position embedding) "
                f"and of num_heads={heads}"
            )
        mlp, channels, depth = int(hidden * values["mlp_ratio"]), values["in_channels"], values["depth"]
        if mlp < 1:
            raise ConfigError(f"architecture mlp_ratio={values['mlp_ratio']} leaves no MLP width at hidden_size={hidden}")
        return {
            "x_embedder.proj.weight": (hidden, channels, patch, patch),
            "pos_embed": (1, (size // patch) ** 2, hidden),
            "y_embedder.embedding_table.weight": (values["num_classes"] + 1, hidden),
            f"blocks.{depth - 1}.mlp.fc1.weight": (mlp, hidden),
            f"blocks.{depth}.mlp.fc1.weight": None,
            "final_layer.linear.weight": (patch * patch * channels, hidden),
        }

    def reset_parameters(self) -> None:
        """DiT initialisation: xavier linears, zero modulation and output, so delta starts at 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        for module in [*self.blocks, self.final_layer]:
            nn.init.zeros_(module.adaLN_modulation[1].weight)
            nn.init.zeros_(module.adaLN_modulation[1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.x_embedder(x) + self.pos_embed
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        patches = self.final_layer(tokens)
        return self.unpatchify(patches)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, H, W)."""
        return unpatchify(patches, self.patch_size, self.channels)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(N, T, p*p*C) tokens of a square grid -> (N, C, H, W) image, channels last within a patch."""
    batch, tokens, _ = patches.shape
    grid, p = math.isqrt(tokens), patch_size
    patches = patches.reshape(batch, grid, grid, p, p, channels)
    return patches.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, grid * p, grid * p)


# --- CPU inference engine -----------------------------------------------------------------------

#: The engine's numeric paths: (linear layers, attention products). ``--dtype auto`` measures them.
ENGINE_PATHS = {
    "float32": ("float32", "float32"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "int8": ("int8", "float32"),
    "int8+bf16": ("int8", "bfloat16"),
}


#: The engine's paths through PyTorch's own kernels (GPUs): fused (flash) attention, fp32 residual stream.
TORCH_ENGINE_PATHS = {
    "float32": ("float32", "float32"),
    "bfloat16": ("bfloat16", "bfloat16"),
    "float16": ("float16", "float16"),
}


def int8_supported() -> bool:
    """Whether this torch build has oneDNN's int8 linear kernels and the CPU runs them without
    saturating (``facedefense.runtime.cpu_runs_int8_exactly``)."""
    from facedefense.runtime import cpu_runs_int8_exactly

    ops = torch.ops.onednn
    return torch.backends.mkldnn.is_available() and cpu_runs_int8_exactly() and all(
        hasattr(ops, name) for name in ("qlinear_prepack", "qlinear_pointwise")
    )


def onednn_linear_supported() -> bool:
    """Whether this torch build has oneDNN's prepacked fp32/bf16 linear kernels."""
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name) for name in ("_reorder_linear_weight", "_linear_pointwise")
    )


def engine_paths() -> list[str]:
    """The engine paths this torch build and CPU can run, best guess first (the bf16 ones need
    ``facedefense.runtime.cpu_runs_onednn_bf16``)."""
    from facedefense.runtime import cpu_runs_onednn_bf16

    paths = []
    if int8_supported():
        paths += ["int8", "int8+bf16"]
    if onednn_linear_supported():
        paths += ["bfloat16", "float32"]
    bf16 = cpu_runs_onednn_bf16()
    return [path for path in paths if bf16 or "bf16" not in path and path != "bfloat16"]


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Dynamic per-tensor asymmetric uint8 quantization: ``x ~ (q - zero_point) * scale``.

    The range always includes 0 and spans 254 steps. ``x`` may be float32 or bfloat16. On CPUs the
    values are converted by PyTorch's fused quantizer (one vectorized pass; its quint8 result is
    read as uint8 without a copy): 2.5x faster than the arithmetic fallback, which computes
    ``x / scale + zero_point + 0.5`` in float32 and truncates to uint8 (the same rounding).
    """
    low, high = (value.item() for value in torch.aminmax(x))
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 254.0
    zero_point = round(-low / scale)
    if x.device.type == "cpu" and _fused_quantizer_works():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor", category=UserWarning)
            quantized = torch.quantize_per_tensor(x.float(), scale, zero_point, torch.quint8)
        return _as_uint8(quantized), scale, zero_point
    # a 1-element float32 tensor (not 0-dim) makes the sum float32 also for bf16 ``x``
    offset = torch.full((1,), zero_point + 0.5, dtype=torch.float32, device=x.device)
    return torch.add(offset, x, alpha=1.0 / scale).to(torch.uint8), scale, zero_point


def _as_uint8(quantized: torch.Tensor) -> torch.Tensor:
    """A plain uint8 tensor on the memory of a quint8 tensor (``int_repr()`` would copy it)."""
    plain = torch.empty(0, dtype=torch.uint8, device=quantized.device)
    return plain.set_(quantized.untyped_storage(), quantized.storage_offset(), quantized.shape, quantized.stride())


@functools.cache
def _fused_quantizer_works() -> bool:
    """Whether ``torch.quantize_per_tensor`` exists (deprecated in PyTorch) and its quint8 result
    can be read as uint8 with the expected values."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = torch.tensor([-1.0, 0.0, 0.26, 1.0])
            q = _as_uint8(torch.quantize_per_tensor(x, 0.5, 2, torch.quint8))
        return q.dtype == torch.uint8 and q.tolist() == [0, 2, 3, 4] and q.add(1).tolist() == [1, 3, 4, 5]
    except Exception:  # removed or changed in this torch: the arithmetic fallback serves
        return False


class Int8Linear:
    """A linear layer with per-output-channel symmetric int8 weights, prepacked for oneDNN.

    Args:
        weight: (out, in) float weights.
        bias: (out,) float bias or None.
        row_scale: optional (out,) factor folded into the weights and bias (e.g. an adaLN gate).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, row_scale: torch.Tensor | None = None):
        weight, bias = _scaled(weight, bias, row_scale)
        self.scales = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        quantized = torch.round(weight / self.scales[:, None]).clamp_(-127, 127).to(torch.int8)
        self.weight = torch.ops.onednn.qlinear_prepack(quantized, None)
        self.zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        self.bias = bias

    def __call__(
        self, x: torch.Tensor, post_op: str = "none", algorithm: str = "", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """(M, in) -> (M, out) in ``dtype`` (float32 or bfloat16, written by the kernel itself);
        ``post_op="gelu", algorithm="tanh"`` fuses GELU."""
        q, scale, zero_point = quantize_activations(x)
        return torch.ops.onednn.qlinear_pointwise(
            q, scale, zero_point, self.weight, self.scales, self.zero_points, self.bias,
            1.0, 0, dtype, post_op, [], algorithm,
        )


class DenseLinear:
    """A float32 or bfloat16 linear layer with weights prepacked once for oneDNN (eager ``F.linear``
    goes through MKL in fp32, about half oneDNN's speed here, and reorders bf16 weights per call).

    Args: as ``Int8Linear``, plus ``dtype`` (float32 or bfloat16) of weights and products.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, row_scale: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        weight, bias = _scaled(weight, bias, row_scale)
        self.dtype, self.bias = dtype, bias.to(dtype)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype), ROW_CHUNK)

    def __call__(
        self, x: torch.Tensor, post_op: str = "none", algorithm: str = "", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """(M, in) -> (M, out) in ``dtype`` (default: the layer's)."""
        y = torch.ops.mkldnn._linear_pointwise(x.to(self.dtype), self.weight, self.bias, post_op, [], algorithm)
        return y if dtype is None else y.to(dtype)


class TorchLinear:
    """A linear layer through PyTorch's own kernels (cuBLAS on a GPU), for engines off the CPU.

    Args: as ``DenseLinear``, plus ``device``; ``dtype`` may also be float16.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, row_scale: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
    ):
        weight, bias = _scaled(weight, bias, row_scale)
        self.dtype = dtype
        self.weight, self.bias = weight.to(device, dtype), bias.to(device, dtype)

    def __call__(
        self, x: torch.Tensor, post_op: str = "none", algorithm: str = "", dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """(M, in) -> (M, out) in ``dtype`` (default: the layer's); ``post_op="gelu"`` applies GELU
        in the form ``algorithm`` (``"tanh"``, or ``"none"``/``""`` for erf)."""
        y = F.linear(x.to(self.dtype), self.weight, self.bias)
        if post_op == "gelu":
            y = F.gelu(y, approximate="tanh" if algorithm == "tanh" else "none")
        return y if dtype is None else y.to(dtype)


def _scaled(weight: torch.Tensor, bias: torch.Tensor | None, row_scale: torch.Tensor | None):
    weight = weight.detach().float()
    bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float()
    if row_scale is not None:
        weight, bias = weight * row_scale.float()[:, None], bias * row_scale.float()
    return weight, bias.clone()  # own memory: the checkpoint's (maybe memory-mapped) file can go


#: Rows per linear-layer call: oneDNN's int8 kernel loses up to half its throughput at 4,096 rows
#: against 1,024 on the CPUs we measured, so larger batches are split (never slower per photo).
ROW_CHUNK = 1024


def _linear(kind: str, weight, bias, row_scale=None, device: torch.device | None = None):
    """The engine's linear layer of precision ``kind``: oneDNN's prepacked kernels on the CPU
    (``device`` None), PyTorch's on ``device``."""
    if device is not None:
        return TorchLinear(weight, bias, row_scale, getattr(torch, kind), device)
    if kind == "int8":
        return Int8Linear(weight, bias, row_scale)
    return DenseLinear(weight, bias, row_scale, getattr(torch, kind))


def _chunked(layer, x: torch.Tensor, *args, rows: int | None) -> torch.Tensor:
    if rows is None or x.shape[0] <= rows:
        return layer(x, *args)
    return torch.cat([layer(part, *args) for part in x.split(rows)])


#: Score elements per bf16 attention call (64 MiB of bf16 scores): larger batches are split.
SCORE_CHUNK = 32 * 2**20


def _attention(qkv: torch.Tensor) -> torch.Tensor:
    """Softmax attention of (3, N, heads, T, d) queries (already scaled), keys and values.

    fp32, and every precision off the CPU, go through PyTorch's fused kernel. bf16 on the CPU does
    not: there the fused kernel runs bf16 no faster than fp32 (26 ms per RID block on an
    AVX512-BF16 EPYC), while two bf16 matrix products
    around a bf16 softmax (fp32 statistics inside) take 9 ms on contiguous operands, at the same
    accuracy. Their (N, heads, T, T) scores are computed ``SCORE_CHUNK`` elements at a time.
    """
    if qkv.dtype == torch.float32 or qkv.device.type != "cpu":  # GPUs: flash attention, any precision
        return F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=1.0)
    qkv = qkv.contiguous()
    batch, heads, tokens = qkv.shape[1:4]
    step = max(1, SCORE_CHUNK // (heads * tokens * tokens))
    parts = []
    for start in range(0, batch, step):
        q, k, v = qkv[:, start : start + step].unbind(0)
        parts.append(torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)), -1), v))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


#: The first MLP layer's GELU in the int8 paths: its erf form (oneDNN's algorithm "none"), 5% faster
#: in the fused int8 kernel than the network's tanh form. The forms differ by at most 4.7e-4 (at
#: x = 2.7), under half a step of the next layer's 8-bit input (range / 254) once the activations span
#: 0.25 or more. The float32 and bfloat16 paths keep the tanh form.
GELU_INT8 = "none"


class _EngineBlock:
    """One ``DiTBlock`` in the engine's form; ``device`` None: oneDNN's CPU kernels, else
    PyTorch's kernels on ``device``."""

    def __init__(self, block: DiTBlock, linears: str, attention: str, device: torch.device | None = None) -> None:
        modulation = block.adaLN_modulation[1].bias.detach().float().clone()
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = modulation.chunk(6)
        self.norm1 = ((1 + scale_a).to(device), shift_a.to(device))
        self.norm2 = ((1 + scale_m).to(device), shift_m.to(device))
        # oneDNN's int8 kernel prefers ROW_CHUNK-row calls; PyTorch's GPU kernels the whole batch
        self.split_rows = device is None
        self.heads = block.attn.num_heads
        self.attention_dtype = getattr(torch, attention)
        self.gelu = GELU_INT8 if linears == "int8" else "tanh"
        # 1/sqrt(head dim) folded into the query rows of the qkv layer: one multiply less per call.
        dim = block.attn.qkv.weight.shape[1]
        query_scale = torch.ones(3 * dim)
        query_scale[:dim] = (dim // self.heads) ** -0.5
        self.qkv = _linear(linears, block.attn.qkv.weight, block.attn.qkv.bias, query_scale, device)
        self.proj = _linear(linears, block.attn.proj.weight, block.attn.proj.bias, gate_a, device)
        self.fc1 = _linear(linears, block.mlp.fc1.weight, block.mlp.fc1.bias, None, device)
        self.fc2 = _linear(linears, block.mlp.fc2.weight, block.mlp.fc2.bias, gate_m, device)

    def __call__(self, h: torch.Tensor, batch: int) -> torch.Tensor:
        dim, rows = h.shape[-1], ROW_CHUNK if self.split_rows else None
        x = F.layer_norm(h, (dim,), *self.norm1, eps=1e-6)
        qkv = _chunked(self.qkv, x, "none", "", self.attention_dtype, rows=rows)
        qkv = qkv.view(batch, -1, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        x = _attention(qkv).transpose(1, 2).reshape(-1, dim)
        # on the CPU the rest runs ROW_CHUNK rows at a time, adding into the residual stream in
        # place: a batch never concatenates its (N*T, 4*dim) MLP activations
        for part, attended in zip(h.split(rows or len(h)), x.split(rows or len(x))):
            part.add_(self.proj(attended))
        for part in h.split(rows or len(h)):
            x = F.layer_norm(part, (dim,), *self.norm2, eps=1e-6)
            part.add_(self.fc2(self.fc1(x, "gelu", self.gelu)))
        return h


class DiTEngine:
    """Inference engine for a ``PerturbationDiT``: same function, several numeric paths.

    The constant adaLN modulations become layer-norm affines, the gates are folded into the rows of
    the attention output and second MLP layers, GELU is fused into the first MLP layer, and the
    qkv, attention-output and MLP products run through oneDNN with weights prepacked once, in the
    precision of ``path`` (see ``ENGINE_PATHS``): ``"float32"`` (fp32 everywhere; oneDNN's
    kernels run about twice as fast as eager PyTorch's MKL ones), ``"bfloat16"`` (bf16 linears and
    attention products, fp32 residual stream and softmax statistics), ``"int8"`` (symmetric
    per-channel int8 weights, dynamic per-tensor activations, fp32 attention) and ``"int8+bf16"``
    (int8 linears, bf16 attention products; see ``_attention``). The attention scale is folded
    into the query rows of the qkv layer. The patch embedding (as a linear layer over flattened
    patches) and the output layer run in the linear layers' precision; in the int8 paths the fused
    GELU takes its erf form (``GELU_INT8``). Which path is fastest depends on the CPU:
    ``--dtype auto`` measures them (``facedefense.autotune``).

    Off the CPU (``kernels="torch"``, the default there) the same folded form runs on PyTorch's own
    kernels on ``device``: whole-batch products, fused (flash) attention, paths
    ``TORCH_ENGINE_PATHS``. ``kernels="torch"`` also runs on the CPU (how the tests check it).

    ``network`` is consumed: its blocks are released one by one as they are converted, so the fp32
    weights and the engine's are never both held in full (nor is a memory-mapped checkpoint kept
    mapped). Not trainable; not an ``nn.Module``.

    Shape:
        (N, C, input_size, input_size) float32 in [-1, 1] -> same shape, float32, unbounded (the
        network's raw output, before ``tanh``).
    """

    def __init__(
        self, network: PerturbationDiT, path: str = "int8", device: torch.device | str = "cpu", kernels: str | None = None
    ) -> None:
        device = torch.device(device)
        kernels = kernels or ("onednn" if device.type == "cpu" else "torch")
        if kernels not in ("onednn", "torch") or (kernels == "onednn" and device.type != "cpu"):
            raise ValueError(f"kernels must be 'onednn' (CPU only) or 'torch', got {kernels!r} on {device.type}")
        known = ENGINE_PATHS if kernels == "onednn" else TORCH_ENGINE_PATHS
        if path not in known:
            raise ValueError(f"unknown engine path {path!r} for {kernels} kernels; expected one of {', '.join(known)}")
        if kernels == "onednn" and path not in engine_paths():
            raise ValueError(f"engine path {path!r} needs oneDNN kernels this torch build or CPU lacks")
        linears, attention = known[path]
        target = None if kernels == "onednn" else device  # where PyTorch's kernels run (None: oneDNN's)
        network = network.float()

        def own(tensor: torch.Tensor) -> torch.Tensor:  # a copy, so no tensor keeps the file mapped
            return tensor.detach().clone().to(device)

        self.path, self.device = path, device
        self.split_rows = target is None  # see _EngineBlock
        self.patch_size, self.channels = network.patch_size, network.channels
        # the patch embedding (a stride-p convolution) as one linear layer over flattened patches; it
        # and the output layer run in the precision of the other linear layers
        projection = network.x_embedder.proj
        self.patch_embed = _linear(linears, projection.weight.flatten(1), projection.bias, None, target)
        self.pos_embed = own(network.pos_embed)
        self.blocks = []
        for index in range(len(network.blocks)):
            self.blocks.append(_EngineBlock(network.blocks[index], linears, attention, target))
            network.blocks[index] = nn.Identity()  # release the fp32 weights now
        final = network.final_layer
        shift, scale = own(final.adaLN_modulation[1].bias).chunk(2)
        self.final_norm = (1 + scale, shift)
        self.final_linear = _linear(linears, final.linear.weight, final.linear.bias, None, target)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        p = self.patch_size
        patches = x.float().reshape(batch, channels, height // p, p, width // p, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(-1, channels * p * p)  # (N*T, C*p*p), token order
        rows = ROW_CHUNK if self.split_rows else None
        tokens = _chunked(self.patch_embed, patches, "none", "", torch.float32, rows=rows)
        dim = tokens.shape[-1]
        h = (tokens.view(batch, -1, dim) + self.pos_embed).reshape(-1, dim)
        for block in self.blocks:
            h = block(h, batch)
        h = F.layer_norm(h, (dim,), *self.final_norm, eps=1e-6)
        patches = _chunked(self.final_linear, h, "none", "", torch.float32, rows=rows)
        return unpatchify(patches.view(batch, h.shape[0] // batch, -1), self.patch_size, self.channels)


def block_probe(network: PerturbationDiT, path: str, batch: int = 1):
    """A callable running one transformer block of ``network`` on ``path`` at the network's token
    count (random activations): the representative problem ``--dtype auto`` times."""
    block = _EngineBlock(network.blocks[0], *ENGINE_PATHS[path])  # copies the weights it needs
    tokens = (network.input_size // network.patch_size) ** 2
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(batch * tokens, network.pos_embed.shape[-1], generator=generator)
    return lambda: block(h.clone(), batch)
