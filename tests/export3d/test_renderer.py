"""The reference renderer against hand-computed values and independent formulations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tolerances import assert_close

from export3d import get_config
from export3d.camera import orbit_path, rays
from export3d.renderer import (PLANE_AXES, PLANE_AXES_EG3D, Decoder, RayMarchSettings,
                               TriplaneRenderer, inverse_cdf, raymarch, raymarch_reference,
                               sample_triplane, smooth_weights)


def constant_decoder(sigma: float, feature: float, channels: int = 4) -> Decoder:
    """A decoder whose output ignores its input: density ``sigma`` and feature logit ``feature``."""
    hidden = 3
    b2 = torch.full((1 + channels,), feature)
    b2[0] = sigma
    return Decoder(torch.zeros(channels, hidden), torch.zeros(hidden),
                   torch.zeros(hidden, 1 + channels), b2)


def straight_rays(n: int = 5):
    """Rays along -z from z = 2.7 through points spread in x, y inside the box."""
    origins = torch.zeros(1, n, 3)
    origins[0, :, 0] = torch.linspace(-0.3, 0.3, n)
    origins[0, :, 1] = torch.linspace(0.2, -0.2, n)
    origins[0, :, 2] = 2.7
    directions = torch.zeros(1, n, 3)
    directions[..., 2] = -1.0
    return origins, directions


@pytest.mark.parametrize("fine", [0, 6])
def test_constant_density_slab_transmittance(fine):
    near, far, coarse = 2.25, 3.3, 8
    settings = RayMarchSettings(near, far, coarse, fine)
    sigma, logit = 1.7, 0.3
    features, depth, opacity = raymarch_reference(
        torch.zeros(1, 3, 4, 8, 8), constant_decoder(sigma, logit), *straight_rays(), settings)
    density = math.log1p(math.exp(sigma - 1.0))  # softplus(sigma - 1)
    step = (far - near) / coarse
    length = (far - near) - step  # from the first to the last coarse bin centre
    expected_opacity = 1.0 - math.exp(-density * length)
    assert_close(opacity, torch.full_like(opacity, expected_opacity))
    feat = 1.0 / (1.0 + math.exp(-logit)) * 1.002 - 0.001
    assert_close(features, torch.full_like(features, expected_opacity * 2 * feat - 1))
    if fine == 0:
        # Uniform spacing: w_i = (1 - e^{-rho d}) e^{-rho d i} at midpoints near + (i + 1) d.
        i = np.arange(coarse - 1)
        w = (1 - np.exp(-density * step)) * np.exp(-density * step * i)
        mids = near + (i + 1) * step
        assert_close(depth, torch.full_like(depth, float((w * mids).sum() / w.sum())))
    assert bool(((depth > near) & (depth < far)).all())


def test_empty_volume_gives_zero_weight_and_far_depth():
    settings = RayMarchSettings(2.25, 3.3, 8, 8)
    features, depth, opacity = raymarch_reference(
        torch.zeros(1, 3, 4, 8, 8), constant_decoder(-1000.0, 0.0), *straight_rays(), settings)
    assert torch.equal(opacity, torch.zeros_like(opacity))
    assert torch.equal(features, torch.full_like(features, -1.0))
    last = 3.3 - 0.5 * (3.3 - 2.25) / 8
    assert_close(depth, torch.full_like(depth, last))


def test_dense_slab_is_opaque_at_the_first_interval():
    settings = RayMarchSettings(2.25, 3.3, 8, 8)
    _, depth, opacity = raymarch_reference(
        torch.zeros(1, 3, 4, 8, 8), constant_decoder(200.0, 0.0), *straight_rays(), settings)
    assert_close(opacity, torch.ones_like(opacity))
    # All weight in the first merged interval: depth is its midpoint, before the second coarse
    # bin centre.
    assert bool((depth < 2.25 + 1.5 * (3.3 - 2.25) / 8).all())


def linear_triplane(p: int) -> torch.Tensor:
    """Plane k's single channel equals the normalised coordinate along its width (grid x)."""
    centres = (2 * torch.arange(p, dtype=torch.float64) + 1) / p - 1
    width = centres.reshape(1, p).expand(p, p)
    height = centres.reshape(p, 1).expand(p, p)
    return torch.stack([width, height, width]).reshape(1, 3, 1, p, p).float(), (width, height)


@pytest.mark.parametrize("axes", [PLANE_AXES, PLANE_AXES_EG3D])
def test_triplane_sampling_axes_and_bilinear_weights(axes):
    p = 16
    # plane 0 holds its width coordinate, plane 1 its height coordinate, plane 2 its width.
    planes, _ = linear_triplane(p)
    points = (torch.rand(1, 50, 3) * 2 - 1) * (1 - 1 / p) * 0.5  # box_warp 1: cube +-0.5
    out = sample_triplane(planes, points, box_warp=1.0, plane_axes=axes)[0, :, 0]
    g = points[0] * 2
    (a0, _), (_, b1), (a2, _) = axes
    expected = (g[:, a0] + g[:, b1] + g[:, a2]) / 3
    assert_close(out, expected)


