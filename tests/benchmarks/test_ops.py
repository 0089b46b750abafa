"""benchmarks.ops finds every candidate site of generate with its real inputs and calls per
frame, its candidate forms compute what the model's form computes, and a wrong form is caught."""
from __future__ import annotations

import pytest
import torch

from benchmarks import ops
from export3d import get_config


@pytest.fixture(scope="module")
def tiny():
    return ops.prepared_model("tiny", torch.float32, torch.device("cpu"), channels_last=True)


def test_sites_are_the_models_calls_with_their_inputs(tiny):
    config = get_config("tiny")
    sites = ops.capture_sites(*tiny)
    calls = {kind: sum(s["calls"] for s in sites if s["kind"] == kind)
             for kind in ("attention", "depthwise", "lowpass", "superres", "eadaln")}
    blocks = config.vit_blocks + config.fusion_blocks
    assert calls == {"attention": blocks, "depthwise": blocks, "lowpass": 2, "superres": 2,
                     "eadaln": 2 * blocks}
    sr = sorted((s for s in sites if s["kind"] == "superres"),
                key=lambda s: s["inputs"][0].shape[-1])  # the two SR blocks: x and rgb
    r, c0 = config.render_size, config.sr_channels[0]
    assert [[list(t.shape) for t in s["inputs"]] for s in sr] == [
        [[1, config.triplane_channels, r, r], [1, 3, r, r]],
        [[1, c0, 2 * r, 2 * r], [1, 3, 2 * r, 2 * r]]]
    g, d, heads = config.token_grid, config.token_dim, config.heads
    low = [s for s in sites if s["kind"] == "attention" and s["calls"] == config.vit_blocks]
    assert [list(t.shape) for t in low[0]["inputs"]] == [[1, heads, g * g, d // heads]] * 3
    for site in sites:
        if site["kind"] == "depthwise":  # the token grid reaches the conv as a channels-last view
            assert ops._layout(site["inputs"][0]) == "channels_last"
            assert site["inputs"][0].shape[1] in (d * config.mlp_ratio,
                                                  config.fusion_dim * config.mlp_ratio)


def test_every_form_matches_the_model_and_the_saving_is_the_fastest_within(tiny):
    result = ops.op_candidates(*tiny, warmup=0, iters=2)
    assert {s["kind"] for s in result["sites"]} == {"attention", "depthwise", "lowpass",
                                                    "superres", "eadaln"}
    for site in result["sites"]:
        forms = site["forms"]
        assert forms["model"]["max_abs_err"] == 0.0  # fp32: the model's form is the truth
        expected = {"attention": {"flash_attention", "math"},
                    "depthwise": {"nchw", "channels_last"},
                    "lowpass": {"depthwise_5x5", "batch_folded", "channels_last"},
                    "superres": {"polyphase"}, "eadaln": {"affine_in_norm"}}[site["kind"]]
        for name in expected:  # every CPU-capable form ran and agrees with the model
            assert forms[name]["within"], (site["kind"], name, forms[name])
            assert forms[name]["max_abs_err"] <= 1e-5
        within = {n: r["p50_ms"] for n, r in forms.items() if r.get("within")}
        assert site["fastest_within"] == min(within, key=within.get)
        assert site["saving_ms_per_frame"] == round(
            (forms["model"]["p50_ms"] - within[site["fastest_within"]]) * site["calls_per_frame"],
            4)
        assert site["saving_ms_per_frame"] >= 0
    assert result["saving_ms_per_frame"] == round(
        sum(s["saving_ms_per_frame"] for s in result["sites"]), 4)


def test_a_wrong_form_is_not_within_tolerance(tiny, monkeypatch):
    import torch.nn.functional as F

    real = ops.lowpass_forms

    def with_a_wrong_one(x, lowpass):
        forms = real(x, lowpass)
        k = lowpass.kernel.reshape(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1)
        # The horizontal pass only: a plausible bug that a loose check would pass.
        forms["horizontal_only"] = lambda: F.conv2d(
            F.pad(x, (lowpass.pad, lowpass.pad, 0, 0), mode="replicate"), k, groups=x.shape[1])
        return forms

    monkeypatch.setattr(ops, "lowpass_forms", with_a_wrong_one)
    sites = [s for s in ops.capture_sites(*tiny) if s["kind"] == "lowpass"]
    measured = ops.measure_site(sites[0], warmup=0, iters=1)
    assert measured["forms"]["horizontal_only"]["within"] is False
    assert measured["forms"]["horizontal_only"]["max_abs_err"] > 10 * measured["tolerance"]
    assert measured["fastest_within"] != "horizontal_only"


def chosen_sites(tiny, lowpass: str) -> list[dict]:
    """The tiny frame's sites as op_candidates reports them, each with a non-model form as its
    fastest (the low-pass's named)."""
    choice = {"attention": "math", "depthwise": "nchw", "lowpass": lowpass,
              "superres": "polyphase", "eadaln": "affine_in_norm"}
    return [{"kind": s["kind"], "shapes": [list(t.shape) for t in s["inputs"]],
             "fastest_within": choice[s["kind"]]} for s in ops.capture_sites(*tiny)]


def test_fastest_forms_put_the_chosen_forms_in_the_models_place(tiny, monkeypatch):
    # Sites as op_candidates reports them, each with a non-model form chosen; within the
    # block every call of those shapes runs that form (counted), the frame's tri-plane is the
    # model's own within fp32 rounding, and afterwards the model and F are as they were.
    import torch.nn.functional as F

    model, source, expr = tiny
    measured = chosen_sites(tiny, lowpass="batch_folded")
    used = []
    for table, name in ((ops.DEPTHWISE_FORMS, "nchw"), (ops.LOWPASS_FORMS, "batch_folded"),
                        (ops.SUPERRES_FORMS, "polyphase"), (ops.EADALN_FORMS, "affine_in_norm")):
        real = table[name]
        monkeypatch.setitem(table, name, lambda own, *x, real=real, name=name: (
            used.append(name), real(own, *x))[1])
    real_form = ops.attention_form

    def counted(name):
        used.append(name)
        return real_form(name)

    monkeypatch.setattr(ops, "attention_form", counted)
    sdpa = F.scaled_dot_product_attention
    features = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(3))

    def frame():
        return model.generate(source, expr), model.superresolve(features)

    with torch.inference_mode():
        want = frame()
        with ops.fastest_forms(model, measured) as chosen:
            got = frame()
        again = frame()
    config = get_config("tiny")
    blocks = config.vit_blocks + config.fusion_blocks
    assert sorted(used) == sorted(["math"] * blocks + ["nchw"] * blocks + ["batch_folded"] * 2
                                  + ["polyphase"] * 2 + ["affine_in_norm"] * 2 * blocks)
    assert set(chosen["lowpass"].values()) == {"batch_folded"} and len(chosen["attention"]) == 2
    assert set(chosen["superres"].values()) == {"polyphase"}
    for a, b, c in zip(got, want, again):
        assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())
        assert torch.equal(c, b)
    assert F.scaled_dot_product_attention is sdpa
    assert not any("forward" in vars(m) for m in model.modules())


