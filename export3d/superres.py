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
    stays constant away from the border) and zero padding, as EG3D's upfirdn2d.

    Each output pixel is 3/4 of its nearest input pixel plus 1/4 of the next one across, which
    is bilinear interpolation with half-pixel centres; the only difference is at the border,
    where the filter meets the zero padding (3/4 of the edge pixel) and bilinear clamps (all of
    it). So: bilinear, then the first and last output row and column times 3/4. The same
    numbers as a depthwise transposed convolution with the 4 x 4 kernel (the test keeps that
    form as the reference), but grouped transposed convolutions are one of the slow paths of
    PyTorch's CUDA convolutions (pytorch/pytorch#47341 reports a depthwise ConvTranspose1d 25x
    slower than the dense one) while bilinear resizing is a plain memory-bound kernel,
    channels-last included, and ONNX ``Resize`` in the exported graph.

    ``size``: the input's side when the model knows it (it does: the render size, then twice
    that), so the border gain is built once, as a buffer that follows the module's device and
    dtype, not on every call (four a frame); another size builds its own."""

    def __init__(self, size: int | None = None):
        super().__init__()
        gain = border_gain(2 * size, 2 * size) if size else None
        self.register_buffer("gain", gain, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        h, w = up.shape[-2:]
        gain = self.gain
        if gain is None or tuple(gain.shape) != (h, w):
            gain = border_gain(h, w, dtype=x.dtype, device=x.device)
        return up * gain.to(up.dtype)


def border_gain(h: int, w: int, **like) -> torch.Tensor:
    """``[h, w]``: 1, and 3/4 on the first and last row and column (the FIR's zero padding).
    Built as constant padding of ones (the value a kernel argument): no tensor from Python
    data, which would be a host-to-device copy inside a captured CUDA graph."""
    gain_y = F.pad(torch.ones(h - 2, 1, **like), (0, 0, 1, 1), value=0.75)
    gain_x = F.pad(torch.ones(1, w - 2, **like), (1, 1), value=0.75)
    return gain_y * gain_x


class SRBlock(nn.Module):
    def __init__(self, cin: int, cout: int, size: int | None = None):
        super().__init__()
        self.up = Upsample2x(size)
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
        self.block0 = SRBlock(config.triplane_channels, c0, config.render_size)
        self.block1 = SRBlock(c0, c1, 2 * config.render_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        rgb = features[:, :3]
        x, rgb = self.block0(features, rgb)
        _, rgb = self.block1(x, rgb)
        return rgb
