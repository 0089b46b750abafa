"""The fused tri-plane ray-marching kernel, in Triton: one source for the interpreter (CPU
tests), the torch op (CUDA) and the ahead-of-time compile (PTX/cubin for the TensorRT plugin).

It implements ``export3d.renderer.raymarch_reference`` at inference (no jitter), per ray:
coarse depths at bin centres, points o + t d, the mean of the three planes' bilinear lookups
(grid_sample semantics), the decoder MLP, midpoint compositing, EG3D weight smoothing + 0.01,
the inverse CDF at u_j = (j + 0.5) / Sf, the stable merge of coarse and fine samples and the
final composite (features x2 - 1, depth, opacity).

In:  triplane [B, 3, C, P, P] (fp32/fp16/bf16, any strides: the op passes a channels-last
     copy so that one tap's C channels are one contiguous line), w1 [C, Hd], b1 [Hd],
     w2 [Hd, 1 + F], b2 [1 + F] (any strides, any float dtype), origins / directions
     [B, R, 3] fp32 contiguous.
Out: features [B, R, F], depth [B, R], opacity [B, R], fp32 contiguous.
Runtime arguments are raw pointers, ints and floats only (the TensorRT plugin launches the AOT
build with the same list); sizes that fix register shapes (C, Hd, F, Sc, Sf, plane axes,
BLOCK_R) are constexprs. Grid: (cdiv(B * R, BLOCK_R),), one program per block of rays.

Launch structure: ONE launch. Each program owns BLOCK_R rays from start to end and keeps its
per-ray state in registers, but for one row per ray: the CDF, which the merged pass's walk
reads one column at a time, and the walk's merged depths. The op gives them a workspace
(``cdf_ptr``: SC_PAD + Sc + Sf fp32 per ray, 10 MB at paper512; each program writes and reads
only its own rows); in registers the CDF row took 32 of them a thread at 64 rays x 4 warps
and pushed the kernel into spills (sm_90, fp16 products: 752 bytes of spill stack and 0.54 M
instructions per ray, against 32 bytes and 0.39 M), and the walk's own pass is a further
13-21% (step 2). An ahead-of-time TensorRT plugin gets no workspace of its own, so the ray-march
ONNX node declares one as an output nothing reads (contract version 2) and the engine's kernel
uses it too; with cdf_ptr None the row stays in registers and the walk runs inside the decode
loop (``cdf_in_memory=False``):
1. coarse pass over the Sc bin centres, decoding density only (the feature half of the MLP
   is skipped), compositing on the fly; the interval weights are smoothed on the fly (a
   sliding window of three) into the row, then normalised and scanned into the CDF;
2. merged pass: a per-ray two-pointer merge walks the Sc coarse depths (analytic) and the Sf
   fine depths in sorted order, ties to the coarse sample (the reference's stable sort of
   coarse-then-fine); with the workspace the walk runs first and stores the Sc + Sf depths,
   then the decode loop decodes each sample fully and composites it against the previous one.
   A fine sample of CDF interval i lies between coarse samples i and i + 1, so the walk
   carries the current interval's two CDF values and reads one column of the CDF row per
   step (when it passes a coarse sample) instead of searching the row for every fine sample.
The coarse samples are therefore decoded twice (density only, then in full). The alternative,
storing their Sc x (1 + F) values, is 6.3 KB per ray at paper512 sizes: far too much for
registers, and in the workspace it saves nothing as the loop stands, since each step decodes
for the whole block, whichever sample each ray takes. Decoding only the fine samples (a
uniform loop) and compositing the stored coarse ones in between would save the Sc lookups
and first layers per ray (~20% of the instructions) for ~200 MB of fp32 workspace traffic a
frame (~60 us on an H100), about what those instructions take; it stays undone.

Work per ray at paper512 sizes (C = F = 32, Hd = 64, Sc = Sf = 48): 144 decodes (48 density-
only + 96 full), each 3 planes x 4 taps x 32 channels = 384 gathered values (12 lines of
128 B from a channels-last tri-plane) and 32x64 + 64x32 MACs (coarse: 32x64 + 64); about
0.5 M MACs and 220 KB of (mostly L2-resident: the fp32 tri-plane is 25 MB) gathers per ray,
so ~8 GMAC and ~3.6 GB of L2 traffic for 128 x 128 rays.

The MLP runs on ``tl.dot`` (DOT_PRECISION, one of DOT_PRECISIONS): "ieee" fp32 FMAs, as the
reference; "tf32x3" (three TF32 tensor-core products, fp32-accurate; the op's default on sm_80+;
written out in _matmul, "tl-tf32x3" is tl.dot's own, kept for the GPU suite's sweep to time
against it); "tf32" (one, ~1e-4 off on an H200); "fp16" (operands rounded to fp16, fp32
accumulation; tensor cores from sm_80, FMAs on sm_75; fp16 has TF32's 11-bit significand).
``tl.dot`` needs every dim >= 16 and powers of two, so C, Hd and F are padded in-kernel by
masked loads of the weights (zeros outside; padded hidden units give softplus(0) = ln 2 but
meet zero rows of w2, padded feature columns are never stored). A broadcast-multiply-sum would
materialise [BLOCK_R, C, Hd] = 64K values per program, far beyond the register file, so the dot
is the better choice. The density column of w2 is a separate vector (a row sum), so 1 + F = 33 need
not pad to 64.

Instruction diet (``python -m benchmarks.kernel_sass`` counts the SASS a paper512 launch runs,
per source line, with no GPU): softplus and the feature sigmoid on the special-function unit
(lg2/ex2/rcp.approx, ~1 ulp) instead of libdevice's accurate log and IEEE divisions, which
were a third of the instructions; the planes' mean folded into w1; unmasked gathers at
in-plane addresses (the 2 x 2 taps start at clamp(floor(x), 0, P - 2), hat-function weights),
32-bit offsets (op.validate bounds the tri-plane), one per-ray address per plane instead of
four; the interval walk above; the midpoint features regrouped to one FMA per value; each
axis's taps set up once for the two planes that use it; the tap sum kept in its load layout
(``_operand``); each ray's line folded into pixel units once (one FMA per axis and sample,
``_load_rays``; the per-ray work runs replicated across the 8 threads that share a ray's
gathers, so per-ray savings count eightfold); the CDF in a workspace and the walk in a pass
of its own (above); with "fp16" products, an fp16 tri-plane's taps summed in packed fp16
(``_decode``). Serial kernel, 32 rays x 4 warps, sm_90: 2.03 M thread-instructions per ray
before (issue bound 1.0 ms on an H100; it measured 3.39 ms on an H200), 0.95 M after
("ieee"), 0.44 M with "fp16" products; 0.30 M at 64 x 4, 0.23 M on an fp16 tri-plane,
where a warp's 16 MMA rows hold 16 rays (at 32 x 4 the per-ray work is replicated across
warp pairs).
Deterministic: every sum is a fixed-order in-register reduction, no atomics.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

# As export3d.renderer (engines imports nothing of ours; the tests compare the two).
FEATURE_CLAMP = tl.constexpr(0.001)
PDF_WEIGHT_FLOOR = tl.constexpr(0.01)
PDF_DENOM_EPS = tl.constexpr(1e-5)
LN2 = tl.constexpr(0.6931471805599453)
LOG2E = tl.constexpr(1.4426950408889634)
# Compiled, log2 and 1 / x are the hardware's lg2.approx and rcp.approx (one special-function
# instruction each, ~1 ulp); tl.log2 would be libdevice's accurate log2f, ~30 instructions
# per value, once the largest cost in the kernel's SASS, and the exact division ~10. Triton's
# interpreter runs no PTX, so there the exact forms stand in: the same formulas, checked on
# CPU; the PTX ones are checked on a GPU (benchmarks.gpu_suite's kernel_check). Read when this
# module is imported, so TRITON_INTERPRET must be set before that (as Triton itself requires).
FAST_MATH = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") != "1")
# An fp32's sign, exponent and the top 10 of its 23 stored significand bits: the part of an
# fp32 operand a TF32 tensor-core product reads (_tf32_split).
TF32_HEAD_MASK = tl.constexpr(0xFFFFE000)


@triton.jit
def _softplus(x):
    """log(1 + e^x) without overflow: max(x, 0) + log(1 + e^-|x|). Where e^-|x| is below
    fp32's epsilon, 1 + e^-|x| rounds to 1 and the log term to 0 instead of e^-|x|: an
    absolute error under 6e-8, far below every tolerance, for 2 special-function instructions
    (an exact log1p costs a full-precision division, once the kernel's largest line of SASS:
    ``python -m benchmarks.kernel_sass``)."""
    return tl.maximum(x, 0.0) + LN2 * _log2(1.0 + tl.exp2(tl.abs(x) * -LOG2E))


@triton.jit
def _density(x):
    """softplus of a raw density, relative-accurate where it is tiny: a nearly transparent
    ray's depth is a weighted mean of such densities, so :func:`_softplus`'s absolute error
    (1 + e^x rounds, 1% of softplus(-12)) would move it. log1p(u), u = e^-|x|, as its series
    u - u^2/2 + u^3/3 - u^4/4 below u = 1/16 (relative error under u^4/5, 3e-6), else as
    :func:`_softplus` computes it: two more FMAs and a select per sample, not per hidden unit."""
    u = tl.exp2(tl.abs(x) * -LOG2E)
    series = u * (1.0 - u * (0.5 - u * (1.0 / 3.0 - u * 0.25)))
    return tl.maximum(x, 0.0) + tl.where(u < 0.0625, series, LN2 * _log2(1.0 + u))


@triton.jit
def _alpha(optical):
    """1 - exp(-optical), with the series below 1/16 as the reference's ``alpha_of`` (fp32's
    1 - exp(-x) keeps one digit at x = 1e-6)."""
    series = optical * (1.0 - optical * (0.5 - optical * (1.0 / 6.0 - optical * (1.0 / 24.0))))
    return tl.where(optical < 0.0625, series, 1.0 - tl.exp(-optical))


@triton.jit
def _log2(x):
    """log2 of fp32 x > 0: lg2.approx where compiled, tl.log2 under the interpreter."""
    if FAST_MATH:
        return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def _reciprocal(x):
    """1 / x: rcp.approx (one special-function instruction, ~1 ulp) where compiled; the exact
    division, ~10 instructions, under the interpreter."""
    if FAST_MATH:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def _channel_offsets(ci, stride_tc, C: tl.constexpr, C_PAD: tl.constexpr):
    """Offsets of the C_PAD channels of one tap; padded channels repeat the last real one (a
    valid address; they meet zero rows of w1). Unpadded, the plain ramp keeps the loads
    vectorised (a clamp would hide their contiguity from the compiler)."""
    if C == C_PAD:
        return ci * stride_tc
    else:
        return tl.minimum(ci, C - 1) * stride_tc


@triton.jit
def _pick(cx, cy, cz, A: tl.constexpr):
    v = cx
    if A == 1:
        v = cy
    if A == 2:
        v = cz
    return v


@triton.jit
def _axis_taps(pixel, Pf):
    """The two taps along one axis at ``pixel`` [BLOCK_R] (the sample's coordinate in pixel
    units, ``_load_rays``): the first tap's index (int32) and both taps' weights,
    grid_sample(bilinear, zeros, align_corners=False), where taps outside the plane count 0.
    The taps start at i0 = clamp(floor(pixel), 0, P - 2), so both are always inside the plane
    and no load is masked; each weight is the hat function max(0, 1 - |pixel - i|), which is
    the bilinear weight for a tap the sample touches and 0 for one it does not (a tap outside
    the plane is never read, as zero padding wants). pixel - i0 is exact (an integer taken
    from a float within 3 of it), so one difference serves both weights. Far-away points
    (rays that miss the box) need no clamp of their own: i0 is clamped before the int
    conversion and their weights are 0. An axis feeds two of the three planes, so this runs
    three times per sample, not six."""
    i0 = tl.minimum(tl.maximum(tl.floor(pixel), 0.0), Pf - 2.0)
    frac = pixel - i0
    w0 = tl.maximum(1.0 - tl.abs(frac), 0.0)
    w1 = tl.maximum(1.0 - tl.abs(frac - 1.0), 0.0)
    return i0.to(tl.int32), w0, w1


@triton.jit
def _tap_lines(triplane_ptr, plane_off, x0, y0, stride_ty, stride_tx):
    """[BLOCK_R] pointers to channel 0 of each ray's first tap (x0, y0) on one plane; the
    other three taps are at + stride_tx, + stride_ty and + both."""
    return triplane_ptr + (plane_off + y0 * stride_ty + x0 * stride_tx)


@triton.jit
def _plane_lookup(acc, triplane_ptr, plane_off, x0, wx0, wx1, y0, wy0, wy1, stride_ty,
                  stride_tx, c_offs):
    """acc + the bilinear lookup of one plane -> [BLOCK_R, C_PAD], from its x and y axes' taps
    (``_axis_taps``), summed in acc's dtype (``_decode`` says which). plane_off: [BLOCK_R]
    int32 offsets of each ray's plane (c = 0). The four taps share one base address plus
    constant strides, so one per-ray address crosses into the gathers' layout per plane.
    Padded channels (c_offs repeats the last one) meet zero rows of w1."""
    base = _tap_lines(triplane_ptr, plane_off, x0, y0, stride_ty, stride_tx)[:, None] \
        + c_offs[None, :]
    f00 = tl.load(base).to(acc.dtype)
    f01 = tl.load(base + stride_tx).to(acc.dtype)
    f10 = tl.load(base + stride_ty).to(acc.dtype)
    f11 = tl.load(base + (stride_ty + stride_tx)).to(acc.dtype)
    acc += f00 * (wx0 * wy0).to(acc.dtype)[:, None]
    acc += f01 * (wx1 * wy0).to(acc.dtype)[:, None]
    acc += f10 * (wx0 * wy1).to(acc.dtype)[:, None]
    acc += f11 * (wx1 * wy1).to(acc.dtype)[:, None]
    return acc


@triton.jit
def _operand(x):
    """x, materialised where it stands. Compiled, an opaque register move that Triton's layout
    pass cannot look through (fp16 x: one move per two values): without it the pass moves
    the MLP's operand layout up through the sum of the twelve weighted taps to the loads, and
    every tap (and its weight) makes a round trip through shared memory to reach it, twelve
    per sample instead of one (and the sum runs in that layout, which replicates rows across
    warps below 16 rows per warp):
    ``python -m benchmarks.kernel_sass`` counted 809 K -> 699 K instructions per ray at 32 rays
    x 4 warps with fp16 products. Under the interpreter, x itself."""
    if FAST_MATH:
        if x.dtype == tl.float16:
            return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.float16,
                                             is_pure=False, pack=2)
        else:
            return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                             is_pure=False, pack=1)
    else:
        return x


@triton.jit
def _prefetch_sample(t, ax, ay, az, bx, by, bz, triplane_ptr, batch_off, stride_tk, Pf,
                     stride_ty, stride_tx, A0: tl.constexpr, A1: tl.constexpr,
                     A2: tl.constexpr, A3: tl.constexpr, A4: tl.constexpr, A5: tl.constexpr):
    """Ask L1 for the lines of the 2 x 2 taps of a sample at depth t [BLOCK_R] on the three
    planes (prefetch.global.L1, no register waits for them): issued one step ahead, the
    gathers of the next decode travel from L2 while this one runs its MLP. Compiled only
    (the interpreter has no caches); returns a dummy int32 [BLOCK_R]."""
    if FAST_MATH:
        i0x, _w0x, _w1x = _axis_taps(ax + t * bx, Pf)
        i0y, _w0y, _w1y = _axis_taps(ay + t * by, Pf)
        i0z, _w0z, _w1z = _axis_taps(az + t * bz, Pf)
        base0 = _tap_lines(triplane_ptr, batch_off, _pick(i0x, i0y, i0z, A0),
                           _pick(i0x, i0y, i0z, A1), stride_ty, stride_tx)
        base1 = _tap_lines(triplane_ptr, batch_off + stride_tk, _pick(i0x, i0y, i0z, A2),
                           _pick(i0x, i0y, i0z, A3), stride_ty, stride_tx)
        base2 = _tap_lines(triplane_ptr, batch_off + 2 * stride_tk, _pick(i0x, i0y, i0z, A4),
                           _pick(i0x, i0y, i0z, A5), stride_ty, stride_tx)
        return tl.inline_asm_elementwise(
            "prefetch.global.L1 [$1];\n\tprefetch.global.L1 [$2];\n\t"
            "prefetch.global.L1 [$3];\n\tprefetch.global.L1 [$4];\n\t"
            "prefetch.global.L1 [$5];\n\tprefetch.global.L1 [$6];\n\t"
            "prefetch.global.L1 [$7];\n\tprefetch.global.L1 [$8];\n\t"
            "prefetch.global.L1 [$9];\n\tprefetch.global.L1 [$10];\n\t"
            "prefetch.global.L1 [$11];\n\tprefetch.global.L1 [$12];\n\tmov.u32 $0, 0;",
            "=r,l,l,l,l,l,l,l,l,l,l,l,l",
            [base0, base0 + stride_tx, base0 + stride_ty, base0 + (stride_ty + stride_tx),
             base1, base1 + stride_tx, base1 + stride_ty, base1 + (stride_ty + stride_tx),
             base2, base2 + stride_tx, base2 + stride_ty, base2 + (stride_ty + stride_tx)],
            dtype=tl.int32, is_pure=False, pack=1)
    else:
        return batch_off


@triton.jit
def _load_decoder(w1_ptr, b1_ptr, w2_ptr, b2_ptr, stride_w1c, stride_w1h, stride_b1,
                  stride_w2h, stride_w2o, stride_b2, C: tl.constexpr, HD: tl.constexpr,
                  F: tl.constexpr, C_PAD: tl.constexpr, H_PAD: tl.constexpr,
                  F_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Decoder weights, zero-padded to [C_PAD, H_PAD] / [H_PAD, F_PAD], loaded once per
    program: w1 / 3 (the mean of the three planes is folded into the first layer), b1, the
    density column of w2 and its bias, the feature columns and biases. fp32, except that w1
    and the feature columns are fp16 when DOT_PRECISION is "fp16" (tensor-core operands)."""
    ci = tl.arange(0, C_PAD)
    hi = tl.arange(0, H_PAD)
    fi = tl.arange(0, F_PAD)
    c_mask = ci < C
    h_mask = hi < HD
    f_mask = fi < F
    w1 = tl.load(w1_ptr + ci[:, None] * stride_w1c + hi[None, :] * stride_w1h,
                 mask=c_mask[:, None] & h_mask[None, :], other=0.0).to(tl.float32) * (1.0 / 3.0)
    b1 = tl.load(b1_ptr + hi * stride_b1, mask=h_mask, other=0.0).to(tl.float32)
    w2s = tl.load(w2_ptr + hi * stride_w2h, mask=h_mask, other=0.0).to(tl.float32)
    b2s = tl.load(b2_ptr).to(tl.float32)
    w2f = tl.load(w2_ptr + hi[:, None] * stride_w2h + (fi[None, :] + 1) * stride_w2o,
                  mask=h_mask[:, None] & f_mask[None, :], other=0.0).to(tl.float32)
    b2f = tl.load(b2_ptr + (fi + 1) * stride_b2, mask=f_mask, other=0.0).to(tl.float32)
    if DOT_PRECISION == "fp16":
        w1 = w1.to(tl.float16)
        w2f = w2f.to(tl.float16)
    return w1, b1, w2s, b2s, w2f, b2f


