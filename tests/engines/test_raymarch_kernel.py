"""The fused ray-march kernel (engines.raymarch) against its specification,
export3d.renderer.raymarch_reference: on CPU through Triton's interpreter, on CUDA when a GPU
is present. Random tri-planes and decoders in realistic ranges, rays from real cameras, the
tiny preset's sizes and an odd size (R not a multiple of the ray block), edge cases, fp16 and
bf16 tri-planes, both plane layouts, the torch op, its fake implementation, determinism.

TRITON_INTERPRET must be set before triton is first imported (triton.language's own jit'd
helpers are decorated then), and an interpreted kernel must not leak into other test modules.
So the interpreted tests run in a child pytest process started with TRITON_INTERPRET=1
(test_interpreted_suite, which reports the child's output on failure); in the parent process
they are skipped, and the CUDA test runs there, compiled.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from export3d.camera import orbit_path, rays
from export3d.renderer import (PLANE_AXES, PLANE_AXES_EG3D, Decoder, RayMarchSettings,
                               raymarch_reference)

pytest.importorskip("triton")

# (atol, rtol) by tri-plane dtype. All arithmetic is fp32 in both implementations and fp16 /
# bf16 values convert to fp32 exactly, so the tolerances are the same: they cover summation
# order (cumsum, the 4-tap blend, the MLP's dot) and a different log1p formula. The
# reference's own float rounding of depth (~2.7) is 2.4e-7.
TOLERANCE = {
    torch.float32: (2e-5, 1e-4),
    torch.float16: (2e-5, 1e-4),
    torch.bfloat16: (2e-5, 1e-4),
}
# On a GPU, FMA contraction and the hardware exp/log add rounding of their own.
GPU_TOLERANCE = (2e-4, 1e-3)
# fp16 MLP operands (dot_precision="fp16"): 11-bit significands, as TF32's; the GPU suite's
# kernel tolerance (benchmarks.gpu_suite.KERNEL_TOLERANCE, features and opacity).
FP16_DOT_TOLERANCE = (2e-3, 0.0)
# The kernel's variants (engines.raymarch.op.VARIANTS): every correctness test runs on each.
VARIANTS = ["serial", "tiled"]


CHILD_FLAG = "EXPORT3D_INTERPRETED_CHILD"
IN_CHILD = os.environ.get(CHILD_FLAG) == "1" and os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not IN_CHILD, reason="runs in the interpreted child process "
                                 "(test_interpreted_suite)")


@pytest.mark.skipif(IN_CHILD, reason="this is the child")
def test_interpreted_suite():
    """Run this module's interpreted tests in a child process with TRITON_INTERPRET=1."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", CHILD_FLAG: "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root),
                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q",
                           "-p", "no:cacheprovider", "--durations=5"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-4000:]
    assert " passed" in proc.stdout


def make_inputs(b=2, channels=8, hidden=16, plane=32, res=16, dtype=torch.float32, seed=0,
                density_bias=0.0, device="cpu"):
    """Tri-plane ~ N(0, 0.5^2), decoder with nn.Linear's init range, rays of an orbit."""
    g = torch.Generator().manual_seed(seed)
    triplane = (torch.randn(b, 3, channels, plane, plane, generator=g) * 0.5).to(dtype)

    def uniform(*shape, fan_in):
        return (torch.rand(*shape, generator=g) * 2 - 1) / fan_in ** 0.5

    w1 = uniform(channels, hidden, fan_in=channels)
    b1 = uniform(hidden, fan_in=channels)
    w2 = uniform(hidden, 1 + channels, fan_in=hidden) * 4
    b2 = uniform(1 + channels, fan_in=hidden)
    b2[0] += density_bias
    origins, directions = rays(orbit_path("circle", max(b, 2))[:b].float(), res)
    tensors = [triplane, w1, b1, w2, b2, origins, directions]
    return [t.to(device) for t in tensors]


def settings_for(samples_coarse=8, samples_fine=8, plane_axes=PLANE_AXES, box_warp=1.0):
    return RayMarchSettings(near=2.25, far=3.3, samples_coarse=samples_coarse,
                            samples_fine=samples_fine, box_warp=box_warp,
                            eg3d_plane_axes=plane_axes == PLANE_AXES_EG3D)


def run_kernel(inputs, settings, variant="serial", **launch_kw):
    """The default ("serial") kernel through the registered op; other variants, or explicit
    launch options, through op.launch."""
    from engines.raymarch import op

    triplane, w1, b1, w2, b2, origins, directions = inputs
    if launch_kw or variant != "serial":
        launch_kw["variant"] = variant
        return op.launch(triplane, w1, b1, w2, b2, origins, directions, settings.near,
                         settings.far, settings.samples_coarse, settings.samples_fine,
                         settings.box_warp, settings.plane_axes, **launch_kw)
    import engines.raymarch as kernel

    return kernel.raymarch(triplane, w1, b1, w2, b2, origins, directions, near=settings.near,
                           far=settings.far, samples_coarse=settings.samples_coarse,
                           samples_fine=settings.samples_fine, box_warp=settings.box_warp,
                           plane_axes=settings.plane_axes)


