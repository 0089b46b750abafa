"""The kernel's TensorRT entry point computes the reference ray march when launched exactly as
the plugin tells TensorRT to launch it: arguments in TensorRT's order, sizes and strides from
``plugin.launch_plan`` (the node's channels-last tri-plane), near / step / scale as int32 bit
patterns, the outputs as ``plugin.output_rule`` shapes them (the workspace NaN-filled, as
TensorRT's activation memory may hold anything), the grid and block from the plan. Run under
Triton's interpreter on CPU, in a child process (the interpreter must be chosen before triton
is imported), at tiny sizes: 2 x 20 rays, both plane layouts, an fp16 tri-plane, and the
entry's register-CDF body."""
from __future__ import annotations

import pytest
from interpreted import run_interpreted

pytest.importorskip("triton")

CHILD = r'''
import torch
from engines.raymarch import contract, kernel
from engines.trt import plugin
from engines.trt.kernel_abi import raymarch_trt_kernel
from export3d.camera import orbit_path, rays
from export3d.renderer import Decoder, RayMarchSettings, raymarch_reference

torch.manual_seed(0)
C, HD, F, P, B, BLOCK = 8, 16, 8, 16, 2, 16
worst = 0.0
# (eg3d plane axes, tri-plane dtype, the node's workspace used); the last case is the entry's
# register-CDF body (no fine-sample workspace needed), kept reachable.
for eg3d, dtype, workspace in ((0, torch.float32, 1), (1, torch.float32, 1),
                               (1, torch.float16, 1), (0, torch.float32, 0)):
    triplane = torch.randn(B, 3, C, P, P).to(dtype)
    node_triplane = triplane.permute(0, 1, 3, 4, 2).contiguous()  # the node's [B, 3, P, P, C]
    dec = Decoder(torch.randn(C, HD) * 0.4, torch.randn(HD) * 0.1, torch.randn(HD, 1 + F) * 0.4,
                  torch.randn(1 + F) * 0.1)
    o, d = rays(orbit_path("yaw", 3)[:B].float(), 5)
    o, d = o[:, :20].contiguous(), d[:, :20].contiguous()
    attrs = {"near": 2.25, "far": 3.3, "samples_coarse": 8, "samples_fine": 8, "box_warp": 1.0,
             "eg3d_plane_axes": eg3d}
    shapes = [tuple(t.shape) for t in (node_triplane, dec.w1, dec.b1, dec.w2, dec.b2, o, d)]
    dtypes = [str(triplane.dtype).replace("torch.", "")] + ["float32"] * 6
    config = plugin.kernel_config(shapes, dtypes, attrs, block_rays=BLOCK)
    plan = plugin.launch_plan(shapes, attrs, block_rays=BLOCK, num_warps=4, shared=0)
    outs = plugin.output_rule(shapes, dtypes, attrs)
    features, depth, opacity, scratch = (torch.empty(shape) for shape, _ in outs)
    scratch.fill_(float("nan"))  # whatever TensorRT's activation memory held
    consts = kernel.constexprs(C, HD, F, 8, 8, config.plane_axes, BLOCK, "ieee",
                               samples_per_step=config.samples_per_step if workspace else 1)
    extra = [value for _, value in plan["extra_args"]]
    raymarch_trt_kernel[plan["grid"]](node_triplane, dec.w1, dec.b1, dec.w2, dec.b2, o, d,
                                      *extra, features, depth, opacity, scratch, **consts,
                                      WORKSPACE=workspace)
    assert bool(scratch.isnan().all()) != bool(workspace), "workspace use"
    settings = RayMarchSettings(2.25, 3.3, 8, 8, 1.0, bool(eg3d))
    ref = raymarch_reference(triplane.float(), dec, o, d, settings)
    for got, want in zip((features, depth, opacity), ref):
        worst = max(worst, float((got - want.float()).abs().max()))
print("MAX_ABS_ERR", worst)
'''


def test_tensorrt_entry_point_matches_the_reference():
    proc = run_interpreted(CHILD)
    worst = float(proc.stdout.split("MAX_ABS_ERR")[1])
    # fp32 arithmetic in both; measured 1.2e-5, while a scale 1000 ulps off gives 1.9e-4.
    assert worst < 5e-5, proc.stdout


def test_plugin_kernel_precision_follows_the_torch_op():
    # The plugin's AOT kernel takes the op's products: fp16 MMAs for half-precision tri-planes
    # on sm_80+, fp32-accurate TF32x3 for fp32 ones, plain fp32 on sm_75; checked in the PTX.
    import re

    from engines.raymarch import aot
    from engines.trt import kernel_abi

    assert kernel_abi.dot_precision(75, "float16") == "ieee"
    assert kernel_abi.dot_precision(90, "float32") == "tf32x3"
    assert kernel_abi.dot_precision(86, "bfloat16") == "fp16"
    ptx = kernel_abi.compile_for_tensorrt(aot.KernelConfig.tiny(triplane_dtype="float16"), 90).ptx
    assert re.search(r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.f16\.f16\.f32", ptx)


def test_compiled_kernel_arguments_follow_the_launchers_signature():
    # The GPU suite launches the AOT-compiled entry point through Triton's launcher, which
    # parses one argument per signature entry (constexprs included) and hands the kernel the
    # rest; those must be TensorRT's order: 7 inputs, 17 extra values, 4 outputs.
    from engines.raymarch import aot
    from engines.trt import kernel_abi

    config = aot.KernelConfig.tiny(triplane_dtype="float16")
    sig, consts = kernel_abi.signature(config, 90)
    inputs = [f"in{i}" for i in range(7)]
    extra = list(range(100, 117))
    outputs = [f"out{i}" for i in range(4)]
    args = kernel_abi.compiled_arguments(config, 90, inputs, extra, outputs)
    assert len(args) == len(sig)
    runtime = [a for a, kind in zip(args, sig.values()) if kind != "constexpr"]
    assert runtime == inputs + extra + outputs
    assert list(sig)[:31] == list(kernel_abi.raymarch_trt_kernel.arg_names[:31])
    assert dict(zip(sig, args))["WORKSPACE"] == 1 == consts["WORKSPACE"]
    with pytest.raises(ValueError, match="expected 7 inputs"):
        kernel_abi.compiled_arguments(config, 90, inputs[:6], extra, outputs)


def test_an_engines_kernel_is_never_an_ablation():
    # kernel.ABLATIONS are timing diagnostics of the torch op; an engine built with one would
    # render wrong pictures, so the plugin's compile refuses the config.
    from engines.raymarch import aot
    from engines.trt import kernel_abi

    with pytest.raises(ValueError, match="timing diagnostics"):
        kernel_abi.signature(aot.KernelConfig.tiny(ablate="mlp"), 90)
    # Nor a tap sum other than the op's default (the entry point passes that one).
    with pytest.raises(ValueError, match="tap_sum 'fp16'"):
        kernel_abi.signature(aot.KernelConfig.tiny(tap_sum="fp32"), 90)
    with pytest.raises(ValueError, match="serial kernel variant only"):
        aot.signature(aot.KernelConfig.tiny(tap_sum="fp32", variant="tiled"))
    sig, consts = kernel_abi.signature(aot.KernelConfig.tiny(), 90)
    assert "ABLATE" not in consts and "ABLATE" not in sig
