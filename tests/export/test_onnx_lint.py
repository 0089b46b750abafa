"""The TensorRT-compatibility lint: passes on our graphs, fails loudly on others."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from export import tensorrt_ops
from export.lint import LintError, check_tensorrt, lint_tensorrt
from export.onnx_export import build_graphs
from export3d.config import get_config
from export3d.model import build_model


def _graph(nodes, inits=(), opset=17, out_type=TensorProto.FLOAT):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", out_type, None)], initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_table_is_data_with_its_source():
    assert tensorrt_ops.SOURCE_URL.startswith("https://github.com/onnx/onnx-tensorrt/")
    for op in ("Conv", "GridSample", "LayerNormalization", "TopK", "CumSum", "GatherElements"):
        assert op in tensorrt_ops.SUPPORTED
    assert "Unique" in tensorrt_ops.UNSUPPORTED and "Unique" not in tensorrt_ops.SUPPORTED


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_our_portable_graphs_pass(precision):
    model = build_model(get_config("tiny"), seed=0, render_impl="reference")
    graphs, _, _ = build_graphs(model, precision=precision)
    for name, graph in graphs.items():
        assert lint_tensorrt(graph) == [], name
        check_tensorrt(graph)


def test_unsupported_op_fails():
    model = _graph([helper.make_node("DFT", ["x"], ["y"], name="dft")])
    findings = lint_tensorrt(model)
    assert [f.op for f in findings] == ["DFT"]
    with pytest.raises(LintError, match="DFT \\(dft\\): marked unsupported"):
        check_tensorrt(model)


def test_unknown_custom_op_fails_and_ours_passes():
    node = helper.make_node("RayMarch", ["x"], ["y"], domain="some.plugins", name="rm")
    model = _graph([node])
    model.opset_import.append(helper.make_opsetid("some.plugins", 1))
    with pytest.raises(LintError, match="custom op that no plugin of ours implements"):
        check_tensorrt(model)
    assert lint_tensorrt(model, custom_ops=(("some.plugins", "RayMarch"),)) == []


def test_restrictions_and_opset():
    k = helper.make_tensor("k", TensorProto.INT64, [1], [5000])
    topk = helper.make_node("TopK", ["x", "k"], ["y", "i"], axis=-1, sorted=0, name="tk")
    problems = {f.problem for f in lint_tensorrt(_graph([topk], [k]))}
    assert problems == {"`sorted` must be 1", "K must be below 3840"}
    cast = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE, name="c")
    assert any("float64" in str(f) for f in lint_tensorrt(_graph([cast],
                                                                 out_type=TensorProto.DOUBLE)))
    relu = helper.make_node("Relu", ["x"], ["y"])
    assert "opset 21" in str(lint_tensorrt(_graph([relu], opset=21))[0])


def test_lint_reads_a_path(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(_graph([helper.make_node("Unique", ["x"], ["y"])]), str(path))
    assert [f.op for f in lint_tensorrt(path)] == ["Unique"]