def test_sampling_outside_the_box_reads_zero():
    planes = torch.ones(1, 3, 2, 8, 8)
    points = torch.tensor([[[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]]])
    out = sample_triplane(planes, points, box_warp=1.0)
    assert torch.equal(out[0, 0], torch.zeros(2))
    assert torch.equal(out[0, 1], torch.ones(2))


def test_smooth_weights_matches_eg3d_pooling():
    w = torch.rand(7, 11)
    eg3d = F.avg_pool1d(F.max_pool1d(w.unsqueeze(1), 2, 1, padding=1), 2, 1).squeeze(1) + 0.01
    assert_close(smooth_weights(w), eg3d)


def test_inverse_cdf_matches_searchsorted():
    edges = torch.sort(torch.rand(6, 9) * 3, dim=-1).values
    weights = torch.rand(6, 8) + 0.01
    u = (torch.arange(12) + 0.5) / 12
    u = u.expand(6, 12)
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros(6, 1), pdf.cumsum(-1)], -1)
    idx = (torch.searchsorted(cdf, u.contiguous(), right=True) - 1).clamp(0, 7)
    lo, hi = cdf.gather(-1, idx), cdf.gather(-1, idx + 1)
    expected = edges.gather(-1, idx) + (u - lo) / (hi - lo) * (
        edges.gather(-1, idx + 1) - edges.gather(-1, idx))
    out = inverse_cdf(edges, weights, u)
    assert_close(out, expected)
    assert bool((out[:, 1:] >= out[:, :-1]).all())
    assert bool(((out >= edges[:, :1]) & (out <= edges[:, -1:])).all())


def test_importance_samples_find_a_thin_shell_the_coarse_pass_misses():
    """A thin dense shell at depth ~2.8 (z = -0.1) falls between coarse samples: the coarse pass
    alone sees almost nothing; the importance pass, drawn from the smoothed coarse weights
    (+0.01 floor), lands samples in it and makes it nearly opaque at the right depth."""
    p, c = 32, 4
    decoder = Decoder(torch.eye(c, 3) * 40, torch.zeros(3), torch.zeros(3, 1 + c),
                      torch.zeros(1 + c))
    decoder.w2[:, 0] = 1.0
    decoder.b2[0] = -60.0
    planes = torch.zeros(1, 3, c, p, p)
    z = (2 * torch.arange(p) + 1) / p - 1  # plane 1 (XZ) rows are z
    planes[0, 1, 0] = torch.exp(-((z + 0.2) ** 2) / 0.02).reshape(p, 1).expand(p, p) * 9
    origins, directions = straight_rays(3)
    _, depth, opacity = raymarch_reference(planes, decoder, origins, directions,
                                           RayMarchSettings(2.25, 3.3, 8, 8))
    _, _, coarse_opacity = raymarch_reference(planes, decoder, origins, directions,
                                              RayMarchSettings(2.25, 3.3, 8, 0))
    assert bool((coarse_opacity < 0.01).all())
    assert bool((opacity > 0.5).all())
    assert bool(((depth - 2.8).abs() < 0.05).all())


def test_inference_is_bit_identical_and_training_jitters():
    config = get_config("tiny")
    renderer = TriplaneRenderer(config, impl="reference")
    triplane = torch.randn(2, 3, 8, 32, 32)
    camera = orbit_path("circle", 2)
    renderer.eval()
    a = renderer(triplane, camera)
    b = renderer(triplane, camera)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    renderer.train()
    c = renderer(triplane, camera)
    assert not torch.equal(a[0], c[0])


def test_raymarch_rejects_unknown_impl_and_cpu_auto_is_reference():
    settings = RayMarchSettings(2.25, 3.3, 4, 4)
    origins, directions = rays(orbit_path("frontal", 1), 4)
    triplane = torch.randn(1, 3, 4, 8, 8)
    dec = constant_decoder(0.5, 0.1)
    with pytest.raises(ValueError, match="unknown renderer impl"):
        raymarch(triplane, dec, origins, directions, settings, impl="fast")
    auto = raymarch(triplane, dec, origins, directions, settings, impl="auto")
    ref = raymarch_reference(triplane, dec, origins, directions, settings)
    for x, y in zip(auto, ref):
        assert torch.equal(x, y)


def test_fp16_triplane_is_computed_in_fp32():
    settings = RayMarchSettings(2.25, 3.3, 6, 6)
    origins, directions = rays(orbit_path("yaw", 1), 5)
    triplane = torch.randn(1, 3, 4, 8, 8)
    dec = Decoder(torch.randn(4, 3), torch.randn(3), torch.randn(3, 5), torch.randn(5))
    full = raymarch_reference(triplane.half().float(), dec, origins, directions, settings)
    half = raymarch_reference(triplane.half(), dec, origins, directions, settings)
    for x, y in zip(half, full):
        assert x.dtype == torch.float32
        assert torch.equal(x, y)


