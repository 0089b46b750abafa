"""Serving the plugin graph's custom node in ONNX Runtime with a Python implementation
(onnxruntime-extensions), for parity tests on machines without TensorRT.

onnxruntime-extensions registers Python ops under its own domain, ``ai.onnx.contrib``, once
per process (a second registration of the same op conflicts). :func:`servable` therefore
returns a copy of the graph whose contract node is moved into that domain; the files on disk
keep the contract's domain. The Python op runs ``export3d.renderer.raymarch_reference``.
"""
from __future__ import annotations

import onnx

from export3d.errors import UserError

EXT_DOMAIN = "ai.onnx.contrib"
_REGISTERED = False


def _require_extensions():
    try:
        import onnxruntime_extensions  # noqa: F401
    except ImportError:
        raise UserError("the plugin graph's ray-march node needs TensorRT, or for ONNX Runtime "
                        "the test implementation from onnxruntime-extensions (pip install "
                        "onnxruntime-extensions); or export --variant portable") from None


def register() -> None:
    """Register the Python implementation of the contract's op (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    _require_extensions()
    import numpy as np
    import torch
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    from export3d.renderer import Decoder, RayMarchSettings, raymarch_reference

    from .plugin import _names, _onnx_attr_kwargs, attribute_values, contract, custom_op_id

    c = contract()
    _, op_type = custom_op_id()
    inputs = _names(c, "INPUTS")
    outputs = _names(c, "OUTPUTS")
    probe = attribute_values(RayMarchSettings(2.25, 3.3, 8, 8))
    types = {}
    for name, suffixed in zip(probe, _onnx_attr_kwargs(probe)):
        kind = suffixed.rsplit("_", 1)[1]
        if isinstance(probe[name], (list, tuple)):
            raise UserError(f"onnxruntime-extensions Python ops cannot read list attribute "
                            f"{name!r}; serve the plugin graph with TensorRT")
        types[name] = {"i": PyCustomOpDef.dt_int64, "f": PyCustomOpDef.dt_float,
                       "s": PyCustomOpDef.dt_string}[kind]

    @onnx_op(op_type=op_type, inputs=[PyCustomOpDef.dt_float] * len(inputs),
             outputs=[PyCustomOpDef.dt_float] * len(outputs), attrs=types)
    def raymarch_python(*arrays, **attrs):
        given = {n: torch.from_numpy(np.ascontiguousarray(a)) for n, a in zip(inputs, arrays)}
        plane_axes = attrs.get("plane_axes")
        settings = RayMarchSettings(
            near=float(attrs["near"]), far=float(attrs["far"]),
            samples_coarse=int(attrs["samples_coarse"]),
            samples_fine=int(attrs["samples_fine"]),
            box_warp=float(attrs.get("box_warp", 1.0)),
            eg3d_plane_axes=bool(attrs.get("eg3d_plane_axes", 0)) if plane_axes is None
            else tuple(plane_axes) == (0, 1, 0, 2, 2, 0))
        with torch.no_grad():
            result = raymarch_reference(
                given["triplane"], Decoder(given["w1"], given["b1"], given["w2"], given["b2"]),
                given["origins"], given["directions"], settings)
        by_name = dict(zip(("features", "depth", "opacity"), result))
        return tuple(by_name[n].numpy() for n in outputs)

    _REGISTERED = True


def servable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose contract node lives in ``ai.onnx.contrib``."""
    from .plugin import custom_op_id

    domain, op_type = custom_op_id()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        if node.domain == domain and node.op_type == op_type:
            node.domain = EXT_DOMAIN
    if not any(i.domain == EXT_DOMAIN for i in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid(EXT_DOMAIN, 1))
    return copy


def session_options_with_plugin(options):
    """Register the op and its library on ``options`` (an ``ort.SessionOptions``)."""
    register()
    from onnxruntime_extensions import get_library_path

    options.register_custom_ops_library(get_library_path())
    return options
