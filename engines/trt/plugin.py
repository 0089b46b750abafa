"""The ray-march custom node as a TensorRT plugin, through TensorRT's Python plugin API
(``tensorrt.plugin``, TensorRT 10.7+), with an ahead-of-time implementation only: at engine
build time TensorRT calls :func:`register_plugin`'s ``aot_impl``, which compiles the Triton
kernel for the build GPU and hands TensorRT the kernel name, its PTX and the launch
parameters; TensorRT embeds them in the engine. No plugin library is built, found or loaded,
and running the engine needs no Python.

Identity from ``engines.raymarch.contract``: plugin name = the ONNX op type
(``TriplaneRayMarch``), namespace = the ONNX domain (``export3d.engines``), version 2,
attributes ``near``, ``far``, ``box_warp`` (float), ``samples_coarse``, ``samples_fine``,
``eg3d_plane_axes`` (int). TensorRT's ONNX parser finds a plugin by the node's op type plus
its string attributes ``plugin_namespace`` / ``plugin_version``; the builder adds those to the
node in memory (:func:`tag_plugin_nodes`), the exported files stay as they are.

Inputs and outputs (contract order; every tensor linear and contiguous in TensorRT):
    triplane [B, 3, P, P, C] fp32 | fp16 | bf16 (channels last), w1 [C, Hd], b1 [Hd],
    w2 [Hd, 1 + F], b2 [1 + F], origins [B, R, 3], directions [B, R, 3] fp32
    -> features [B, R, F], depth [B, R], opacity [B, R],
       workspace [ceil(B * R / 64) * 64, SC_PAD + Sc + Sf] fp32 (scratch; nothing reads it).
So the engine's kernel runs the torch op's fast configuration: channels-last taps (one line
of C values each), the CDF and merged depths in the workspace, two merged samples a decode
step, fp16 tensor-core products and packed-fp16 tap sums on an fp16 graph's tri-plane.
Attributes are not serialised with an ahead-of-time implementation, so everything the kernel
needs at run time is fixed at build time: C, Hd, F, Sc, Sf and the plane axes are compile-time
constants of the PTX; near, step = (far - near) / Sc and scale = 2 / box_warp are passed as
extra launch arguments (constant int32 bit patterns, see ``kernel_abi``), with the sizes and
strides derived from the input shapes. Launch: grid (ceil(B * R / block_rays), 1, 1), block
(32 * num_warps, 1, 1), dynamic shared memory as Triton reports; block_rays divides
``contract.WORKSPACE_ROW_MULTIPLE``, so every program has workspace rows of its own.

The shape/type rule (:func:`output_rule`) and the launch plan (:func:`launch_plan`) are plain
functions of shapes and attributes, tested without TensorRT. This module is written without
``from __future__ import annotations`` on purpose: ``tensorrt.plugin`` reads the registered
functions' type hints as objects.
"""
import functools
from typing import Tuple

from engines.raymarch import contract

PLUGIN_NAME = contract.OP_TYPE
PLUGIN_NAMESPACE = contract.DOMAIN
PLUGIN_VERSION = contract.VERSION
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
ATTRIBUTE_TYPES = {a.name: {"float": float, "int": int}[a.type] for a in contract.ATTRIBUTES}
FLOAT_TYPES = ("float32", "float16", "bfloat16")
INT32_MAX = 2 ** 31 - 1
# As the torch op: 32 rays a program with fp32 FMA products; the engine build asks
# launch_block_rays, which gives 64 (16 per warp, one per MMA row) with tensor-core products.
DEFAULT_BLOCK_RAYS = 32
DEFAULT_NUM_WARPS = 4

_REGISTERED = False


# ------------------------------------------------------------------------- pure rules