@triton.jit
def _matmul(a, b, DOT_PRECISION: tl.constexpr):
    """a [M, K] fp32 @ b [K, N] -> fp32. "fp16": a rounded to fp16 (b already is), fp16
    products with fp32 accumulation; "tf32x3": three TF32 tensor-core products of each
    operand's TF32 head and tail (_tf32_split), fp32-accurate; otherwise tl.dot's
    input_precision ("ieee", "tf32")."""
    if DOT_PRECISION == "fp16":
        return tl.dot(a.to(tl.float16), b, out_dtype=tl.float32)
    elif DOT_PRECISION == "tf32x3":
        # a b = (a_hi + a_lo)(b_hi + b_lo), less a_lo b_lo (2^-20 of a b), the small terms
        # accumulated first. Written out rather than tl.dot's own "tf32x3" (benchmarks.
        # kernel_sass at paper512, 64 x 4: its dot line alone 0.155 M instructions per ray):
        # here b's split (the weights) is loop-invariant and hoisted out of the loops, and the
        # kernel went from 0.455 M to 0.399 M per ray. A tensor core reads each tail to TF32's
        # precision (its top 10 bits, cut or rounded): another 2^-20 of a b at most.
        a_hi, a_lo = _tf32_split(a)
        b_hi, b_lo = _tf32_split(b)
        acc = tl.dot(a_lo, b_hi, input_precision="tf32")
        acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
        return tl.dot(a_hi, b_hi, acc, input_precision="tf32")
    elif DOT_PRECISION == "tl-tf32x3":
        return tl.dot(a, b, input_precision="tf32x3")
    else:
        return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _tf32_split(x):
    """fp32 x = hi + lo exactly: hi is x with its significand cut to TF32's 10 stored bits
    (one AND; an operand a tensor core reads whole), lo = x - hi the 13 bits cut off, exact in
    fp32 (same exponent), |lo| < 2^-10 |x|."""
    hi = (x.to(tl.uint32, bitcast=True) & TF32_HEAD_MASK).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def _decode(t, ax, ay, az, bx, by, bz, triplane_ptr, batch_off, stride_tk, Pf,
            stride_ty, stride_tx, c_offs, w1, b1, w2s, b2s, w2f, b2f,
            A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr,
            A4: tl.constexpr, A5: tl.constexpr, WITH_FEATS: tl.constexpr,
            DOT_PRECISION: tl.constexpr, ABLATE: tl.constexpr, TAP_SUM: tl.constexpr):
    """Decode one sample per ray at depth t [BLOCK_R] -> raw density [BLOCK_R] and features
    [BLOCK_R, F_PAD] in (-0.001, 1.001) (only when WITH_FEATS, else density twice).
    (ax, bx), (ay, by), (az, bz): each ray's pixel coordinate a + t b per axis (_load_rays).
    batch_off: [BLOCK_R] int32 offset of each ray's tri-plane (batch * stride_tb). ABLATE:
    "" (the kernel), or a timing diagnostic of ABLATIONS. TAP_SUM (TAP_SUMS): "fp16" sums an
    fp16 tri-plane's taps in fp16 under "fp16" products (below), "fp32" always in fp32."""
    i0x, w0x, w1x = _axis_taps(ax + t * bx, Pf)
    i0y, w0y, w1y = _axis_taps(ay + t * by, Pf)
    i0z, w0z, w1z = _axis_taps(az + t * bz, Pf)
    # The tap sum is the first product's operand. With "fp16" products that operand is fp16
    # anyway, so an fp16 tri-plane's taps are summed in fp16, two channels per instruction
    # (HFMA2), instead of each value converted to fp32 and summed there: -23% instructions
    # per ray at paper512 sizes, and a few fp16 ulps on an operand whose rounding already
    # costs half of one (a bf16 tri-plane comes in fp16); what that costs: TAP_SUMS.
    if ((triplane_ptr.dtype.element_ty == tl.float16) and (DOT_PRECISION == "fp16")
            and (TAP_SUM == "fp16")):
        feat = tl.zeros((t.shape[0], c_offs.shape[0]), dtype=tl.float16)
    else:
        feat = tl.zeros((t.shape[0], c_offs.shape[0]), dtype=tl.float32)
    # Plane k's x and y axes are (A0, A1), (A2, A3), (A4, A5).
    feat = _plane_lookup(feat, triplane_ptr, batch_off,
                         _pick(i0x, i0y, i0z, A0), _pick(w0x, w0y, w0z, A0),
                         _pick(w1x, w1y, w1z, A0), _pick(i0x, i0y, i0z, A1),
                         _pick(w0x, w0y, w0z, A1), _pick(w1x, w1y, w1z, A1),
                         stride_ty, stride_tx, c_offs)
    feat = _plane_lookup(feat, triplane_ptr, batch_off + stride_tk,
                         _pick(i0x, i0y, i0z, A2), _pick(w0x, w0y, w0z, A2),
                         _pick(w1x, w1y, w1z, A2), _pick(i0x, i0y, i0z, A3),
                         _pick(w0x, w0y, w0z, A3), _pick(w1x, w1y, w1z, A3),
                         stride_ty, stride_tx, c_offs)
    feat = _plane_lookup(feat, triplane_ptr, batch_off + 2 * stride_tk,
                         _pick(i0x, i0y, i0z, A4), _pick(w0x, w0y, w0z, A4),
                         _pick(w1x, w1y, w1z, A4), _pick(i0x, i0y, i0z, A5),
                         _pick(w0x, w0y, w0z, A5), _pick(w1x, w1y, w1z, A5),
                         stride_ty, stride_tx, c_offs)
    if (ABLATE == "mlp") or (ABLATE == "gathers+mlp"):
        # No decoder: the raw density is the summed taps' mean over planes and C_PAD lanes (a
        # padded lane repeats channel C - 1; the gathers stay live), every feature that density.
        sigma = tl.sum(feat.to(tl.float32), axis=1) * (1.0 / (3.0 * c_offs.shape[0]))
        if WITH_FEATS:
            return sigma, tl.zeros((t.shape[0], w2f.shape[1]), dtype=tl.float32) + sigma[:, None]
        else:
            return sigma, sigma
    hidden = _softplus(_matmul(_operand(feat), w1, DOT_PRECISION) + b1[None, :])  # w1 / 3
    sigma = tl.sum(hidden * w2s[None, :], axis=1) + b2s
    if WITH_FEATS:
        out = _matmul(hidden, w2f, DOT_PRECISION) + b2f[None, :]
        feats = (_reciprocal(1.0 + tl.exp2(out * -LOG2E)) * (1.0 + 2.0 * FEATURE_CLAMP)
                 - FEATURE_CLAMP)
        return sigma, feats
    else:
        return sigma, sigma


