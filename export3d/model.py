"""The Export3D model: source portrait + expression + camera -> frame.

Stages (shapes for paper512; ``tiny`` divides them down):
- ``encode_source(image [B, 3, 512, 512] in [-1, 1]) -> SourceFeatures``  once per photo
- ``generate(source, expr [B, 64]) -> triplane [B, 3, 32, 256, 256]``      per frame (CLeBS inside)
- ``render(triplane, camera [B, 25]) -> features [B, 32, 128, 128], depth, opacity``
- ``superresolve(features) -> image [B, 3, 512, 512]``
``forward`` runs all four; ``synthesize`` runs the per-frame three on a cached source.
"""
from __future__ import annotations

import torch
from torch import nn

from .clebs import CLeBS
from .config import ModelConfig
from .generator import SourceFeatures, TriplaneGenerator
from .renderer import TriplaneRenderer
from .superres import SuperResolution


class Export3D(nn.Module):
    def __init__(self, config: ModelConfig, render_impl: str = "auto"):
        super().__init__()
        self.config = config
        self.clebs = CLeBS(config.expr_dim, config.clebs_hidden, config.clebs_basis,
                           config.clebs_dim, config.expr_spread)
        self.generator = TriplaneGenerator(config)
        self.renderer = TriplaneRenderer(config, impl=render_impl)
        self.superres = SuperResolution(config)

    def encode_source(self, image: torch.Tensor) -> SourceFeatures:
        _check_image(image, self.config.image_size)
        return self.generator.encode_source(image)

    def expression_code(self, expr: torch.Tensor) -> torch.Tensor:
        if expr.ndim != 2 or expr.shape[1] != self.config.expr_dim:
            raise ValueError(f"expression must be [B, {self.config.expr_dim}], "
                             f"got {tuple(expr.shape)}")
        return self.clebs(expr)

    def generate(self, source: SourceFeatures, expr: torch.Tensor) -> torch.Tensor:
        return self.generator.generate(source, self.expression_code(expr))

    def render(self, triplane: torch.Tensor, camera: torch.Tensor, impl: str | None = None):
        return self.renderer(triplane, camera, impl=impl)

    def superresolve(self, features: torch.Tensor) -> torch.Tensor:
        return self.superres(features)

    def synthesize(self, source: SourceFeatures, expr: torch.Tensor, camera: torch.Tensor,
                   impl: str | None = None) -> dict[str, torch.Tensor]:
        """Per-frame path on a cached source: dict of ``image [B, 3, H, W]``, ``image_raw
        [B, 3, r, r]``, ``depth [B, 1, r, r]``, ``opacity``, ``features [B, F, r, r]``,
        ``triplane``; images in [-1, 1]."""
        triplane = self.generate(source, expr)
        features, depth, opacity = self.render(triplane, camera, impl=impl)
        image = self.superresolve(features)
        return {"image": image, "image_raw": features[:, :3], "depth": depth,
                "opacity": opacity, "features": features, "triplane": triplane}

    def forward(self, image: torch.Tensor, expr: torch.Tensor, camera: torch.Tensor):
        return self.synthesize(self.encode_source(image), expr, camera)


def _check_image(image: torch.Tensor, size: int) -> None:
    if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[-2:]) != (size, size):
        raise ValueError(f"source image must be [B, 3, {size}, {size}], got {tuple(image.shape)}")


def build_model(config: ModelConfig, seed: int | None = 0, render_impl: str = "auto") -> Export3D:
    """A model with deterministic random weights (``seed``), in eval mode."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Export3D(config, render_impl)
    else:
        model = Export3D(config, render_impl)
    return model.eval()
