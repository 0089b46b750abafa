"""The sample-parallel ("tiled") variant of the fused ray-march kernel: the same computation
as ``kernel.raymarch_kernel`` (``export3d.renderer.raymarch_reference`` at inference), the same
runtime arguments (``kernel.RUNTIME_ARGS``) and outputs, but each decode works on a tile of
BLOCK_R rays x S_TILE samples at once instead of one sample per ray.

Why: the serial kernel decodes one sample per ray per step, so each MLP product is a
[BLOCK_R, C] x [C, Hd] dot with 32 rows, and the 144 steps are a dependent chain (each
composite needs the previous one). Here every decode is a [BLOCK_R * S_TILE, C] x [C, Hd] dot
(128 rows at 16 x 8), the tile's 128 lookups are independent gathers in flight together, and
the compositing inside a tile is a prefix sum (``tl.cumsum``) instead of a chain.

Launch structure: ONE launch, grid (cdiv(B * R, BLOCK_R),), one program per block of rays, no
workspace (all per-ray state lives in registers, as in the serial kernel), deterministic (every
sum is a fixed-order in-register reduction, no atomics), fp32 accumulation. Per program:
1. coarse pass, cdiv(Sc, S_TILE) tiles of coarse samples, density only: the interval weight
   ending at sample s is alpha * exp(-(carried optical sum + exclusive prefix sum in the tile));
   the previous sample's density comes from a shift inside the tile plus the value carried
   from the previous tile. The weights are placed into a per-ray row [BLOCK_R, SC_PAD] (static
   columns); EG3D's smoothing (max of neighbours, mean of neighbours, + 0.01) is done on that
   row with two exact one-hot shift products, then normalised and scanned into the CDF.
2. fine depths, cdiv(Sf, S_TILE) chunks: the compare-and-sum inverse CDF at
   u_j = (j + 0.5) / Sf for a chunk of j at once ([BLOCK_R, S_TILE, SC_PAD] compares); each
   fine sample's merged rank j + #{coarse depths <= t_j} (the reference's stable sort of coarse
   then fine: a coarse sample goes first on a tie). The coarse depths are analytic
   (near + (i + 0.5) step), so that count is floor((t - near) / step + 0.5), corrected by one
   exact comparison each way. Fine depths and ranks are kept in rows [BLOCK_R, SF_PAD].
3. merged pass, cdiv(Sc + Sf, S_TILE) tiles of merged (sorted) positions m: slot m holds the
   fine sample of rank m if there is one, else coarse sample m - #{fine ranks < m}
   ([BLOCK_R, S_TILE, SF_PAD] compares); the tile is decoded in full and composited with the
   prefix sum as in 1. The midpoint features sum_i w_i (f_i + f_{i+1}) / 2 is regrouped as
   sum_j f_j (w_j + w_{j+1}) / 2, so only the weights (not the [.., F] features) are shifted;
   the last sample of a tile meets its second weight in the next tile (carried).
Coarse samples are decoded twice (density only, then in full), as in the serial kernel: caching
their features would take BLOCK_R x Sc x F fp32 = 96 KB per program at paper512 sizes.

Tile sizes: BLOCK_R = 16 rays x S_TILE = 8 samples, 8 warps by default: 128 decode rows per
dot (4x the serial kernel's 32); the MLP's operands staged in shared memory take 48 KB with
"ieee" dots (fits sm_75's 64 KB) and 64 KB with "tf32x3" on sm_90; at S_TILE = 16 (256 rows)
80 KB and 96 KB (AOT-compiled, never run), too much for sm_75 and two programs per SM on an
H100. The GPU suite's sweep measures both. The compare tensors are [16, S_TILE, 64] at
paper512 sizes; Sc = Sf = 48 fill the tiles exactly.
Shifts inside a tile are where-sums over [BLOCK_R, S_TILE, S_TILE]; the two row shifts of the
smoothing are tl.dot with a one-hot matrix (exact: one product x * 1 per output, fp32 FMA with
input_precision="ieee"), which needs BLOCK_R >= 16.

Expected speed (an estimate, not a measurement): the work is the serial kernel's, 144 decodes
per ray (48 density-only + 96 full), ~0.5 M MAC and ~220 KB of mostly L2-resident gathers per
ray at paper512 sizes, plus the ordering overhead: per ray ~3 x 48 x 64 (inverse CDF) +
3 x 96 x 64 (merge) ~ 28 K compare-selects, ~6% of the MACs and none of the memory traffic.
What changes is the shape: 128- to 256-row dots keep tensor cores busy (tf32x3) where 32-row
ones mostly wait, and 128-256 gathers per tile instead of 32 per step give the memory system
4-8x more independent loads in flight per program. If the serial kernel is latency-bound (its
1.7x over the reference at ~8 GMAC / 3.6 GB suggests so) the ceiling is the L2 gather
bandwidth: 3.6 GB at an L2 bandwidth of the order of 10 TB/s is ~0.4 ms, about 13x the
reference's 5.3 ms on an H200, so the issue's 10x needs the gathers close to that bandwidth
(fp16 tri-planes halve the bytes). Nothing here has been timed: the GPU suite's launch sweep
measures it.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .kernel import (PDF_DENOM_EPS, PDF_WEIGHT_FLOOR, _alpha, _channel_offsets, _decode,
                     _density, _load_decoder, _load_rays, check_dot_precision, next_pow2)

DEFAULT_BLOCK_RAYS = 16
DEFAULT_SAMPLE_TILE = 8
# 8 warps: at 4 the [128, 32] gathers and MLP tiles need more than 255 registers per thread
# (ptxas for sm_90, tf32x3: 4.6 KB of spill stores at 4 warps, 0.9 KB at 8, about the serial
# kernel's 0.7 KB at 32 rays x 4 warps; 16 x 16 tiles spill 3.7 KB even at 8 warps).
DEFAULT_NUM_WARPS = 8
# Large enough never to compare below or equal to a merged position (invalid fine columns).
_NO_RANK = tl.constexpr(1 << 30)


@triton.jit
def _shift_right(x, carry, jj):
    """[BLOCK_R, T] -> y[:, j] = x[:, j - 1], y[:, 0] = carry [BLOCK_R] (exact where-sum)."""
    sel = jj[None, :, None] - 1 == jj[None, None, :]  # [1, j, j']
    y = tl.sum(tl.where(sel, x[:, None, :], 0.0), axis=2)
    return tl.where(jj[None, :] == 0, carry[:, None], y)


@triton.jit
def _shift_left(x, jj):
    """[BLOCK_R, T] -> y[:, j] = x[:, j + 1], y[:, T - 1] = 0 (exact where-sum)."""
    sel = jj[None, :, None] + 1 == jj[None, None, :]
    return tl.sum(tl.where(sel, x[:, None, :], 0.0), axis=2)


@triton.jit
def _column(x, jj, j):
    """x[:, j] of a [BLOCK_R, T] tile -> [BLOCK_R]."""
    return tl.sum(tl.where(jj[None, :] == j, x, 0.0), axis=1)


@triton.jit
def _shift_row_left(x, cols):
    """[BLOCK_R, SC_PAD] -> y[:, c] = x[:, c + 1], last column 0: a product with a one-hot
    matrix, exact in fp32 (each output is x * 1 plus exact zeros)."""
    onehot = tl.where(cols[:, None] == cols[None, :] + 1, 1.0, 0.0)
    return tl.dot(x, onehot, input_precision="ieee")


@triton.jit
def _coarse_count(t, near, step, SC: tl.constexpr):
    """#{i < Sc : near + (i + 0.5) step <= t} for t [BLOCK_R, T], consistent with the depths the
    kernel computes: the analytic floor, then one exact comparison each way."""
    n = tl.floor((t - near) / step + 0.5)
    n = tl.minimum(tl.maximum(n, 0.0), SC * 1.0).to(tl.int32)
    up = (n < SC) & (near + (n.to(tl.float32) + 0.5) * step <= t)
    n = n + up.to(tl.int32)
    down = (n > 0) & (near + ((n - 1).to(tl.float32) + 0.5) * step > t)
    return n - down.to(tl.int32)


@triton.jit
def raymarch_tiled_kernel(
        triplane_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, origins_ptr, directions_ptr,
        features_ptr, depth_ptr, opacity_ptr, cdf_ptr,
        n_rays, rays_per_batch, P,
        stride_tb, stride_tk, stride_tc, stride_ty, stride_tx,
        stride_w1c, stride_w1h, stride_b1, stride_w2h, stride_w2o, stride_b2,
        near, step, scale,
        C: tl.constexpr, HD: tl.constexpr, F: tl.constexpr,
        C_PAD: tl.constexpr, H_PAD: tl.constexpr, F_PAD: tl.constexpr,
        SC: tl.constexpr, SF: tl.constexpr, SC_PAD: tl.constexpr, SF_PAD: tl.constexpr,
        A0: tl.constexpr, A1: tl.constexpr, A2: tl.constexpr, A3: tl.constexpr,
        A4: tl.constexpr, A5: tl.constexpr, BLOCK_R: tl.constexpr, S_TILE: tl.constexpr,
        DOT_PRECISION: tl.constexpr = "ieee"):
    """One program = BLOCK_R rays, decoded S_TILE samples at a time. Arguments as
    ``kernel.raymarch_kernel``; SC_PAD / SF_PAD are multiples of S_TILE. cdf_ptr is not
    used (None): this variant keeps its CDF in registers."""
    N: tl.constexpr = BLOCK_R * S_TILE
    pid = tl.program_id(0)
    # Per decode row n = r * S_TILE + j (ray r of the block, sample j of the tile).
    rows = tl.arange(0, N)
    rays_n = pid * BLOCK_R + rows // S_TILE
    mask_n = rays_n < n_rays
    Pf = P.to(tl.float32)
    ax, ay, az, bx, by, bz, batch_off = _load_rays(origins_ptr, directions_ptr,
                                                   tl.where(mask_n, rays_n, 0),
                                                   rays_per_batch, stride_tb, scale, Pf)
    c_offs = _channel_offsets(tl.arange(0, C_PAD), stride_tc, C, C_PAD)
    w1, b1, w2s, b2s, w2f, b2f = _load_decoder(
        w1_ptr, b1_ptr, w2_ptr, b2_ptr, stride_w1c, stride_w1h, stride_b1, stride_w2h,
        stride_w2o, stride_b2, C, HD, F, C_PAD, H_PAD, F_PAD, DOT_PRECISION)

    jj = tl.arange(0, S_TILE)
    zeros_rt = tl.zeros((BLOCK_R, S_TILE), dtype=tl.float32)
    zeros_r = tl.zeros((BLOCK_R,), dtype=tl.float32)

    if SF > 0:
        # 1. Coarse pass. Column s of the row holds x_s = w_{s-1}, the weight of the interval
        # ending at coarse sample s (x_0 = 0; columns >= Sc stay 0 = EG3D's right padding).
        x_row = tl.zeros((BLOCK_R, SC_PAD // S_TILE, S_TILE), dtype=tl.float32)
        tiles_c = tl.arange(0, SC_PAD // S_TILE)
        sig_carry = zeros_r
        optical_carry = zeros_r
        for k in range(0, (SC + S_TILE - 1) // S_TILE):
            s = k * S_TILE + jj
            t = near + (s.to(tl.float32) + 0.5) * step  # [T], the reference's coarse depths
            t_prev = near + ((s - 1).to(tl.float32) + 0.5) * step
            sig, _unused = _decode(tl.reshape(t[None, :] + zeros_rt, (N,)), ax, ay, az, bx, by,
                                   bz, triplane_ptr, batch_off, stride_tk, Pf,
                                   stride_ty, stride_tx, c_offs, w1, b1, w2s, b2s, w2f, b2f,
                                   A0, A1, A2, A3, A4, A5, False, DOT_PRECISION, "",
                                   "fp16")
            sig = tl.reshape(sig, (BLOCK_R, S_TILE))
            sig_prev = _shift_right(sig, sig_carry, jj)
            delta = tl.where((s >= 1) & (s < SC), t - t_prev, 0.0)
            optical = _density(0.5 * (sig + sig_prev) - 1.0) * delta[None, :]
            # Transmittance before each interval: exp(-(all earlier intervals)), as the
            # reference's inclusive cumsum minus the interval itself.
            inclusive = optical_carry[:, None] + tl.cumsum(optical, axis=1)
            w = _alpha(optical) * tl.exp(-(inclusive - optical))
            optical_carry = _column(inclusive, jj, S_TILE - 1)
            sig_carry = _column(sig, jj, S_TILE - 1)
            x_row = tl.where((tiles_c == k)[None, :, None], w[:, None, :], x_row)
        # EG3D smoothing on the row: b_i = max(w_{i-1}, w_i) = max(x_i, x_{i+1}),
        # w'_i = (b_i + b_{i+1}) / 2 + 0.01 for i < Sc - 1, then pdf and its cumsum.
        cols = tl.arange(0, SC_PAD)
        x_flat = tl.reshape(x_row, (BLOCK_R, SC_PAD))
        maxed = tl.maximum(x_flat, _shift_row_left(x_flat, cols))
        smoothed = 0.5 * (maxed + _shift_row_left(maxed, cols)) + PDF_WEIGHT_FLOOR
        smoothed = tl.where((cols < SC - 1)[None, :], smoothed, 0.0)
        total = tl.sum(smoothed, axis=1)
        cdf = tl.cumsum(smoothed / total[:, None], axis=1)  # column i holds cdf[i + 1]

        # 2. Fine depths by the inverse CDF, S_TILE at a time, and their merged ranks.
        t_fine_row = tl.zeros((BLOCK_R, SF_PAD // S_TILE, S_TILE), dtype=tl.float32)
        rank_row = tl.full((BLOCK_R, SF_PAD // S_TILE, S_TILE), _NO_RANK, dtype=tl.int32)
        tiles_f = tl.arange(0, SF_PAD // S_TILE)
        cdf3 = cdf[:, None, :]
        cols3 = cols[None, None, :]
        for q in range(0, (SF + S_TILE - 1) // S_TILE):
            j = q * S_TILE + jj
            u = (j.to(tl.float32) + 0.5) / SF
            below = tl.sum(tl.where((cols3 < SC - 1) & (cdf3 <= u[None, :, None]), 1, 0),
                           axis=2)
            idx = tl.minimum(below, SC - 2)  # [BLOCK_R, T]
            cdf_hi = tl.sum(tl.where(cols3 == idx[:, :, None], cdf3, 0.0), axis=2)
            cdf_lo = tl.sum(tl.where(cols3 == (idx - 1)[:, :, None], cdf3, 0.0), axis=2)
            e_lo = near + (idx.to(tl.float32) + 0.5) * step
            e_hi = near + (idx.to(tl.float32) + 1.5) * step
            denom = cdf_hi - cdf_lo
            denom = tl.where(denom < PDF_DENOM_EPS, 1.0, denom)
            t_fine = e_lo + (u[None, :] - cdf_lo) / denom * (e_hi - e_lo)
            rank = j[None, :] + _coarse_count(t_fine, near, step, SC)
            rank = tl.where((j < SF)[None, :], rank, _NO_RANK)
            here = (tiles_f == q)[None, :, None]
            t_fine_row = tl.where(here, t_fine[:, None, :], t_fine_row)
            rank_row = tl.where(here, rank[:, None, :], rank_row)
        t_fine_row = tl.reshape(t_fine_row, (BLOCK_R, SF_PAD))[:, None, :]
        rank_row = tl.reshape(rank_row, (BLOCK_R, SF_PAD))[:, None, :]

    # 3. Merged pass over sorted positions m, S_TILE at a time.
    sig_carry = zeros_r
    t_carry = zeros_r
    optical_carry = zeros_r
    feats_carry = tl.zeros((BLOCK_R, F_PAD), dtype=tl.float32)
    t_first = zeros_r
    t_last = zeros_r
    acc_feats = tl.zeros((BLOCK_R, F_PAD), dtype=tl.float32)
    acc_depth = zeros_r
    acc_weight = zeros_r
    for k in range(0, (SC + SF + S_TILE - 1) // S_TILE):
        m = k * S_TILE + jj
        if SF > 0:
            m3 = m[None, :, None]
            fine_before = tl.sum(tl.where(rank_row < m3, 1, 0), axis=2)  # [BLOCK_R, T]
            is_fine = rank_row == m3
            from_fine = tl.sum(tl.where(is_fine, 1, 0), axis=2) > 0
            t_of_fine = tl.sum(tl.where(is_fine, t_fine_row, 0.0), axis=2)
            coarse = (m[None, :] - fine_before).to(tl.float32)
            t = tl.where(from_fine, t_of_fine, near + (coarse + 0.5) * step)
        else:
            t = near + (m.to(tl.float32) + 0.5) * step + zeros_rt
        sig, feats = _decode(tl.reshape(t, (N,)), ax, ay, az, bx, by, bz, triplane_ptr,
                             batch_off, stride_tk, Pf, stride_ty, stride_tx, c_offs, w1, b1,
                             w2s, b2s, w2f, b2f, A0, A1, A2, A3, A4, A5, True, DOT_PRECISION,
                             "", "fp16")
        sig = tl.reshape(sig, (BLOCK_R, S_TILE))
        feats = tl.reshape(feats, (BLOCK_R, S_TILE, F_PAD))
        sig_prev = _shift_right(sig, sig_carry, jj)
        t_prev = _shift_right(t, t_carry, jj)
        # Interval ending at slot m; none at m = 0 and none past the last sample.
        delta = tl.where(((m >= 1) & (m < SC + SF))[None, :], t - t_prev, 0.0)
        optical = _density(0.5 * (sig + sig_prev) - 1.0) * delta
        inclusive = optical_carry[:, None] + tl.cumsum(optical, axis=1)
        w = _alpha(optical) * tl.exp(-(inclusive - optical))
        acc_weight += tl.sum(w, axis=1)
        acc_depth += tl.sum(w * (0.5 * (t + t_prev)), axis=1)
        # sum_i w_i (f_{i-1} + f_i) / 2 = sum_j f_j (w_j + w_{j+1}) / 2; the previous tile's
        # last sample gets its w_{j+1} here.
        coeff = 0.5 * (w + _shift_left(w, jj))
        acc_feats += (tl.sum(coeff[:, :, None] * feats, axis=1)
                      + (0.5 * _column(w, jj, 0))[:, None] * feats_carry)
        optical_carry = _column(inclusive, jj, S_TILE - 1)
        sig_carry = _column(sig, jj, S_TILE - 1)
        t_carry = _column(t, jj, S_TILE - 1)
        feats_carry = tl.sum(tl.where((jj == S_TILE - 1)[None, :, None], feats, 0.0), axis=1)
        t_first = tl.where(k == 0, _column(t, jj, 0), t_first)
        t_last = _column(t, jj, tl.minimum(S_TILE - 1, SC + SF - 1 - k * S_TILE))

    # Outputs as the serial kernel: features x2 - 1; depth = weighted mean depth, the last
    # sample's depth where the total weight is 0, clamped to [t_first, t_last].
    depth = tl.where(acc_weight > 0,
                     acc_depth / tl.where(acc_weight > 0, acc_weight, 1.0), t_last)
    depth = tl.minimum(tl.maximum(depth, t_first), t_last)
    rays = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    ray_mask = rays < n_rays
    ray64 = tl.where(ray_mask, rays, 0).to(tl.int64)
    fi = tl.arange(0, F_PAD)
    tl.store(features_ptr + ray64[:, None] * F + fi[None, :], acc_feats * 2.0 - 1.0,
             mask=ray_mask[:, None] & (fi < F)[None, :])
    tl.store(depth_ptr + ray64, depth, mask=ray_mask)
    tl.store(opacity_ptr + ray64, acc_weight, mask=ray_mask)


def constexprs(channels: int, hidden: int, features: int, samples_coarse: int,
               samples_fine: int, plane_axes_flat, block_rays: int,
               dot_precision: str = "ieee", sample_tile: int = DEFAULT_SAMPLE_TILE) -> dict:
    """The tiled kernel's constexpr arguments (plane_axes_flat: 6 ints)."""
    block_rays, sample_tile = int(block_rays), int(sample_tile)
    if block_rays < 16 or block_rays & (block_rays - 1):
        raise ValueError(f"the tiled kernel needs block_rays a power of two >= 16, got "
                         f"{block_rays}.")
    if sample_tile < 1 or sample_tile & (sample_tile - 1):
        raise ValueError(f"sample_tile must be a power of two, got {sample_tile}.")
    a = tuple(int(v) for v in plane_axes_flat)
    return {"C": int(channels), "HD": int(hidden), "F": int(features),
            "C_PAD": next_pow2(channels), "H_PAD": next_pow2(hidden),
            "F_PAD": next_pow2(features), "SC": int(samples_coarse), "SF": int(samples_fine),
            "SC_PAD": next_pow2(max(int(samples_coarse), sample_tile)),
            "SF_PAD": next_pow2(max(int(samples_fine), sample_tile)),
            "A0": a[0], "A1": a[1], "A2": a[2], "A3": a[3], "A4": a[4], "A5": a[5],
            "BLOCK_R": block_rays, "S_TILE": sample_tile,
            "DOT_PRECISION": check_dot_precision(dot_precision)}