@triton.jit
def _composite(first, t, sig, feats, t_prev, sig_prev, w_prev, feats_prev, optical_sum,
               acc_weight, acc_depth, acc_feats):
    """Composite the next merged sample (depth t, raw density sig, features feats) against the
    previous one: the interval [t_prev, t] (none for the first sample: delta 0 gives weight 0)
    gets the midpoint density and features. -> the sample as the new previous one, and the
    running sums. A repeat of the previous depth adds nothing (delta 0), which lets the
    paired decode loop pad an odd count."""
    delta = tl.where(first, 0.0, t - t_prev)
    optical = _density(0.5 * (sig + sig_prev) - 1.0) * delta
    w = _alpha(optical) * tl.exp(-optical_sum)
    optical_sum += optical
    acc_weight += w
    acc_depth += w * (0.5 * (t + t_prev))
    # sum_k w_k (f_{k-1} + f_k) / 2 = sum_k f_k (w_k + w_{k+1}) / 2: the previous sample's
    # coefficient is complete now (one FMA per feature instead of three).
    acc_feats += feats_prev * (0.5 * (w_prev + w))[:, None]
    return t, sig, w, feats, optical_sum, acc_weight, acc_depth, acc_feats


@triton.jit
def _walk_step(ic, jf, cdf_lo, cdf_hi, pend, t_pend, cdf, cols, cdf_row, near, step,
               SC: tl.constexpr, SF: tl.constexpr):
    """One step of the merged pass's walk over coarse (ic) and fine (jf) samples in depth
    order -> (depth of the sample taken, the walk's new state). A fine sample of CDF interval
    i lies between coarse samples i and i + 1 (its depth is e_i + frac (e_{i+1} - e_i), e_i
    the coarse depths), so the walk keeps the interval of the last coarse sample taken,
    iv = min(ic - 1, Sc - 2), with its two CDF values, and the next fine sample belongs to it
    iff u_j < cdf[iv + 1] (or iv is the last interval, where the reference clamps): one column
    read per step instead of a search. Ties go to the coarse sample (the reference's stable
    sort, coarse first); a fine sample already placed in its interval but passed over at a
    tie keeps its depth (t_pend) for the next step. Past the last sample it returns a depth
    that is never decoded (only prefetched). The CDF row is ``cdf_row`` in memory (each ray's
    [BLOCK_R] pointer, see raymarch_kernel's ``cdf_ptr``) or, where that is None, ``cdf`` in
    registers."""
    t_coarse = near + (ic.to(tl.float32) + 0.5) * step
    if SF > 0:
        u = (jf.to(tl.float32) + 0.5) * (1.0 / SF)
        iv = tl.minimum(ic - 1, SC - 2).to(tl.float32)
        e_lo = near + (iv + 0.5) * step
        e_hi = near + (iv + 1.5) * step
        denom = cdf_hi - cdf_lo
        denom = tl.where(denom < PDF_DENOM_EPS, 1.0, denom)
        # max(., e_lo): a fine sample whose interval the walk left at a tie has the depth e_lo
        # exactly (see below); elsewhere u >= cdf_lo and the max changes nothing.
        t_new = tl.maximum(e_lo + (u - cdf_lo) * _reciprocal(denom) * (e_hi - e_lo), e_lo)
        ready = pend | ((ic >= 1) & ((u < cdf_hi) | (ic >= SC - 1)))
        t_fine = tl.where(pend, t_pend, t_new)
        take_coarse = (ic < SC) & ((jf >= SF) | (ready == 0) | (t_coarse <= t_fine))
        t = tl.where(take_coarse, t_coarse, t_fine)
        pend = ready & take_coarse & (jf < SF)
        t_pend = t_fine
        jf += (1 - take_coarse.to(tl.int32))
        ic += take_coarse.to(tl.int32)
        # Taking coarse sample ic - 1 opens interval ic - 1 (until the last one, Sc - 2):
        # cdf_lo is the old cdf_hi (cdf[0] = 0 to start) and cdf_hi the row's column ic - 1,
        # which holds cdf[ic].
        moved = take_coarse & (ic - 1 <= SC - 2)
        if cdf_row is not None:
            column = tl.load(cdf_row + (ic - 1), mask=moved, other=0.0)  # ic >= 1 here
        else:
            column = tl.sum(tl.where(cols[None, :] == (ic - 1)[:, None], cdf, 0.0), axis=1)
        cdf_lo = tl.where(moved, cdf_hi, cdf_lo)
        cdf_hi = tl.where(moved, column, cdf_hi)
    else:
        t = t_coarse
        ic += 1
    return t, ic, jf, cdf_lo, cdf_hi, pend, t_pend


