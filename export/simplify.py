"""Graph simplification: onnxsim first, onnxslim where onnxsim fails.

In: an ``onnx.ModelProto`` with static shapes. Out: (simplified model, the tool that did it,
e.g. ``"onnxsim 0.8.1"``). onnxsim's own random-input check is off (``check_n=0``): it cannot
run a graph with our custom node, and the parity tests compare the simplified graphs with
PyTorch instead. Custom-domain nodes pass through both tools untouched.
"""
from __future__ import annotations

import importlib.metadata
import warnings

import onnx

from export3d.errors import UserError


class SimplifyError(UserError):
    """Neither simplifier could process the graph."""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def simplify(model: onnx.ModelProto, name: str = "graph") -> tuple[onnx.ModelProto, str]:
    errors = []
    try:
        import onnxsim

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            simplified, ok = onnxsim.simplify(model, check_n=0)
        if ok:
            return simplified, f"onnxsim {_version('onnxsim')}"
        errors.append("onnxsim: its check failed")
    except Exception as exc:  # noqa: BLE001 - any onnxsim failure falls back to onnxslim
        errors.append(f"onnxsim: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    try:
        import onnxslim

        return onnxslim.slim(model), f"onnxslim {_version('onnxslim')}"
    except Exception as exc:  # noqa: BLE001
        errors.append(f"onnxslim: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    raise SimplifyError(f"could not simplify the {name} ({'; '.join(errors)}); install onnxsim "
                        "or onnxslim, or export with --no-simplify")
