"""The ray-march op's identity, stated once: torch op name, ONNX custom node (op type, domain,
version, attributes), input/output names, order, dtypes and shape rules.

Imported by the torch op (``engines.raymarch.op``), the ONNX exporter's plugin variant
(``export.plugin``) and the TensorRT plugin. Pure Python: no torch or triton import.

The torch op takes the arguments of ``export3d.renderer.raymarch_reference`` (decoder in math
layout ``h = softplus(x @ w1 + b1)``, ``y = h @ w2 + b2``), the tri-plane as
``[B, 3, C, P, P]`` in any strides (:func:`output_shapes`), and returns features, depth and
opacity. The ONNX node (version 2) is the form the TensorRT plugin can run fast, whose tensors
are linear and contiguous:

Inputs, in node order:
    triplane   [B, 3, P, P, C]  float32 | float16 | bfloat16, channels last: one bilinear tap
                                is C contiguous values (the exported graph transposes the
                                generator's [B, 3, C, P, P]); fp16 graphs hand it over in fp16
    w1         [C, Hd]          float32
    b1         [Hd]             float32
    w2         [Hd, 1 + F]      float32   (column 0 = raw density)
    b2         [1 + F]          float32
    origins    [B, R, 3]        float32
    directions [B, R, 3]        float32   (unit length)
Outputs, in node order, all float32:
    features   [B, R, F]        (first 3 = raw RGB in [-1, 1])
    depth      [B, R]
    opacity    [B, R]
    workspace  [ceil(B * R / 64) * 64, SC_PAD + Sc + Sf]   (:func:`workspace_shape`)
The workspace is scratch, not a result: an ahead-of-time TensorRT plugin is given no
workspace of its own, so the node declares one as an output that nothing reads, and the kernel
keeps each ray's CDF and merged depths there (in registers they make it spill). Its content is
undefined; ONNX Runtime's stand-in returns zeros.
Version 1 took the tri-plane as fp32 ``[B, 3, C, P, P]`` and had no workspace: the kernel's
slowest configuration. A graph's version is its opset import for :data:`DOMAIN`.

Attributes. ``plane_axes`` is carried on the ONNX node as ``eg3d_plane_axes`` (0: the true
XY/XZ/YZ planes ((0,1),(0,2),(1,2)); 1: EG3D's ((0,1),(0,2),(2,0))), a scalar int rather than
a list of 6 ints, because ONNX Runtime's Python custom ops (the CPU stand-in that serves the
plugin graph in tests, ``export.plugin_ort``) cannot read list attributes; the two layouts are
the only ones any model uses. :func:`plane_axes_from_attribute` and :func:`plane_axes_flat`
convert both ways (the kernel's runtime form is the 6 flattened ints).
"""
from __future__ import annotations

from dataclasses import dataclass

TORCH_NAMESPACE = "export3d_engines"
TORCH_OP_NAME = "raymarch"
TORCH_QUALNAME = f"{TORCH_NAMESPACE}::{TORCH_OP_NAME}"

DOMAIN = "export3d.engines"
OP_TYPE = "TriplaneRayMarch"
VERSION = 2
# The node's tri-plane layout: "[B, 3, P, P, C]" (version 2) or "[B, 3, C, P, P]" (version 1).
TRIPLANE_LAYOUT = "channels_last"
# Rows of the node's workspace are a multiple of this: the most rays per program any launch of
# the plugin uses, so that every program, the last one's masked-off rays included, has its own.
WORKSPACE_ROW_MULTIPLE = 64

PLANE_AXES = ((0, 1), (0, 2), (1, 2))
PLANE_AXES_EG3D = ((0, 1), (0, 2), (2, 0))
SUPPORTED_PLANE_AXES = (PLANE_AXES, PLANE_AXES_EG3D)


@dataclass(frozen=True)
class Attribute:
    name: str
    type: str  # "float" | "int"
    doc: str


