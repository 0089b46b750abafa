"""The two exported stages as plain ``nn.Module``s with flat, named tensor I/O.

- :class:`SourceEncoder`: ``source_image [1, 3, H, W]`` in [-1, 1] -> ``source_high
  [1, F0, H/2, W/2]`` (the high-res branch through its half of the fusion's first convolution,
  see ``export3d.generator.SourceFeatures``), ``source_tokens [1, (H/16)^2, D]`` (run once per
  photo);
- :class:`FrameGenerator`: ``source_high``, ``source_tokens``, ``expr [1, 64]`` fp32, ``camera
  [1, 25]`` fp32 -> ``image [1, 3, H, W]``, ``image_raw [1, 3, r, r]``, ``depth [1, 1, r, r]`` fp32.

The frame generator's ray marcher is either the reference (``variant="portable"``: standard ONNX
ops only; importance sampling is compare-and-sum, the merge sort exports as TopK) or one custom
node whose op type, domain, version and attributes come from ``engines.raymarch.contract``
(``variant="plugin"``, see :mod:`export.plugin`).

Precision: ``fp16`` runs the generator and the super-resolution in float16 while the camera
rays, the whole ray march's arithmetic (sampling, decoder MLP, compositing) and the depth stay
float32; the portable renderer casts the tri-plane up itself, the plugin node reads it in float16
(half the bytes; the TensorRT kernel sums its taps in packed fp16 before fp16 tensor-core
products with fp32 accumulation), and the features go back to float16 for the SR.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from export3d.generator import SourceFeatures, coordinate_channels
from export3d.model import Export3D

VARIANTS = ("portable", "plugin")
PRECISIONS = ("fp32", "fp16")

SOURCE_INPUTS = ("source_image",)
SOURCE_OUTPUTS = ("source_high", "source_tokens")
FRAME_INPUTS = ("source_high", "source_tokens", "expr", "camera")
FRAME_OUTPUTS = ("image", "image_raw", "depth")


@dataclass(frozen=True)
class StageSpec:
    """Static I/O of one graph: names -> (shape, numpy dtype name)."""
    inputs: dict[str, tuple[tuple[int, ...], str]]
    outputs: dict[str, tuple[tuple[int, ...], str]]


def stage_specs(config, precision: str = "fp32") -> dict[str, StageSpec]:
    """Shapes and dtypes of both graphs for ``config`` (batch 1, static)."""
    c = config
    act = "float16" if precision == "fp16" else "float32"
    half = c.image_size // 2
    grid = c.token_grid
    r = c.render_size
    high = ((1, c.fusion_channels[0], half, half), act)  # see export3d.generator.SourceFeatures
    tokens = ((1, grid * grid, c.token_dim), act)
    return {
        "source_encoder": StageSpec(
            inputs={"source_image": ((1, 3, c.image_size, c.image_size), act)},
            outputs={"source_high": high, "source_tokens": tokens}),
        "frame_generator": StageSpec(
            inputs={"source_high": high, "source_tokens": tokens,
                    "expr": ((1, c.expr_dim), "float32"), "camera": ((1, 25), "float32")},
            outputs={"image": ((1, 3, c.image_size, c.image_size), act),
                     "image_raw": ((1, 3, r, r), act), "depth": ((1, 1, r, r), "float32")}),
    }


class SourceEncoder(nn.Module):
    """``TriplaneGenerator.encode_source`` with its coordinate channels precomputed.

    Traced as is, ``coordinate_channels``' ``linspace(dtype=image.dtype)`` reaches the
    TorchScript exporter with a non-constant dtype and comes out float64, which turns the whole
    encoder graph into double. The channels are a constant of the image size, so they are
    computed once here, by the same function, and concatenated in the image's dtype; the parity
    tests compare this module's graph with ``Export3D.encode_source``."""

    def __init__(self, model: Export3D):
        super().__init__()
        self.model = model
        size = model.config.image_size
        probe = torch.zeros(1, 3, size, size)
        self.register_buffer("coords", coordinate_channels(probe)[:, 3:], persistent=False)
        self.eval()  # the exporter restores the wrapper's mode on the model: keep it eval

    def forward(self, source_image: torch.Tensor):
        gen = self.model.generator
        x = torch.cat([source_image, self.coords.to(source_image.dtype)], dim=1)  # [1, 5, H, W]
        source = gen.encode_with_coordinates(x)
        return source.high, source.tokens


class FrameGenerator(nn.Module):
    def __init__(self, model: Export3D, variant: str = "portable"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
        self.model = model
        self.variant = variant
        self.eval()  # a training-mode wrapper would leave the model jittering rays after export

    def forward(self, source_high, source_tokens, expr, camera):
        model = self.model
        dtype = source_high.dtype
        triplane = model.generate(SourceFeatures(source_high, source_tokens), expr.to(dtype))
        if self.variant == "plugin":
            from .plugin import render_plugin

            features, depth = render_plugin(model.renderer, triplane, camera)
        else:
            features, depth, _ = model.render(triplane, camera, impl="reference")
        # Re-state the static shapes with Python ints: the TorchScript tracer loses them
        # through the merge's gather/expand, and the SR's depthwise kernel needs them.
        c, r = model.config, model.config.render_size
        features = features.reshape(1, c.triplane_channels, r, r)
        depth = depth.reshape(1, 1, r, r)
        image = model.superresolve(features)
        return image, features[:, :3], depth


@contextlib.contextmanager
def export_ready(model: Export3D, precision: str = "fp32"):
    """A copy of ``model`` prepared for tracing: eval, CLeBS basis frozen (no QR in the graph),
    and for ``fp16`` everything but the renderer (decoder MLP) in float16."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    ready = copy.deepcopy(model).eval().cpu()
    ready.clebs.freeze_basis()
    if precision == "fp16":
        ready.half()
        ready.renderer.float()  # the ray march and its decoder MLP stay float32
    yield ready


def example_inputs(config, precision: str = "fp32", seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic inputs for tracing and parity checks: a smooth source image, a small
    expression and a frontal camera (EG3D's default label)."""
    from export3d import camera as cam

    gen = torch.Generator().manual_seed(seed)
    act = torch.float16 if precision == "fp16" else torch.float32
    size = config.image_size
    ys = torch.linspace(-1, 1, size)
    base = torch.stack(torch.meshgrid(ys, ys, indexing="ij") + (ys[:, None] * ys[None, :],))
    image = (0.6 * base + 0.3 * torch.rand(3, size, size, generator=gen) - 0.15).clamp(-1, 1)
    expr = 0.5 * torch.randn(1, config.expr_dim, generator=gen)
    camera = cam.orbit_path("yaw", 3)[1:2].float()
    return {"source_image": image.unsqueeze(0).to(act), "expr": expr, "camera": camera}
