"""The static instruction profile (benchmarks.kernel_sass): Triton compiles the kernel for
sm_90 on this CPU, the wheel's nvdisasm disassembles it, loops and trip counts are found.
The checks are on real SASS, so they fail when the profile's parsing breaks or when the
kernel's compiled code regresses in the ways the profile was built to catch."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiles real SASS; not under the interpreter", allow_module_level=True)

from benchmarks import kernel_sass  # noqa: E402
from engines.raymarch import aot  # noqa: E402

TINY = aot.KernelConfig.tiny()  # Sc = Sf = 8, C = Hd... padded to 16


def test_profile_finds_both_loops_with_their_trip_counts():
    result = kernel_sass.profile(TINY, 90)
    loops = result["loops"]
    # The serial kernel: coarse pass range(1, SC), the walk range(0, SC + SF) and the decode
    # loop range(0, SC + SF, 2), two samples a step.
    assert [loop["trips"] for loop in loops] == [7, 16, 8]
    assert result["unresolved_loops"] == []
    assert all(loop["source"].startswith("kernel.py:") for loop in loops)
    looped = sum(loop["trips"] * loop["instructions_per_trip"] for loop in loops)
    straight = result["static_instructions"] - sum(loop["instructions_per_trip"]
                                                   for loop in loops)
    assert result["dynamic_instructions_per_thread"] == looped + straight
    threads = 32 * TINY.num_warps
    assert result["thread_instructions_per_ray"] == round(
        result["dynamic_instructions_per_thread"] * threads / TINY.block_rays)
    assert 0 < result["registers"] <= 255 and result["stack_bytes"] >= 0
    assert result["hot_lines"][0]["per_ray"] >= result["hot_lines"][-1]["per_ray"]


def _mix(config):
    compiled, _ = kernel_sass.compile_like_jit(config, 90)
    rows = kernel_sass.disassemble(bytes(compiled.asm["cubin"]))
    return rows, collections.Counter(op for op, *_ in rows)


def test_fp16_products_run_on_tensor_cores_and_ieee_ones_do_not():
    _, fp16 = _mix(replace(TINY, dot_precision="fp16"))
    _, ieee = _mix(replace(TINY, dot_precision="ieee"))
    assert fp16["HMMA"] > 0
    assert ieee["HMMA"] == 0 and ieee["FFMA"] > fp16["FFMA"]


def test_fp16_products_sum_an_fp16_triplanes_taps_in_packed_half_precision():
    # With fp16 products the tap sum (their operand) is summed in fp16 on an fp16 tri-plane:
    # the tap lines compile to packed HFMA2, with no per-value conversion to fp32 (HADD2.F32)
    # and no fp32 FMAs; on an fp32 tri-plane, or with fp32-accurate products, they stay fp32.
    def tap_ops(config):
        rows, _ = _mix(config)
        return collections.Counter(
            op for op, _, where, _ in rows if where and where[0].endswith("kernel.py")
            and "acc += f" in kernel_sass.source_line(*where))

    half = tap_ops(replace(TINY, dot_precision="fp16", triplane_dtype="float16"))
    assert half["HFMA2"] > 0 and half["FFMA"] == 0
    for other in (dict(dot_precision="fp16", triplane_dtype="float32"),
                  dict(dot_precision="tf32x3", triplane_dtype="float16")):
        ops = tap_ops(replace(TINY, **other))
        assert ops["HFMA2"] == 0 and ops["FFMA"] > 0, other


def test_an_nchw_triplane_costs_the_gathers_a_channels_last_one_saves():
    # The version-1 ray-march node handed the engine an NCHW tri-plane (kernel_sass.NCHW_VALUES):
    # a tap's channels are scattered values, one load each, where a channels-last tap is one
    # contiguous line loaded in vectors (16 unpadded channels here, so the channel offsets are
    # a plain ramp). compile_like_jit and profile take the runtime values that say so.
    config = replace(TINY, channels=16, cdf_in_memory=False, samples_per_step=1)

    def tap_loads(values):
        compiled, _ = kernel_sass.compile_like_jit(config, 90, values)
        rows = kernel_sass.disassemble(bytes(compiled.asm["cubin"]))
        return sum(1 for op, _, where, _ in rows if op.startswith("LDG") and where
                   and "tl.load(base" in kernel_sass.source_line(*where))

    assert tap_loads(kernel_sass.NCHW_VALUES) >= 4 * tap_loads(kernel_sass.PAPER512_VALUES) > 0
    nchw = kernel_sass.profile(config, 90, values=kernel_sass.NCHW_VALUES)
    last = kernel_sass.profile(config, 90)
    assert nchw["thread_instructions_per_ray"] > last["thread_instructions_per_ray"]


def test_the_engines_kernel_costs_what_the_torch_ops_does():
    # A TensorRT engine's kernel, compiled as the plugin compiles it (paper512 node shapes,
    # sm_90), against the torch op's JIT launch of the same configuration: the version-2 node
    # (channels-last tri-plane, workspace output) and the plugin's constant channel strides
    # and alignment hints give it the same instruction stream, within 3%. Measured: fp16
    # graph 0.232 M per ray vs 0.235 M, 40 bytes of spills; fp32 graph 0.402 M vs 0.399 M,
    # 384 bytes of spills vs 272; the version-1 node's engine ran 0.82 M with 1.1 KB. Without
    # the hints the fp16 engine kernel was 0.67 M.
    for dtype, precision in (("float16", "fp16"), ("float32", "tf32x3")):
        engine = kernel_sass.profile_trt(dtype, 90)
        op = kernel_sass.profile(replace(aot.KernelConfig(), dot_precision=precision,
                                         block_rays=64, triplane_dtype=dtype), 90)
        assert engine["config"]["cdf_in_memory"] and engine["config"]["samples_per_step"] == 2
        assert engine["config"]["dot_precision"] == precision
        ratio = engine["thread_instructions_per_ray"] / op["thread_instructions_per_ray"]
        assert 0.97 <= ratio <= 1.03, (dtype, ratio)
        assert engine["stack_bytes"] <= op["stack_bytes"] + 128, dtype
    assert kernel_sass.profile_trt("float16", 90)["thread_instructions_per_ray"] < 250_000
    # What the plugin's alignment hints buy: without them each tap load is one fp16 value,
    # with them a 16-byte vector of eight (768 tap loads in the cubin against 96 on sm_90).
    from engines.trt import kernel_abi, plugin

    shapes, attrs = kernel_sass.TRT_NODE_SHAPES, kernel_sass.TRT_NODE_ATTRS
    config = plugin.kernel_config(shapes, ["float16"] + ["float32"] * 6, attrs, block_rays=64)
    values = {n: v for n, v in plugin.launch_values(shapes, attrs).items() if isinstance(v, int)}

    def tap_loads(hints):
        build = kernel_abi.compile_for_tensorrt(config, 90, values=hints)
        return sum(1 for op, _, where, _ in kernel_sass.disassemble(build.cubin)
                   if op.startswith("LDG") and where
                   and "tl.load(base" in kernel_sass.source_line(*where))

    assert tap_loads(None) == 8 * tap_loads(values) > 0


def test_softplus_compiles_to_special_function_instructions():
    # The fast softplus: ex2 and lg2 on the special-function unit plus a few ALU ops per
    # value. libdevice's accurate log2 (a range reduction and a polynomial) would put about
    # 20 more instructions per value on this line.
    rows, _ = _mix(TINY)
    softplus = [op for op, _, where, _ in rows
                if where and where[0].endswith("kernel.py")
                and "_log2(1.0 + tl.exp2" in kernel_sass.source_line(*where)]
    mufu = softplus.count("MUFU")
    assert mufu > 0
    # The arithmetic only: layout conversions of the line's per-ray operands (shared-memory
    # stores and loads, barriers) are attributed to it too, and are not what this checks.
    arithmetic = [op for op in softplus if op not in ("LDS", "STS", "BAR")]
    assert len(arithmetic) <= 6 * mufu


def test_a_register_cap_reaches_the_cubin_and_costs_spills():
    # max_registers is ptxas .maxnreg (the launch option the GPU suite sweeps): the profile
    # reads the cap back from the cubin, with the spills (stack, extra instructions) it costs
    # and the occupancy it buys.
    free = kernel_sass.profile(TINY, 90)
    capped = kernel_sass.profile(replace(TINY, max_registers=64), 90)
    assert free["registers"] > 64 and capped["registers"] <= 64
    assert capped["stack_bytes"] > free["stack_bytes"]
    assert capped["thread_instructions_per_ray"] > free["thread_instructions_per_ray"]
    assert capped["occupancy_h100"]["warps_per_sm"] > free["occupancy_h100"]["warps_per_sm"]


def test_cli_writes_a_report(tmp_path):
    out = tmp_path / "sass.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.kernel_sass", "--only",
                           "serial 32x4 fp16", "--out", str(out)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    (config,) = report["configs"]
    assert config["name"] == "serial 32x4 fp16" and config["arch"] == "sm_90"
    assert config["thread_instructions_per_ray"] > 0 and config["issue_bound_ms_h100"] > 0
    assert "serial 32x4 fp16" in proc.stdout


def test_occupancy_from_registers_shared_memory_and_warps():
    # 255 registers x 128 threads: 2 blocks of 4 warps fit the 64 K registers of an SM.
    occ = kernel_sass.occupancy(255, 8192, 4, 32)
    assert occ == {"blocks_per_sm": 2, "warps_per_sm": 8, "programs": 512,
                   "waves": round(512 / 264, 2)}
    # 128 rays a program: 128 programs, fewer than the 132 SMs.
    assert kernel_sass.occupancy(255, 8192, 4, 128)["waves"] < 1
    # Shared memory binds: 100 KB a block leaves room for 2 (228 KB an SM).
    assert kernel_sass.occupancy(32, 100 * 1024, 4, 32)["blocks_per_sm"] == 2
    # Few registers: the 64-warp limit binds.
    assert kernel_sass.occupancy(32, 0, 4, 32)["warps_per_sm"] == 64


def test_paper512_default_launch_keeps_its_instruction_budget():
    # The default launch for half-precision tri-planes (fp16 products, 64 rays x 4 warps) at
    # paper512 sizes, fp16 tri-plane: 0.228 M thread-instructions per ray on sm_90 and 40
    # bytes of spill stack (0.232 M and none with one sample a step; 0.267 M with the walk
    # inside the decode loop; 0.347 M with the taps summed in fp32; 0.557 M and 632 bytes of
    # spill stack with each ray's CDF in registers; 0.579 M before each ray's pixel-space line
    # was folded once per ray, 0.633 M before the tap sum was kept in its load layout, 2.03 M
    # before the instruction diet). 6% headroom for compiler drift; a regression of the kind
    # the profile was built to catch costs more.
    # And the tap sum reaches the MLP through shared memory once per decode, not once per
    # tap: the TTGIR has 5 shared-memory stagings (the weights, the second product's operand,
    # the CDF), where the layout problem made 28.
    config = replace(aot.KernelConfig(), dot_precision="fp16", triplane_dtype="float16",
                     block_rays=64)
    result = kernel_sass.profile(config, 90)
    assert result["unresolved_loops"] == []
    assert result["thread_instructions_per_ray"] <= 242_000, result["thread_instructions_per_ray"]
    assert result["stack_bytes"] <= 64, result["stack_bytes"]
    # The walk runs in a pass of its own, as one compact copy: 55 instructions a step. Inside
    # the decode loop Triton's layout pass kept it in three copies, one per layout its
    # results were wanted in; a walk loop far above 55 means that has come back.
    walk = result["loops"][1]
    assert walk["trips"] == 96 and walk["instructions_per_trip"] <= 80, walk
    compiled, _ = kernel_sass.compile_like_jit(config, 90)
    assert compiled.asm["ttgir"].count("ttg.local_alloc") <= 6


def test_special_function_count_and_bound_at_paper512():
    # Every decoded sample costs each hidden unit's softplus two special-function instructions
    # (exp2, log2) and, where features are decoded, each feature's sigmoid two more (exp2,
    # reciprocal): the coarse pass decodes 48 samples for density only, the merged pass 96
    # with features. Measured on the half-precision default (64 x 4): 27078 a ray against
    # that floor of 24576 (the rest: density, compositing, the importance sampler). A count
    # below the floor means a transcendental left the special-function unit (libdevice's
    # accurate log2 is a polynomial); far above it, work done twice.
    config = replace(aot.KernelConfig(), dot_precision="fp16", triplane_dtype="float16",
                     block_rays=64)
    result = kernel_sass.profile(config, 90)
    floor = 48 * 2 * config.hidden + 96 * 2 * (config.hidden + config.features)
    assert floor <= result["special_function_per_ray"] <= 1.15 * floor, \
        result["special_function_per_ray"]
    # The bound follows from the count: 8 clocks a warp instruction, 4 schedulers an SM.
    warp_mufu = result["special_function_per_ray"] * kernel_sass.RAYS_PER_FRAME / 32
    expected = warp_mufu * 8 / kernel_sass.H100_WARP_ISSUE_PER_S * 1e3
    assert result["sfu_bound_ms_h100"] == pytest.approx(expected, abs=1e-3)


def test_the_gathers_ablation_runs_the_kernels_instruction_stream():
    # The GPU suite times ablate="gathers" beside the kernel to tell how much of its time the
    # gathers' memory traffic costs: that reading holds only if the ablation changes where
    # the loads go and nothing else. At paper512 (the half-precision default launch) the same
    # loads at the same widths (LDG.E.128 for the tap lines), the same special-function
    # count, registers and spills, and the instruction stream within 1%: measured 0.236 M
    # against 0.235 M a ray (the strides times a run-time zero). An opaque zero from inline
    # PTX did not survive: ptxas saw through it, merged the taps' loads and hoisted them,
    # 20 LDG.E.128 instead of 100; one without alignment made them 16-bit loads.
    config = replace(aot.KernelConfig(), dot_precision="fp16", triplane_dtype="float16",
                     block_rays=64)
    ablated = replace(config, ablate="gathers")
    kernel = kernel_sass.profile(config, 90)
    diagnostic = kernel_sass.profile(ablated, 90)
    assert diagnostic["special_function_per_ray"] == kernel["special_function_per_ray"]
    assert diagnostic["registers"] == kernel["registers"]
    assert diagnostic["stack_bytes"] == kernel["stack_bytes"]
    ratio = diagnostic["thread_instructions_per_ray"] / kernel["thread_instructions_per_ray"]
    assert 1.0 <= ratio <= 1.01, ratio

    def loads(cfg):
        compiled, _ = kernel_sass.compile_like_jit(cfg, 90)
        text = kernel_sass.nvdisasm_text(bytes(compiled.asm["cubin"]))
        return collections.Counter(w for w in text.split() if w.startswith("LDG."))

    assert loads(ablated) == loads(config)
    assert loads(config)["LDG.E.128"] >= 96  # 12 tap lines x 2 vectors, 4 decodes' worth


def test_fp32_accurate_products_cost_little_more_than_one_tf32_product():
    # The fp32 tri-plane default on sm_80+ ("tf32x3": three TF32 products of the operands'
    # heads and tails, kernel._matmul) at paper512's 64 rays x 4 warps: 0.399 M instructions
    # per ray, 1.22x one TF32 product's 0.326 M; tl.dot's own tf32x3 ("tl-tf32x3") 0.455 M,
    # 1.40x. Written out, the weights' split is hoisted out of the loops.
    config = replace(aot.KernelConfig(), block_rays=64, num_warps=4, triplane_dtype="float32")
    per_ray = {precision: kernel_sass.profile(replace(config, dot_precision=precision), 90)[
        "thread_instructions_per_ray"] for precision in ("tf32x3", "tf32", "tl-tf32x3")}
    ratio = per_ray["tf32x3"] / per_ray["tf32"]
    assert 1.0 < ratio <= 1.3, per_ray
    assert per_ray["tf32x3"] < 0.95 * per_ray["tl-tf32x3"], per_ray