ATTRIBUTES = (
    Attribute("near", "float", "depth of the first coarse bin's near edge"),
    Attribute("far", "float", "depth of the last coarse bin's far edge"),
    Attribute("samples_coarse", "int", "Sc >= 2, coarse samples at bin centres"),
    Attribute("samples_fine", "int", "Sf >= 0, importance samples (0: coarse pass only)"),
    Attribute("box_warp", "float", "edge length of the cube mapped to [-1, 1]^3"),
    Attribute("eg3d_plane_axes", "int", "0: planes XY/XZ/YZ; 1: EG3D's XY/XZ/ZX"),
)


@dataclass(frozen=True)
class Port:
    name: str
    dtypes: tuple[str, ...]
    shape: str


INPUTS = (
    Port("triplane", ("float32", "float16", "bfloat16"), "[B, 3, P, P, C]"),
    Port("w1", ("float32",), "[C, Hd]"),
    Port("b1", ("float32",), "[Hd]"),
    Port("w2", ("float32",), "[Hd, 1 + F]"),
    Port("b2", ("float32",), "[1 + F]"),
    Port("origins", ("float32",), "[B, R, 3]"),
    Port("directions", ("float32",), "[B, R, 3]"),
)
OUTPUTS = (
    Port("features", ("float32",), "[B, R, F]"),
    Port("depth", ("float32",), "[B, R]"),
    Port("opacity", ("float32",), "[B, R]"),
    Port("workspace", ("float32",), "[ceil(B * R / 64) * 64, SC_PAD + Sc + Sf]"),
)
INPUT_NAMES = tuple(p.name for p in INPUTS)
OUTPUT_NAMES = tuple(p.name for p in OUTPUTS)


def plane_axes_from_attribute(eg3d_plane_axes: int) -> tuple[tuple[int, int], ...]:
    return PLANE_AXES_EG3D if int(eg3d_plane_axes) else PLANE_AXES


def plane_axes_attribute(plane_axes) -> int:
    """``plane_axes`` (three pairs, or 6 flat ints) -> the node's ``eg3d_plane_axes``."""
    pairs = normalise_plane_axes(plane_axes)
    return int(pairs == PLANE_AXES_EG3D)


def normalise_plane_axes(plane_axes) -> tuple[tuple[int, int], ...]:
    flat = plane_axes_flat(plane_axes)
    pairs = tuple((flat[2 * k], flat[2 * k + 1]) for k in range(3))
    if pairs not in SUPPORTED_PLANE_AXES:
        raise ValueError(f"plane_axes {pairs} is neither {PLANE_AXES} nor {PLANE_AXES_EG3D}.")
    return pairs


def plane_axes_flat(plane_axes) -> tuple[int, ...]:
    """Three (a, b) pairs or 6 ints -> 6 ints (the kernel's runtime form)."""
    flat = []
    for item in plane_axes:
        if isinstance(item, (tuple, list)):
            flat.extend(int(v) for v in item)
        else:
            flat.append(int(item))
    if len(flat) != 6 or any(v not in (0, 1, 2) for v in flat):
        raise ValueError(f"plane_axes must be three pairs of axis indices in 0..2, got "
                         f"{tuple(plane_axes)!r}.")
    return tuple(flat)


def attributes(settings) -> dict:
    """Node attribute values from an ``export3d.renderer.RayMarchSettings`` (duck-typed)."""
    return {"near": float(settings.near), "far": float(settings.far),
            "samples_coarse": int(settings.samples_coarse),
            "samples_fine": int(settings.samples_fine), "box_warp": float(settings.box_warp),
            "eg3d_plane_axes": plane_axes_attribute(settings.plane_axes)}


