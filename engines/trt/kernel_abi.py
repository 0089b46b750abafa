"""The ray-march kernel with TensorRT's ahead-of-time plugin calling convention.

A ``tensorrt.plugin.aot_impl`` kernel is launched by TensorRT with its parameters in the order
(input pointers..., extra scalar arguments..., output pointers...), every extra argument a
32-bit integer (``trtp.SymInt32``); parameters it is not given (Triton's trailing global and
profile scratch pointers) are passed as null. ``engines.raymarch.kernel.raymarch_kernel`` takes
(input pointers, output pointers, workspace, ints, floats), so :func:`raymarch_trt_kernel` is a
thin Triton entry point in TensorRT's order that reinterprets three int32 arguments as the fp32
``near``, ``step`` and ``scale`` (bit patterns, see :func:`float_bits`) and calls the shared
kernel body, which Triton inlines: one kernel source, two entry points.

An ahead-of-time plugin gets no workspace of its own, so the ONNX node (contract version 2)
declares one as its fourth output, ``workspace``, which nothing downstream reads: TensorRT
allocates it with the other activations and passes it as the last output pointer, and the
kernel keeps each ray's CDF and merged depths there, as the torch op's launch does
(``WORKSPACE``; 0 for a configuration with no fine samples, which needs none: the pointer is
then ignored). The node's tri-plane is channels last, ``[B, 3, P, P, C]``
(the strides come from ``plugin.launch_plan``), in the graph's dtype: fp16 in an fp16 graph,
whose taps the kernel sums in packed fp16 with fp16 tensor-core products, as the torch op does.

Imports triton: only the plugin's ahead-of-time implementation (at engine build time) and the
tests import this module.
"""
from __future__ import annotations

import struct

import triton
import triton.language as tl

from engines.raymarch import aot, kernel
from engines.raymarch.kernel import raymarch_kernel

# Extra (scalar) arguments in launch order, after the 7 input pointers and before the 3 output
# pointers. The first 17 are the shared kernel's int arguments; the last three are the fp32
# arguments passed as their int32 bit patterns.
INT_ARGS = tuple(name for name, kind in kernel.RUNTIME_ARGS if kind == "i32")
FLOAT_ARGS = tuple(name for name, kind in kernel.RUNTIME_ARGS if kind == "fp32")
EXTRA_ARGS = INT_ARGS + tuple(f"{name}_bits" for name in FLOAT_ARGS)
INPUT_PTRS = tuple(name for name, kind in kernel.RUNTIME_ARGS[:7])
# features, depth, opacity, then the node's workspace output (the kernel's cdf_ptr).
OUTPUT_PTRS = tuple(name for name, kind in kernel.RUNTIME_ARGS[7:10]) + ("workspace_ptr",)


def float_bits(value: float) -> int:
    """The int32 whose bits are the float32 ``value`` (what the kernel reinterprets)."""
    return struct.unpack("<i", struct.pack("<f", float(value)))[0]


@triton.jit
def raymarch_trt_kernel(
        triplane_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, origins_ptr, directions_ptr,
        n_rays, rays_per_batch, P,
        stride_tb, stride_tk, stride_tc, stride_ty, stride_tx,
        stride_w1c, stride_w1h, stride_b1, stride_w2h, stride_w2o, stride_b2,
        near_bits, step_bits, scale_bits,
        features_ptr, depth_ptr, opacity_ptr, workspace_ptr,
        C: tl.constexpr, HD: tl.constexpr, F: tl.constexpr,
        C_PAD: tl.constexpr, H_PAD: tl.constexpr, F_PAD: tl.constexpr,
        SC: tl.constexpr, SF: tl.constexpr, SC_PAD: tl.constexpr,
        A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr,
        A4: tl.constexpr, A5: tl.constexpr, BLOCK_R: tl.constexpr,
        DOT_PRECISION: tl.constexpr, PREFETCH: tl.constexpr = 0,
        SAMPLES_PER_STEP: tl.constexpr = 1, WORKSPACE: tl.constexpr = 1):
    near = near_bits.to(tl.float32, bitcast=True)
    step = step_bits.to(tl.float32, bitcast=True)
    scale = scale_bits.to(tl.float32, bitcast=True)
    # The node's tri-plane is contiguous channels last, so a channel's stride is 1 and a
    # column's C: compile-time constants here (the arguments carry the same values), as the
    # torch op's JIT launch specialises them. With the runtime 1, Triton cannot tell that a
    # tap's C values are one line, and loads them one by one (sm_90, paper512 sizes, fp16
    # tri-plane: 0.41 M instructions per ray against 0.23 M).
    stride_tc = 1
    stride_tx = C
    cdf_ptr = workspace_ptr if WORKSPACE else None  # no fine samples: no workspace needed
    raymarch_kernel(triplane_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, origins_ptr, directions_ptr,
                    features_ptr, depth_ptr, opacity_ptr, cdf_ptr, n_rays, rays_per_batch, P,
                    stride_tb, stride_tk, stride_tc, stride_ty, stride_tx,
                    stride_w1c, stride_w1h, stride_b1, stride_w2h, stride_w2o, stride_b2,
                    near, step, scale, C, HD, F, C_PAD, H_PAD, F_PAD, SC, SF, SC_PAD,
                    A0, A1, A2, A3, A4, A5, BLOCK_R, DOT_PRECISION, PREFETCH,
                    SAMPLES_PER_STEP, "", "fp16")  # no ablation; the op's default sums


