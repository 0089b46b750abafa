"""torch-tensorrt as a second route, for comparison with the ONNX -> TensorRT engines.

:class:`TorchTensorRTFrame` compiles the per-frame network parts of a model with
``torch_tensorrt.compile`` (dynamo front end, explicit typing: the precision is the module's)
and keeps the ray march in PyTorch, where it is the ``export3d_engines::raymarch`` torch op (the
fused Triton kernel) on CUDA tensors:
    generate:      source high [1, Ch, H/2, W/2], source tokens [1, N, D], expr [1, 64]
                   -> triplane [1, 3, C, P, P]             (torch-tensorrt)
    render:        triplane, camera [1, 25] -> features [1, F, r, r], depth  (torch + kernel)
    super-resolve: features -> image [1, 3, H, W]           (torch-tensorrt)
The model is duck-typed (``generate(source, expr)``, ``render(triplane, camera)``,
``superresolve(features)``, and a source-features object with ``high`` and ``tokens``), so this
module imports nothing of the project's other packages. torch-tensorrt is imported only when a
frame path is built; without it, :class:`TensorRTMissing` says how to install it.
"""
from __future__ import annotations

import importlib

import torch
from torch import nn

from . import INSTALL_HINT
from .errors import TensorRTMissing


def import_torch_tensorrt():
    try:
        return importlib.import_module("torch_tensorrt")
    except Exception as exc:  # noqa: BLE001 - it raises plain Exception when libnvinfer is missing
        raise TensorRTMissing(f"torch-tensorrt cannot be imported here ({str(exc)[:200]}); "
                              f"install it with {INSTALL_HINT}") from None


class _Generate(nn.Module):
    def __init__(self, model, source_type):
        super().__init__()
        self.model = model
        self.source_type = source_type

    def forward(self, high, tokens, expr):
        return self.model.generate(self.source_type(high, tokens), expr)


class _SuperResolve(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features):
        return self.model.superresolve(features)


class TorchTensorRTFrame:
    """The per-frame path with its network parts compiled by torch-tensorrt (see module
    docstring). ``source`` is the cached source features; ``expr`` and ``camera`` examples fix
    the (static) shapes."""

    def __init__(self, model, source, expr: torch.Tensor, camera: torch.Tensor, *,
                 opt_level: int = 3, workspace_gb: float = 4.0):
        ttrt = import_torch_tensorrt()
        self.model = model
        self.source = source
        options = dict(ir="dynamo", use_explicit_typing=True, optimization_level=int(opt_level),
                       workspace_size=int(workspace_gb * (1 << 30)), min_block_size=1)
        generate = _Generate(model, type(source)).eval()
        superresolve = _SuperResolve(model).eval()
        with torch.inference_mode():
            self.generate = ttrt.compile(generate, inputs=[source.high, source.tokens, expr],
                                         **options)
            triplane = self.generate(source.high, source.tokens, expr)
            features = model.render(triplane, camera)[0]
            self.superresolve = ttrt.compile(superresolve, inputs=[features], **options)

    def __call__(self, expr: torch.Tensor, camera: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            triplane = self.generate(self.source.high, self.source.tokens, expr)
            features, depth = self.model.render(triplane, camera)[:2]
            image = self.superresolve(features)
        return {"image": image, "image_raw": features[:, :3], "depth": depth}