def run_reference(inputs, settings, **options):
    triplane, w1, b1, w2, b2, origins, directions = inputs
    return raymarch_reference(triplane, Decoder(w1, b1, w2, b2), origins, directions, settings,
                              **options)


def assert_matches(actual, expected, tol):
    atol, rtol = tol
    for name, a, e in zip(("features", "depth", "opacity"), actual, expected):
        assert a.shape == e.shape and a.dtype == torch.float32, name
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("plane_axes", [PLANE_AXES, PLANE_AXES_EG3D], ids=["xyz", "eg3d"])
def test_tiny_preset_matches_reference(dtype, plane_axes, variant):
    inputs = make_inputs(dtype=dtype)
    settings = settings_for(plane_axes=plane_axes)
    expected = run_reference(inputs, settings)
    # The random scene must be neither empty nor opaque, or the test proves little.
    assert 0.05 < expected[2].mean() < 0.95
    assert_matches(run_kernel(inputs, settings, variant), expected, TOLERANCE[dtype])


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
def test_odd_size_several_programs_matches_reference(variant):
    # C=16, Hd=32, Sc=Sf=12, R=49: 4 programs of 16 rays, the last one masked.
    inputs = make_inputs(b=1, channels=16, hidden=32, plane=24, res=7, seed=3)
    settings = settings_for(samples_coarse=12, samples_fine=12, box_warp=0.9)
    expected = run_reference(inputs, settings)
    assert_matches(run_kernel(inputs, settings, variant, block_rays=16), expected,
                   TOLERANCE[torch.float32])
    assert_matches(run_kernel(inputs, settings, variant), expected, TOLERANCE[torch.float32])


@interpreted
def test_tiled_sample_counts_across_tiles():
    # Sc = 20, Sf = 13 with 16-sample tiles: a partial coarse tile, a partial fine chunk and
    # a merged pass of 3 tiles, the last one mostly empty; and 8-sample tiles (5 merged).
    inputs = make_inputs(b=2, res=5, seed=11)
    settings = settings_for(samples_coarse=20, samples_fine=13)
    expected = run_reference(inputs, settings)
    for tile in (16, 8):
        assert_matches(run_kernel(inputs, settings, "tiled", block_rays=16, sample_tile=tile),
                       expected, TOLERANCE[torch.float32])


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_one_and_unequal_sample_counts(variant):
    inputs = make_inputs(b=1, res=8, seed=5)
    settings = settings_for(samples_coarse=10, samples_fine=6)
    assert_matches(run_kernel(inputs, settings, variant), run_reference(inputs, settings),
                   TOLERANCE[torch.float32])


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
def test_coarse_only(variant):
    inputs = make_inputs(b=2, res=8, seed=6)
    settings = settings_for(samples_coarse=9, samples_fine=0)
    assert_matches(run_kernel(inputs, settings, variant), run_reference(inputs, settings),
                   TOLERANCE[torch.float32])


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_space(variant):
    inputs = make_inputs(b=1, res=8, density_bias=-1e4)
    settings = settings_for()
    features, depth, opacity = run_kernel(inputs, settings, variant)
    expected = run_reference(inputs, settings)
    assert_matches((features, depth, opacity), expected, TOLERANCE[torch.float32])
    assert torch.all(opacity == 0) and torch.all(features == -1)
    # Zero total weight: depth is the last merged sample's depth.
    assert torch.all(depth > 3.2) and torch.all(depth <= 3.3)


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bias", [-9.0, -12.0, -18.0])
def test_nearly_transparent_volume(variant, bias):
    # Opacity 5e-5 .. 6e-9 (a background pixel): depth is a weighted mean of alphas around
    # 1e-6 .. 1e-10, where fp32's 1 - exp(-x) and log(1 + e^x) cancel. With 1 - exp(-x) and
    # the hidden units' softplus the kernel's depth was 4.4e-2 off the reference at -12.
    inputs = make_inputs(b=1, channels=8, hidden=16, plane=16, res=6, seed=1,
                         density_bias=bias)
    settings = settings_for(12, 12)
    got = run_kernel(inputs, settings, variant)
    expected = run_reference(inputs, settings)
    assert_matches(got, expected, TOLERANCE[torch.float32])
    assert torch.all(got[2] > 0) and float(expected[2].max()) < 1e-4


def test_reference_compositing_of_a_nearly_transparent_volume_is_fp64s():
    # The specification itself: its compositing in fp32 against the same formulas in fp64,
    # where nothing cancels, on raw densities that leave opacity 1e-5 .. 1e-9.
    from export3d.renderer import composite

    g = torch.Generator().manual_seed(3)
    depths = torch.sort(2.25 + 1.05 * torch.rand(1, 64, 24, generator=g, dtype=torch.float64),
                        dim=-1).values
    feats = torch.rand(1, 64, 24, 4, generator=g, dtype=torch.float64)
    for bias in (-9.0, -12.0, -18.0):
        sigma = bias + torch.randn(1, 64, 24, generator=g, dtype=torch.float64)
        _, depth, opacity, _ = composite(depths.float(), sigma.float(), feats.float())
        _, depth64, opacity64, _ = composite(depths, sigma, feats)
        assert float(opacity64.max()) < 1e-4
        torch.testing.assert_close(depth.double(), depth64, atol=2e-5, rtol=0)
        torch.testing.assert_close(opacity.double(), opacity64, atol=0, rtol=1e-5)


