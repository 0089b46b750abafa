"""Hybrid tri-plane generator (Live3DPortrait-style, paper-spec 4.4) with EAdaLN conditioning.

``encode_source(image [B, 3, H, W] in [-1, 1]) -> SourceFeatures``: everything that does not
depend on the expression, computed once per source photo: the high-res conv branch carried
through its half of the fusion stage's first convolution (``[B, F0, H/2, W/2]``, see
:class:`SourceFeatures`), and the low-res stem with the overlapped patch merging to tokens
``[B, (H/16)^2, D]``.
``generate(source, code [B, d]) -> triplane [B, 3, 32, H/2, W/2]``: the EAdaLN SegFormer blocks on
the H/16 grid, PixelShuffle + fixed Gaussian low-pass, the low-res decoder to H/2, the fusion
stage (one EAdaLN block at H/4), the output convs, plus the online-EMA tri-plane buffer.
``code`` is CLeBS's refined expression beta'.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SourceFeatures:
    """Per-source cache. high: ``[B, F0, H/2, W/2]``; tokens: ``[B, (H/16)^2, D]``.

    ``high`` is not the high-res branch's output (``Ch`` channels) but what the fusion stage's
    first convolution makes of it. That convolution reads ``cat(low, branch)``, and a
    convolution of a concatenation is the sum of the convolutions of its parts, so the
    branch's part (with the bias) is computed here, once, and each frame convolves only
    ``low`` and adds it: the same function (to float rounding), with 29 of generate's 999
    GFLOP a frame moved to the source at paper512 (2.9%; 9.2% at demo64)."""
    high: torch.Tensor
    tokens: torch.Tensor

    def to(self, *args, **kwargs) -> "SourceFeatures":
        return SourceFeatures(self.high.to(*args, **kwargs), self.tokens.to(*args, **kwargs))


def coordinate_channels(image: torch.Tensor) -> torch.Tensor:
    """Append normalised pixel coordinates (x, y in [-1, 1]) as two channels: ``[B, 5, H, W]``."""
    b, _, h, w = image.shape
    ys = torch.linspace(-1.0, 1.0, h, device=image.device, dtype=image.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=image.device, dtype=image.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([grid_x, grid_y]).unsqueeze(0).expand(b, 2, h, w)
    return torch.cat([image, coords], dim=1)


def replicate_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, (pad,) * 4, mode="replicate")`` for ``[B, C, H, W]``, as two concatenations
    of the edge rows and columns."""
    *lead, h, w = x.shape
    x = torch.cat([x[..., :1].expand(*lead, h, pad), x, x[..., -1:].expand(*lead, h, pad)], -1)
    w = w + 2 * pad
    return torch.cat([x[..., :1, :].expand(*lead, pad, w), x,
                      x[..., -1:, :].expand(*lead, pad, w)], -2)


class GaussianLowPass(nn.Module):
    """Fixed separable 5-tap Gaussian (sigma from config), replicate padding, per channel.

    ``channels``: the input's channel count when the model knows it (it does: one module per
    site). The per-channel kernels are then built from a constant, not from the input's
    traced shape, so an exported graph knows every convolution's kernel shape, and with it
    every shape after it."""

    def __init__(self, sigma: float, taps: int = 5, channels: int | None = None):
        super().__init__()
        x = torch.arange(taps, dtype=torch.float32) - (taps - 1) / 2
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        self.register_buffer("kernel", kernel / kernel.sum(), persistent=False)
        self.pad = taps // 2
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.channels or x.shape[1]
        k = self.kernel.to(x.dtype)
        if torch.compiler.is_compiling():
            # The same values by concatenation: torch 2.13's Inductor fails on a replicate pad
            # of a pixel-shuffled tensor ("vr must not be None for symbol q1").
            x = replicate_pad(x, self.pad)
        else:
            x = F.pad(x, (self.pad,) * 4, mode="replicate")
        x = F.conv2d(x, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class EAdaLN(nn.Module):
    """Expression-adaptive layer norm: ``LN(x) * (1 + dgamma(code)) + dbeta(code)``.

    LN has no affine parameters; (dgamma, dbeta) come from SiLU -> Linear, zero-initialised, so
    at initialisation this is exactly a plain layer norm. With ``gate`` the projection also
    returns a DiT adaLN-Zero gate (zero at init) for the residual branch."""

    def __init__(self, dim: int, code_dim: int, gate: bool = False):
        super().__init__()
        self.dim = dim
        self.gate = gate
        self.proj = nn.Linear(code_dim, dim * (3 if gate else 2))
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, code: torch.Tensor):
        mod = self.proj(F.silu(code)).unsqueeze(1)  # [B, 1, k*D]
        scale, shift = mod[..., : self.dim], mod[..., self.dim: 2 * self.dim]
        out = F.layer_norm(x, (self.dim,)) * (1 + scale) + shift
        return out, (mod[..., 2 * self.dim:] if self.gate else None)