def output_shapes(triplane_shape, w1_shape, b1_shape, w2_shape, b2_shape, origins_shape,
                  directions_shape):
    """The torch op's input shapes (tri-plane ``[B, 3, C, P, P]``) -> (features, depth,
    opacity) shapes; ValueError on any mismatch. Dimensions may be ints or symbolic objects
    supporting ``==`` (checks skip non-ints)."""
    same = _same
    if len(triplane_shape) != 5 or not same(triplane_shape[1], 3):
        raise ValueError(f"triplane must be [B, 3, C, P, P], got {list(triplane_shape)}.")
    b, _, c, p0, p1 = triplane_shape
    if not same(p0, p1):
        raise ValueError(f"triplane planes must be square, got {p0}x{p1}.")
    if len(w1_shape) != 2 or not same(w1_shape[0], c):
        raise ValueError(f"w1 must be [C={c}, Hd], got {list(w1_shape)}.")
    hidden = w1_shape[1]
    if len(b1_shape) != 1 or not same(b1_shape[0], hidden):
        raise ValueError(f"b1 must be [Hd={hidden}], got {list(b1_shape)}.")
    if len(w2_shape) != 2 or not same(w2_shape[0], hidden):
        raise ValueError(f"w2 must be [Hd={hidden}, 1 + F], got {list(w2_shape)}.")
    out = w2_shape[1]
    if isinstance(out, int) and out < 2:
        raise ValueError(f"w2 must have 1 + F >= 2 columns, got {out}.")
    if len(b2_shape) != 1 or not same(b2_shape[0], out):
        raise ValueError(f"b2 must be [1 + F={out}], got {list(b2_shape)}.")
    for name, shape in (("origins", origins_shape), ("directions", directions_shape)):
        if len(shape) != 3 or not same(shape[0], b) or not same(shape[2], 3):
            raise ValueError(f"{name} must be [B={b}, R, 3], got {list(shape)}.")
    r = origins_shape[1]
    if not same(directions_shape[1], r):
        raise ValueError(f"origins and directions must have the same R, got {r} and "
                         f"{directions_shape[1]}.")
    return (b, r, out - 1), (b, r), (b, r)


def workspace_columns(samples_coarse: int, samples_fine: int) -> int:
    """fp32 values per ray in the kernel's workspace: SC_PAD CDF columns (Sc padded to a power
    of two >= 2, as the kernel's register row) and the Sc + Sf merged depths."""
    sc = int(samples_coarse)
    return max(2, 1 << (sc - 1).bit_length()) + sc + int(samples_fine)


def workspace_shape(batch, rays, samples_coarse: int, samples_fine: int,
                    cdiv=lambda a, b: -(-a // b)) -> tuple:
    """The node's ``workspace`` output: ``(ceil(B * R / 64) * 64, workspace_columns)``.
    ``batch`` and ``rays`` may be symbolic (``cdiv`` then divides their kind)."""
    rows = cdiv(batch * rays, WORKSPACE_ROW_MULTIPLE) * WORKSPACE_ROW_MULTIPLE
    return rows, workspace_columns(samples_coarse, samples_fine)


def planar_shape(node_triplane_shape) -> tuple:
    """The node's channels-last tri-plane shape ``[B, 3, P, P, C]`` as the torch op's
    ``[B, 3, C, P, P]`` (what :func:`output_shapes` checks); ValueError unless it is
    ``[B, 3, P, P, C]``."""
    shape = tuple(node_triplane_shape)
    if len(shape) != 5 or not _same(shape[1], 3) or not _same(shape[2], shape[3]):
        raise ValueError(f"the node's triplane must be [B, 3, P, P, C] (channels last, square "
                         f"planes), got {list(shape)}.")
    b, k, p0, p1, c = shape
    return b, k, c, p0, p1


def node_output_shapes(shapes, samples_coarse: int, samples_fine: int,
                       cdiv=lambda a, b: -(-a // b)):
    """The node's input shapes (contract order, tri-plane channels last) -> the shapes of its
    four outputs (features, depth, opacity, workspace); ValueError on any mismatch."""
    shapes = [tuple(s) for s in shapes]
    features, depth, opacity = output_shapes(planar_shape(shapes[0]), *shapes[1:])
    b, r = depth
    return features, depth, opacity, workspace_shape(b, r, samples_coarse, samples_fine, cdiv)


def _same(a, b) -> bool:
    return not (isinstance(a, int) and isinstance(b, int)) or a == b
