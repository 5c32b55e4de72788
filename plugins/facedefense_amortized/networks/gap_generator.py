"""GAP-Diff's perturbation generator (Zhu et al., NDSS 2025): a pix2pix-style U-Net after
Poursaeed et al.'s Generative Adversarial Perturbations.

Parameter names and shapes follow ``models/Generator.py`` of AIASLab/GAP-Diff so the released
``G_per16_pretrain.pth`` loads with ``strict=True``. As in the reference, the batch norms are shared:
``norm8`` serves e4-e7 and d1-d4, ``norm4`` e3 and d5, ``norm2`` e2 and d6, ``norm`` d7.

``GAPGenerator`` is the trainable network; ``FoldedGAPGenerator`` is an eval-mode CPU
inference engine built from it (batch norms folded into the convolutions, weights prepacked for
oneDNN, activations fused).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class ResnetBlock(nn.Module):
    """Reflect-padded 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=False),
            nn.BatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class GAPGenerator(nn.Module):
    """Image in [-1, 1] -> perturbation direction in [-1, 1] (tanh output).

    Args:
        in_channels, out_channels: 3 and 3.
        ngf: base width. Default 64 (about 73M parameters).

    Shape:
        (N, 3, H, W) with H, W multiples of 256 and at least 512 (eight stride-2 convolutions,
        then reflection padding at the 2x2 bottleneck) -> same shape.
    """

    #: Input sides must be multiples of this, and at least ``min_size``.
    multiple = 256
    min_size = 512

    #: Bounds of the architecture's values (``architecture_shapes``; the released generator: ngf 64).
    LIMITS = {"in_channels": (3, 3), "out_channels": (3, 3), "ngf": (1, 512)}

    @classmethod
    def architecture_shapes(cls, architecture: dict[str, Any]) -> dict[str, tuple[int, ...] | None]:
        """Check an architecture (this class's keyword arguments) without building anything, and
        return the shapes of the tensors that pin it down.

        Raises:
            ConfigError: a value of the wrong type or out of `LIMITS`.
        """
        from facedefense_amortized.networks.architecture import checked_values

        values = checked_values(cls, architecture, cls.LIMITS)
        ngf = values["ngf"]
        return {"conv1.weight": (ngf, values["in_channels"], 4, 4), "dconv8.weight": (ngf * 2, values["out_channels"], 4, 4)}

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64) -> None:
        super().__init__()
        widths = [ngf, ngf * 2, ngf * 4, ngf * 8, ngf * 8, ngf * 8, ngf * 8, ngf * 8]
        sources = [in_channels, *widths[:-1]]
        for index, (source, width) in enumerate(zip(sources, widths), start=1):
            setattr(self, f"conv{index}", nn.Conv2d(source, width, 4, 2, 1))
        decoder = [
            (ngf * 8, ngf * 8),
            (ngf * 16, ngf * 8),
            (ngf * 16, ngf * 8),
            (ngf * 16, ngf * 8),
            (ngf * 16, ngf * 4),
            (ngf * 8, ngf * 2),
            (ngf * 4, ngf),
            (ngf * 2, out_channels),
        ]
        for index, (source, width) in enumerate(decoder, start=1):
            setattr(self, f"dconv{index}", nn.ConvTranspose2d(source, width, 4, 2, 1))
        self.bottle_neck = nn.Sequential(*(ResnetBlock(ngf * 8) for _ in range(4)))
        self.norm = nn.BatchNorm2d(ngf)
        self.norm2 = nn.BatchNorm2d(ngf * 2)
        self.norm4 = nn.BatchNorm2d(ngf * 4)
        self.norm8 = nn.BatchNorm2d(ngf * 8)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The reference applies LeakyReLU in place before each convolution, so the skip connections
        # carry the *activated* encoder features: a1..a7 below.
        a1 = F.leaky_relu(self.conv1(x), 0.2)
        a2 = F.leaky_relu(self.norm2(self.conv2(a1)), 0.2)
        a3 = F.leaky_relu(self.norm4(self.conv3(a2)), 0.2)
        a4 = F.leaky_relu(self.norm8(self.conv4(a3)), 0.2)
        a5 = F.leaky_relu(self.norm8(self.conv5(a4)), 0.2)
        a6 = F.leaky_relu(self.norm8(self.conv6(a5)), 0.2)
        a7 = F.leaky_relu(self.norm8(self.conv7(a6)), 0.2)
        d = self.bottle_neck(self.conv8(a7))
        d = self.dropout(self.norm8(self.dconv1(F.selu(d))))
        d = self.dropout(self.norm8(self.dconv2(F.selu(torch.cat([d, a7], 1)))))
        d = self.dropout(self.norm8(self.dconv3(F.selu(torch.cat([d, a6], 1)))))
        d = self.norm8(self.dconv4(F.selu(torch.cat([d, a5], 1))))
        d = self.norm4(self.dconv5(F.selu(torch.cat([d, a4], 1))))
        d = self.norm2(self.dconv6(F.selu(torch.cat([d, a3], 1))))
        d = self.norm(self.dconv7(F.selu(torch.cat([d, a2], 1))))
        d = self.dconv8(F.selu(torch.cat([d, a1], 1)))
        return torch.tanh(d)