def _int_cdiv(a, b):
    return -(-a // b)


def output_rule(shapes, dtypes, attrs: dict, cdiv=_int_cdiv) -> list[tuple[tuple, str]]:
    """Input shapes and dtype names (contract order) and the node's attributes -> [(shape,
    dtype)] of the four outputs. Dimensions may be ints or symbolic objects (checks then skip
    them; ``cdiv`` divides the symbolic kind); ValueError with one sentence for anything the
    kernel cannot take."""
    shapes = [tuple(s) for s in shapes]
    dtypes = [str(d) for d in dtypes]
    if len(shapes) != len(contract.INPUTS) or len(dtypes) != len(contract.INPUTS):
        raise ValueError(f"{PLUGIN_ID} takes {len(contract.INPUTS)} inputs "
                         f"({', '.join(contract.INPUT_NAMES)}), got {len(shapes)}.")
    for port, dtype in zip(contract.INPUTS, dtypes):
        if dtype not in port.dtypes:
            raise ValueError(f"{PLUGIN_ID} input {port.name} must be "
                             f"{' or '.join(port.dtypes)}, got {dtype}.")
    attrs = check_attributes(attrs)
    out_shapes = contract.node_output_shapes(shapes, attrs["samples_coarse"],
                                             attrs["samples_fine"], cdiv)
    return [(tuple(shape), port.dtypes[0]) for shape, port in zip(out_shapes, contract.OUTPUTS)]


def check_attributes(attrs: dict) -> dict:
    """The node's attributes, complete and in range; returns them typed."""
    missing = [name for name in ATTRIBUTE_TYPES if name not in attrs]
    if missing:
        raise ValueError(f"{PLUGIN_ID} node lacks attribute(s) {', '.join(missing)}; export "
                         "the graph again with 'export3d export onnx --variant plugin'.")
    out = {name: kind(attrs[name]) for name, kind in ATTRIBUTE_TYPES.items()}
    if out["samples_coarse"] < 2 or out["samples_fine"] < 0:
        raise ValueError(f"{PLUGIN_ID} needs samples_coarse >= 2 and samples_fine >= 0, got "
                         f"{out['samples_coarse']} and {out['samples_fine']}.")
    if not out["far"] > out["near"] or not out["box_warp"] > 0:
        raise ValueError(f"{PLUGIN_ID} needs far > near and box_warp > 0, got near "
                         f"{out['near']}, far {out['far']}, box_warp {out['box_warp']}.")
    return out


def kernel_config(shapes, dtypes, attrs: dict, block_rays: int = DEFAULT_BLOCK_RAYS,
                  num_warps: int = DEFAULT_NUM_WARPS):
    """The compile-time constants of the PTX (an ``engines.raymarch.aot.KernelConfig``) from
    the input shapes (C, Hd and F must be build-time constants) and the attributes."""
    from engines.raymarch.aot import KernelConfig
    from engines.raymarch.kernel import DEFAULT_SAMPLES_PER_STEP

    output_rule(shapes, dtypes, attrs)
    attrs = check_attributes(attrs)
    if contract.WORKSPACE_ROW_MULTIPLE % int(block_rays):
        raise ValueError(f"{PLUGIN_ID}: block_rays must divide "
                         f"{contract.WORKSPACE_ROW_MULTIPLE} (the workspace's row multiple), "
                         f"got {block_rays}.")
    dims = {"C": shapes[0][4], "Hd": shapes[1][1], "1 + F": shapes[3][1]}
    for name, value in dims.items():
        if not isinstance(value, int):
            raise ValueError(f"{PLUGIN_ID} needs a build-time constant {name}; export the graph "
                             "with static shapes (export3d does).")
    axes = contract.plane_axes_flat(contract.plane_axes_from_attribute(attrs["eg3d_plane_axes"]))
    return KernelConfig(channels=dims["C"], hidden=dims["Hd"], features=dims["1 + F"] - 1,
                        samples_coarse=attrs["samples_coarse"],
                        samples_fine=attrs["samples_fine"], triplane_dtype=str(dtypes[0]),
                        plane_axes=axes, block_rays=block_rays, num_warps=num_warps,
                        # The node's workspace output (kernel_abi), as the torch op's launch.
                        cdf_in_memory=True, samples_per_step=DEFAULT_SAMPLES_PER_STEP)


def launch_plan(shapes, attrs: dict, *, block_rays: int, num_warps: int, shared: int,
                cdiv=_int_cdiv) -> dict:
    """Grid, block, shared memory and the extra (scalar) arguments, in ``kernel_abi``'s order,
    for contiguous tensors of ``shapes`` (the tri-plane channels last, ``[B, 3, P, P, C]``).
    Works on ints or on symbolic dimensions that support ``*`` (``cdiv`` then does the
    ceiling division of the symbolic kind)."""
    from .kernel_abi import EXTRA_ARGS

    values = launch_values(shapes, attrs)
    n_rays = values["n_rays"]
    return {"grid": (cdiv(n_rays, block_rays), 1, 1), "block": (32 * num_warps, 1, 1),
            "shared_mem": int(shared), "extra_args": [(n, values[n]) for n in EXTRA_ARGS]}


def launch_values(shapes, attrs: dict) -> dict:
    """The kernel's extra (scalar) arguments by name for contiguous tensors of ``shapes``:
    sizes, strides (the tri-plane's channels last) and the fp32 settings as bit patterns."""
    from .kernel_abi import float_bits

    attrs = check_attributes(attrs)
    b, _, p, _, c = shapes[0]
    out_cols = shapes[3][1]
    r = shapes[5][1]
    n_rays = b * r
    plane = p * p * c
    values = {
        "n_rays": n_rays, "rays_per_batch": r, "P": p,
        "stride_tb": 3 * plane, "stride_tk": plane, "stride_tc": 1,
        "stride_ty": p * c, "stride_tx": c,
        "stride_w1c": shapes[1][1], "stride_w1h": 1, "stride_b1": 1,
        "stride_w2h": out_cols, "stride_w2o": 1, "stride_b2": 1,
        "near_bits": float_bits(attrs["near"]),
        "step_bits": float_bits((attrs["far"] - attrs["near"]) / attrs["samples_coarse"]),
        "scale_bits": float_bits(2.0 / attrs["box_warp"]),
    }
    for name, value in values.items():
        if isinstance(value, int) and not -INT32_MAX - 1 <= value <= INT32_MAX:
            raise ValueError(f"{PLUGIN_ID}: {name} = {value} does not fit the kernel's 32-bit "
                             "indexing; render in smaller batches.")
    return values


def launch_block_rays(arch: int, triplane_dtype: str) -> int:
    """Rays per program for the engine's kernel: the torch op's default for the MLP product
    precision this arch and dtype get (``kernel_abi.dot_precision``)."""
    from engines.raymarch.kernel import default_block_rays

    from .kernel_abi import dot_precision

    return default_block_rays(dot_precision(arch, triplane_dtype))


def current_arch() -> int:
    """Compute capability of the current CUDA device as an int (9.0 -> 90): torch when it sees
    a GPU, else cuda-python's runtime."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return 10 * major + minor
    except ImportError:
        pass
    from cuda.bindings import runtime

    err, device = runtime.cudaGetDevice()
    if int(err) != 0:
        raise RuntimeError(f"no CUDA device ({err}).")
    err, major = runtime.cudaDeviceGetAttribute(
        runtime.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device)
    err, minor = runtime.cudaDeviceGetAttribute(
        runtime.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device)
    return 10 * int(major) + int(minor)


@functools.lru_cache(maxsize=16)
def compiled_kernel(config, arch: int, values: tuple = ()):
    """PTX of the TensorRT entry point for ``config`` and ``arch`` (compiled once per process),
    its ISA capped at what this machine's driver loads when Triton's would be newer.
    ``values``: (name, value) pairs of the extra arguments known at build time, for the
    compiler's alignment hints (``kernel_abi.divisibility_hints``)."""
    import re

    from .kernel_abi import compile_for_tensorrt, driver_ptx_version

    known = dict(values)
    build = compile_for_tensorrt(config, arch, values=known)
    limit = driver_ptx_version()
    found = re.search(r"^\s*\.version\s+(\d+)\.(\d+)", build.ptx, re.M)
    if limit is not None and found and 10 * int(found[1]) + int(found[2]) > limit:
        build = compile_for_tensorrt(config, arch, ptx_version=limit, values=known)
    return build


# ------------------------------------------------------------------------- ONNX side

def tag_plugin_nodes(model) -> int:
    """Add ``plugin_namespace`` and ``plugin_version`` to every contract node of an
    ``onnx.ModelProto`` (in place), so that TensorRT's ONNX parser resolves it to this plugin.
    Returns how many nodes were tagged."""
    import onnx

    count = 0
    for node in model.graph.node:
        if node.domain != contract.DOMAIN or node.op_type != contract.OP_TYPE:
            continue
        keep = [a for a in node.attribute if a.name not in ("plugin_namespace",
                                                             "plugin_version")]
        del node.attribute[:]
        node.attribute.extend(keep)
        node.attribute.append(onnx.helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE))
        node.attribute.append(onnx.helper.make_attribute("plugin_version",
                                                         str(PLUGIN_VERSION)))
        count += 1
    return count