@triton.jit
def _load_rays(origins_ptr, directions_ptr, rays, rays_per_batch, stride_tb, scale, Pf):
    """Each of the given rays (valid indices; masked-off ones clamped) as lines in the planes'
    pixel units: a sample at depth t has the coordinate a + t b on each axis (ax, ay, az, bx,
    by, bz; grid_sample's ((g + 1) P - 1) / 2 of g = (o + t d) scale, folded once per ray so
    that a sample costs one FMA per axis), and the ray's int32 tri-plane offset (batch *
    stride_tb; op.validate bounds every offset)."""
    ray64 = rays.to(tl.int64)
    half_p = 0.5 * Pf
    gain = scale * half_p
    ax = tl.load(origins_ptr + ray64 * 3 + 0) * gain + (half_p - 0.5)
    ay = tl.load(origins_ptr + ray64 * 3 + 1) * gain + (half_p - 0.5)
    az = tl.load(origins_ptr + ray64 * 3 + 2) * gain + (half_p - 0.5)
    bx = tl.load(directions_ptr + ray64 * 3 + 0) * gain
    by = tl.load(directions_ptr + ray64 * 3 + 1) * gain
    bz = tl.load(directions_ptr + ray64 * 3 + 2) * gain
    return ax, ay, az, bx, by, bz, (rays // rays_per_batch) * stride_tb


@triton.jit
def raymarch_kernel(
        triplane_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, origins_ptr, directions_ptr,
        features_ptr, depth_ptr, opacity_ptr, cdf_ptr,
        n_rays, rays_per_batch, P,
        stride_tb, stride_tk, stride_tc, stride_ty, stride_tx,
        stride_w1c, stride_w1h, stride_b1, stride_w2h, stride_w2o, stride_b2,
        near, step, scale,
        C: tl.constexpr, HD: tl.constexpr, F: tl.constexpr,
        C_PAD: tl.constexpr, H_PAD: tl.constexpr, F_PAD: tl.constexpr,
        SC: tl.constexpr, SF: tl.constexpr, SC_PAD: tl.constexpr,
        A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr,
        A4: tl.constexpr, A5: tl.constexpr, BLOCK_R: tl.constexpr,
        DOT_PRECISION: tl.constexpr = "ieee", PREFETCH: tl.constexpr = 0,
        SAMPLES_PER_STEP: tl.constexpr = 1, ABLATE: tl.constexpr = "",
        TAP_SUM: tl.constexpr = "fp16"):
    """One program = BLOCK_R rays. near, step = (far - near) / Sc and scale = 2 / box_warp
    are fp32; strides in elements; P the plane size. cdf_ptr: an fp32 workspace of
    grid * BLOCK_R rows of SC_PAD + SC + SF (one row per ray, masked-off rays included), where
    the coarse pass leaves each ray's smoothed weights and then its CDF (columns < SC_PAD),
    and the walk the merged depths (the rest); or None, and the CDF stays in registers and
    the walk runs inside the decode loop (the version-1 TensorRT node's configuration).
    SAMPLES_PER_STEP (2 needs the workspace): merged samples
    decoded per step of the decode loop. ABLATE: "" (the kernel), or a timing diagnostic that
    leaves part of the work out (ABLATIONS; its outputs are not the renderer's). TAP_SUM
    (TAP_SUMS): the precision of an fp16 tri-plane's tap sums under "fp16" products."""
    pid = tl.program_id(0)
    rays = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    ray_mask = rays < n_rays
    rays = tl.where(ray_mask, rays, 0)  # keeps masked-off addresses valid
    Pf = P.to(tl.float32)
    if (ABLATE == "gathers") or (ABLATE == "gathers+mlp"):
        # Every tap of every plane at the first texel of plane 0, batch 0, by offsets that
        # are 0 at run time but not to the compilers (P > 0, so P >> 31 is 0): the addresses
        # are still computed per ray and sample, the strides keep the alignment Triton's JIT
        # gave them (so the loads keep their vector width), and no load is merged or hoisted.
        zero = P >> 31
        stride_tk = stride_tk * zero
        stride_ty = stride_ty * zero
        stride_tx = stride_tx * zero
        stride_tb = stride_tb * zero
    ax, ay, az, bx, by, bz, batch_off = _load_rays(origins_ptr, directions_ptr, rays,
                                                   rays_per_batch, stride_tb, scale, Pf)
    c_offs = _channel_offsets(tl.arange(0, C_PAD), stride_tc, C, C_PAD)
    w1, b1, w2s, b2s, w2f, b2f = _load_decoder(
        w1_ptr, b1_ptr, w2_ptr, b2_ptr, stride_w1c, stride_w1h, stride_b1, stride_w2h,
        stride_w2o, stride_b2, C, HD, F, C_PAD, H_PAD, F_PAD, DOT_PRECISION)

    cols = tl.arange(0, SC_PAD)
    cdf = tl.zeros((BLOCK_R, SC_PAD), dtype=tl.float32)
    cdf_row = None
    if cdf_ptr is not None:
        cdf_row = cdf_ptr + (pid * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64) * (
            SC_PAD + SC + SF)
    if SF > 0:
        # 1. Coarse pass (density only): interval i = [t_i, t_{i+1}] gets weight w_i; the
        # smoothed w'_{i-1} = (max(w_{i-2}, w_{i-1}) + max(w_{i-1}, w_i)) / 2 + 0.01 is ready
        # once w_i is known (w_{-1} = w_{Sc-1} = 0).
        t_prev = near + 0.5 * step + tl.zeros((BLOCK_R,), dtype=tl.float32)
        sig_prev, _unused = _decode(t_prev, ax, ay, az, bx, by, bz, triplane_ptr,
                                    batch_off, stride_tk, Pf, stride_ty, stride_tx, c_offs, w1,
                                    b1, w2s, b2s, w2f, b2f, A0, A1, A2, A3, A4, A5, False,
                                    DOT_PRECISION, ABLATE, TAP_SUM)
        optical_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)
        w_m2 = tl.zeros((BLOCK_R,), dtype=tl.float32)
        w_m1 = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for s in range(1, SC):
            t = near + (s + 0.5) * step + tl.zeros((BLOCK_R,), dtype=tl.float32)
            if PREFETCH >= 1:
                _prefetch_sample(t + step, ax, ay, az, bx, by, bz, triplane_ptr,
                                 batch_off, stride_tk, Pf, stride_ty, stride_tx, A0, A1, A2,
                                 A3, A4, A5)
            sig, _unused = _decode(t, ax, ay, az, bx, by, bz, triplane_ptr, batch_off,
                                   stride_tk, Pf, stride_ty, stride_tx, c_offs, w1, b1, w2s,
                                   b2s, w2f, b2f, A0, A1, A2, A3, A4, A5, False, DOT_PRECISION,
                                   ABLATE, TAP_SUM)
            optical = _density(0.5 * (sig + sig_prev) - 1.0) * (t - t_prev)
            w = _alpha(optical) * tl.exp(-optical_sum)
            optical_sum += optical
            smoothed = 0.5 * (tl.maximum(w_m2, w_m1) + tl.maximum(w_m1, w)) + PDF_WEIGHT_FLOOR
            if cdf_row is not None:
                if s >= 2:
                    tl.store(cdf_row + (s - 2), smoothed)
            else:
                cdf = tl.where(cols[None, :] == s - 2, smoothed[:, None], cdf)  # none at s = 1
            w_m2 = w_m1
            w_m1 = w
            t_prev = t
            sig_prev = sig
        smoothed = 0.5 * (tl.maximum(w_m2, w_m1) + w_m1) + PDF_WEIGHT_FLOOR
        if cdf_row is not None:
            tl.store(cdf_row + (SC - 2), smoothed)
            tl.debug_barrier()  # the row is read back in another layout
            cdf = tl.load(cdf_row[:, None] + cols[None, :], mask=(cols < SC - 1)[None, :],
                          other=0.0)
        else:
            cdf = tl.where(cols[None, :] == SC - 2, smoothed[:, None], cdf)
        # pdf = w' / sum w'; cdf[i + 1] = sum_{k <= i} pdf_k (padding columns hold 0).
        total = tl.sum(cdf, axis=1)
        cdf = tl.cumsum(cdf / total[:, None], axis=1)
        if cdf_row is not None:
            tl.debug_barrier()  # every weight is read before the CDF overwrites it
            tl.store(cdf_row[:, None] + cols[None, :], cdf)
            tl.debug_barrier()  # and stored before the walk reads it, in its own layout

    # 2. Merged pass: walk coarse and fine samples in depth order (_walk_step), composite.
    ic = tl.zeros((BLOCK_R,), dtype=tl.int32)
    jf = tl.zeros((BLOCK_R,), dtype=tl.int32)
    cdf_lo = tl.zeros((BLOCK_R,), dtype=tl.float32)
    cdf_hi = tl.zeros((BLOCK_R,), dtype=tl.float32)
    pend = tl.zeros((BLOCK_R,), dtype=tl.int1)
    t_pend = tl.zeros((BLOCK_R,), dtype=tl.float32)
    t_prev = tl.zeros((BLOCK_R,), dtype=tl.float32)
    t_first = tl.zeros((BLOCK_R,), dtype=tl.float32)
    sig_prev = tl.zeros((BLOCK_R,), dtype=tl.float32)
    w_prev = tl.zeros((BLOCK_R,), dtype=tl.float32)
    feats_prev = tl.zeros((BLOCK_R, F_PAD), dtype=tl.float32)
    optical_sum = tl.zeros((BLOCK_R,), dtype=tl.float32)
    acc_feats = tl.zeros((BLOCK_R, F_PAD), dtype=tl.float32)
    acc_depth = tl.zeros((BLOCK_R,), dtype=tl.float32)
    acc_weight = tl.zeros((BLOCK_R,), dtype=tl.float32)
    # The walk needs only the CDF, not the decodes' results. With the workspace it runs first,
    # on its own, and leaves each ray's merged depths after its CDF row; the decode loop then
    # reads one depth a step. Run inside the decode loop, the walk was kept by Triton's layout
    # pass in three copies, one per layout its results were wanted in (the gathers', twice,
    # and the workspace pointers'), ~16% of the instructions; on its own it is one compact
    # copy (sm_90, 64 x 4, fp16 products: 0.27 M -> 0.23 M instructions per ray on an fp16
    # tri-plane, 0.39 M -> 0.31 M on an fp32 one, and 254 -> 171 registers).
    # With PREFETCH = 2 the next sample's depth is known while this one decodes (read ahead,
    # or with no workspace the walk run one step ahead), and L1 is asked for its taps then.
    # With SAMPLES_PER_STEP = 2 (the depths read from the workspace) each step decodes two
    # samples before compositing them: their gathers are independent, and ptxas issues the
    # second sample's while the first one's MLP runs (the SASS shows them interleaved with its
    # softplus), two decodes' worth of L2 traffic in flight per warp where a frame has only
    # ~8 warps per SM to hide it. An odd count repeats the last depth, which adds nothing.
    depth_row = None
    if cdf_row is not None:
        depth_row = cdf_row + SC_PAD
        for k in range(0, SC + SF):
            t, ic, jf, cdf_lo, cdf_hi, pend, t_pend = _walk_step(
                ic, jf, cdf_lo, cdf_hi, pend, t_pend, cdf, cols, cdf_row, near, step, SC, SF)
            tl.store(depth_row + k, t)
        tl.debug_barrier()  # the decode loop reads the depths in its own layout
    elif PREFETCH >= 2:
        t_next, ic, jf, cdf_lo, cdf_hi, pend, t_pend = _walk_step(
            ic, jf, cdf_lo, cdf_hi, pend, t_pend, cdf, cols, cdf_row, near, step, SC, SF)
    tl.static_assert(SAMPLES_PER_STEP == 1 or depth_row is not None,
                     "two samples a step read their depths from the workspace")
    for k in range(0, SC + SF, SAMPLES_PER_STEP):
        if depth_row is not None:
            t = tl.load(depth_row + k)
            if SAMPLES_PER_STEP == 2:
                t_2 = tl.load(depth_row + tl.minimum(k + 1, SC + SF - 1))
            if PREFETCH >= 2:
                _prefetch_sample(
                    tl.load(depth_row + tl.minimum(k + SAMPLES_PER_STEP, SC + SF - 1)), ax,
                    ay, az, bx, by, bz, triplane_ptr, batch_off, stride_tk, Pf, stride_ty,
                    stride_tx, A0, A1, A2, A3, A4, A5)
        elif PREFETCH >= 2:
            t = t_next
            t_next, ic, jf, cdf_lo, cdf_hi, pend, t_pend = _walk_step(
                ic, jf, cdf_lo, cdf_hi, pend, t_pend, cdf, cols, cdf_row, near, step, SC, SF)
            _prefetch_sample(t_next, ax, ay, az, bx, by, bz, triplane_ptr, batch_off,
                             stride_tk, Pf, stride_ty, stride_tx, A0, A1, A2, A3, A4, A5)
        else:
            t, ic, jf, cdf_lo, cdf_hi, pend, t_pend = _walk_step(
                ic, jf, cdf_lo, cdf_hi, pend, t_pend, cdf, cols, cdf_row, near, step, SC, SF)
        sig, feats = _decode(t, ax, ay, az, bx, by, bz, triplane_ptr, batch_off,
                             stride_tk, Pf, stride_ty, stride_tx, c_offs, w1, b1, w2s, b2s,
                             w2f, b2f, A0, A1, A2, A3, A4, A5, True, DOT_PRECISION, ABLATE,
                             TAP_SUM)
        if SAMPLES_PER_STEP == 2:
            sig_2, feats_2 = _decode(t_2, ax, ay, az, bx, by, bz, triplane_ptr, batch_off,
                                     stride_tk, Pf, stride_ty, stride_tx, c_offs, w1, b1, w2s,
                                     b2s, w2f, b2f, A0, A1, A2, A3, A4, A5, True, DOT_PRECISION,
                                     ABLATE, TAP_SUM)
        t_first = tl.where(k == 0, t, t_first)
        (t_prev, sig_prev, w_prev, feats_prev, optical_sum, acc_weight, acc_depth,
         acc_feats) = _composite(k == 0, t, sig, feats, t_prev, sig_prev, w_prev, feats_prev,
                                 optical_sum, acc_weight, acc_depth, acc_feats)
        if SAMPLES_PER_STEP == 2:
            (t_prev, sig_prev, w_prev, feats_prev, optical_sum, acc_weight, acc_depth,
             acc_feats) = _composite(False, t_2, sig_2, feats_2, t_prev, sig_prev, w_prev,
                                     feats_prev, optical_sum, acc_weight, acc_depth, acc_feats)
    acc_feats += feats_prev * (0.5 * w_prev)[:, None]  # the last sample: w_{k+1} = 0

    # 3. Outputs: features x2 - 1; depth = weighted mean depth, the last sample's depth where
    # the total weight is 0, clamped to [t_first, t_last]; opacity = total weight.
    depth = tl.where(acc_weight > 0, acc_depth / tl.where(acc_weight > 0, acc_weight, 1.0),
                     t_prev)
    depth = tl.minimum(tl.maximum(depth, t_first), t_prev)
    out_feats = acc_feats * 2.0 - 1.0
    ray64 = rays.to(tl.int64)
    fi = tl.arange(0, F_PAD)
    tl.store(features_ptr + ray64[:, None] * F + fi[None, :], out_feats,
             mask=ray_mask[:, None] & (fi < F)[None, :])
    tl.store(depth_ptr + ray64, depth, mask=ray_mask)
    tl.store(opacity_ptr + ray64, acc_weight, mask=ray_mask)


