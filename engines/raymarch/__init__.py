"""The fused tri-plane ray marcher: one Triton kernel (``kernel``), its torch op (``op``), its
contract (``contract``: names, attributes, shapes) and its ahead-of-time build (``aot``).
``tiled`` is an experimental sample-parallel variant of the kernel (same arguments and
results), selected by ``op.launch(..., variant="tiled")`` or ``aot.KernelConfig(variant=)``.

``raymarch(triplane [B, 3, C, P, P], w1 [C, Hd], b1 [Hd], w2 [Hd, 1 + F], b2 [1 + F],
origins [B, R, 3], directions [B, R, 3], *, near, far, samples_coarse, samples_fine, box_warp,
plane_axes)`` -> features [B, R, F], depth [B, R], opacity [B, R] (fp32), exactly
``export3d.renderer.raymarch_reference`` at inference. Importing this package imports no
triton and compiles nothing.
"""
from __future__ import annotations

import importlib.util

from . import contract
from .contract import (DOMAIN, INPUT_NAMES, OP_TYPE, OUTPUT_NAMES, TORCH_QUALNAME, VERSION,
                       output_shapes)

__all__ = ["available", "raymarch", "contract", "DOMAIN", "OP_TYPE", "VERSION",
           "TORCH_QUALNAME", "INPUT_NAMES", "OUTPUT_NAMES", "output_shapes"]


def available() -> bool:
    """True when the kernel can run here: triton imports and a CUDA device is present, or
    TRITON_INTERPRET=1 is set (the interpreter runs it on CPU tensors)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken triton install means no kernel, not a crash
        return False
    from .op import interpreter_enabled

    if interpreter_enabled():
        return True
    import torch

    return torch.cuda.is_available()


def raymarch(triplane, w1, b1, w2, b2, origins, directions, *, near, far, samples_coarse,
             samples_fine, box_warp, plane_axes):
    """Run the fused kernel through the registered torch op (see module docstring)."""
    import torch

    from . import op  # noqa: F401  (registers the op on first use)

    fn = getattr(getattr(torch.ops, contract.TORCH_NAMESPACE), contract.TORCH_OP_NAME)
    return tuple(fn(
        triplane, w1, b1, w2, b2, origins, directions, float(near), float(far),
        int(samples_coarse), int(samples_fine), float(box_warp),
        list(contract.plane_axes_flat(plane_axes))))