# ------------------------------------------------------------------------- registration

def _dim(expr):
    """A TensorRT shape expression as an int when it is a build-time constant."""
    if isinstance(expr, int):
        return expr
    try:
        if expr.is_constant:
            return int(expr.constant_value())
    except (AttributeError, RuntimeError):  # fake expressions outside shape calculations
        pass
    return expr


def _dtype_names(trt) -> dict:
    return {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}


def registered() -> bool:
    return _REGISTERED


def register_plugin() -> str:
    """Register the plugin's shape/type rule and ahead-of-time implementation with TensorRT
    (once per process; TensorRT's ONNX parser then finds it). Returns :data:`PLUGIN_ID`."""
    global _REGISTERED
    if _REGISTERED:
        return PLUGIN_ID
    import importlib

    from . import import_tensorrt

    trt = import_tensorrt()
    trtp = importlib.import_module("tensorrt.plugin")
    names = _dtype_names(trt)
    TensorDesc = trtp.TensorDesc

    def describe(inputs):
        return [[_dim(e) for e in d.shape_expr] for d in inputs], \
            [names.get(d.dtype, str(d.dtype)) for d in inputs]

    @trtp.register(PLUGIN_ID)
    def triplane_ray_march_desc(
            triplane: TensorDesc, w1: TensorDesc, b1: TensorDesc, w2: TensorDesc,
            b2: TensorDesc, origins: TensorDesc, directions: TensorDesc, near: float,
            far: float, samples_coarse: int, samples_fine: int, box_warp: float,
            eg3d_plane_axes: int) -> Tuple[TensorDesc, TensorDesc, TensorDesc, TensorDesc]:
        shapes, dtypes = describe((triplane, w1, b1, w2, b2, origins, directions))
        attrs = {"near": near, "far": far, "samples_coarse": samples_coarse,
                 "samples_fine": samples_fine, "box_warp": box_warp,
                 "eg3d_plane_axes": eg3d_plane_axes}
        outs = output_rule(shapes, dtypes, attrs, cdiv=lambda a, b: _int_cdiv(a, b)
                           if isinstance(a, int) else trtp.cdiv(a, b))
        return tuple(trtp.from_shape_expr(trtp.ShapeExprs.from_tuple(tuple(shape)),
                                          dtype=trt.float32) for shape, _ in outs)

    @trtp.aot_impl(PLUGIN_ID)
    def triplane_ray_march_aot(
            triplane: TensorDesc, w1: TensorDesc, b1: TensorDesc, w2: TensorDesc,
            b2: TensorDesc, origins: TensorDesc, directions: TensorDesc, near: float,
            far: float, samples_coarse: int, samples_fine: int, box_warp: float,
            eg3d_plane_axes: int,
            outputs: Tuple[TensorDesc, TensorDesc, TensorDesc, TensorDesc]):
        shapes, dtypes = describe((triplane, w1, b1, w2, b2, origins, directions))
        attrs = {"near": near, "far": far, "samples_coarse": samples_coarse,
                 "samples_fine": samples_fine, "box_warp": box_warp,
                 "eg3d_plane_axes": eg3d_plane_axes}
        arch = current_arch()
        config = kernel_config(shapes, dtypes, attrs,
                               block_rays=launch_block_rays(arch, str(dtypes[0])))
        known = tuple((n, v) for n, v in launch_values(shapes, attrs).items()
                      if isinstance(v, int))
        build = compiled_kernel(config, arch, known)
        plan = launch_plan(shapes, attrs, block_rays=build.block_rays,
                           num_warps=build.num_warps, shared=build.shared,
                           cdiv=lambda a, b: _int_cdiv(a, b) if isinstance(a, int)
                           else trtp.cdiv(a, b))
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y, params.grid_z = plan["grid"]
        params.block_x, params.block_y, params.block_z = plan["block"]
        params.shared_mem = plan["shared_mem"]
        extra = trtp.SymIntExprs(len(plan["extra_args"]))
        for i, (_, value) in enumerate(plan["extra_args"]):
            extra[i] = trtp.SymInt32(value)
        return build.name, build.ptx, params, extra

    _REGISTERED = True
    return PLUGIN_ID


def registered_signature_names() -> tuple[str, ...]:
    """The parameter names the registered functions must have, in order (inputs, then
    attributes), from the contract; a test compares them with the functions above."""
    return contract.INPUT_NAMES + tuple(ATTRIBUTE_TYPES)