# The MLP products: fp32 FMAs; TF32 tensor cores (sm_80+), one product or three (fp32-accurate);
# fp16 operands with fp32 accumulation (tensor cores from sm_80; Triton uses FMAs on sm_75);
# last, the three TF32 products as tl.dot computes them, for the GPU suite's sweep only.
DOT_PRECISIONS = ("ieee", "tf32", "tf32x3", "fp16", "tl-tf32x3")


def check_dot_precision(dot_precision: str) -> str:
    if dot_precision not in DOT_PRECISIONS:
        raise ValueError(f"dot_precision must be one of {', '.join(DOT_PRECISIONS)}, got "
                         f"{dot_precision!r}.")
    return dot_precision


# Prefetching the next sample's taps into L1 (``_prefetch_sample``): 0 never; 1 in the coarse
# pass, whose depths are analytic (about +1% instructions at paper512 sizes); 2 in the merged
# pass too, where the depth comes from the walk and the prefetches run in its replicated
# layout (about +19%). Whether the hidden L2 latency pays for that is for a GPU to say.
PREFETCH_LEVELS = (0, 1, 2)


def check_prefetch(prefetch) -> int:
    level = int(prefetch or 0)
    if level not in PREFETCH_LEVELS:
        raise ValueError(f"prefetch must be one of {PREFETCH_LEVELS}, got {prefetch!r}.")
    return level