def test_alpha_is_relative_accurate_from_tiny_to_opaque():
    from export3d.renderer import alpha_of

    x = torch.logspace(-12, 1.5, 2000, dtype=torch.float64)
    exact = -torch.expm1(-x)
    got = alpha_of(x.float()).double()
    assert float(((got - exact).abs() / exact).max()) < 1e-6
    naive = (1.0 - torch.exp(-x.float())).double()  # what it replaced: 100% off at 1e-8
    assert float(((naive - exact).abs() / exact).max()) > 0.5


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
def test_dense_slab(variant):
    inputs = make_inputs(b=1, res=8, density_bias=1e3)
    settings = settings_for()
    features, depth, opacity = run_kernel(inputs, settings, variant)
    assert_matches((features, depth, opacity), run_reference(inputs, settings),
                   TOLERANCE[torch.float32])
    torch.testing.assert_close(opacity, torch.ones_like(opacity))
    assert torch.all(depth < 2.4)


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
def test_rays_that_miss_the_box(variant):
    inputs = make_inputs(b=2, res=4)
    origins = inputs[5].clone()
    origins[0, :8] = torch.tensor([50.0, -40.0, 1e6])  # all taps outside every plane
    origins[1, 3] = torch.tensor([1e30, 1e30, -1e30])  # would overflow a float->int cast
    inputs[5] = origins
    settings = settings_for()
    actual = run_kernel(inputs, settings, variant)
    assert_matches(actual, run_reference(inputs, settings), TOLERANCE[torch.float32])
    assert torch.isfinite(actual[0]).all() and torch.isfinite(actual[1]).all()


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
def test_any_triplane_strides_and_non_contiguous_weights(variant):
    triplane, w1, b1, w2, b2, origins, directions = make_inputs(b=1, res=6, seed=7)
    w1_view = w1.t().contiguous().t()  # as OSGDecoder.weights(): fc1.weight.t()
    w2_view = w2.t().contiguous().t()
    inputs = [triplane, w1_view, b1, w2_view, b2, origins, directions]
    settings = settings_for()
    channels_last = run_kernel(inputs, settings, variant, channels_last=True)
    planar = run_kernel(inputs, settings, variant, channels_last=False)
    for a, b in zip(channels_last, planar):
        assert torch.equal(a, b)  # the same values in the same order: bit-identical
    assert_matches(channels_last, run_reference(inputs, settings), TOLERANCE[torch.float32])


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_channels_and_hidden_units(variant):
    # C = 12, Hd = 24 pad to 16 and 32: padded channels read (repeated) real values that must
    # meet zero rows of w1; padded hidden units meet zero rows of w2.
    inputs = make_inputs(b=1, channels=12, hidden=24, res=6, seed=12)
    settings = settings_for()
    expected = run_reference(inputs, settings)
    assert_matches(run_kernel(inputs, settings, variant), expected, TOLERANCE[torch.float32])
    assert_matches(run_kernel(inputs, settings, variant, channels_last=False), expected,
                   TOLERANCE[torch.float32])


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
def test_tf32x3_products_are_the_fp32_products(variant):
    # dot_precision="tf32x3" (the op's default for fp32 tri-planes on sm_80+) is written out
    # in the kernel: each operand split into its TF32 head and tail, three products. The
    # interpreter's dot is exact fp32, so this checks the split and the three terms (one
    # dropped or doubled moves the output by ~1e-3 of it); what a tensor core reads of them:
    # test_tf32x3_split_is_fp32_accurate_on_tensor_cores.
    inputs = make_inputs(seed=17)
    settings = settings_for()
    got = run_kernel(inputs, settings, variant, dot_precision="tf32x3")
    assert_matches(got, run_reference(inputs, settings), TOLERANCE[torch.float32])
    full = run_kernel(inputs, settings, variant, dot_precision="ieee")
    assert max((a - b).abs().max().item() for a, b in zip(got, full)) < 2e-6
    # tl.dot's own TF32x3, which the GPU suite's sweep times against it
    own = run_kernel(inputs, settings, variant, dot_precision="tl-tf32x3")
    assert_matches(own, got, TOLERANCE[torch.float32])