def dot_precision(arch: int, triplane_dtype: str = "float32") -> str:
    """As the torch op at PyTorch's default fp32 matmul precision (an engine's kernel cannot
    see that setting): ``aot.default_dot_precision``."""
    return aot.default_dot_precision(arch, triplane_dtype)


def signature(config: aot.KernelConfig, arch: int) -> tuple[dict, dict]:
    """(signature, constexprs) of :func:`raymarch_trt_kernel` for ``triton.compiler.ASTSource``."""
    if config.triplane_dtype not in aot.DTYPES:
        raise ValueError(f"triplane_dtype must be one of {', '.join(aot.DTYPES)}, got "
                         f"{config.triplane_dtype!r}.")
    if config.ablate:
        raise ValueError("an engine's kernel is the renderer: ablations are timing "
                         "diagnostics of the torch op only.")
    if config.tap_sum != "fp16":
        raise ValueError("an engine's kernel sums the taps as the op does by default "
                         "(tap_sum 'fp16'); other tap sums are launch options of the torch op.")
    workspace = aot.uses_cdf_workspace(config)
    consts = kernel.constexprs(config.channels, config.hidden, config.features,
                               config.samples_coarse, config.samples_fine, config.plane_axes,
                               config.block_rays,
                               dot_precision(arch, config.triplane_dtype),
                               samples_per_step=config.samples_per_step if workspace else 1)
    del consts["ABLATE"], consts["TAP_SUM"]  # the entry point passes them (the op's default)
    consts["WORKSPACE"] = int(workspace)
    sig = {name: "*" + aot.DTYPES[config.triplane_dtype] if name == "triplane_ptr"
           else "*fp32" for name in INPUT_PTRS}
    sig.update({name: "i32" for name in EXTRA_ARGS})
    sig.update({name: "*fp32" for name in OUTPUT_PTRS})
    sig.update({name: "constexpr" for name in consts})
    return sig, consts


def driver_ptx_version() -> int | None:
    """The newest PTX ISA the installed CUDA driver loads (e.g. 90 for a CUDA 13.0 driver), by
    Triton's own CUDA-version -> ISA rule; None where it cannot be told (no driver here).
    TensorRT hands the PTX to the driver, which rejects an ISA newer than itself, and Triton
    emits the ISA of the ptxas it bundles, which can be newer than the driver."""
    try:
        from cuda.bindings import driver
        from triton.backends.nvidia.compiler import ptx_get_version

        if int(driver.cuInit(0)[0]) != 0:
            return None
        err, version = driver.cuDriverGetVersion()
        if int(err) != 0:
            return None
        return int(ptx_get_version(f"{version // 1000}.{(version % 1000) // 10}"))
    except Exception:  # noqa: BLE001 - no driver, no cuda-python, or Triton internals moved
        return None


# Pointers the compiler may take as 16-byte aligned, which lets it load a tap's C values as
# 16-byte vectors: the tri-plane is produced inside the graph (the Transpose before the node)
# and the workspace is an output nothing reads, so TensorRT allocates both itself, and even an
# engine's I/O bindings must be 256-byte aligned (IExecutionContext::setTensorAddress: "The
# pointer must have at least 256-byte alignment"). The other pointers gain nothing from the
# hint (sm_90 SASS: 0.2246 M instructions per ray either way), so they are left without it.
ALIGNED_POINTERS = ("triplane_ptr", "workspace_ptr")


