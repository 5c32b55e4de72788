"""GAP-Diff's perturbation generator (Zhu et al., NDSS 2025): a pix2pix-style U-Net after
Poursaeed et al.'s Generative Adversarial Perturbations.

Parameter names and shapes follow ``models/Generator.py`` of AIASLab/GAP-Diff so the released
``G_per16_pretrain.pth`` loads with ``strict=True``. As in the reference, the batch norms are shared:
``norm8`` serves e4-e7 and d1-d4, ``norm4`` e3 and d5, ``norm2`` e2 and d6, ``norm`` d7.
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
