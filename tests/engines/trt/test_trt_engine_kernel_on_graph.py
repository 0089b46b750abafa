"""The exported plugin graph and the TensorRT plugin agree end to end, short of TensorRT: the
ray-march node's inputs as the graph really produces them (run in ONNX Runtime up to the
node: the Transpose's channels-last tri-plane in the graph's precision, the folded decoder
weights, the rays computed from the camera) and its attributes as the file holds them go
through the plugin's own rules (``output_rule``, ``kernel_config``, ``launch_plan``) into the
kernel's TensorRT entry point, which must reproduce the node's outputs as ONNX Runtime's
reference stand-in computes them. Catches a graph and a plugin that disagree on layout,
dtype, shapes or attributes, which the piecewise tests cannot. Tiny preset, fp32 and fp16
graphs; the kernel under Triton's interpreter in a child process (``ieee`` products)."""
from __future__ import annotations

import pytest
from interpreted import run_interpreted

pytest.importorskip("triton")
pytest.importorskip("onnxruntime_extensions")

CHILD = r'''
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from engines.raymarch import kernel
from engines.trt import plugin
from engines.trt.kernel_abi import raymarch_trt_kernel
from export import plugin_ort
from export.graphs import example_inputs
from export.onnx_export import export_onnx
from export.parity import driving_frames
from export.plugin import custom_op_id
from export3d.config import get_config
from export3d.model import build_model

CPU = ["CPUExecutionProvider"]
config = get_config("tiny")
model = build_model(config, seed=0, render_impl="reference")
_, op_type = custom_op_id()
for precision in ("fp32", "fp16"):
    result = export_onnx(model, Path(tempfile.mkdtemp()), variant="plugin", precision=precision)
    encoder = ort.InferenceSession(str(result.path("source_encoder")), providers=CPU)
    image = example_inputs(config, precision)["source_image"].numpy()
    source = encoder.run(None, {encoder.get_inputs()[0].name: image})
    graph = onnx.load(str(result.path("frame_generator")))
    node = next(n for n in graph.graph.node if n.op_type == op_type)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    weights = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    served = plugin_ort.servable(graph)
    types = plugin_ort._element_types(served)
    wanted = [n for n in node.input if n not in weights] + list(node.output[:3])
    for name in wanted:
        served.graph.output.append(onnx.helper.make_tensor_value_info(
            name, types.get(name, onnx.TensorProto.FLOAT), None))
    options = plugin_ort.session_options_with_plugin(ort.SessionOptions())
    session = ort.InferenceSession(served.SerializeToString(), options, providers=CPU)
    expr, camera = next(driving_frames(config, 1))
    feeds = {}
    for info, value in zip(session.get_inputs(), [*source, expr, camera]):
        elem = np.float16 if info.type == "tensor(float16)" else np.float32
        feeds[info.name] = np.asarray(value).astype(elem)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    inputs = [torch.from_numpy(np.array(weights[n] if n in weights else got[n]))
              for n in node.input]
    shapes = [tuple(t.shape) for t in inputs]
    dtypes = [str(t.dtype).replace("torch.", "") for t in inputs]
    print("NODE", precision, shapes[0], dtypes[0])
    block = 16
    kconfig = plugin.kernel_config(shapes, dtypes, attrs, block_rays=block)
    plan = plugin.launch_plan(shapes, attrs, block_rays=block, num_warps=4, shared=0)
    outs = [torch.full(shape, float("nan")) for shape, _ in
            plugin.output_rule(shapes, dtypes, attrs)]
    consts = kernel.constexprs(kconfig.channels, kconfig.hidden, kconfig.features,
                               kconfig.samples_coarse, kconfig.samples_fine, kconfig.plane_axes,
                               block, "ieee", samples_per_step=kconfig.samples_per_step)
    extra = [value for _, value in plan["extra_args"]]
    raymarch_trt_kernel[plan["grid"]](*inputs, *extra, *outs, **consts, WORKSPACE=1)
    for name, out in zip(("features", "depth", "opacity"), outs[:3]):
        want = got[node.output[("features", "depth", "opacity").index(name)]]
        err = float((out - torch.from_numpy(want).float()).abs().max())
        print("ERR", precision, name, err)
'''


def test_the_plugin_runs_the_exported_graphs_node_as_the_graph_feeds_it():
    proc = run_interpreted(CHILD, timeout=900)
    lines = proc.stdout.splitlines()
    nodes = [line.split(" ", 2) for line in lines if line.startswith("NODE")]
    # tiny: P = 32, C = 8; the fp16 graph hands the node an fp16 tri-plane, channels last
    assert [(n[1], n[2]) for n in nodes] == [("fp32", "(1, 3, 32, 32, 8) float32"),
                                             ("fp16", "(1, 3, 32, 32, 8) float16")]
    errors = {(p, k): float(v) for _, p, k, v in (line.split() for line in lines
                                                  if line.startswith("ERR"))}
    assert len(errors) == 6
    # Both sides compute in fp32 from the same values; a wrong stride, axis order or
    # attribute gives errors of 0.1 and more.
    assert max(errors.values()) < 1e-4, errors