# Merged samples decoded per step of the decode loop: 1, or 2 (two samples' gathers in flight
# at once; needs the workspace, whose merged depths the loop reads). 2 with the workspace
# unless told otherwise: chosen on the SASS (the second sample's gathers issue under the first
# one's MLP, -2% instructions), not yet on a GPU's clock; the GPU suite's sweep times both.
SAMPLES_PER_STEP = (1, 2)
DEFAULT_SAMPLES_PER_STEP = 2


def check_samples_per_step(samples_per_step) -> int:
    value = int(samples_per_step)
    if value not in SAMPLES_PER_STEP:
        raise ValueError(f"samples_per_step must be one of {SAMPLES_PER_STEP}, got "
                         f"{samples_per_step!r}.")
    return value


# Timing diagnostics, not renderers: launches that leave part of the work out, so that a GPU's
# clock can say where the kernel's time goes (benchmarks.gpu_suite's sweep times them beside
# the kernel; benchmarks.kernel_sass counts their instructions). "gathers": every tap's address
# is computed as in the kernel but with strides that are 0 at run time, so each load still
# issues at its width while all rays read one line (the channels of the tri-plane's first
# texel), from L1: what this saves is the time the gathers' memory traffic and latency cost.
# "mlp": no decoder, the raw density is the summed taps' mean over the C_PAD channel lanes (the
# channels' mean when C == C_PAD) and every feature that density: what this saves is the MLP's
# time. "gathers+mlp": both; what is left is the sample arithmetic, the compositing and the
# walk. Their outputs are not the renderer's (the fine samples follow the ablated densities).
ABLATIONS = ("", "gathers", "mlp", "gathers+mlp")


