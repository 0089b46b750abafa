"""Super-resolution x4 (EG3D Hybrid-8X topology with plain convolutions, paper-spec 5.2).

In: feature image ``[B, F, r, r]`` whose first 3 channels are the raw RGB in [-1, 1].
Out: RGB ``[B, 3, 4r, 4r]``. Two blocks, each: FIR [1, 3, 3, 1] up-sampling x2, two 3x3 convs
with LeakyReLU(0.2), and a ToRGB 1x1 conv added to the up-sampled RGB skip path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Upsample2x(nn.Module):
    """FIR up-sampling by 2 with the separable filter [1, 3, 3, 1] (gain 4, so a constant image
    stays constant away from the border), as one depthwise transposed convolution."""

    def __init__(self):
        super().__init__()
        f = torch.tensor([1.0, 3.0, 3.0, 1.0])
        kernel = torch.outer(f, f)
        self.register_buffer("kernel", kernel / kernel.sum() * 4, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight = self.kernel.to(x.dtype).expand(c, 1, 4, 4)
        return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=c)


class SRBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = Upsample2x()
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.torgb = nn.Conv2d(cout, 3, 1)

    def forward(self, x: torch.Tensor, rgb: torch.Tensor):
        x = F.leaky_relu(self.conv0(self.up(x)), 0.2)
        x = F.leaky_relu(self.conv1(x), 0.2)
        return x, self.up(rgb) + self.torgb(x)


class SuperResolution(nn.Module):
    def __init__(self, config):
        super().__init__()
        c0, c1 = config.sr_channels
        self.block0 = SRBlock(config.triplane_channels, c0)
        self.block1 = SRBlock(c0, c1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        rgb = features[:, :3]
        x, rgb = self.block0(features, rgb)
        _, rgb = self.block1(x, rgb)
        return rgb
