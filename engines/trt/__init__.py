"""The TensorRT side of the engines package: the ray-march plugin (``plugin``: shape/type rule
and ahead-of-time implementation through ``tensorrt.plugin``), the engine builder
(``builder``: plugin ONNX graphs -> strongly typed ``<stage>.engine`` + metadata), the engine
runtime (``runtime``: metadata check, buffers bound by name, ``execute_async_v3``, optional CUDA
graph) and the torch-tensorrt route (``torch_trt``).

Importing this package or its modules imports neither ``tensorrt`` nor ``triton`` and needs no
GPU: TensorRT is reached only through :func:`import_tensorrt`, called by the functions that
need it, and ``kernel_abi`` (the kernel's TensorRT entry point, which imports triton) only by
the plugin's ahead-of-time implementation at engine build time. Nothing here imports the
project's other packages.
"""
from __future__ import annotations

import importlib
import importlib.util

from .errors import TensorRTError, TensorRTMissing

# The Python plugin API with ahead-of-time implementations (``tensorrt.plugin.aot_impl``)
# appeared in TensorRT 10.7.
MIN_VERSION = (10, 7)
INSTALL_HINT = ("pip install export3d[trt] (TensorRT's wheels come from NVIDIA's package index, "
                "pypi.nvidia.com, which pip must be able to reach)")

__all__ = ["MIN_VERSION", "INSTALL_HINT", "TensorRTError", "TensorRTMissing", "available",
           "import_tensorrt", "version_tuple"]


def available() -> bool:
    """True when a ``tensorrt`` module can be found (it is not imported)."""
    return importlib.util.find_spec("tensorrt") is not None


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.7.0.23"`` -> ``(10, 7, 0, 23)`` (non-numeric tails are dropped)."""
    out = []
    for part in str(version).split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def import_tensorrt():
    """``import tensorrt``, or :class:`TensorRTMissing` saying how to install it; a TensorRT
    older than :data:`MIN_VERSION` is refused the same way."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTMissing(f"TensorRT cannot be imported here ({exc}); install it with "
                              f"{INSTALL_HINT}") from None
    found = version_tuple(getattr(trt, "__version__", "0"))
    if found[:2] < MIN_VERSION:
        raise TensorRTMissing(
            f"TensorRT {getattr(trt, '__version__', '?')} is too old: the ray-march plugin "
            f"needs TensorRT {'.'.join(map(str, MIN_VERSION))} or newer (tensorrt.plugin "
            f"ahead-of-time implementations); upgrade with {INSTALL_HINT}")
    return trt