def divisibility_hints(values: dict | None = None) -> dict:
    """Triton's ``attrs`` for :func:`raymarch_trt_kernel`: ``tt.divisibility`` 16 on
    :data:`ALIGNED_POINTERS` and on every extra argument whose build-time value (``values``,
    from ``plugin.launch_plan`` with static shapes) is a multiple of 16, as a JIT launch with
    those values would specialise. The parameter list stays as it is (no constants)."""
    hints = {}
    for index, name in enumerate(raymarch_trt_kernel.arg_names):
        value = (values or {}).get(name)
        if name in ALIGNED_POINTERS or (name in INT_ARGS and isinstance(value, int)
                                        and value % 16 == 0):
            hints[(index,)] = [["tt.divisibility", 16]]
    return hints


def compile_entry(config: aot.KernelConfig, arch: int, ptx_version: int | None = None,
                  values: dict | None = None):
    """Triton's compiled :func:`raymarch_trt_kernel` (a ``CompiledKernel``: PTX, cubin and
    metadata; ``compiled[grid](*args)`` launches its cubin with the arguments in TensorRT's
    order, which is how the GPU suite runs the engine's kernel where TensorRT is missing).
    No GPU needed to compile. ``ptx_version`` caps the PTX ISA (see
    :func:`driver_ptx_version`); ``values``: the extra arguments' values where they are
    build-time constants (:func:`divisibility_hints`)."""
    from triton.backends.compiler import GPUTarget

    sig, consts = signature(config, arch)
    source = triton.compiler.ASTSource(fn=raymarch_trt_kernel, signature=sig,
                                       constexprs=consts, attrs=divisibility_hints(values))
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    if ptx_version is not None:
        options["ptx_version"] = int(ptx_version)
    compiled = triton.compile(source, target=GPUTarget("cuda", int(arch), 32), options=options)
    meta = compiled.metadata
    if meta.global_scratch_size or meta.profile_scratch_size:
        raise RuntimeError("the kernel now needs Triton scratch memory, which TensorRT's "
                           "ahead-of-time launch passes as null; the plugin cannot run it.")
    return compiled


def compiled_arguments(config: aot.KernelConfig, arch: int, inputs, extra, outputs) -> list:
    """The positional arguments of a :func:`compile_entry` kernel's launcher
    (``compiled[grid](*args)``): one per entry of its signature, in the signature's order,
    the constexprs included (Triton's launcher parses them and passes only the rest to the
    kernel). ``inputs``: the 7 input tensors, ``extra``: the 17 extra values in EXTRA_ARGS
    order, ``outputs``: the 4 output tensors; so the kernel sees TensorRT's order."""
    sig, consts = signature(config, arch)
    given = dict(zip(INPUT_PTRS, inputs))
    given.update(zip(EXTRA_ARGS, extra))
    given.update(zip(OUTPUT_PTRS, outputs))
    if len(given) != len(INPUT_PTRS) + len(EXTRA_ARGS) + len(OUTPUT_PTRS):
        raise ValueError(f"expected {len(INPUT_PTRS)} inputs, {len(EXTRA_ARGS)} extra values and "
                         f"{len(OUTPUT_PTRS)} outputs.")
    return [consts[name] if kind == "constexpr" else given[name] for name, kind in sig.items()]


def compile_for_tensorrt(config: aot.KernelConfig, arch: int,
                         ptx_version: int | None = None, values: dict | None = None) -> aot.Build:
    """PTX (and cubin) of :func:`raymarch_trt_kernel` for one compute capability, with the same
    compiler options as ``engines.raymarch.aot.compile_arch`` (:func:`compile_entry`). Without
    the ``values`` hints a tap's values load one by one (sm_90, paper512 sizes, fp16
    tri-plane: 0.67 M instructions per ray and 1.1 KB of spills, against 0.23 M and 40 bytes
    with them)."""
    compiled = compile_entry(config, arch, ptx_version, values)
    meta = compiled.metadata
    return aot.Build(arch=int(arch), name=meta.name, ptx=compiled.asm["ptx"],
                     cubin=bytes(compiled.asm["cubin"]), shared=int(meta.shared),
                     num_warps=int(meta.num_warps), block_rays=config.block_rays, config=config)
