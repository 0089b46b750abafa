"""Shapes of every stage, the source/frame split, EAdaLN and CLeBS properties."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from dispatch_recorder import OpsSeen, from_python
from tolerances import assert_close

from export3d import get_config
from export3d.camera import orbit_path
from export3d.clebs import CLeBS, contrastive_loss
from export3d.generator import EAdaLN, GaussianLowPass
from export3d.model import build_model
from export3d.superres import Upsample2x


def stage_shapes(model, batch: int, device: str):
    c = model.config
    image = torch.rand(batch, 3, c.image_size, c.image_size, device=device) * 2 - 1
    expr = torch.randn(batch, c.expr_dim, device=device)
    camera = orbit_path("circle", batch).to(device)
    with torch.no_grad():
        source = model.encode_source(image)
        code = model.expression_code(expr)
        triplane = model.generate(source, expr)
        features, depth, opacity = model.render(triplane, camera)
        final = model.superresolve(features)
    return {"high": source.high.shape, "tokens": source.tokens.shape, "code": code.shape,
            "triplane": triplane.shape, "features": features.shape, "depth": depth.shape,
            "opacity": opacity.shape, "image": final.shape}


@pytest.mark.parametrize("preset,device", [("tiny", "cpu"), ("paper512", "meta")])
def test_stage_shapes(preset, device):
    c = get_config(preset)
    with torch.device(device):
        model = build_model(c, seed=None)
    shapes = stage_shapes(model, 2, device)
    h, r, p = c.image_size, c.render_size, c.triplane_size
    assert shapes == {
        "high": (2, c.fusion_channels[0], h // 2, h // 2),  # the branch through fuse_in[0]
        "tokens": (2, (h // 16) ** 2, c.token_dim),
        "code": (2, c.clebs_dim),
        "triplane": (2, 3, c.triplane_channels, p, p),
        "features": (2, c.triplane_channels, r, r),
        "depth": (2, 1, r, r),
        "opacity": (2, 1, r, r),
        "image": (2, 3, h, h),
    }


def test_paper512_matches_model_md():
    c = get_config("paper512")
    assert (c.image_size, c.triplane_size, c.render_size, c.token_grid) == (512, 256, 128, 32)
    assert (c.token_dim, c.heads, c.mlp_ratio, c.vit_blocks, c.fusion_blocks) == (1024, 4, 2, 5, 1)
    assert (c.triplane_channels, c.samples_coarse, c.samples_fine) == (32, 48, 48)
    assert (c.clebs_basis, c.clebs_dim, c.clebs_hidden) == (10, 512, (512, 512, 512))
    assert (c.ray_near, c.ray_far, c.box_warp, c.decoder_hidden) == (2.25, 3.3, 1.0, 64)
    t = get_config("tiny")
    assert (t.image_size, t.triplane_size, t.render_size, t.token_grid) == (64, 32, 16, 4)
    assert (t.triplane_channels, t.samples_coarse, t.samples_fine,
            t.decoder_hidden) == (8, 8, 8, 16)


def test_split_equals_full_forward_exactly():
    model = build_model(get_config("tiny"), seed=3)
    _perturb_zero_inits(model)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    expr = torch.randn(2, 64)
    camera = orbit_path("yaw", 2)
    with torch.no_grad():
        full = model(image, expr, camera)
        split = model.synthesize(model.encode_source(image), expr, camera)
    for key in full:
        assert torch.equal(full[key], split[key]), key


def test_source_half_of_the_fusion_convolution_is_the_convolution_of_the_concatenation():
    """encode_source carries the high-res branch through its half of fuse_in[0]; per frame
    only ``low`` is convolved and the two are added. In float64 that is the plain
    ``fuse_in[1](fuse_in[0](cat(low, branch)))`` to rounding, checked where generate feeds
    fuse_in[2] (fails if the halves, the bias, the padding or the activation were wrong)."""
    from export3d.generator import coordinate_channels

    model = build_model(get_config("tiny"), seed=5).double()
    _perturb_zero_inits(model)
    gen = model.generator
    image = torch.rand(2, 3, 64, 64, dtype=torch.float64) * 2 - 1
    code = torch.randn(2, model.config.clebs_dim, dtype=torch.float64)
    seen = {}
    gen.low_out.register_forward_hook(lambda m, i, out: seen.update(low=out))
    gen.fuse_in[2].register_forward_pre_hook(lambda m, i: seen.update(fused=i[0]))
    with torch.no_grad():
        source = gen.encode_source(image)
        assert source.high.shape == (2, model.config.fusion_channels[0], 32, 32)
        gen.generate(source, code)
        branch = gen.high(coordinate_channels(image))
        whole = gen.fuse_in[1](gen.fuse_in[0](torch.cat([seen["low"], branch], 1)))
    assert (seen["fused"] - whole).abs().max() <= 1e-12 * whole.abs().max()


def test_inference_is_bit_identical_across_calls():
    model = build_model(get_config("tiny"), seed=1)
    _perturb_zero_inits(model)
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    expr = torch.randn(1, 64)
    camera = orbit_path("circle", 1)
    with torch.no_grad():
        a = model(image, expr, camera)
        b = model(image, expr, camera)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_expression_changes_the_frame_once_eadaln_is_trained():
    model = build_model(get_config("tiny"), seed=2)
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    camera = orbit_path("frontal", 1)
    e0, e1 = torch.zeros(1, 64), torch.randn(1, 64)
    with torch.no_grad():
        source = model.encode_source(image)
        # Zero-initialised EAdaLN: the expression has no effect yet.
        assert torch.equal(model.generate(source, e0), model.generate(source, e1))
        _perturb_zero_inits(model)
        assert not torch.allclose(model.generate(source, e0), model.generate(source, e1))
        # ... and reaches the rendered frame (randomly initialised, the frame moves ~1e-5).
        frames = [model.synthesize(source, e, camera)["image"] for e in (e0, e1)]
        assert not torch.equal(frames[0], frames[1])


def _perturb_zero_inits(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and "proj" in name:
                p.normal_(0, 0.05)


def test_eadaln_at_initialisation_is_plain_layer_norm():
    norm = EAdaLN(32, 16)
    x = torch.randn(3, 10, 32)
    out, gate = norm(x, torch.randn(3, 16))
    assert gate is None
    assert torch.equal(out, F.layer_norm(x, (32,)))
    gated = EAdaLN(32, 16, gate=True)
    _, gate = gated(x, torch.randn(3, 16))
    assert torch.equal(gate, torch.zeros(3, 1, 32))


def test_eadaln_modulation_formula():
    norm = EAdaLN(8, 4)
    with torch.no_grad():
        norm.proj.weight.normal_()
        norm.proj.bias.normal_()
    x, code = torch.randn(2, 5, 8), torch.randn(2, 4)
    mod = norm.proj(F.silu(code)).unsqueeze(1)
    expected = F.layer_norm(x, (8,)) * (1 + mod[..., :8]) + mod[..., 8:]
    assert_close(norm(x, code)[0], expected)


def test_clebs_basis_is_orthonormal_and_output_in_its_span():
    clebs = CLeBS(64, (64,), 10, 512)
    q = clebs.basis()
    assert q.shape == (512, 10)
    assert_close(q.t() @ q, torch.eye(10), atol=1e-5, rtol=0)
    expr = torch.randn(4, 64)
    out = clebs(expr)
    assert_close(out, clebs.coefficients(expr) @ q.t())
    # Coefficients are recovered by projecting onto the basis.
    assert_close(out @ q, clebs.coefficients(expr), atol=1e-5, rtol=1e-5)
    clebs.freeze_basis()
    assert torch.equal(clebs(expr), out)
    with torch.no_grad():
        clebs.basis_weight.add_(1.0)
    assert torch.equal(clebs(expr), out)  # frozen: the parameter change is not seen
    clebs.unfreeze_basis()
    assert not torch.allclose(clebs(expr), out)


def test_the_expression_spread_divides_the_code_before_clebs():
    """tracking.md 4.4: a model whose config has spreads sigma_k sees code / sigma, so with the
    same weights it turns code * sigma into what the model without spreads turns code into."""
    spread = tuple(float(v) for v in torch.linspace(0.01, 0.4, 64))
    plain = build_model(get_config("tiny"), seed=3)
    scaled = build_model(get_config("tiny", expr_spread=spread), seed=3)
    scaled.load_state_dict(plain.state_dict())  # the spread is not a weight: same table
    sigma = torch.tensor(spread)
    expr = torch.randn(3, 64)
    source = plain.encode_source(torch.rand(3, 3, 64, 64) * 2 - 1)
    with torch.no_grad():
        assert_close(scaled.expression_code(expr * sigma), plain.expression_code(expr),
                     atol=1e-6, rtol=1e-5)
        assert not torch.allclose(scaled.expression_code(expr), plain.expression_code(expr),
                                  atol=1e-3)
        # through generate (CLeBS inside): the same tri-plane
        assert_close(scaled.generate(source, expr * sigma), plain.generate(source, expr),
                     atol=1e-5, rtol=1e-4)
        # and in bfloat16, as the half-precision backends run it (the spread is a buffer that
        # .to(dtype) converts with the weights)
        half = copy.deepcopy(scaled).to(torch.bfloat16).clebs
        assert half.inv_spread.dtype == torch.bfloat16
        assert_close(half(expr.bfloat16() * sigma.bfloat16()).float(),
                     plain.expression_code(expr), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("spread,message", [((1.0,) * 63, "needs 64 values"),
                                            ((0.0,) + (1.0,) * 63, "finite and positive"),
                                            ((float("nan"),) + (1.0,) * 63, "finite and positive")])
def test_a_bad_expression_spread_is_refused(spread, message):
    with pytest.raises(ValueError, match=message):
        get_config("tiny", expr_spread=spread)


def test_contrastive_loss_hand_computed():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expr = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])
    tau = 0.5
    normalize = torch.nn.functional.normalize
    sim = normalize(image, dim=-1) @ normalize(expr, dim=-1).t() / tau
    # decoupled: -log(exp(s_kk) / sum_{j != k} exp(s_jk)), averaged over k
    manual = []
    for k in range(3):
        others = torch.stack([sim[j, k] for j in range(3) if j != k])
        manual.append(torch.logsumexp(others, 0) - sim[k, k])
    assert_close(contrastive_loss(image, expr, tau), torch.stack(manual).mean())
    manual_nce = torch.stack([torch.logsumexp(sim[:, k], 0) - sim[k, k] for k in range(3)]).mean()
    assert_close(contrastive_loss(image, expr, tau, variant="infonce"), manual_nce)
    # A perfect match scores lower than a shuffled one.
    e = torch.randn(6, 8)
    assert contrastive_loss(e, e, 0.1) < contrastive_loss(e, e.roll(1, 0), 0.1)
    with pytest.raises(ValueError, match="two frames"):
        contrastive_loss(image[:1], expr[:1], tau)


def test_lowpass_and_upsample_preserve_constants():
    x = torch.full((1, 3, 12, 12), 0.7)
    assert_close(GaussianLowPass(1.0)(x), x)
    up = Upsample2x()(x)
    assert up.shape == (1, 3, 24, 24)
    assert_close(up[..., 2:-2, 2:-2], torch.full((1, 3, 20, 20), 0.7))


def test_replicate_pad_by_concatenation_is_f_pad():
    # The low-pass's padding under torch.compile (export3d.generator.replicate_pad): the same
    # values as F.pad's replicate mode, on a non-square, channels-last input, exactly.
    from export3d.generator import replicate_pad

    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    for t in (x, x.contiguous(memory_format=torch.channels_last)):
        for pad in (1, 2):
            assert torch.equal(replicate_pad(t, pad), F.pad(t, (pad,) * 4, mode="replicate"))


def test_upsample_is_the_fir_filter_with_zero_padding():
    # Reference: [1, 3, 3, 1] x [1, 3, 3, 1] / 64 * 4 as a depthwise transposed convolution
    # (upfirdn2d's up-sampling), float64 so that only the formula can differ.
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    kernel = (torch.outer(f, f) / 16).expand(5, 1, 4, 4)
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = F.conv_transpose2d(x, kernel, stride=2, padding=1, groups=5)
    assert_close(Upsample2x()(x), reference, rtol=0, atol=1e-12)
    # The border really differs from plain bilinear (zero padding, not clamping).
    bilinear = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert (bilinear[..., 0, :] - reference[..., 0, :]).abs().max() > 0.1
    # channels-last in, channels-last out (the GPU suite's fast layout).
    x32 = x.float().contiguous(memory_format=torch.channels_last)
    assert Upsample2x()(x32).is_contiguous(memory_format=torch.channels_last)


def test_superresolution_builds_its_border_gain_once():
    # The up-sampler's 3/4 border gain depends only on the size, so the model builds it at
    # construction (a non-persistent buffer: not in checkpoints, follows .to()); a frame at
    # the render size builds none, another size builds its own, and both give the same bits.
    def builds():
        return OpsSeen(lambda func: func.__name__.split(".")[0] in ("ones", "constant_pad_nd"))

    model = build_model(get_config("tiny"), seed=0).eval()
    c = model.config
    assert not any("gain" in k for k in model.state_dict())
    features = torch.randn(1, c.triplane_channels, c.render_size, c.render_size)
    with torch.no_grad(), builds() as mode:
        model.superresolve(features)
    assert mode.seen == []
    x = torch.randn(1, 4, c.render_size, c.render_size)
    with torch.no_grad(), builds() as mode:
        fresh = Upsample2x()(x)
    assert mode.seen  # the check can fail
    assert torch.equal(model.superres.block0.up(x), fresh)
    half = model.to(torch.float16).superres.block0.up
    assert half.gain.dtype == torch.float16
    assert torch.equal(half(x.half()), Upsample2x()(x.half()))


def test_triplane_ema_updates_in_training_only():
    model = build_model(get_config("tiny"), seed=0)
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    expr = torch.randn(2, 64)
    gen = model.generator
    source = gen.encode_source(image)
    with torch.no_grad():
        model.generate(source, expr)
        assert torch.equal(gen.triplane_ema, torch.zeros_like(gen.triplane_ema))
        model.train()
        raw = gen.generate_raw(source, model.expression_code(expr))
        model.generate(source, expr)
    m = model.config.triplane_ema_momentum
    assert_close(gen.triplane_ema, (1 - m) * raw.mean(0))


def test_bad_input_shapes_are_named():
    model = build_model(get_config("tiny"))
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        model.encode_source(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 64\]"):
        model.expression_code(torch.zeros(1, 10))


def test_per_frame_stages_build_no_tensors_from_python_data():
    # CUDA-graph capture (the GPU suite's fastest variants, the live pipeline) fails on a
    # host-to-device copy inside the captured frame, e.g. an index tensor from a Python list
    # or a value assigned into a slice. On a CPU such tensors show as aten.lift_fresh: the
    # per-frame stages (generate, super-resolution) must have none.

    model = build_model(get_config("tiny"), seed=0).eval()
    c = model.config
    with torch.no_grad():
        source = model.encode_source(torch.zeros(1, 3, c.image_size, c.image_size))
        code = model.expression_code(torch.zeros(1, c.expr_dim))
        with from_python() as mode:
            triplane = model.generator.generate(source, code)
            model.superresolve(torch.zeros(1, c.triplane_channels, 16, 16))
    assert triplane.shape[1] == 3 and mode.seen == []
    with from_python() as mode:  # the check can fail
        t = torch.ones(4)
        t[[0, -1]] = 0.5
    assert mode.seen
