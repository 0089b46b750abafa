"""The ray-march kernel as a torch op, ``export3d_engines::raymarch`` (name from the contract).

In: triplane [B, 3, C, P, P] (fp32/fp16/bf16), w1 [C, Hd], b1 [Hd], w2 [Hd, 1 + F], b2 [1 + F],
origins / directions [B, R, 3] fp32, settings as plain floats/ints, plane_axes as 6 ints.
Out: features [B, R, F], depth [B, R], opacity [B, R], fp32, new tensors.

Implementations: CUDA tensors launch the Triton kernel on the current stream of the inputs'
device; CPU tensors run the same kernel in Triton's interpreter, but only when the process was
started with ``TRITON_INTERPRET=1`` (the CPU tests), else a ValueError says to use the
reference. The fake (meta) implementation returns empty tensors of the contract's shapes, so
the op traces under FakeTensorMode / torch.compile. Registering imports no triton and compiles
nothing; the kernel module is imported at the first real call.
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import contract

INTERPRETER_BLOCK_RAYS = 256
INTERPRETER_TILED_BLOCK_RAYS = 64  # 64 rays x 16 samples = 1024 decode rows per program
VARIANTS = ("serial", "tiled")
TRIPLANE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAUNCH_KEYS = ("block_rays", "num_warps", "dot_precision", "variant", "sample_tile",
               "max_registers", "prefetch", "cdf_in_memory", "samples_per_step", "tap_sum")
# Launch options the registered op uses when its caller (the renderer, torch.compile'd graphs,
# CUDA graphs) cannot pass them: set by default_launch(), read at every launch.
_launch_override: dict = {}


@contextlib.contextmanager
def default_launch(**options):
    """Within the block, op launches that do not name an option take it from here, e.g.
    ``with default_launch(block_rays=64, dot_precision="fp16"): model.synthesize(...)``
    (how the GPU suite runs the model with its sweep's fastest launch). Keys: LAUNCH_KEYS."""
    unknown = set(options) - set(LAUNCH_KEYS)
    if unknown:
        raise ValueError(f"unknown launch option(s) {', '.join(sorted(unknown))}; choose from "
                         f"{', '.join(LAUNCH_KEYS)}.")
    global _launch_override
    saved = _launch_override
    _launch_override = {**saved, **{k: v for k, v in options.items() if v is not None}}
    try:
        yield
    finally:
        _launch_override = saved


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def validate(triplane, w1, b1, w2, b2, origins, directions, near, far, samples_coarse,
             samples_fine, box_warp, plane_axes) -> None:
    """One-sentence ValueErrors for anything the kernel cannot take."""
    tensors = {"triplane": triplane, "w1": w1, "b1": b1, "w2": w2, "b2": b2,
               "origins": origins, "directions": directions}
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
    contract.output_shapes(*(tuple(t.shape) for t in tensors.values()))
    if triplane.dtype not in TRIPLANE_DTYPES:
        raise ValueError(f"triplane must be float32, float16 or bfloat16, got {triplane.dtype}.")
    for name in ("w1", "b1", "w2", "b2"):
        if not tensors[name].is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {tensors[name].dtype}.")
    for name in ("origins", "directions"):
        if tensors[name].dtype != torch.float32:
            raise ValueError(f"{name} must be float32, got {tensors[name].dtype}.")
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}.")
    if int(samples_coarse) < 2:
        raise ValueError(f"samples_coarse must be >= 2, got {samples_coarse}.")
    if int(samples_fine) < 0:
        raise ValueError(f"samples_fine must be >= 0, got {samples_fine}.")
    if not float(box_warp) > 0:
        raise ValueError(f"box_warp must be positive, got {box_warp}.")
    if not float(far) > float(near):
        raise ValueError(f"far ({far}) must be greater than near ({near}).")
    contract.normalise_plane_axes(plane_axes)
    if triplane.shape[-1] < 2:  # the 2 x 2 taps start at most at P - 2
        raise ValueError(f"the tri-plane's planes must be at least 2 x 2, got "
                         f"{triplane.shape[-2]} x {triplane.shape[-1]}.")
    n_rays = origins.shape[0] * origins.shape[1]
    # The kernel indexes the whole tri-plane (every batch) with 32-bit element offsets, in the
    # given layout or in the channels-last copy the op makes (numel elements).
    span = 1 + sum((size - 1) * abs(stride) for size, stride in zip(triplane.shape,
                                                                     triplane.stride()))
    if n_rays >= 2 ** 31 or max(span, triplane.numel()) >= 2 ** 31:
        raise ValueError("too many rays or too large a tri-plane for the kernel's 32-bit "
                         "indexing; render in smaller batches.")