def test_polyphase_super_resolution_needs_its_border_lines(tiny, monkeypatch):
    # The polyphase form's interior is exact; without recomputing the four border lines the
    # convolution's zero padding of the up-sampled image would be the up-sampler's instead,
    # and the tolerance must catch that.
    import torch.nn.functional as F

    def interior_only(block, x, rgb):
        k, b = ops.polyphase_weight(block.conv0)
        h = F.leaky_relu(F.pixel_shuffle(F.conv2d(x, k, b, padding=1), 2), 0.2)
        h = F.leaky_relu(block.conv1(h), 0.2)
        return h, block.up(rgb) + block.torgb(h)

    monkeypatch.setitem(ops.SUPERRES_FORMS, "interior_only", interior_only)
    sites = [s for s in ops.capture_sites(*tiny) if s["kind"] == "superres"]
    for site in sites:
        measured = ops.measure_site(site, warmup=0, iters=1)
        assert measured["forms"]["polyphase"]["within"], measured["forms"]["polyphase"]
        assert measured["forms"]["polyphase"]["max_abs_err"] <= 1e-5
        assert measured["forms"]["interior_only"]["within"] is False
        assert measured["forms"]["interior_only"]["max_abs_err"] > 10 * measured["tolerance"]


def test_eadaln_with_the_modulation_in_the_norm_is_the_models(tiny, monkeypatch):
    # The model's EAdaLN projections start at zero (identity modulation), which would hide a
    # wrong mapping of scale and shift: here they are random, and a form with the two swapped
    # is caught.
    import copy

    import torch.nn.functional as F

    from export3d.generator import EAdaLN

    model, source, expr = tiny
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, EAdaLN):
                module.proj.weight.copy_(0.2 * torch.randn(module.proj.weight.shape,
                                                           generator=gen))
                module.proj.bias.copy_(0.2 * torch.randn(module.proj.bias.shape, generator=gen))

    def swapped(norm, x, code):
        mod = norm.proj(F.silu(code)).unsqueeze(1)
        d = norm.dim
        return F.layer_norm(x, (d,), 1 + mod[0, 0, d: 2 * d], mod[0, 0, :d]), None

    monkeypatch.setitem(ops.EADALN_FORMS, "swapped", swapped)
    sites = [s for s in ops.capture_sites(model, source, expr) if s["kind"] == "eadaln"]
    assert len(sites) == 2  # the low-resolution blocks' token grid, the fusion block's
    for site in sites:
        measured = ops.measure_site(site, warmup=0, iters=1)
        forms = measured["forms"]
        assert forms["affine_in_norm"]["within"] and forms["affine_in_norm"]["max_abs_err"] < 1e-5
        assert forms["swapped"]["within"] is False