def test_tf32x3_split_is_fp32_accurate_on_tensor_cores():
    # The kernel's "tf32x3" products as a tensor core computes them: it reads only the head
    # (kernel.TF32_HEAD_MASK) of each fp32 operand, multiplies exactly and accumulates in fp32.
    # At the decoder's sizes and ranges (tap sums into 32 -> 64, softplus hidden units into
    # 64 -> 33), the three products of heads and tails land as close to the float64 truth as
    # fp32 products do (within 2x of fp32's worst error), and one TF32 product 100x farther.
    from engines.raymarch.kernel import TF32_HEAD_MASK

    mask = torch.tensor(TF32_HEAD_MASK.value - (1 << 32), dtype=torch.int32)  # as int32 bits

    def head(x):
        return (x.view(torch.int32) & mask).view(torch.float32)

    def tensor_core(a, b):  # the products of the heads are exact in fp32 (11 x 11 bits)
        return head(a) @ head(b)

    g = torch.Generator().manual_seed(3)
    for k, n, a in ((32, 64, torch.randn(4096, 32, generator=g) * 1.5),
                    (64, 33, torch.nn.functional.softplus(torch.randn(4096, 64, generator=g)))):
        b = (torch.rand(k, n, generator=g) * 2 - 1) / k ** 0.5
        truth = a.double() @ b.double()
        a_hi, b_hi = head(a), head(b)
        a_lo, b_lo = a - a_hi, b - b_hi
        assert torch.equal(a_hi + a_lo, a) and torch.equal(b_hi + b_lo, b)  # the split is exact
        three = tensor_core(a_lo, b_hi) + tensor_core(a_hi, b_lo) + tensor_core(a_hi, b_hi)
        error = (three.double() - truth).abs().max().item()
        fp32 = ((a @ b).double() - truth).abs().max().item()
        tf32 = (tensor_core(a, b).double() - truth).abs().max().item()
        assert error <= 2 * fp32, (k, error, fp32)
        assert tf32 >= 100 * error, (k, tf32, error)


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fp16_tensor_core_products(variant, dtype):
    # dot_precision="fp16": MLP operands rounded to fp16, fp32 accumulation. Within the GPU
    # suite's kernel tolerance of the fp32 reference, and measurably not the fp32 products
    # (else the switch would be doing nothing).
    inputs = make_inputs(dtype=dtype, seed=13)
    settings = settings_for()
    expected = run_reference(inputs, settings)
    half = run_kernel(inputs, settings, variant, dot_precision="fp16")
    full = run_kernel(inputs, settings, variant, dot_precision="ieee")
    assert_matches(half, expected, FP16_DOT_TOLERANCE)
    assert (half[0] - full[0]).abs().max() > 1e-6


@interpreted
def test_fp16_products_sum_half_precision_taps_in_fp16():
    # With fp16 products an fp16 tri-plane's taps are summed in fp16 (the products' operand
    # is fp16 anyway), and the op hands a bf16 tri-plane over in fp16 for it. At paper512's
    # channel, hidden and sample counts: within the fp16-products tolerance of the reference
    # and no more than 2x (+1e-6) the error of the same values summed in fp32 (measured here:
    # 1.9e-5 on features either way, depth 6.9e-6 against 4.8e-6), not the fp32 sum itself
    # (else the switch would do nothing), and for bf16 the bits of the fp16 copy given
    # directly.
    settings = settings_for(samples_coarse=48, samples_fine=48)
    for dtype in (torch.float16, torch.bfloat16):
        inputs = make_inputs(b=1, channels=32, hidden=64, plane=32, res=6, dtype=dtype, seed=17)
        got = run_kernel(inputs, settings, dot_precision="fp16")
        expected = run_reference(inputs, settings)
        assert_matches(got, expected, FP16_DOT_TOLERANCE)
        as_fp32 = [inputs[0].float(), *inputs[1:]]
        fp32_sum = run_kernel(as_fp32, settings, dot_precision="fp16")
        for half, full, ref in zip(got, fp32_sum, expected):
            assert (half - ref).abs().max() <= 2 * (full - ref).abs().max() + 1e-6
        assert 0 < (got[0] - fp32_sum[0]).abs().max() < FP16_DOT_TOLERANCE[0]
        if dtype == torch.bfloat16:
            as_fp16 = [inputs[0].to(torch.float16), *inputs[1:]]
            for a, b in zip(got, run_kernel(as_fp16, settings, dot_precision="fp16")):
                assert torch.equal(a, b)


@interpreted
def test_fp16_products_match_their_reference_counterpart_at_the_fp32_tolerance():
    # ARCHITECTURE.md: a deliberate deviation of the kernel is a named option with a
    # reference counterpart. raymarch_reference(dot_precision="fp16", tap_sum=...) rounds
    # what the kernel rounds, so the kernel's half-precision path meets it at the fp32
    # kernel's tolerance, and at least 10x closer on features than the fp32 reference it
    # meets only at FP16_DOT_TOLERANCE (measured here at paper512's counts: 3-5e-7 against
    # 1.8e-5; depth ~1.7e-6, a few ulps at 2.7, either way).
    settings = settings_for(samples_coarse=48, samples_fine=48)
    for dtype, tap_sum in ((torch.float32, "fp16"), (torch.float16, "fp16"),
                           (torch.float16, "fp32"), (torch.bfloat16, "fp16"),
                           (torch.bfloat16, "fp32")):
        inputs = make_inputs(b=1, channels=32, hidden=64, plane=32, res=6, dtype=dtype, seed=17)
        got = run_kernel(inputs, settings, dot_precision="fp16", tap_sum=tap_sum)
        twin = run_reference(inputs, settings, dot_precision="fp16", tap_sum=tap_sum)
        fp32 = run_reference(inputs, settings)
        assert_matches(got, twin, TOLERANCE[torch.float32])
        assert_matches(got, fp32, FP16_DOT_TOLERANCE)
        assert 10 * (got[0] - twin[0]).abs().max() < (got[0] - fp32[0]).abs().max(), \
            (dtype, tap_sum)