def default_dot_precision(device, triplane_dtype=torch.float32) -> str:
    """The MLP products' precision on this device for this tri-plane dtype
    (:func:`dot_precision_for` with this device's compute capability and PyTorch's float32
    matmul precision setting)."""
    if device.type != "cuda":
        return "ieee"
    return dot_precision_for(torch.cuda.get_device_capability(device)[0], triplane_dtype,
                             torch.get_float32_matmul_precision())


def launch_precision(device, triplane_dtype) -> tuple[str, str]:
    """(dot_precision, tap_sum) a launch that names neither takes here: a
    :func:`default_launch` block's, else this device's default products and the kernel's
    default tap sums (what ``raymarch_reference(dot_precision=, tap_sum=)`` mirrors when the
    products are "fp16")."""
    from . import kernel

    dot = _launch_override.get("dot_precision") or default_dot_precision(device, triplane_dtype)
    return dot, kernel.check_tap_sum(_launch_override.get("tap_sum"))


def dot_precision_for(major: int, triplane_dtype, fp32_matmul_precision: str = "highest"
                      ) -> str:
    """The MLP products' precision for a compute capability ``major`` and a tri-plane dtype.
    fp32 tri-planes follow PyTorch's own switch for fp32 matmuls
    (``torch.set_float32_matmul_precision``, or ``torch.backends.cuda.matmul.allow_tf32``):
    "highest" (PyTorch's default) gives "tf32x3", three TF32 tensor-core products,
    fp32-accurate; "high" or "medium" (TF32 allowed) gives "tf32", one product. Both need
    sm_80 or newer; before, "ieee" (fp32 FMAs). Measured on an H200 at paper512 sizes
    (benchmarks/results/kernel_sweep-NVIDIA_H200-2026-11-28.json, before the instruction diet):
    32 rays x 4 warps, "tf32x3" 3.07 ms and 4.4e-6 from the reference, "tf32" 2.58 ms and
    9e-5 off (the kernel tolerance is 2e-3); in SASS now (benchmarks.kernel_sass, 64 x 4):
    0.40 M instructions per ray and 272 bytes of spills against 0.33 M and none ("tf32x3" is
    written out in the kernel, kernel._matmul: 0.455 M with tl.dot's own).
    fp16 / bf16 tri-planes (the model in half precision): "fp16" tensor-core products with fp32
    accumulation on sm_80 and newer (Triton emits no fp16 MMA for sm_75: "ieee" there). Their
    operands keep 11 significant bits, more than a bf16 tri-plane's 8 (the fp32 reference
    computes in fp32 from the same values; its counterpart ``raymarch_reference(...,
    dot_precision="fp16", tap_sum=)`` rounds as the kernel does and meets it at the fp32
    kernel's tolerance), and they are the fewest instructions (benchmarks.kernel_sass,
    32 rays x 4 warps: 0.44 M per ray against 0.76 M for "tf32x3"). On the trained demo64 face
    in bf16 (interpreter) their error was 18-33x under what running the model in bf16 moves
    its output from the fp32 model's (tests/engines/test_raymarch_kernel.py).
    Their one risk is range: a feature or hidden value beyond 65504 would overflow fp16, far
    outside what the generator produces."""
    if int(major) < 8:
        return "ieee"
    if triplane_dtype in (torch.float16, torch.bfloat16):
        return "fp16"
    return "tf32x3" if fp32_matmul_precision == "highest" else "tf32"


