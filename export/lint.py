"""TensorRT-compatibility lint of an ONNX graph, checked without TensorRT.

In: an ``onnx.ModelProto`` (or a path) and the custom ops we serve ourselves ((domain, op_type)
pairs; the plugin graph's ray-march node). Out: a list of :class:`Finding`; :func:`check_tensorrt`
raises :class:`LintError` naming every problem. Rules, all from TensorRT's published ONNX
operator table (:mod:`export.tensorrt_ops`, TensorRT 10.0):
- every node of the default domain is an operator the table marks supported;
- every node of another domain is one of the allowed custom ops, and nothing else;
- the default-domain opset lies in the table's range;
- the cheap-to-check restrictions hold: TopK has ``sorted=1`` and a constant K < 3840; CumSum's
  axis is a constant; Conv/ConvTranspose weights are constants; no float64 tensors.
Passing the lint means the parser should accept every node; it proves nothing about TensorRT's
numerics or speed (no TensorRT runs here).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

from export3d.errors import UserError

from . import tensorrt_ops

DEFAULT_DOMAINS = ("", "ai.onnx")
TOPK_MAX_K = 3840


class LintError(UserError):
    """A graph that TensorRT's ONNX parser would reject."""


@dataclass(frozen=True)
class Finding:
    node: str
    op: str
    problem: str

    def __str__(self) -> str:
        return f"{self.op} ({self.node}): {self.problem}"


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    consts = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = attr.t
    return consts


def lint_tensorrt(model: onnx.ModelProto | str | Path,
                  custom_ops: tuple[tuple[str, str], ...] = ()) -> list[Finding]:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    findings: list[Finding] = []
    allowed_custom = {(d, op) for d, op in custom_ops}
    lo, hi = tensorrt_ops.OPSET_RANGE
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS and not lo <= imp.version <= hi:
            findings.append(Finding("<model>", "opset", f"default-domain opset {imp.version} is "
                                    f"outside TensorRT {tensorrt_ops.TENSORRT_VERSION}'s "
                                    f"range {lo}-{hi}"))
    consts = _constants(graph)
    for node in graph.node:
        name = node.name or node.output[0]
        if node.domain not in DEFAULT_DOMAINS:
            if (node.domain, node.op_type) not in allowed_custom:
                findings.append(Finding(name, f"{node.domain}::{node.op_type}",
                                        "custom op that no plugin of ours implements"))
            continue
        if node.op_type not in tensorrt_ops.SUPPORTED:
            why = ("marked unsupported" if node.op_type in tensorrt_ops.UNSUPPORTED
                   else "not in the table")
            findings.append(Finding(name, node.op_type, f"{why} by TensorRT's ONNX parser "
                                    f"(TensorRT {tensorrt_ops.TENSORRT_VERSION})"))
            continue
        findings.extend(_restrictions(node, name, consts))
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE:
            findings.append(Finding(value.name, "float64", "double tensors are cast down by "
                                    "TensorRT; keep the graph float32/float16"))
    return findings


def _restrictions(node, name, consts) -> list[Finding]:
    out = []
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "TopK":
        if attrs.get("sorted", 1) != 1:
            out.append(Finding(name, "TopK", "`sorted` must be 1"))
        k = consts.get(node.input[1])
        if k is None:
            out.append(Finding(name, "TopK", "K must be an initializer"))
        elif int(numpy_helper.to_array(k).reshape(-1)[0]) >= TOPK_MAX_K:
            out.append(Finding(name, "TopK", f"K must be below {TOPK_MAX_K}"))
    elif node.op_type == "Cast" and attrs.get("to") == onnx.TensorProto.DOUBLE:
        out.append(Finding(name, "Cast", "casts to float64, which TensorRT does not compute in"))
    elif node.op_type == "CumSum" and node.input[1] not in consts:
        out.append(Finding(name, "CumSum", "`axis` must be an initializer"))
    elif node.op_type in ("Conv", "ConvTranspose") and node.input[1] not in consts:
        out.append(Finding(name, node.op_type, "weights must be constants for a static engine"))
    return out


def check_tensorrt(model, custom_ops=(), what: str = "graph") -> None:
    """Raise :class:`LintError` listing every finding, or return quietly."""
    findings = lint_tensorrt(model, custom_ops)
    if findings:
        listed = "; ".join(str(f) for f in findings[:10])
        more = f" (and {len(findings) - 10} more)" if len(findings) > 10 else ""
        raise LintError(f"the {what} is not TensorRT-compatible: {listed}{more}; export the "
                        "'plugin' variant or report this graph")


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