@interpreted
def test_default_launch_reaches_the_registered_op():
    # The renderer calls the op without launch options; default_launch() supplies them (how
    # the GPU suite runs the whole model with the sweep's fastest launch).
    from engines.raymarch import op

    inputs = make_inputs(seed=14)
    settings = settings_for()
    plain = run_kernel(inputs, settings)  # through the op: "ieee" on CPU
    with op.default_launch(dot_precision="fp16", block_rays=128):
        half = run_kernel(inputs, settings)
        explicit = run_kernel(inputs, settings, dot_precision="ieee")  # a named option wins
    assert (half[0] - plain[0]).abs().max() > 1e-6
    assert_matches(half, run_reference(inputs, settings), FP16_DOT_TOLERANCE)
    assert torch.equal(explicit[0], run_kernel(inputs, settings, block_rays=128)[0])
    assert torch.equal(run_kernel(inputs, settings)[0], plain[0])  # restored on exit
    with pytest.raises(ValueError, match="unknown launch option"):
        with op.default_launch(blocks=3):
            pass


@interpreted
def test_prefetch_levels_leave_every_output_bit_identical():
    # prefetch 2 runs the merged pass's walk one step ahead of the decodes; prefetching itself
    # is a cache hint (compiled only), so every level must give the same bits. Several
    # programs with a masked tail, so the walk's extra step past the last sample is exercised.
    inputs = make_inputs(b=1, channels=16, hidden=32, plane=24, res=7, seed=3)
    settings = settings_for(samples_coarse=12, samples_fine=12)
    base = run_kernel(inputs, settings, block_rays=16)
    for level in (1, 2):
        got = run_kernel(inputs, settings, block_rays=16, prefetch=level)
        for a, b in zip(got, base):
            assert torch.equal(a, b), level
    assert_matches(base, run_reference(inputs, settings), TOLERANCE[torch.float32])
    with pytest.raises(ValueError, match="serial kernel variant only"):
        run_kernel(inputs, settings, "tiled", prefetch=1)
    with pytest.raises(ValueError, match="prefetch must be one of"):
        run_kernel(inputs, settings, prefetch=3)


@interpreted
def test_two_samples_a_step_leave_every_output_bit_identical():
    # samples_per_step=2 (the default with the workspace) decodes two merged samples a step;
    # an odd count repeats the last depth, which must add exactly nothing. Every output bit
    # as with one sample a step, on an even and an odd count, with and without prefetching
    # (which then reads the depth two ahead), over several programs with a masked tail.
    inputs = make_inputs(b=1, channels=16, hidden=32, plane=24, res=7, seed=5)
    for samples in ((12, 12), (12, 11), (9, 0)):
        settings = settings_for(samples_coarse=samples[0], samples_fine=samples[1])
        one = run_kernel(inputs, settings, block_rays=16, samples_per_step=1)
        assert_matches(one, run_reference(inputs, settings), TOLERANCE[torch.float32])
        if samples[1] == 0:  # coarse only: no workspace, so one sample a step
            with pytest.raises(ValueError, match="samples_per_step 2 reads"):
                run_kernel(inputs, settings, block_rays=16, samples_per_step=2)
            continue
        for kw in (dict(), dict(samples_per_step=2), dict(samples_per_step=2, prefetch=2)):
            two = run_kernel(inputs, settings, block_rays=16, **kw)
            for a, b in zip(two, one):
                assert torch.equal(a, b), (samples, kw)
    with pytest.raises(ValueError, match="samples_per_step 2 reads"):
        run_kernel(inputs, settings, samples_per_step=2, cdf_in_memory=False)
    with pytest.raises(ValueError, match="samples_per_step must be one of"):
        run_kernel(inputs, settings_for(), samples_per_step=3)


@interpreted
def test_cdf_in_memory_and_in_registers_give_the_same_bits():
    # The op keeps each ray's CDF in a workspace (one row per ray of every program); the
    # TensorRT plugin's build keeps it in registers. Same values, same sums, one column read
    # per step either way: every output bit must agree. 3 programs with a masked tail (the
    # tail's rows are the workspace's own, not ray 0's), and a tie-heavy empty volume where
    # the walk's ties to coarse samples decide the fine depths.
    inputs = make_inputs(b=2, channels=16, hidden=32, plane=24, res=5, seed=11)
    settings = settings_for(samples_coarse=12, samples_fine=10)
    memory = run_kernel(inputs, settings, block_rays=16)
    registers = run_kernel(inputs, settings, block_rays=16, cdf_in_memory=False)
    for a, b in zip(memory, registers):
        assert torch.equal(a, b)
    assert_matches(memory, run_reference(inputs, settings), TOLERANCE[torch.float32])
    empty = make_inputs(b=2, channels=16, hidden=32, plane=24, res=5, seed=11,
                        density_bias=-1e4)
    for a, b in zip(run_kernel(empty, settings, block_rays=16),
                    run_kernel(empty, settings, block_rays=16, cdf_in_memory=False)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="serial kernel variant only"):
        run_kernel(inputs, settings, "tiled", cdf_in_memory=False)