# --- CPU inference ------------------------------------------------------------------------------


def folding_supported() -> bool:
    """Whether this torch build has the oneDNN convolution kernels ``FoldedGAPGenerator`` uses."""
    ops = torch.ops.mkldnn
    names = (
        "_convolution_pointwise",
        "_convolution_transpose_pointwise",
        "_reorder_convolution_weight",
        "_reorder_convolution_transpose_weight",
    )
    return torch.backends.mkldnn.is_available() and all(hasattr(ops, name) for name in names)


def int8_convolution_supported() -> bool:
    """Whether this torch build has oneDNN's int8 convolution kernels and the CPU runs them without
    saturating (``facedefense.runtime.cpu_runs_int8_exactly``)."""
    from facedefense.runtime import cpu_runs_int8_exactly

    ops = torch.ops.onednn
    return torch.backends.mkldnn.is_available() and cpu_runs_int8_exactly() and all(hasattr(ops, n) for n in ("qconv_prepack", "qconv2d_pointwise"))


def folded_precisions() -> list[str]:
    """The ``FoldedGAPGenerator`` precisions this torch build and CPU can run (int8 ones need
    oneDNN's int8 convolutions, x86 CPUs; bf16 ones ``facedefense.runtime.cpu_runs_onednn_bf16``);
    empty without oneDNN."""
    from facedefense.runtime import cpu_runs_onednn_bf16

    if not folding_supported():
        return []
    names = ["float32", "bfloat16"] + (["int8", "int8+bf16"] if int8_convolution_supported() else [])
    return [name for name in names if cpu_runs_onednn_bf16() or "bf" not in name]