def launch(triplane, w1, b1, w2, b2, origins, directions, near, far, samples_coarse,
           samples_fine, box_warp, plane_axes, *, block_rays=None, num_warps=None,
           channels_last=True, dot_precision=None, variant=None, sample_tile=None,
           max_registers=None, prefetch=None, cdf_in_memory=None, samples_per_step=None,
           tap_sum=None, ablate=None):
    """Allocate the outputs and launch the kernel (CUDA, or the interpreter on CPU).
    ``channels_last`` copies the tri-plane to [B, 3, P, P, C] first (one tap = one
    contiguous line of C values); the kernel takes any strides. ``variant``: "serial"
    (``kernel.raymarch_kernel``, one sample per ray per step, the default) or "tiled"
    (``tiled.raymarch_tiled_kernel``, BLOCK_R rays x ``sample_tile`` samples per decode;
    experimental until measured on a GPU). ``max_registers`` caps registers per thread
    (ptxas ``.maxnreg``: more programs per SM to hide the gathers' latency, paid in spills;
    ``python -m benchmarks.kernel_sass`` counts both); None leaves it to the compiler.
    ``prefetch`` ("serial" only, ``kernel.PREFETCH_LEVELS``): ask L1 for the next sample's
    taps while the current one decodes, in the coarse pass (1) or both passes (2): hides the
    gathers' L2 latency, or costs more than it hides; the GPU suite's sweep measures it.
    ``cdf_in_memory`` ("serial" only; default True): each ray's CDF and merged depths in a
    workspace the op allocates (10 MB at paper512) rather than the CDF in registers, where it
    took 32 registers a thread and made the kernel spill, and the walk inside the decode
    loop (sm_90, 64 x 4 fp16: 0.54 M -> 0.30 M instructions per ray); False is what the
    TensorRT plugin ran with the version-1 node, before it had a workspace output.
    ``samples_per_step`` (with the workspace
    only; default ``kernel.DEFAULT_SAMPLES_PER_STEP``): merged samples decoded per step, 2
    keeping two samples' gathers in flight. ``tap_sum`` ("serial" only,
    ``kernel.TAP_SUMS``; default "fp16"): how an fp16 tri-plane's taps are summed under
    "fp16" products (a bf16 one is handed over in fp16). ``ablate`` ("serial" only,
    ``kernel.ABLATIONS``): a timing diagnostic that leaves the gathers' memory traffic or the
    MLP out; its outputs are not the renderer's (only this keyword selects it:
    ``default_launch`` does not)."""
    from . import kernel, tiled

    given = dict(block_rays=block_rays, num_warps=num_warps, dot_precision=dot_precision,
                 variant=variant, sample_tile=sample_tile, max_registers=max_registers,
                 prefetch=prefetch, cdf_in_memory=cdf_in_memory,
                 samples_per_step=samples_per_step, tap_sum=tap_sum)
    chosen = {k: v if v is not None else _launch_override.get(k) for k, v in given.items()}
    (block_rays, num_warps, dot_precision, variant, sample_tile, max_registers, prefetch,
     cdf_in_memory, samples_per_step, tap_sum) = (chosen[k] for k in LAUNCH_KEYS)
    variant = variant or "serial"
    if variant not in VARIANTS:
        raise ValueError(f"unknown kernel variant {variant!r}; choose one of: "
                         f"{', '.join(VARIANTS)}.")
    if prefetch and variant != "serial":
        raise ValueError("prefetch is an option of the serial kernel variant only.")
    if ablate and variant != "serial":
        raise ValueError("ablate is an option of the serial kernel variant only.")
    if tap_sum is not None and variant != "serial":
        raise ValueError("tap_sum is an option of the serial kernel variant only.")
    if cdf_in_memory is not None and variant != "serial":
        raise ValueError("cdf_in_memory is an option of the serial kernel variant only.")
    workspace = variant == "serial" and int(samples_fine) > 0 and cdf_in_memory is not False
    if samples_per_step is not None and int(samples_per_step) != 1 and not workspace:
        raise ValueError("samples_per_step 2 reads the merged depths from the workspace: the "
                         "serial kernel variant with cdf_in_memory and samples_fine > 0 only.")
    if samples_per_step is None:
        samples_per_step = kernel.DEFAULT_SAMPLES_PER_STEP if workspace else 1
    # The interpreter pays per program, not per ray: one big block keeps CPU tests fast.
    interpreted = origins.device.type == "cpu"
    if variant == "tiled":
        block_rays = block_rays or (INTERPRETER_TILED_BLOCK_RAYS if interpreted
                                    else tiled.DEFAULT_BLOCK_RAYS)
    dot_precision = dot_precision or default_dot_precision(origins.device, triplane.dtype)
    block_rays = block_rays or (INTERPRETER_BLOCK_RAYS if interpreted
                                else kernel.default_block_rays(dot_precision))
    num_warps = num_warps or (tiled.DEFAULT_NUM_WARPS if variant == "tiled"
                              else kernel.DEFAULT_NUM_WARPS)
    b, r, _ = origins.shape
    channels, hidden = w1.shape
    features_n = w2.shape[1] - 1
    device = origins.device
    origins = origins.contiguous()
    directions = directions.contiguous()
    # With fp16 products the kernel sums an fp16 tri-plane's taps in packed fp16 (HFMA2: half
    # the instructions of converting each value and summing in fp32), so a bf16 tri-plane is
    # handed over in fp16, converted in the same pass as the channels-last copy. Exact for
    # bf16 values in fp16's range; one beyond 65504 would overflow the fp16 operand anyway.
    dtype = triplane.dtype
    if dot_precision == "fp16" and dtype == torch.bfloat16:
        dtype = torch.float16
    if channels_last and triplane.stride(2) != 1:
        planes = triplane.permute(0, 1, 3, 4, 2).to(
            dtype, memory_format=torch.contiguous_format).permute(0, 1, 4, 2, 3)
    else:
        planes = triplane.to(dtype)
    features = torch.empty((b, r, features_n), device=device, dtype=torch.float32)
    depth = torch.empty((b, r), device=device, dtype=torch.float32)
    opacity = torch.empty((b, r), device=device, dtype=torch.float32)
    n_rays = b * r
    if n_rays == 0:
        return features, depth, opacity
    axes = contract.plane_axes_flat(plane_axes)
    if variant == "tiled":
        consts = tiled.constexprs(channels, hidden, features_n, samples_coarse, samples_fine,
                                  axes, block_rays, dot_precision,
                                  sample_tile or tiled.DEFAULT_SAMPLE_TILE)
        fn = tiled.raymarch_tiled_kernel
    else:
        consts = kernel.constexprs(channels, hidden, features_n, samples_coarse,
                                   samples_fine, axes, block_rays, dot_precision,
                                   prefetch, samples_per_step, ablate, tap_sum)
        fn = kernel.raymarch_kernel
    step = (float(far) - float(near)) / int(samples_coarse)
    sb, sk, sc, sy, sx = planes.stride()
    grid = kernel.grid(n_rays, block_rays)
    # The serial kernel's workspace: one row per ray of every program (the masked-off rays of
    # the last program too, so no row is written twice) of SC_PAD CDF columns and the Sc + Sf
    # merged depths; 10 MB at paper512.
    cdf = None
    if workspace:
        row = contract.workspace_columns(samples_coarse, samples_fine)
        cdf = torch.empty((grid[0] * block_rays, row), device=device, dtype=torch.float32)
    fn[grid](
        planes, w1, b1, w2, b2, origins, directions, features, depth, opacity, cdf,
        n_rays, r, planes.shape[-1], sb, sk, sc, sy, sx,
        w1.stride(0), w1.stride(1), b1.stride(0), w2.stride(0), w2.stride(1), b2.stride(0),
        float(near), step, 2.0 / float(box_warp), **consts, num_warps=num_warps,
        num_stages=kernel.DEFAULT_NUM_STAGES,
        **({"maxnreg": int(max_registers)} if max_registers else {}))
    return features, depth, opacity


