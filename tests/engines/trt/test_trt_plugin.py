"""The ray-march TensorRT plugin: its shape/type rule, its launch plan, its registration with
``tensorrt.plugin`` (against the recording stand-in), the kernel's TensorRT calling convention
in real PTX, and the TensorRT lint of the plugin graph. These prove our logic, not TensorRT."""
from __future__ import annotations

import inspect
import json
import re
import struct
import subprocess
import sys

import onnx
import pytest
import trt_standin

from engines.raymarch import aot, contract
from engines.trt import plugin
from export.lint import check_tensorrt, lint_tensorrt

# tiny preset sizes: C = 8 (triplane channels), Hd = 16, F = 8, P = 16, 8 x 8 rays; the
# node's tri-plane is channels last, [B, 3, P, P, C]
B, C, P, HD, F, R = 1, 8, 16, 16, 8, 64
SHAPES = [(B, 3, P, P, C), (C, HD), (HD,), (HD, 1 + F), (1 + F,), (B, R, 3), (B, R, 3)]
F32 = ["float32"] * 7
ATTRS = {"near": 2.25, "far": 3.3, "samples_coarse": 8, "samples_fine": 8, "box_warp": 1.0,
         "eg3d_plane_axes": 1}
# The workspace: ceil(B * R / 64) * 64 rows of SC_PAD + Sc + Sf = 8 + 8 + 8 fp32.
WORKSPACE = (64, 24)


class Sym:
    """A symbolic dimension as TensorRT's shape expressions behave: products and ceiling
    divisions build new expressions (here: their text)."""

    def __init__(self, text):
        self.text = text

    def __mul__(self, other):
        return Sym(f"({self.text} * {getattr(other, 'text', other)})")

    __rmul__ = __mul__

    def __eq__(self, other):
        return isinstance(other, Sym) and other.text == self.text

    def __hash__(self):
        return hash(self.text)


def sym_cdiv(a, b):
    return Sym(f"cdiv({a.text}, {b})")


def test_identity_comes_from_the_contract():
    assert plugin.PLUGIN_ID == "export3d.engines::TriplaneRayMarch"
    assert (plugin.PLUGIN_NAMESPACE, plugin.PLUGIN_NAME, plugin.PLUGIN_VERSION) == (
        contract.DOMAIN, contract.OP_TYPE, contract.VERSION)
    assert plugin.ATTRIBUTE_TYPES == {"near": float, "far": float, "samples_coarse": int,
                                      "samples_fine": int, "box_warp": float,
                                      "eg3d_plane_axes": int}


@pytest.mark.parametrize("triplane_dtype", ["float32", "float16", "bfloat16"])
def test_output_rule_shapes_and_dtypes(triplane_dtype):
    outs = plugin.output_rule(SHAPES, [triplane_dtype] + F32[1:], ATTRS)
    assert outs == [((B, R, F), "float32"), ((B, R), "float32"), ((B, R), "float32"),
                    (WORKSPACE, "float32")]


def test_output_rule_batch_two_and_symbolic_dims():
    # paper512: C = F = 32, Hd = 64, Sc = Sf = 48, 128 x 128 rays a frame, batch 2
    shapes = [(2, 3, 256, 256, 32), (32, 64), (64,), (64, 33), (33,), (2, 16384, 3),
              (2, 16384, 3)]
    attrs = {**ATTRS, "samples_coarse": 48, "samples_fine": 48}
    outs = plugin.output_rule(shapes, F32, attrs)
    assert outs[0] == ((2, 16384, 32), "float32")
    assert outs[3] == ((32768, 64 + 48 + 48), "float32")  # 21 MB of scratch for two frames
    one = [(1,) + shapes[0][1:]] + shapes[1:5] + [(1, 100, 3)] * 2
    assert plugin.output_rule(one, F32, attrs)[3][0][0] == 128  # ceil(100 / 64) * 64
    b, r = Sym("b"), Sym("r")  # symbolic dimensions pass through, the workspace's rows built
    sym = [(b, 3, 16, 16, 8), (8, 16), (16,), (16, 9), (9,), (b, r, 3), (b, r, 3)]
    features, depth, opacity, workspace = plugin.output_rule(sym, F32, ATTRS, cdiv=sym_cdiv)
    assert features[0][:2] == (b, r) and depth[0] == (b, r) and opacity[0] == (b, r)
    assert workspace[0] == (Sym("(cdiv((b * r), 64) * 64)"), 24)