class EfficientAttention(nn.Module):
    """SegFormer's efficient self-attention: keys/values from a grid reduced ``sr`` times."""

    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
        kv_in = x
        if self.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(b, d, h, w)
            kv_in = self.sr_norm(self.sr(grid).flatten(2).transpose(1, 2))
        k, v = self.kv(kv_in).reshape(b, -1, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MixFFN(nn.Module):
    """Linear -> depthwise 3x3 conv on the token grid -> GELU -> Linear."""

    def __init__(self, dim: int, ratio: int):
        super().__init__()
        hidden = dim * ratio
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, _ = x.shape
        y = self.fc1(x)
        y = self.dwconv(y.transpose(1, 2).reshape(b, -1, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(y))


class EAdaLNBlock(nn.Module):
    """Pre-norm SegFormer block whose two layer norms are EAdaLN driven by the expression code."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, sr_ratio: int, code_dim: int,
                 gate: bool = False):
        super().__init__()
        self.norm1 = EAdaLN(dim, code_dim, gate)
        self.attn = EfficientAttention(dim, heads, sr_ratio)
        self.norm2 = EAdaLN(dim, code_dim, gate)
        self.ffn = MixFFN(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, code: torch.Tensor, h: int, w: int) -> torch.Tensor:
        y, gate = self.norm1(x, code)
        y = self.attn(y, h, w)
        x = x + (y if gate is None else gate * y)
        y, gate = self.norm2(x, code)
        y = self.ffn(y, h, w)
        return x + (y if gate is None else gate * y)


class OverlapPatchMerge(nn.Module):
    """Conv k3 s2 to ``dim`` channels, flattened to tokens ``[B, N, dim]``, then LayerNorm."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor):
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, stride=stride)

    def forward(self, x):
        y = self.conv2(F.leaky_relu(self.conv1(x), 0.2))
        return F.leaky_relu(y + self.skip(x), 0.2)


def _conv(cin, cout, k=3):
    return nn.Conv2d(cin, cout, k, padding=k // 2)


def _tokens_to_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


class TriplaneGenerator(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config
        self.config = c
        stem = c.stem_channels
        ch = c.high_channels
        # High-res branch (per source): 5 -> H/2, Conv7x7 s2 + 4 x Conv3x3 + Conv3x3.
        self.high = nn.Sequential(
            nn.Conv2d(5, stem[0], 7, stride=2, padding=3), nn.LeakyReLU(0.01),
            _conv(stem[0], stem[0]), nn.LeakyReLU(0.01),
            _conv(stem[0], stem[0]), nn.LeakyReLU(0.01),
            _conv(stem[0], ch), nn.LeakyReLU(0.01),
            _conv(ch, ch), nn.LeakyReLU(0.01),
            _conv(ch, ch))
        # Low-res branch (per source): own ResNet-style stem to H/8, patch merge to H/16 tokens.
        self.stem = nn.Sequential(
            nn.Conv2d(5, stem[0], 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            ResBlock(stem[0], stem[1], 2), ResBlock(stem[1], stem[2], 2))
        self.merge = OverlapPatchMerge(stem[2], c.token_dim)
        # Per frame: EAdaLN blocks on the H/16 grid.
        self.blocks = nn.ModuleList(
            EAdaLNBlock(c.token_dim, c.heads, c.mlp_ratio, 1, c.clebs_dim, c.eadaln_gate)
            for _ in range(c.vit_blocks))
        self.lowpass = GaussianLowPass(c.lowpass_sigma, channels=c.token_dim // 4)
        up0, up1 = c.low_up_channels
        self.low_up0 = _conv(c.token_dim // 4, up0)
        self.low_up1 = _conv(up0, up1)
        self.low_out = _conv(up1, ch)
        # Fusion stage at H/2 -> tokens at H/4 -> back to H/2.
        f0, f1 = c.fusion_channels
        self.fuse_in = nn.Sequential(_conv(2 * ch, f0), nn.LeakyReLU(0.2), _conv(f0, f1))
        self.fuse_merge = OverlapPatchMerge(f1, c.fusion_dim)
        self.fuse_blocks = nn.ModuleList(
            EAdaLNBlock(c.fusion_dim, c.heads, c.mlp_ratio, c.fusion_sr_ratio, c.clebs_dim,
                        c.eadaln_gate)
            for _ in range(c.fusion_blocks))
        self.fuse_lowpass = GaussianLowPass(c.lowpass_sigma, channels=c.fusion_dim // 4)
        self.out = nn.Sequential(
            _conv(c.fusion_dim // 4 + ch, f0), nn.LeakyReLU(0.2),
            _conv(f0, f1), nn.LeakyReLU(0.2),
            _conv(f1, f1), nn.LeakyReLU(0.2),
            _conv(f1, 3 * c.triplane_channels))
        # Online-EMA tri-plane (paper-spec 4.3): a non-learned buffer added to every output,
        # updated from the batch mean of raw outputs during training, frozen at inference.
        p = c.triplane_size
        self.register_buffer("triplane_ema", torch.zeros(3, c.triplane_channels, p, p))

    def _fuse_in_conv(self, x: torch.Tensor, part: str) -> torch.Tensor:
        """The fusion's first convolution on one part of its input ``cat(low, branch)``:
        ``"low"`` (no bias) or ``"branch"`` (with the bias); the two results add up to it."""
        conv, ch = self.fuse_in[0], self.config.high_channels
        weight = conv.weight[:, :ch] if part == "low" else conv.weight[:, ch:]
        bias = conv.bias if part == "branch" else None
        return F.conv2d(x, weight, bias, conv.stride, conv.padding)

    def encode_source(self, image: torch.Tensor) -> SourceFeatures:
        return self.encode_with_coordinates(coordinate_channels(image))

    def encode_with_coordinates(self, x: torch.Tensor) -> SourceFeatures:
        """:meth:`encode_source` of the image with its coordinate channels: ``[B, 5, H, W]``."""
        high = self._fuse_in_conv(self.high(x), "branch")
        tokens, _, _ = self.merge(self.stem(x))
        return SourceFeatures(high=high, tokens=tokens)

    def generate_raw(self, source: SourceFeatures, code: torch.Tensor) -> torch.Tensor:
        """Tri-plane before the EMA buffer is added: ``[B, 3, C, H/2, W/2]``."""
        g = self.config.token_grid
        tokens = source.tokens
        for block in self.blocks:
            tokens = block(tokens, code, g, g)
        x = self.lowpass(F.pixel_shuffle(_tokens_to_map(tokens, g, g), 2))  # [B, D/4, H/8]
        x = F.relu(self.low_up0(F.interpolate(x, scale_factor=2, mode="bilinear")))
        x = F.relu(self.low_up1(F.interpolate(x, scale_factor=2, mode="bilinear")))
        low = self.low_out(x)  # [B, Ch, H/2, W/2]

        x = self._fuse_in_conv(low, "low") + source.high  # = fuse_in[0](cat(low, branch))
        x = self.fuse_in[2](self.fuse_in[1](x))
        tokens, h, w = self.fuse_merge(x)
        for block in self.fuse_blocks:
            tokens = block(tokens, code, h, w)
        x = self.fuse_lowpass(F.pixel_shuffle(_tokens_to_map(tokens, h, w), 2))  # [B, Df/4, H/2]
        planes = self.out(torch.cat([x, low], dim=1))
        b, _, p, _ = planes.shape
        return planes.reshape(b, 3, self.config.triplane_channels, p, p)

    def generate(self, source: SourceFeatures, code: torch.Tensor) -> torch.Tensor:
        raw = self.generate_raw(source, code)
        if self.training:
            self.update_ema(raw)
        return raw + self.triplane_ema.to(raw.dtype)

    @torch.no_grad()
    def update_ema(self, raw: torch.Tensor) -> None:
        m = self.config.triplane_ema_momentum
        self.triplane_ema.mul_(m).add_(raw.detach().float().mean(0), alpha=1 - m)

    def forward(self, image: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.generate(self.encode_source(image), code)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