def test_polyphase_weights_are_built_once_per_module_until_they_change():
    # Built once: a CUDA graph capture of the form must not build a tensor from Python data.
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    first = ops.polyphase_weight(conv)
    assert ops.polyphase_weight(conv)[0] is first[0]
    assert first[0].shape == (24, 4, 3, 3) and torch.equal(first[1][:4], conv.bias[0].repeat(4))
    with torch.no_grad():
        conv.weight.mul_(2.0)
    again = ops.polyphase_weight(conv)
    assert again[0] is not first[0] and torch.allclose(again[0], 2 * first[0])


def test_the_forms_build_no_tensors_from_python_data_once_warm(tiny):
    # The suite captures the best-forms frame in a CUDA graph, where a tensor built from
    # Python data (a host copy; aten.lift_fresh on a CPU) fails the capture. The polyphase
    # weights build one the first time, then come from the cache.
    from dispatch_recorder import from_python

    model, source, expr = tiny
    measured = chosen_sites(tiny, lowpass="depthwise_5x5")
    features = torch.randn(1, 8, 16, 16)
    with torch.inference_mode(), ops.fastest_forms(model, measured):
        ops._POLYPHASE_CACHE.clear()
        with from_python() as first:
            model.generate(source, expr), model.superresolve(features)
        with from_python() as warm:
            model.generate(source, expr), model.superresolve(features)
    assert first.seen  # the check can fail
    assert warm.seen == []


def test_a_failing_site_or_a_spent_budget_costs_that_site_not_the_section(tiny, monkeypatch,
                                                                         capsys):
    # A site whose fp32 reference raised, or a model form whose error is NaN (no form within
    # tolerance: min() of nothing), ended the whole ops section, and with it the model
    # variants that use its fastest forms.
    real = ops.measure_site

    def flaky(site, warmup, iters):
        if site["kind"] == "depthwise":
            raise RuntimeError("cuDNN refused these shapes\nsecond line")
        return real(site, warmup, iters)

    monkeypatch.setattr(ops, "measure_site", flaky)
    result = ops.op_candidates(*tiny, warmup=0, iters=1)
    failed = [s for s in result["sites"] if s["kind"] == "depthwise"]
    assert failed and all(s["error"] == "RuntimeError: cuDNN refused these shapes"
                          for s in failed)
    assert all("fastest_within" in s for s in result["sites"] if s["kind"] != "depthwise")
    ops.print_table(result)  # prints the failed site's line too
    assert "cuDNN refused" in capsys.readouterr().out

    # The budget: once under 20 s, the remaining sites are skipped, saying why.
    left = iter([100.0, 100.0] + [5.0] * 100)
    result = ops.op_candidates(*tiny, warmup=0, iters=1, time_left=lambda: next(left))
    skipped = [s for s in result["sites"] if "skipped" in s]
    assert skipped and len(skipped) == len(result["sites"]) - 2
    assert all(s["skipped"] == "time budget (5 s left)" for s in skipped)

    # A NaN in the model's own form: that site says so instead of raising.
    monkeypatch.setattr(ops, "measure_site", real)
    site = [s for s in ops.capture_sites(*tiny) if s["kind"] == "lowpass"][0]
    site["inputs"] = [site["inputs"][0].clone().fill_(float("nan"))] + site["inputs"][1:]
    measured = ops.measure_site(site, warmup=0, iters=1)
    assert measured["error"].startswith("no form within tolerance") and \
        "fastest_within" not in measured