@pytest.mark.parametrize("index, shape, message", [
    (1, (C + 1, HD), "w1 must be"),
    (3, (HD, 1), "1 \\+ F >= 2"),
    (6, (B, R + 1, 3), "same R"),
    (0, (B, 2, P, P, C), "triplane must be \\[B, 3, P, P, C\\] \\(channels last"),
    # a version-1 layout [B, 3, C, P, P] (C != P): the planes are not square
    (0, (B, 3, C, P, P), "triplane must be \\[B, 3, P, P, C\\]"),
])
def test_output_rule_rejects_bad_shapes(index, shape, message):
    shapes = list(SHAPES)
    shapes[index] = shape
    with pytest.raises(ValueError, match=message):
        plugin.output_rule(shapes, F32, ATTRS)


def test_output_rule_rejects_bad_dtypes_and_counts():
    with pytest.raises(ValueError, match="input w1 must be float32, got float16"):
        plugin.output_rule(SHAPES, ["float32", "float16"] + F32[2:], ATTRS)
    with pytest.raises(ValueError, match="takes 7 inputs"):
        plugin.output_rule(SHAPES[:6], F32[:6], ATTRS)
    with pytest.raises(ValueError, match="lacks attribute"):
        plugin.output_rule(SHAPES, F32, {"near": 1.0})


def test_kernel_config_bakes_sizes_and_attributes():
    config = plugin.kernel_config(SHAPES, F32, ATTRS)
    # The node's workspace output holds the CDF and merged depths, as in the torch op's
    # launch; so two merged samples a decode step.
    assert aot.uses_cdf_workspace(config) and config.samples_per_step == 2
    assert aot.workspace_bytes(B * R, config) <= WORKSPACE[0] * WORKSPACE[1] * 4
    assert (config.channels, config.hidden, config.features) == (C, HD, F)
    assert (config.samples_coarse, config.samples_fine) == (8, 8)
    assert config.plane_axes == (0, 1, 0, 2, 2, 0)  # eg3d_plane_axes = 1
    assert plugin.kernel_config(SHAPES, F32, {**ATTRS, "eg3d_plane_axes": 0}).plane_axes == (
        0, 1, 0, 2, 1, 2)
    symbolic = list(SHAPES)
    symbolic[0] = (B, 3, P, P, object())
    with pytest.raises(ValueError, match="build-time constant C"):
        plugin.kernel_config(symbolic, F32, ATTRS)
    with pytest.raises(ValueError, match="block_rays must divide 64"):
        plugin.kernel_config(SHAPES, F32, ATTRS, block_rays=48)
    with pytest.raises(ValueError, match="lacks attribute"):
        plugin.kernel_config(SHAPES, F32, {"near": 1.0})
    with pytest.raises(ValueError, match="far > near"):
        plugin.kernel_config(SHAPES, F32, {**ATTRS, "far": 1.0})


def _float(bits):
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def test_launch_plan_follows_the_tensorrt_calling_convention():
    pytest.importorskip("triton")
    from engines.trt import kernel_abi

    plan = plugin.launch_plan([(2,) + SHAPES[0][1:]] + SHAPES[1:5] + [(2, 100, 3)] * 2, ATTRS,
                              block_rays=32, num_warps=4, shared=4096)
    assert plan["grid"] == (7, 1, 1)  # ceil(2 * 100 / 32)
    assert plan["block"] == (128, 1, 1) and plan["shared_mem"] == 4096
    names = [n for n, _ in plan["extra_args"]]
    assert names == list(kernel_abi.EXTRA_ARGS)
    values = dict(plan["extra_args"])
    assert (values["n_rays"], values["rays_per_batch"], values["P"]) == (200, 100, P)
    # channels last: one tap's C values are contiguous
    assert values["stride_tb"] == 3 * C * P * P and values["stride_tk"] == C * P * P
    assert (values["stride_tc"], values["stride_ty"], values["stride_tx"]) == (1, P * C, C)
    assert values["stride_w1c"] == HD and values["stride_w2h"] == 1 + F
    assert _float(values["near_bits"]) == pytest.approx(2.25)
    assert _float(values["step_bits"]) == pytest.approx((3.3 - 2.25) / 8, rel=1e-6)
    assert _float(values["scale_bits"]) == pytest.approx(2.0)
    huge = [(1, 3, 4096, 4096, C)] + SHAPES[1:5] + [(1, 2 ** 31, 3)] * 2
    with pytest.raises(ValueError, match="32-bit"):
        plugin.launch_plan(huge, ATTRS, block_rays=32, num_warps=4, shared=0)


