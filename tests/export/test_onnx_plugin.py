"""The plugin variant: the whole ray marcher is one custom node from the engines contract;
served in ONNX Runtime by the onnxruntime-extensions Python op (the reference renderer), the
graph matches PyTorch within export.parity.TOLERANCE; the TensorRT lint accepts it."""
from __future__ import annotations

import importlib
import sys
import types

import onnx
import pytest

pytest.importorskip("onnxruntime_extensions")

from export import plugin  # noqa: E402
from export.lint import check_tensorrt  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from export.parity import TOLERANCE, compare_backends  # noqa: E402
from export3d.config import get_config  # noqa: E402
from export3d.model import build_model  # noqa: E402


def _standin_contract():
    """Used only while engines.raymarch.contract does not exist yet: the names the exporter
    reads from the contract, with placeholder values, so the mechanism stays tested."""
    module = types.ModuleType("engines.raymarch.contract")
    module.DOMAIN, module.OP_TYPE, module.VERSION = "test.standin", "TriplaneRayMarch", 1
    module.INPUTS = ("triplane", "w1", "b1", "w2", "b2", "origins", "directions")
    module.OUTPUTS = ("features", "depth", "opacity")
    module.ATTRIBUTES = ("near", "far", "samples_coarse", "samples_fine", "box_warp",
                         "eg3d_plane_axes")
    return module


@pytest.fixture(scope="module")
def contract():
    try:
        yield importlib.import_module("engines.raymarch.contract")
        return
    except ImportError:
        pass
    module = _standin_contract()
    package = types.ModuleType("engines.raymarch")
    package.contract = module
    saved = {k: sys.modules.get(k) for k in ("engines.raymarch", "engines.raymarch.contract")}
    sys.modules["engines.raymarch"] = package
    sys.modules["engines.raymarch.contract"] = module
    yield module
    for key, value in saved.items():
        if value is None:
            sys.modules.pop(key, None)
        else:
            sys.modules[key] = value


def reduced_paper512():
    return get_config("paper512", image_size=128, render_size=32, token_dim=256,
                      fusion_dim=256, clebs_hidden=(128, 128, 128), clebs_dim=128,
                      stem_channels=(32, 64, 128), high_channels=48, low_up_channels=(64, 64),
                      fusion_channels=(128, 64), sr_channels=(64, 32))


@pytest.mark.parametrize("name,precision", [("tiny", "fp32"), ("tiny", "fp16"),
                                            ("paper512-reduced", "fp32")])
def test_plugin_graph_matches_pytorch(contract, tmp_path, name, precision):
    config = get_config("tiny") if name == "tiny" else reduced_paper512()
    model = build_model(config, seed=0, render_impl="reference")
    result = export_onnx(model, tmp_path, variant="plugin", precision=precision)
    graph = onnx.load(str(result.path("frame_generator")))
    domain, op_type = plugin.custom_op_id()
    custom = [n for n in graph.graph.node if n.domain not in ("", "ai.onnx")]
    assert [(n.domain, n.op_type) for n in custom] == [(domain, op_type)]
    assert {d.domain: d.version for d in graph.opset_import}[domain] == int(contract.VERSION)
    attrs = {a.name for a in custom[0].attribute}
    assert attrs == set(plugin.attribute_values(model.renderer.settings))
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {"GridSample", "CumSum", "TopK", "Softplus"}  # all inside the node
    check_tensorrt(graph, custom_ops=((domain, op_type),))
    assert result.manifest["custom_op_contract"]["op_type"] == op_type
    errors = compare_backends(model, result.out_dir, frames=2, check=False)
    for key, err in errors.items():
        assert err <= TOLERANCE[precision][key], (name, precision, key, err)


def test_missing_contract_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "engines.raymarch", None)
    monkeypatch.setitem(sys.modules, "engines.raymarch.contract", None)
    model = build_model(get_config("tiny"))
    with pytest.raises(plugin.PluginContractError, match="export --variant portable"):
        export_onnx(model, tmp_path / "out", variant="plugin")
    assert not any((tmp_path / "out").iterdir())