@interpreted
def test_fp32_tap_sums_are_an_fp32_triplanes():
    # tap_sum="fp32" sums an fp16 tri-plane's taps in fp32 under fp16 products: every output
    # bit as an fp32 tri-plane holding the same values (whose taps are summed in fp32 anyway),
    # and not the default's packed fp16 sums.
    inputs = make_inputs(b=1, channels=16, hidden=32, plane=24, res=7, seed=17,
                         dtype=torch.float16)
    settings = settings_for(samples_coarse=12, samples_fine=10)
    wide = [inputs[0].float(), *inputs[1:]]
    fp32_sums = run_kernel(inputs, settings, block_rays=16, dot_precision="fp16",
                           tap_sum="fp32")
    for a, b in zip(fp32_sums, run_kernel(wide, settings, block_rays=16, dot_precision="fp16")):
        assert torch.equal(a, b)
    fp16_sums = run_kernel(inputs, settings, block_rays=16, dot_precision="fp16")
    assert not torch.equal(fp16_sums[0], fp32_sums[0])
    assert_matches(fp32_sums, run_reference(inputs, settings), FP16_DOT_TOLERANCE)
    with pytest.raises(ValueError, match="tap_sum must be one of"):
        run_kernel(inputs, settings, tap_sum="fp64")
    with pytest.raises(ValueError, match="serial kernel variant only"):
        run_kernel(inputs, settings, "tiled", tap_sum="fp32")


def demo_face_inputs(dtype):
    """The shipped demo64 model's tri-plane and decoder for the demo's source photo (aligned
    crop, neutral expression), the model run in ``dtype``, as run_kernel's inputs: rays of an
    orbit camera at the model's own render size, and its settings."""
    from export3d import demo
    from export3d.checkpoint import load_checkpoint
    from export3d.media import load_image, to_model_input
    from export3d.render import source_crop

    model = load_checkpoint(demo.checkpoint(), render_impl="reference").to(dtype)
    cfg = model.config
    image = to_model_input(source_crop(load_image(demo.source_photo()), cfg.image_size, "source"))
    with torch.no_grad():
        triplane = model.generate(model.encode_source(image.to(dtype)),
                                  torch.zeros(1, cfg.expr_dim, dtype=dtype))
    dec = model.renderer.decoder.weights()
    origins, directions = rays(orbit_path("circle", 7)[1:2].float(), cfg.render_size)
    settings = RayMarchSettings(cfg.ray_near, cfg.ray_far, cfg.samples_coarse, cfg.samples_fine,
                                cfg.box_warp, cfg.eg3d_plane_axes)
    return [triplane, dec.w1, dec.b1, dec.w2, dec.b2, origins, directions], settings


@interpreted
def test_half_precision_on_the_trained_demo_face_is_a_small_part_of_the_models_own_error():
    # A trained model's face, not random numbers: demo64 (assets/) in bf16, as the model runs
    # in half precision, rendered by the kernel as sm_80+ runs a half-precision tri-plane
    # (fp16 products, its taps summed in packed fp16: op.dot_precision_for, kernel.TAP_SUMS).
    # Within the fp16-products tolerance of the reference on the same inputs, and under a fifth
    # of what running the model in bf16 moves each output from the fp32 model's (measured here:
    # 18-33x under it; features 5.7e-4 against 1.0e-2, depth 2.0e-4 against 5.0e-3, opacity
    # 1.5e-4 against 5.0e-3; at 32 x 32 rays and paper512's 48 + 48 samples, 25-45x).
    half, settings = demo_face_inputs(torch.bfloat16)
    full, _ = demo_face_inputs(torch.float32)
    got = run_kernel(half, settings, dot_precision="fp16")
    expected = run_reference(half, settings)
    assert_matches(got, expected, FP16_DOT_TOLERANCE)
    fp32_model = run_reference(full, settings)
    for name, a, e, f in zip(("features", "depth", "opacity"), got, expected, fp32_model):
        kernel_error = (a - e).abs().max().item()
        model_error = (e - f).abs().max().item()
        assert 0 < kernel_error < 0.2 * model_error, (name, kernel_error, model_error)
    assert 0.2 < expected[2].mean() < 0.8  # a face: neither empty space nor a solid block


def ablated_decode(features, decoder):
    """export3d.renderer.decode as the kernel's "mlp" ablation defines it: the raw density is
    the mean of the planes' mean over the channels, every feature that density."""
    sigma = features.mean(-1)
    return sigma, sigma.unsqueeze(-1).expand(*sigma.shape, decoder.w2.shape[1] - 1)