def test_register_plugin_with_the_standin(monkeypatch):
    trt, trtp, calls = trt_standin.make()
    trt_standin.install(monkeypatch, trt, trtp)
    assert plugin.register_plugin() == plugin.PLUGIN_ID
    assert plugin.register_plugin() == plugin.PLUGIN_ID  # once per process
    assert [c for c in calls if c[0].startswith("trtp.")] == [
        ("trtp.register", plugin.PLUGIN_ID), ("trtp.aot_impl", plugin.PLUGIN_ID)]
    funcs = trtp.registry[plugin.PLUGIN_ID]
    # Parameter names and attribute types exactly as the contract states them.
    for key in ("desc", "aot"):
        params = inspect.signature(funcs[key]).parameters
        names = tuple(params)[:len(plugin.registered_signature_names())]
        assert names == plugin.registered_signature_names()
        for name, kind in plugin.ATTRIBUTE_TYPES.items():
            assert params[name].annotation is kind
        for name in contract.INPUT_NAMES:
            assert params[name].annotation is trtp.TensorDesc
    descs = [trt_standin.desc(trtp, s, trt.float32) for s in SHAPES]
    outs = funcs["desc"](*descs, **ATTRS)
    assert [[e.constant_value() for e in o.shape_expr] for o in outs] == [
        [B, R, F], [B, R], [B, R], list(WORKSPACE)]
    assert all(o.dtype is trt.float32 for o in outs)
    fp16 = [trt_standin.desc(trtp, SHAPES[0], trt.float16)] + descs[1:]
    assert len(funcs["desc"](*fp16, **ATTRS)) == len(contract.OUTPUTS) == 4
    with pytest.raises(ValueError, match="w1 must be float32"):
        funcs["desc"](descs[0], trt_standin.desc(trtp, SHAPES[1], trt.float16), *descs[2:],
                      **ATTRS)


def test_aot_impl_returns_kernel_ptx_and_launch(monkeypatch):
    pytest.importorskip("triton")
    from engines.raymarch.aot import Build

    trt, trtp, calls = trt_standin.make()
    trt_standin.install(monkeypatch, trt, trtp)
    compiled = []

    def fake_compile(config, arch, values=()):
        compiled.append((config, arch, dict(values)))
        return Build(arch=arch, name="raymarch_trt_kernel", ptx=".version 8.7\n", cubin=b"",
                     shared=2048, num_warps=4, block_rays=32, config=config)

    monkeypatch.setattr(plugin, "compiled_kernel", fake_compile)
    monkeypatch.setattr(plugin, "current_arch", lambda: 89)
    plugin.register_plugin()
    aot = trtp.registry[plugin.PLUGIN_ID]["aot"]
    descs = [trt_standin.desc(trtp, s, trt.float32) for s in SHAPES]
    name, ptx, params, extra = aot(*descs, **ATTRS, outputs=())
    assert (name, ptx) == ("raymarch_trt_kernel", ".version 8.7\n")
    assert compiled[0][1] == 89 and compiled[0][0].channels == C
    # The build-time values of the extra arguments travel to the compiler's alignment hints.
    assert compiled[0][2]["stride_ty"] == P * C and compiled[0][2]["n_rays"] == B * R
    # sm_89, fp32 tri-plane: TF32x3 tensor-core products, so 16 rays per warp (the op's rule);
    # fp32 FMA products on sm_75 keep 32 rays a program.
    assert compiled[0][0].block_rays == 64
    assert plugin.launch_block_rays(75, "float32") == 32
    assert plugin.launch_block_rays(90, "bfloat16") == 64
    assert (params.grid_x, params.grid_y, params.block_x, params.shared_mem) == (2, 1, 128, 2048)
    assert len(extra) == 17 and all(isinstance(e, trtp.SymInt32) for e in extra)
    assert extra[0].value == B * R


