"""Serving the plugin graph's custom node in ONNX Runtime with a Python implementation
(onnxruntime-extensions), for parity tests on machines without TensorRT.

onnxruntime-extensions registers Python ops under its own domain, ``ai.onnx.contrib``, once
per process (a second registration of the same op conflicts), and its Python ops take no
float16 tensors ("Type float16 not supported by python customops api", an abort). So
:func:`servable` returns a copy of the graph whose contract node is moved into that domain
and, in an fp16 graph (whose node reads an fp16 tri-plane), fed through a Cast to float32:
exact, and the reference computes in float32 anyway. The files on disk keep the contract's
domain and the fp16 input. The Python op runs ``export3d.renderer.raymarch_reference`` (on
the tri-plane put back to ``[B, 3, C, P, P]`` when the node takes it channels last) and
returns zeros for the node's ``workspace`` output, which nothing reads.
"""
from __future__ import annotations

import onnx

from export3d.errors import UserError

EXT_DOMAIN = "ai.onnx.contrib"
# Tri-plane precisions the stand-in serves (ONNX element types; float16 through a Cast).
TRIPLANE_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
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

    from .plugin import (_names, _onnx_attr_kwargs, attribute_values, channels_last, contract,
                         custom_op_id)

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

    layout_last = channels_last()

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
        triplane = given["triplane"]
        if layout_last:
            triplane = triplane.permute(0, 1, 4, 2, 3)
        with torch.no_grad():
            result = raymarch_reference(
                triplane, Decoder(given["w1"], given["b1"], given["w2"], given["b2"]),
                given["origins"], given["directions"], settings)
        by_name = dict(zip(("features", "depth", "opacity"), (r.numpy() for r in result)))
        if "workspace" in outputs:
            b, r = result[1].shape
            by_name["workspace"] = np.zeros(
                c.workspace_shape(b, r, settings.samples_coarse, settings.samples_fine),
                dtype=np.float32)
        return tuple(by_name[n] for n in outputs)

    onnx_op(op_type=op_type, inputs=[PyCustomOpDef.dt_float] * len(inputs),
            outputs=[PyCustomOpDef.dt_float] * len(outputs), attrs=types)(raymarch_python)

    _REGISTERED = True


def servable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose contract node lives in ``ai.onnx.contrib``, an fp16 tri-plane
    cast to float32 on its way in."""
    from .plugin import custom_op_id

    domain, op_type = custom_op_id()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    types = None
    nodes = []
    for original in copy.graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        if node.domain == domain and node.op_type == op_type:
            if types is None:
                types = _element_types(copy)
            elem = types.get(node.input[0], onnx.TensorProto.FLOAT)
            if elem not in TRIPLANE_TYPES:
                raise UserError(f"ONNX Runtime's stand-in for the ray-march node reads a float32 "
                                f"or float16 tri-plane, not {onnx.TensorProto.DataType.Name(elem)}"
                                "; serve this graph with TensorRT")
            if elem != onnx.TensorProto.FLOAT:
                cast = node.input[0] + "/stand_in_float32"
                nodes.append(onnx.helper.make_node("Cast", [node.input[0]], [cast],
                                                   to=onnx.TensorProto.FLOAT))
                node.input[0] = cast
            node.domain = EXT_DOMAIN
        nodes.append(node)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    if not any(i.domain == EXT_DOMAIN for i in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid(EXT_DOMAIN, 1))
    return copy


def _element_types(model: onnx.ModelProto) -> dict:
    """Tensor name -> ONNX element type, from the graph's declarations and, for the rest,
    ONNX shape inference (which leaves the custom node's own outputs alone)."""
    def collect(graph):
        found = {t.name: t.data_type for t in graph.initializer}
        for info in list(graph.input) + list(graph.value_info) + list(graph.output):
            if info.type.HasField("tensor_type"):
                found[info.name] = info.type.tensor_type.elem_type
        return found

    types = collect(model.graph)
    try:
        types = {**collect(onnx.shape_inference.infer_shapes(model).graph), **types}
    except Exception:  # noqa: BLE001 - inference is a help here, not a requirement
        pass
    return types


def session_options_with_plugin(options):
    """Register the op and its library on ``options`` (an ``ort.SessionOptions``)."""
    register()
    from onnxruntime_extensions import get_library_path

    options.register_custom_ops_library(get_library_path())
    return options