@interpreted
@pytest.mark.parametrize("ablate", ["gathers", "mlp", "gathers+mlp"])
def test_ablations_leave_out_what_they_say(ablate, monkeypatch):
    # The timing diagnostics the GPU suite's sweep runs beside the kernel (kernel.ABLATIONS).
    # "gathers" reads every tap from the tri-plane's first texel (plane 0, batch 0, y = x = 0)
    # with the tap's true weight: that is the reference on a tri-plane holding that texel's
    # channels everywhere (the rest is random and must not be read). "mlp" replaces the
    # decoder by the taps' mean: the reference with its decode swapped for that. 16 channels,
    # so that no channel is padded; several programs with a masked tail.
    from export3d import renderer

    inputs = make_inputs(b=1, channels=16, hidden=32, plane=24, res=7, seed=13)
    settings = settings_for(samples_coarse=12, samples_fine=10)
    expected_inputs = list(inputs)
    if "gathers" in ablate:
        triplane = inputs[0].clone()
        corner = torch.linspace(-0.8, 0.9, 16)
        triplane[0, 0, :, 0, 0] = corner
        inputs = [triplane, *inputs[1:]]
        expected_inputs[0] = corner[None, None, :, None, None].expand_as(triplane).contiguous()
    got = run_kernel(inputs, settings, block_rays=16, ablate=ablate)
    if "mlp" in ablate:
        monkeypatch.setattr(renderer, "decode", ablated_decode)
    expected = run_reference(expected_inputs, settings)
    assert_matches(got, expected, TOLERANCE[torch.float32])
    # ... and it is not the kernel: the diagnostic left something out.
    assert (got[0] - run_kernel(inputs, settings, block_rays=16)[0]).abs().max() > 0.05


@interpreted
def test_ablations_are_options_of_the_serial_kernel_only():
    inputs = make_inputs(b=1, channels=16, hidden=32, plane=24, res=4, seed=1)
    with pytest.raises(ValueError, match="serial kernel variant only"):
        run_kernel(inputs, settings_for(), "tiled", ablate="mlp")
    with pytest.raises(ValueError, match="ablate must be one of"):
        run_kernel(inputs, settings_for(), ablate="decoder")


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
def test_deterministic(variant):
    inputs = make_inputs(b=1, res=8, seed=8)
    settings = settings_for()
    first = run_kernel(inputs, settings, variant)
    second = run_kernel(inputs, settings, variant)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.skipif(IN_CHILD, reason="runs in the parent: no kernel call")
def test_default_products_follow_the_devices_and_pytorchs_fp32_matmul_setting():
    from engines.raymarch.op import default_dot_precision, dot_precision_for
    from engines.trt import kernel_abi

    for major, half, highest, tf32 in ((7, "ieee", "ieee", "ieee"), (8, "fp16", "tf32x3", "tf32"),
                                       (9, "fp16", "tf32x3", "tf32")):
        assert dot_precision_for(major, torch.float16) == half
        assert dot_precision_for(major, torch.bfloat16, "high") == half
        assert dot_precision_for(major, torch.float32) == highest
        assert dot_precision_for(major, torch.float32, "highest") == highest
        assert dot_precision_for(major, torch.float32, "high") == tf32
        assert dot_precision_for(major, torch.float32, "medium") == tf32
        # A TensorRT engine's kernel cannot see PyTorch's setting: PyTorch's default.
        for dtype, name in ((torch.float32, "float32"), (torch.float16, "float16")):
            assert kernel_abi.dot_precision(10 * major, name) == dot_precision_for(major, dtype)
    # PyTorch's switch, as users flip it: allow_tf32 is the "high" precision.
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    assert default_dot_precision(torch.device("cpu"), torch.float32) == "ieee"


@interpreted
def test_fake_implementation_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    import engines.raymarch as kernel

    real = make_inputs(b=2, channels=8, hidden=16, plane=4, res=3)
    with FakeTensorMode() as mode:
        inputs = [mode.from_tensor(t) for t in real]
        features, depth, opacity = kernel.raymarch(
            *inputs, near=2.25, far=3.3, samples_coarse=48, samples_fine=48, box_warp=1.0,
            plane_axes=PLANE_AXES)
    assert features.shape == (2, 9, 8) and depth.shape == (2, 9) and opacity.shape == (2, 9)
    assert features.dtype == depth.dtype == opacity.dtype == torch.float32


@interpreted
def test_opcheck():
    from engines.raymarch import op

    inputs = make_inputs(b=1, res=3, plane=8)
    args = (*inputs, 2.25, 3.3, 4, 4, 1.0, [0, 1, 0, 2, 1, 2])
    torch.library.opcheck(op.raymarch_op, args,
                          test_utils=("test_schema", "test_faketensor"))


