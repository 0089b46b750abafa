"""The torch-tensorrt route against a recording stand-in of ``torch_tensorrt`` whose
``compile`` returns the module unchanged: which parts are compiled, with which options, and
that the frame path (ray march left in PyTorch) gives the model's own output. Proves our
wiring, not torch-tensorrt."""
from __future__ import annotations

import sys
import types

import pytest
import torch

from engines.trt.errors import TensorRTMissing
from engines.trt.torch_trt import TorchTensorRTFrame
from export3d.camera import orbit_path
from export3d.config import get_config
from export3d.model import build_model


def test_missing_torch_tensorrt_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    with pytest.raises(TensorRTMissing, match=r"torch-tensorrt cannot be imported.*export3d\[trt"):
        TorchTensorRTFrame(None, None, None, None)


def test_network_parts_are_compiled_and_the_ray_march_is_not(monkeypatch):
    calls = []
    fake = types.ModuleType("torch_tensorrt")

    def compile(module, **kwargs):
        calls.append((type(module).__name__, kwargs))
        return module

    fake.compile = compile
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    model = build_model(get_config("tiny"), seed=0, render_impl="reference").eval()
    model.clebs.freeze_basis()
    size = model.config.image_size
    image = torch.rand(1, 3, size, size) * 2 - 1
    expr = torch.randn(1, model.config.expr_dim)
    camera = orbit_path("yaw", 3)[1:2].float()
    with torch.inference_mode():
        source = model.encode_source(image)
        want = model.synthesize(source, expr, camera)
    frame = TorchTensorRTFrame(model, source, expr, camera, opt_level=2, workspace_gb=1)
    assert [name for name, _ in calls] == ["_Generate", "_SuperResolve"]
    for _, kwargs in calls:
        assert kwargs["ir"] == "dynamo" and kwargs["use_explicit_typing"] is True
        assert kwargs["optimization_level"] == 2 and kwargs["workspace_size"] == 1 << 30
    assert [tuple(t.shape) for t in calls[0][1]["inputs"]] == [
        tuple(source.high.shape), tuple(source.tokens.shape), (1, model.config.expr_dim)]
    got = frame(expr, camera)
    for key in ("image", "image_raw", "depth"):
        torch.testing.assert_close(got[key], want[key])
