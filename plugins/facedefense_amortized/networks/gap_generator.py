"""GAP-Diff's perturbation generator (Zhu et al., NDSS 2025): a pix2pix-style U-Net after
Poursaeed et al.'s Generative Adversarial Perturbations.

Parameter names and shapes follow ``models/Generator.py`` of AIASLab/GAP-Diff so the released
``G_per16_pretrain.pth`` loads with ``strict=True``. As in the reference, the batch norms are shared:
``norm8`` serves e4-e7 and d1-d4, ``norm4`` e3 and d5, ``norm2`` e2 and d6, ``norm`` d7.

:class:`GAPGenerator` is the trainable network; :class:`FoldedGAPGenerator` is an eval-mode CPU
inference engine built from it (batch norms folded into the convolutions, weights prepacked for
oneDNN, activations fused).
"""

from __future__ import annotations

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
    """Whether this torch build has the oneDNN convolution kernels :class:`FoldedGAPGenerator` uses."""
    ops = torch.ops.mkldnn
    names = (
        "_convolution_pointwise",
        "_convolution_transpose_pointwise",
        "_reorder_convolution_weight",
        "_reorder_convolution_transpose_weight",
    )
    return torch.backends.mkldnn.is_available() and all(hasattr(ops, name) for name in names)


class _PackedConv:
    """A (transposed) convolution with its eval-mode batch norm folded in, weights prepacked."""

    def __init__(
        self,
        conv: nn.Conv2d | nn.ConvTranspose2d,
        norm: nn.BatchNorm2d | None,
        input_shape: list[int],
        dtype: torch.dtype,
        activation: str = "none",
        scalars: tuple[float, ...] = (),
    ) -> None:
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        weight = conv.weight.detach().float()
        out_axis = 1 if self.transposed else 0
        bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(weight.shape[out_axis])
        if norm is not None:
            factor = norm.weight.detach().float() / torch.sqrt(norm.running_var.float() + norm.eps)
            shape = [1] * weight.dim()
            shape[out_axis] = -1
            weight = weight * factor.view(shape)
            bias = (bias - norm.running_mean.float()) * factor + norm.bias.detach().float()
        self.padding, self.stride = list(conv.padding), list(conv.stride)
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
        return mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, [1, 1], 1, self.activation, self.scalars, ""
        )


class FoldedGAPGenerator:
    """Eval-mode CPU inference engine for a :class:`GAPGenerator` (same function, faster).

    Each batch norm (eval statistics) is folded into the convolution before it, the weights are
    reordered once into oneDNN's blocked layout (eager PyTorch reorders them at every call), and the
    LeakyReLU, ReLU and final tanh run inside the convolutions. Dropout is the identity in eval
    mode. fp32 results match the module to about 1e-6; ``dtype=torch.bfloat16`` is for CPUs with
    AMX. Not trainable; not an ``nn.Module``.

    Args:
        generator: the network (read, not modified).
        dtype: float32 or bfloat16 weights and activations.
        input_size: the side the weights' layout is tuned for (any size works).

    Shape:
        (N, 3, H, W) channels-last, ``dtype``, in [-1, 1], H and W as for :class:`GAPGenerator`
        -> (N, 3, H, W) in [-1, 1].
    """

    def __init__(self, generator: GAPGenerator, dtype: torch.dtype = torch.float32, input_size: int = 512) -> None:
        g, side = generator, input_size
        encoder_norms = [None, g.norm2, g.norm4, g.norm8, g.norm8, g.norm8, g.norm8, None]
        self.encoder = []
        for index, norm in enumerate(encoder_norms, start=1):
            conv = getattr(g, f"conv{index}")
            leaky = index < 8
            self.encoder.append(
                _PackedConv(
                    conv, norm, [1, conv.in_channels, side, side], dtype,
                    "leaky_relu" if leaky else "none", (0.2,) if leaky else (),
                )
            )
            side //= 2
        self.bottleneck = []
        for block in g.bottle_neck:
            layers = block.conv_block
            shape = [1, layers[1].in_channels, side + 2, side + 2]
            self.bottleneck.append(
                (_PackedConv(layers[1], layers[2], shape, dtype, "relu"), _PackedConv(layers[5], layers[6], shape, dtype))
            )
        decoder_norms = [g.norm8, g.norm8, g.norm8, g.norm8, g.norm4, g.norm2, g.norm, None]
        self.decoder = []
        for index, norm in enumerate(decoder_norms, start=1):
            conv = getattr(g, f"dconv{index}")
            activation = "tanh" if index == 8 else "none"
            self.decoder.append(_PackedConv(conv, norm, [1, conv.in_channels, side, side], dtype, activation))
            side *= 2

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
            d = conv(F.selu(torch.cat([d, skips.pop()], 1), inplace=True))
        return d