def test_plane_axes_are_eg3ds_projection_and_the_true_planes():
    # EG3D projects a point onto plane k as (point @ inverse(M_k))[:2] with its three fixed
    # plane matrices (paper-spec 5.2: the second plane samples at (x, z), the third at (z, x)),
    # computed here from those matrices, not from our constant; the default is true XY, XZ, YZ.
    from engines.raymarch import contract

    eg3d_planes = torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                                [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                                [[0, 0, 1], [1, 0, 0], [0, 1, 0]]], dtype=torch.float64)
    point = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    projected = (point @ torch.linalg.inv(eg3d_planes))[:, :2]
    for k, (a, b) in enumerate(PLANE_AXES_EG3D):
        assert torch.equal(projected[k], point[[a, b]]), k
    assert PLANE_AXES == ((0, 1), (0, 2), (1, 2))  # x-y, x-z, y-z: every axis pair
    # The kernel's contract keeps its own copies (engines imports nothing of export3d).
    assert contract.PLANE_AXES == PLANE_AXES
    assert contract.PLANE_AXES_EG3D == PLANE_AXES_EG3D


def test_tap_by_tap_sampling_is_three_times_the_planes_mean():
    # sample_triplane_taps (the kernel's tap order, for the fp16 reference counterpart) in
    # fp32 against grid_sample's mean: the same bilinear lookup, zero padding included
    # (points reach 20% past the box).
    from export3d.renderer import sample_triplane, sample_triplane_taps

    g = torch.Generator().manual_seed(3)
    triplane = torch.randn(2, 3, 5, 12, 12, generator=g)
    points = (torch.rand(2, 300, 3, generator=g) * 2 - 1) * 0.6
    for axes in (PLANE_AXES, PLANE_AXES_EG3D):
        summed = sample_triplane_taps(triplane, points, 1.0, axes)
        mean = sample_triplane(triplane, points, 1.0, axes)
        assert summed.dtype == torch.float32
        torch.testing.assert_close(summed, 3 * mean, atol=5e-6, rtol=1e-6)  # a few ulps
    half = sample_triplane_taps(triplane.half(), points, 1.0, PLANE_AXES, torch.float16)
    assert half.dtype == torch.float16
    error = (half.float() - 3 * sample_triplane(triplane.half(), points, 1.0)).abs().max()
    assert 0 < error < 3 * 12 * 2 ** -11 * triplane.abs().max()  # fp16 rounding, no more


def test_fp16_products_option_rounds_and_checks_its_names():


    g = torch.Generator().manual_seed(4)
    triplane = torch.randn(1, 3, 8, 16, 16, generator=g).half()
    decoder = Decoder(torch.randn(8, 16, generator=g) / 3, torch.randn(16, generator=g) / 3,
                      torch.randn(16, 9, generator=g) / 2, torch.randn(9, generator=g) / 2)
    origins, directions = rays(orbit_path("circle", 2)[:1].float(), 8)
    settings = RayMarchSettings(near=2.25, far=3.3, samples_coarse=8, samples_fine=8)
    full = raymarch_reference(triplane, decoder, origins, directions, settings)
    half = raymarch_reference(triplane, decoder, origins, directions, settings,
                              dot_precision="fp16")
    for a, b in zip(full, half):
        assert 1e-6 < (a - b).abs().max() < 2e-3  # rounded, within the fp16 tolerance
    with pytest.raises(ValueError, match="dot_precision must be one of ieee, fp16"):
        raymarch_reference(triplane, decoder, origins, directions, settings, dot_precision="tf32")
    with pytest.raises(ValueError, match="tap_sum must be one of fp16, fp32"):
        raymarch_reference(triplane, decoder, origins, directions, settings, tap_sum="bf16")


def test_the_renderer_stays_fp32_under_mixed_precision_autocast():
    # paper-spec 6.3: mixed precision for the CNN/ViT only, the renderer in fp32. Training
    # wraps the model in bf16 autocast, which ran the decoder's matmuls in bf16 (the raw
    # density moved by ~2e-2); the reference now turns autocast off for itself.
    from export3d.renderer import Decoder, decode

    g = torch.Generator().manual_seed(5)
    triplane = torch.randn(1, 3, 8, 16, 16, generator=g)
    decoder = Decoder(torch.randn(8, 32, generator=g), torch.randn(32, generator=g),
                      torch.randn(32, 9, generator=g), torch.randn(9, generator=g))
    origins, directions = rays(orbit_path("circle", 2)[:1].float(), 8)
    settings = RayMarchSettings(near=2.25, far=3.3, samples_coarse=8, samples_fine=8)
    plain = raymarch_reference(triplane, decoder, origins, directions, settings)
    features = torch.randn(64, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = raymarch_reference(triplane, decoder, origins, directions, settings)
        moved = decode(features, decoder)[0]  # what autocast does to the bare decoder
    for a, b in zip(plain, mixed):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    # so the check above is not vacuous: autocast does move the decoder here
    assert (moved.float() - decode(features, decoder)[0]).abs().max() > 1e-3