@torch.library.custom_op(contract.TORCH_QUALNAME, mutates_args=())
def raymarch_op(triplane: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                b2: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor, near: float,
                far: float, samples_coarse: int, samples_fine: int, box_warp: float,
                plane_axes: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    validate(triplane, w1, b1, w2, b2, origins, directions, near, far, samples_coarse,
             samples_fine, box_warp, plane_axes)
    if triplane.device.type == "cuda":
        with torch.cuda.device(triplane.device):  # Triton launches on this device's stream
            return launch(triplane, w1, b1, w2, b2, origins, directions, near, far,
                          samples_coarse, samples_fine, box_warp, plane_axes)
    if triplane.device.type == "cpu" and interpreter_enabled():
        return launch(triplane, w1, b1, w2, b2, origins, directions, near, far,
                      samples_coarse, samples_fine, box_warp, plane_axes)
    raise ValueError(f"the fused ray-march kernel runs on CUDA tensors (or on CPU under "
                     f"TRITON_INTERPRET=1 for tests), got {triplane.device} tensors; use "
                     "export3d.renderer.raymarch_reference instead.")


@raymarch_op.register_fake
def _raymarch_fake(triplane, w1, b1, w2, b2, origins, directions, near, far, samples_coarse,
                   samples_fine, box_warp, plane_axes):
    shapes = contract.output_shapes(triplane.shape, w1.shape, b1.shape, w2.shape, b2.shape,
                                    origins.shape, directions.shape)
    return tuple(origins.new_empty(shape, dtype=torch.float32) for shape in shapes)