def _folded(conv: nn.Conv2d | nn.ConvTranspose2d, norm: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of ``conv`` with the eval-mode batch norm after it folded in (fp32)."""
    weight = conv.weight.detach().float()
    out_axis = 1 if isinstance(conv, nn.ConvTranspose2d) else 0
    bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(weight.shape[out_axis])
    if norm is not None:
        factor = norm.weight.detach().float() / torch.sqrt(norm.running_var.float() + norm.eps)
        shape = [1] * weight.dim()
        shape[out_axis] = -1
        weight = weight * factor.view(shape)
        bias = (bias - norm.running_mean.float()) * factor + norm.bias.detach().float()
    return weight, bias


#: For a 4x4, stride-2, padding-1 transposed convolution: the kernel rows (columns) that output
#: phase 0 and phase 1 take from input rows (i-1, i) and (i, i+1).
_PHASE_TAPS = ([3, 1], [2, 0])


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """(in, out, 4, 4) transposed-convolution weights -> (4 * out, in, 2, 2) weights of one stride-1
    convolution (padding 1) whose output channels are the four output phases (row, column parity)."""
    phases = [weight[:, :, _PHASE_TAPS[a]][:, :, :, _PHASE_TAPS[b]] for a in (0, 1) for b in (0, 1)]
    return torch.cat([kernel.transpose(0, 1) for kernel in phases])


def _interleave(phases: torch.Tensor) -> torch.Tensor:
    """(N, 4 * C, H + 1, W + 1) phase outputs -> (N, C, 2H, 2W): phase (a, b) fills pixels
    (2i + a, 2j + b) from its position (i + a, j + b)."""
    batch, channels = phases.shape[0], phases.shape[1] // 4
    height, width = phases.shape[-2] - 1, phases.shape[-1] - 1
    out = torch.empty(batch, channels, 2 * height, 2 * width, dtype=phases.dtype, memory_format=torch.channels_last)
    for index, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[:, :, a::2, b::2] = phases[:, index * channels : (index + 1) * channels, a : a + height, b : b + width]
    return out


class _Int8Conv:
    """A convolution with its batch norm folded in, as symmetric per-channel int8 weights prepacked
    for oneDNN, on dynamically quantized (per-tensor, uint8) activations; out in ``dtype`` (float32
    or bfloat16, written by the kernel).

    A 4x4 stride-2 transposed convolution becomes one stride-1 2x2 convolution computing its four
    output phases (the same multiply-adds, where oneDNN has int8 kernels), then interleaved.
    ``activation`` (relu, leaky_relu, tanh) follows the convolution.
    """

    def __init__(
        self, conv, norm, input_shape: list[int], activation: str = "none", scalars: tuple = (),
        dtype: torch.dtype = torch.float32, folded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        from facedefense_amortized.networks.dit import quantize_activations

        self.quantize, self.dtype = quantize_activations, dtype
        weight, self.bias = folded or _folded(conv, norm)
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        if self.transposed:
            weight, self.bias = _phase_form(conv, weight, self.bias)
            self.stride, self.padding = [1, 1], [1, 1]
        else:
            self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.scales = weight.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127.0
        quantized = torch.round(weight / self.scales[:, None, None, None]).clamp_(-127, 127).to(torch.int8)
        self.weight = torch.ops.onednn.qconv_prepack(
            quantized, self.scales, 1.0, 0, self.stride, self.padding, [1, 1], 1, input_shape
        )
        self.zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        self.activation, self.scalars = activation, scalars

    def with_output(self, dtype: torch.dtype) -> _Int8Conv:
        """The same prepacked layer writing ``dtype`` (shares the weights)."""
        twin = copy.copy(self)
        twin.dtype = dtype
        return twin

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # quantize the channels-last memory as it lies (NHWC-contiguous): no layout copy
        q, scale, zero_point = self.quantize(x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1))
        y = torch.ops.onednn.qconv2d_pointwise(
            q.permute(0, 3, 1, 2), scale, zero_point, self.weight, self.scales,
            self.zero_points, self.bias, self.stride, self.padding, [1, 1], 1, 1.0, 0, self.dtype,
            "relu" if self.activation == "relu" else "none", [], "",
        )
        if self.transposed:
            y = _interleave(y)
        if self.activation == "leaky_relu":
            return F.leaky_relu_(y, *self.scalars)
        return y.tanh_() if self.activation == "tanh" else y


def _phase_form(
    conv: nn.ConvTranspose2d, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded ``weight`` and ``bias`` of ``conv`` as those of its four-phase stride-1
    convolution (padding 1): see ``_phase_kernels``, ``_interleave``."""
    if conv.kernel_size != (4, 4) or conv.stride != (2, 2) or conv.padding != (1, 1):
        raise ValueError("transposed convolutions as output phases: only kernel 4, stride 2, padding 1")
    return _phase_kernels(weight), bias.repeat(4)


class _PackedConv:
    """A (transposed) convolution with its eval-mode batch norm folded in, weights prepacked.

    ``phases=True`` runs a 4x4 stride-2 transposed convolution as one stride-1 convolution over its
    four output phases, then interleaves them: oneDNN's transposed kernel is slow for very few
    output channels (the 3-channel output layer: 6.4 ms against 2.5 ms in bf16 at 512x512).
    """

    def __init__(
        self,
        conv: nn.Conv2d | nn.ConvTranspose2d,
        norm: nn.BatchNorm2d | None,
        input_shape: list[int],
        dtype: torch.dtype,
        activation: str = "none",
        scalars: tuple[float, ...] = (),
        phases: bool = False,
        folded: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        weight, bias = folded or _folded(conv, norm)
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.phases = phases and self.transposed
        if self.phases:
            weight, bias = _phase_form(conv, weight, bias)
            self.transposed, self.padding, self.stride = False, [1, 1], [1, 1]
        self.activation, self.scalars = activation, list(scalars)
        weight, self.bias = weight.to(dtype), bias.to(dtype).clone()  # no view into the checkpoint
        mkldnn = torch.ops.mkldnn
        if self.transposed:
            self.weight = mkldnn._reorder_convolution_transpose_weight(
                weight, self.padding, [0, 0], self.stride, [1, 1], 1, input_shape
            )
        else:
            self.weight = mkldnn._reorder_convolution_weight(weight, self.padding, self.stride, [1, 1], 1, input_shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mkldnn = torch.ops.mkldnn
        if self.transposed:
            return mkldnn._convolution_transpose_pointwise(
                x, self.weight, self.bias, self.padding, [0, 0], self.stride, [1, 1], 1,
                self.activation, self.scalars, "",
            )
        y = mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, [1, 1], 1, self.activation, self.scalars, ""
        )
        return _interleave(y) if self.phases else y


#: ``FoldedGAPGenerator`` precisions: (activations, whether the heavy convolutions run in int8).
FOLDED_PRECISIONS = {
    "float32": (torch.float32, False),
    "bfloat16": (torch.bfloat16, False),
    "int8": (torch.float32, True),
    "int8+bf16": (torch.bfloat16, True),
}

#: In the int8 precisions, a convolution runs in int8 when it does at least this share of the
#: network's multiply-adds: below it, quantizing the input costs more than the int8 kernel saves.
INT8_MIN_SHARE = 1 / 32

_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def _selu_concat(d: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``selu(cat([d, skip], 1))``, each half written straight into the channels-last result."""
    channels = d.shape[1]
    out = torch.empty(
        d.shape[0], channels + skip.shape[1], *d.shape[2:], dtype=d.dtype, memory_format=torch.channels_last
    )
    torch.ops.aten.elu.out(d, _SELU_ALPHA, _SELU_SCALE, 1.0, out=out[:, :channels])
    torch.ops.aten.elu.out(skip, _SELU_ALPHA, _SELU_SCALE, 1.0, out=out[:, channels:])
    return out


class FoldedGAPGenerator:
    """Eval-mode CPU inference engine for a ``GAPGenerator`` (same function, faster).

    Each batch norm (eval statistics) is folded into the convolution before it, the weights are
    reordered once into oneDNN's blocked layout (eager PyTorch reorders them at every call), and the
    LeakyReLU, ReLU and final tanh run inside the convolutions; the 3-channel output layer runs as
    four output phases (``_PackedConv``). Dropout is the identity in eval mode. fp32 results
    match the module to about 1e-6.

    Precisions (``FOLDED_PRECISIONS``): ``"float32"``; ``"bfloat16"`` (bf16 weights and
    activations); ``"int8"`` and ``"int8+bf16"``: the heavy convolutions (each at least
    ``INT8_MIN_SHARE`` of the work, never the 3-channel input and output layers, which carry
    most of the error) in int8 (``_Int8Conv``, transposed ones as four output phases), the
    rest and the activations in fp32 or bf16. Which is fastest depends on the CPU: ``--dtype auto``
    measures. Not trainable; not an ``nn.Module``.

    Args:
        generator: the network (read, not modified).
        dtype: a key of ``FOLDED_PRECISIONS`` or ``torch.float32`` / ``torch.bfloat16``.
        input_size: the side the weights' layout is tuned for (any size works).
        shared: optional dict through which engines built from the same generator share their
            converted layers (``--dtype auto`` builds every precision to measure them).

    Shape:
        (N, 3, H, W) channels-last, in ``dtype`` (the activations' precision), in [-1, 1], H and
        W as for ``GAPGenerator`` -> (N, 3, H, W) in [-1, 1].

    Examples:
        >>> engine = FoldedGAPGenerator(GAPGenerator().eval(), "int8+bf16")
        >>> x = torch.zeros(1, 3, 512, 512, dtype=engine.dtype).contiguous(memory_format=torch.channels_last)
        >>> engine(x).shape
        torch.Size([1, 3, 512, 512])
    """

    def __init__(
        self,
        generator: GAPGenerator,
        dtype: torch.dtype | str = torch.float32,
        input_size: int = 512,
        shared: dict | None = None,
    ) -> None:
        name = str(dtype).removeprefix("torch.")
        if name not in FOLDED_PRECISIONS:
            raise ValueError(f"unknown precision {dtype!r}; expected one of {', '.join(FOLDED_PRECISIONS)}")
        self.precision = name
        self.dtype, int8 = FOLDED_PRECISIONS[name]  # ``dtype``: what the engine takes and gives
        g, side = generator, input_size
        specs = []  # (group, layer, norm, input shape, activation, scalars, multiply-adds)
        encoder_norms = [None, g.norm2, g.norm4, g.norm8, g.norm8, g.norm8, g.norm8, None]
        for index, norm in enumerate(encoder_norms, start=1):
            layer = getattr(g, f"conv{index}")
            leaky = index < 8
            side //= 2
            macs = side * side * layer.out_channels * layer.in_channels * 16
            specs.append(("encoder", layer, norm, [1, layer.in_channels, 2 * side, 2 * side],
                          "leaky_relu" if leaky else "none", (0.2,) if leaky else (), macs))
        for block in g.bottle_neck:
            layers = block.conv_block
            shape = [1, layers[1].in_channels, side + 2, side + 2]
            macs = side * side * layers[1].out_channels * layers[1].in_channels * 9
            specs.append(("bottleneck", layers[1], layers[2], shape, "relu", (), macs))
            specs.append(("bottleneck", layers[5], layers[6], shape, "none", (), macs))
        decoder_norms = [g.norm8, g.norm8, g.norm8, g.norm8, g.norm4, g.norm2, g.norm, None]
        for index, norm in enumerate(decoder_norms, start=1):
            layer = getattr(g, f"dconv{index}")
            macs = (2 * side) ** 2 * layer.out_channels * layer.in_channels * 4  # 4 of 16 taps per output
            specs.append(("decoder", layer, norm, [1, layer.in_channels, side, side],
                          "tanh" if index == 8 else "none", (), macs))
            side *= 2
        total = sum(spec[-1] for spec in specs)
        edges = (specs[0][1], specs[-1][1])  # 3 channels in / out: little work, most of the error
        layers: dict[str, list] = {"encoder": [], "bottleneck": [], "decoder": []}
        shared = {} if shared is None else shared
        for index, (group, layer, norm, shape, activation, scalars, macs) in enumerate(specs):
            kind = "int8" if int8 and macs >= INT8_MIN_SHARE * total and layer not in edges else self.dtype
            key = (id(generator), input_size, index, kind)
            if key not in shared:
                fold_key = (id(generator), index, "folded")
                if fold_key not in shared:
                    shared[fold_key] = _folded(layer, norm)
                folded = shared[fold_key]
                if kind == "int8":
                    shared[key] = _Int8Conv(layer, norm, shape, activation, scalars, folded=folded)
                else:
                    phases = layer is edges[1]
                    shared[key] = _PackedConv(layer, norm, shape, kind, activation, scalars, phases, folded)
            conv = shared[key]
            layers[group].append(conv.with_output(self.dtype) if kind == "int8" else conv)
        self.encoder, self.decoder = layers["encoder"], layers["decoder"]
        self.bottleneck = list(zip(layers["bottleneck"][::2], layers["bottleneck"][1::2]))
        #: How many convolutions run in int8 (0 for the float precisions).
        self.int8_layers = sum(isinstance(conv, _Int8Conv) for group in layers.values() for conv in group)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for conv in self.encoder:
            x = conv(x)
            skips.append(x)
        d = skips.pop()
        for first, second in self.bottleneck:
            d = d + second(F.pad(first(F.pad(d, (1, 1, 1, 1), mode="reflect")), (1, 1, 1, 1), mode="reflect"))
        d = self.decoder[0](F.selu(d))
        for conv in self.decoder[1:]:
            d = conv(_selu_concat(d, skips.pop()))
        return d