def test_tensorrt_calling_convention_in_real_ptx():
    """Compile the TensorRT entry point (tiny sizes, sm_90, no GPU): its PTX parameters are
    7 input pointers, 17 32-bit scalars, 4 output pointers (the last the workspace), then
    Triton's 2 scratch pointers (which TensorRT passes as null); with no fine samples the
    kernel needs no workspace, and the parameter stays (TensorRT passes all four outputs)."""
    pytest.importorskip("triton")
    from engines.trt.kernel_abi import compile_for_tensorrt

    for config in (plugin.kernel_config(SHAPES, F32, ATTRS),
                   plugin.kernel_config(SHAPES, F32, {**ATTRS, "samples_fine": 0})):
        build = compile_for_tensorrt(config, 90)
        entry = re.search(r"\.entry\s+(\w+)\s*\((.*?)\)", build.ptx, re.S)
        assert entry.group(1) == build.name == "raymarch_trt_kernel"
        kinds = re.findall(r"\.param\s+\.(\w+)", entry.group(2))
        assert kinds == ["u64"] * 7 + ["u32"] * 17 + ["u64"] * 4 + ["u64"] * 2
        assert build.shared >= 0 and build.num_warps == 4
        # The workspace parameter (the 28th) is read and written only when there is one.
        used = re.findall(r"ld\.param\.[bu]64\s+%rd\d+,\s*\[(\w+)\]", build.ptx)
        workspace_param = re.findall(r"\.param\s+\.u64\s+[.\w\s]*?(\w+_param_27)\b",
                                     entry.group(2))
        assert workspace_param and (workspace_param[0] in used) == (config.samples_fine > 0)
    assert "raymarch_trt_kernel_param_24" in used  # features, for contrast


def test_plugin_node_tagging_and_lint(plugin_graphs):
    manifest = json.loads((plugin_graphs / "manifest.json").read_text())
    allowed = ((plugin.PLUGIN_NAMESPACE, plugin.PLUGIN_NAME),)
    for stage, entry in manifest["graphs"].items():
        graph = onnx.load(str(plugin_graphs / entry["file"]))
        assert lint_tensorrt(graph, allowed) == [], stage
        check_tensorrt(graph, allowed, what=f"plugin {stage} graph")
        tagged = plugin.tag_plugin_nodes(graph)
        assert tagged == (1 if stage == "frame_generator" else 0)
        assert lint_tensorrt(graph, allowed) == []  # the tags are plain string attributes
    graph = onnx.load(str(plugin_graphs / manifest["graphs"]["frame_generator"]["file"]))
    plugin.tag_plugin_nodes(graph)
    plugin.tag_plugin_nodes(graph)  # idempotent
    node = next(n for n in graph.graph.node if n.op_type == contract.OP_TYPE)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_namespace"] == b"export3d.engines"
    assert attrs["plugin_version"] == str(contract.VERSION).encode() == b"2"
    assert [a.name for a in node.attribute].count("plugin_namespace") == 1
    assert {a.name for a in contract.ATTRIBUTES} <= set(attrs)


def test_importing_the_trt_package_imports_neither_tensorrt_nor_triton():
    code = ("import sys, engines.trt, engines.trt.plugin, engines.trt.builder, "
            "engines.trt.runtime, engines.trt.device, engines.trt.torch_trt, export.trt_backend;"
            "bad = [m for m in ('tensorrt', 'triton', 'torch_tensorrt') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ptx_isa_is_capped_for_an_older_driver(monkeypatch):
    """Where the driver loads an older PTX ISA than Triton's ptxas emits, the plugin compiles
    again with the driver's ISA (here: a pretend CUDA 12.4 driver, ISA 8.4)."""
    pytest.importorskip("triton")
    from engines.raymarch.aot import KernelConfig
    from engines.trt import kernel_abi

    monkeypatch.setattr(kernel_abi, "driver_ptx_version", lambda: 84)
    plugin.compiled_kernel.cache_clear()
    try:
        build = plugin.compiled_kernel(KernelConfig.tiny(), 90)
    finally:
        plugin.compiled_kernel.cache_clear()
    assert re.search(r"^\s*\.version 8\.4\b", build.ptx, re.M)