@interpreted
def test_invalid_inputs_raise_one_sentence_errors():
    import engines.raymarch as kernel

    triplane, w1, b1, w2, b2, origins, directions = make_inputs(b=1, res=2, plane=4)
    kw = dict(near=2.25, far=3.3, samples_coarse=4, samples_fine=4, box_warp=1.0,
              plane_axes=PLANE_AXES)
    with pytest.raises(ValueError, match="w1 must be"):
        kernel.raymarch(triplane, w1[:-1], b1, w2, b2, origins, directions, **kw)
    with pytest.raises(ValueError, match="origins must be float32"):
        kernel.raymarch(triplane, w1, b1, w2, b2, origins.double(), directions, **kw)
    with pytest.raises(ValueError, match="plane_axes"):
        kernel.raymarch(triplane, w1, b1, w2, b2, origins, directions,
                        **{**kw, "plane_axes": ((0, 1), (1, 2), (0, 2))})
    with pytest.raises(ValueError, match="samples_coarse"):
        kernel.raymarch(triplane, w1, b1, w2, b2, origins, directions,
                        **{**kw, "samples_coarse": 1})
    with pytest.raises(ValueError, match="at least 2 x 2"):
        kernel.raymarch(triplane[..., :1, :1].contiguous(), w1, b1, w2, b2, origins,
                        directions, **kw)
    # 32-bit offsets cover the whole tri-plane, every batch: 2 x 3 x 8 x 8192^2 > 2^31
    # elements although one batch (1.6e9) is below (meta tensors: nothing is allocated).
    from engines.raymarch import op

    big = torch.empty((2, 3, 8, 8192, 8192), device="meta")
    meta = [t.to("meta") for t in (w1, b1, w2, b2)]
    rays_2 = [t.to("meta").expand(2, -1, -1) for t in (origins, directions)]
    with pytest.raises(ValueError, match="32-bit"):
        op.validate(big, *meta, *rays_2, kw["near"], kw["far"], 4, 4, 1.0, PLANE_AXES)
    rays_1 = [t.to("meta") for t in (origins, directions)]
    op.validate(big[:1], *meta, *rays_1, kw["near"], kw["far"], 4, 4, 1.0, PLANE_AXES)
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        with pytest.raises(ValueError, match="runs on CUDA tensors"):
            kernel.raymarch(triplane, w1, b1, w2, b2, origins, directions, **kw)
    finally:
        os.environ["TRITON_INTERPRET"] = "1"


@interpreted
def test_renderer_dispatch_reaches_the_kernel():
    # export3d.renderer.raymarch(impl="kernel") goes through engines.raymarch.
    from export3d.renderer import raymarch

    inputs = make_inputs(b=1, res=4)
    settings = settings_for()
    decoder = Decoder(*inputs[1:5])
    with torch.no_grad():
        actual = raymarch(inputs[0], decoder, inputs[5], inputs[6], settings, impl="kernel")
    assert_matches(actual, run_reference(inputs, settings), TOLERANCE[torch.float32])


def test_kernel_with_gradients_is_refused_at_the_call_not_at_backward():
    # The op has no backward formula: a training caller asking for impl="kernel" used to
    # render, then fail inside backward(). Runs without a GPU: refused before any launch.
    from export3d.renderer import raymarch

    inputs = make_inputs(b=1, res=4)
    decoder = Decoder(*inputs[1:5])
    triplane = inputs[0].clone().requires_grad_()
    with pytest.raises(ValueError, match="inference only.*torch.no_grad"):
        raymarch(triplane, decoder, inputs[5], inputs[6], settings_for(), impl="kernel")


def test_render_impl_kernel_without_a_gpu_is_one_sentence_before_the_work(capsys, tmp_path,
                                                                          monkeypatch):
    from export3d.cli import main

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "x.mp4"
    assert main(["render", "--preset", "tiny", "--impl", "kernel", "--device", "cpu",
                 "--frames", "2", "--out", str(out), "--quiet"]) == 2
    assert ("--impl kernel runs the fused kernel on a CUDA GPU, not on cpu; use --device cuda"
            in capsys.readouterr().err)
    # without --device (auto, no GPU here) it does not send the user to --device cuda
    assert main(["render", "--preset", "tiny", "--impl", "kernel", "--frames", "2",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "PyTorch sees none here (--device auto chose the CPU)" in err
    assert "--device cuda" not in err
    assert not out.exists()


def test_kernel_constants_are_the_renderers():
    # engines may not import export3d, so the kernel keeps its own copies of the reference's
    # numerical constants; a change on one side must show here.
    from engines.raymarch import kernel
    from export3d import renderer

    assert kernel.FEATURE_CLAMP.value == renderer.FEATURE_CLAMP
    assert kernel.PDF_WEIGHT_FLOOR.value == renderer.PDF_WEIGHT_FLOOR
    assert kernel.PDF_DENOM_EPS.value == renderer.PDF_DENOM_EPS


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or IN_CHILD, reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_paper512_matches_reference(dtype, variant):
    inputs = make_inputs(b=2, channels=32, hidden=64, plane=256, res=64, dtype=dtype,
                         device="cuda")
    settings = settings_for(samples_coarse=48, samples_fine=48)
    actual = run_kernel(inputs, settings, variant)
    again = run_kernel(inputs, settings, variant)
    expected = run_reference(inputs, settings)
    # Half-precision tri-planes get fp16 MLP products by default (op.default_dot_precision).
    half = dtype != torch.float32
    assert_matches(actual, expected, FP16_DOT_TOLERANCE if half else GPU_TOLERANCE)
    for a, b in zip(actual, again):
        assert torch.equal(a, b)