def check_ablate(ablate) -> str:
    value = ablate or ""
    if value not in ABLATIONS:
        raise ValueError(f"ablate must be one of {', '.join(repr(a) for a in ABLATIONS)}, got "
                         f"{ablate!r}.")
    return value


# How an fp16 tri-plane's taps are summed under "fp16" products (other tri-planes and products:
# fp32 always). "fp16" (the default): packed HFMA2, two channels an instruction, the sum being
# the product's fp16 operand anyway (0.235 M instructions per ray at 64 x 4 on sm_90 against
# 0.314 M, benchmarks.kernel_sass). "fp32": each value converted and summed in fp32, as an
# fp32 tri-plane of the same values. Accuracy does not call for "fp32" (interpreter, CPU):
# - random tri-planes: the two within 2x of each other, 1.9e-5 off the reference;
# - the trained demo64 face in bf16: either sum far under what running the model in bf16
#   moves its output (the default 18-33x under it: tests/engines/test_raymarch_kernel.py);
# - a steep surface (benchmarks.gpu_suite.surface_case; one draw, seed 107, all 128 x 128 of
#   paper512's rays): ~0.1% of the elements over the tolerance with either sum, on rays at
#   the surface, whose importance samples move with any rounding. Summed in fp32 the worst
#   errors were 0.7-2.2x the fp16 sums' (fp16 ball: features 1.2e-2 against 1.7e-2; bf16
#   ball: 2.0e-2 against 9.2e-3), as many elements over within 30%, the 99th percentile
#   ~5e-4 for both; storing that ball in bf16 moves the reference by up to 2.2e-2.
# So "fp32" is for the GPU suite's sweep to price; the default stays unless that is ~free.
TAP_SUMS = ("fp16", "fp32")


def check_tap_sum(tap_sum) -> str:
    value = tap_sum or "fp16"
    if value not in TAP_SUMS:
        raise ValueError(f"tap_sum must be one of {', '.join(TAP_SUMS)}, got {tap_sum!r}.")
    return value


def next_pow2(n: int, floor: int = 16) -> int:
    """Padded size for a register dimension: a power of two >= max(n, floor)."""
    return max(floor, triton.next_power_of_2(int(n)))


def constexprs(channels: int, hidden: int, features: int, samples_coarse: int,
               samples_fine: int, plane_axes_flat, block_rays: int,
               dot_precision: str = "ieee", prefetch: int = 0,
               samples_per_step: int = 1, ablate: str = "", tap_sum: str = "fp16") -> dict:
    """The kernel's constexpr arguments for one configuration (plane_axes_flat: 6 ints)."""
    a = tuple(int(v) for v in plane_axes_flat)
    return {"C": int(channels), "HD": int(hidden), "F": int(features),
            "C_PAD": next_pow2(channels), "H_PAD": next_pow2(hidden),
            "F_PAD": next_pow2(features), "SC": int(samples_coarse), "SF": int(samples_fine),
            "SC_PAD": next_pow2(samples_coarse, 2), "A0": a[0], "A1": a[1], "A2": a[2],
            "A3": a[3], "A4": a[4], "A5": a[5], "BLOCK_R": int(block_rays),
            "DOT_PRECISION": check_dot_precision(dot_precision),
            "PREFETCH": check_prefetch(prefetch),
            "SAMPLES_PER_STEP": check_samples_per_step(samples_per_step),
            "ABLATE": check_ablate(ablate), "TAP_SUM": check_tap_sum(tap_sum)}


# Runtime (non-constexpr) arguments in order, with their AOT signature types. Pointers first.
RUNTIME_ARGS = (
    ("triplane_ptr", "*triplane"), ("w1_ptr", "*fp32"), ("b1_ptr", "*fp32"),
    ("w2_ptr", "*fp32"), ("b2_ptr", "*fp32"), ("origins_ptr", "*fp32"),
    ("directions_ptr", "*fp32"), ("features_ptr", "*fp32"), ("depth_ptr", "*fp32"),
    ("opacity_ptr", "*fp32"), ("cdf_ptr", "*fp32"),
    ("n_rays", "i32"), ("rays_per_batch", "i32"), ("P", "i32"),
    ("stride_tb", "i32"), ("stride_tk", "i32"), ("stride_tc", "i32"), ("stride_ty", "i32"),
    ("stride_tx", "i32"), ("stride_w1c", "i32"), ("stride_w1h", "i32"), ("stride_b1", "i32"),
    ("stride_w2h", "i32"), ("stride_w2o", "i32"), ("stride_b2", "i32"),
    ("near", "fp32"), ("step", "fp32"), ("scale", "fp32"),
)

DEFAULT_BLOCK_RAYS = 32
# With tensor-core products ("tf32", "tf32x3", "fp16"): 64 rays x 4 warps, 16 rays per warp,
# one per row of the m16n8 MMA tile. At 32 x 4 a warp's 16 rows hold 8 rays twice over and the
# per-ray work runs twice (sm_90 SASS, fp16 products: 0.44 M instructions per ray at 32 x 4,
# 0.30 M at 64 x 4).
DEFAULT_BLOCK_RAYS_MMA = 64
# Measured on an H200 before the instruction diet (benchmarks/results/kernel_sweep-NVIDIA_H200-
# 2026-11-28.json; paper512, 128x128 rays, fp32 tri-plane; reference 5.26 ms), "ieee" products:
# 32 rays x 4 warps 3.39 ms, 16 x 2 3.30, 64 x 8 3.67, 16 x 4 4.77, 32 x 8 4.96; "tf32x3":
# 32 x 4 3.07, 64 x 4 2.95 (the one tensor-core comparison measured: 16 rays per warp won).
# The GPU suite's sweep re-measures the launches after it.
DEFAULT_NUM_WARPS = 4
# No software pipelining: the loop's loads are data-dependent gathers, and with the default 3
# stages Triton multi-buffers the dot operands in 120 KB of shared memory (1 program per SM,
# and over sm_75's 64 KB); with 1 stage it is 24 KB at paper512 sizes.
DEFAULT_NUM_STAGES = 1


def default_block_rays(dot_precision: str) -> int:
    """Rays per program when the caller does not say: DEFAULT_BLOCK_RAYS_MMA for tensor-core
    products, DEFAULT_BLOCK_RAYS for fp32 FMA ("ieee") ones."""
    if check_dot_precision(dot_precision) == "ieee":
        return DEFAULT_BLOCK_RAYS
    return DEFAULT_BLOCK_RAYS_MMA


def grid(n_rays: int, block_rays: int = DEFAULT_BLOCK_RAYS) -> tuple[int, int, int]:
    """Launch grid: one program per BLOCK_R rays."""
    return (triton.cdiv(int(n_rays), int(block_rays)), 1, 1)
