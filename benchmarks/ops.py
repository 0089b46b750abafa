"""Candidate forms of the per-frame operators of generate and super-resolution, timed against
the model's own form on the inputs the model gives them: what adopting each would save per
frame.

``python -m benchmarks.ops [--preset paper512] [--dtype bfloat16] [--device cuda] [--json F]``
(also a section of ``benchmarks.gpu_suite``; on a CPU at ``tiny`` size it only proves it runs)

Why: generate is the largest stage of a frame (4.2 ms of the H200's 11.9 ms in bf16 +
channels-last, 2.4x its eager roofline floor), and three of its operator kinds have forms
whose speed depends on the card, its cuDNN and its attention kernels, not on arithmetic:
- ``attention``: ``F.scaled_dot_product_attention`` with 4 heads of 256 channels, 1024 tokens
  per low-resolution block and 16384 queries x 4096 keys in the fusion block (275 GFLOP of the
  frame's ~1000). Candidates: each SDPA backend forced (flash, memory-efficient, cuDNN, math);
  the model lets PyTorch choose.
- ``depthwise``: Mix-FFN's 3x3 depthwise convolution on 2048 channels; the model hands it the
  token grid as a channels-last view, which routes it to cuDNN. Candidates: contiguous NCHW
  (PyTorch's own depthwise kernel), an explicit channels-last copy.
- ``lowpass``: the fixed 5-tap Gaussian after each pixel shuffle, two grouped 1-D convolutions
  after a replicate pad (the SR up-sampler's depthwise transposed convolution was one of
  cuDNN's slow paths). Candidates: one depthwise 5 x 5 (the outer product), channels folded
  into the batch (single-channel convolutions), the model's form on a channels-last copy.
- ``superres``: each super-resolution block (2.8 ms of that frame, when its up-sampler was
  still a transposed convolution): FIR x2 up-sampling, then a 3 x 3 convolution. Candidate:
  ``polyphase``, the convolution of the up-sampled image as one convolution of the input with
  4x the output channels and a pixel shuffle (the same multiply-adds; at paper512's second
  block it skips writing, scaling and reading back a 128 MB up-sampled tensor), its four
  border lines recomputed the model's way.
- ``eadaln``: the expression-adaptive layer norms (two per block; 16384 tokens x 1024 in the
  fusion block), normalise, then scale and shift by the code's modulation: three passes over
  the tokens. Candidate: ``affine_in_norm``, with a batch of one the modulation as the layer
  norm's own weight and bias (one pass, rounded once).
The sites are found by running a frame once (a torch-function mode records the attention
calls, forward hooks the depthwise, low-pass, EAdaLN and SR-block modules), so the inputs
have the shapes, dtype and memory layout the model really produces, and the calls per frame
are counted. Every candidate is checked against the model's form computed in fp32 on the same
inputs: ``max_abs_err``, and ``within`` = at most twice the model's own form's error (its
rounding in the working dtype) plus 1e-4 of the output's scale. ``saving_ms_per_frame`` =
(model p50 - fastest candidate within tolerance p50) x calls per frame. Adopting a form is a
code change in ``export3d.generator`` or ``export3d.superres`` made after a GPU has measured
it here; :func:`fastest_forms` puts the fastest in the model's place for a block, so the GPU
suite can time the whole frame with them in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import check_output  # noqa: E402
from export3d import jsonfile  # noqa: E402
from export3d.config import PRESETS  # noqa: E402
from export3d.devices import resolve_device  # noqa: E402

# SDPA backends forced one at a time (torch.nn.attention.SDPBackend member names).
ATTENTION_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
RELATIVE_TOLERANCE = 1e-4


class _RecordAttention(TorchFunctionMode):
    """Records the (q, k, v) of every scaled_dot_product_attention call under it."""

    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.record("attention", args[:3], kwargs)
        return func(*args, **kwargs)


def _layout(t: torch.Tensor) -> str:
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(
            memory_format=torch.channels_last):
        return "channels_last"
    return "contiguous" if t.is_contiguous() else f"strides {tuple(t.stride())}"


def capture_sites(model, source, expr, camera=None) -> list[dict]:
    """Run a frame once (``model.generate(source, expr)``, then render with ``camera``, by
    default a frontal-ish orbit camera, and super-resolve) and return its candidate sites:
    kind, the first call's inputs (cloned with their strides), the module or keyword
    arguments, and the number of calls per frame with those shapes and layout."""
    from export3d.camera import orbit_path
    from export3d.generator import EAdaLN, GaussianLowPass, MixFFN
    from export3d.superres import SRBlock

    sites: dict = {}

    def record(kind, inputs, extra):
        key = (kind, tuple((tuple(t.shape), t.dtype, t.stride()) for t in inputs))
        if key in sites:
            sites[key]["calls"] += 1
        else:
            sites[key] = {"kind": kind, "inputs": [t.clone() for t in inputs], "extra": extra,
                          "calls": 1}

    handles = []
    for module in model.modules():
        if isinstance(module, GaussianLowPass):
            handles.append(module.register_forward_pre_hook(
                lambda m, args: record("lowpass", args[:1], m)))
        elif isinstance(module, MixFFN):
            handles.append(module.dwconv.register_forward_pre_hook(
                lambda m, args: record("depthwise", args[:1], m)))
        elif isinstance(module, SRBlock):
            handles.append(module.register_forward_pre_hook(
                lambda m, args: record("superres", args[:2], m)))
        elif isinstance(module, EAdaLN):
            handles.append(module.register_forward_pre_hook(
                lambda m, args: record("eadaln", args[:2], m)))
    if camera is None:
        camera = orbit_path("circle", 5)[2:3]
    try:
        with torch.inference_mode(), _RecordAttention(record):
            triplane = model.generate(source, expr)
            features = model.render(triplane, camera.to(triplane.device))[0]
            model.superresolve(features.to(triplane.dtype))
    finally:
        for handle in handles:
            handle.remove()
    return list(sites.values())


# --------------------------------------------------------------------------- candidate forms

# Each kind's forms by name, as functions of the live call (so a chosen form can also be put
# in the model's place: fastest_forms). attention: (q, k, v, kwargs, sdpa) with ``sdpa`` the
# function to call; depthwise: (conv, x); lowpass: (lowpass, x), ``conv`` / ``lowpass`` the
# module's own forward.
def attention_form(name: str):
    backend = None if name == "model" else name.upper()

    def form(q, k, v, kwargs, sdpa=None):
        sdpa = sdpa or F.scaled_dot_product_attention
        if backend is None:
            return sdpa(q, k, v, **kwargs)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([getattr(SDPBackend, backend)]):
            return sdpa(q, k, v, **kwargs)
    return form


def attention_form_names() -> list[str]:
    return ["model"] + [b.lower() for b in ATTENTION_BACKENDS
                        if hasattr(torch.nn.attention.SDPBackend, b)]


DEPTHWISE_FORMS = {
    "model": lambda conv, x: conv(x),
    "nchw": lambda conv, x: conv(x.contiguous()),
    "channels_last": lambda conv, x: conv(x.contiguous(memory_format=torch.channels_last)),
}


def _lowpass_5x5(lowpass, x):
    c, pad = x.shape[1], lowpass.pad
    k1 = lowpass.kernel.to(x.dtype)
    k2 = (k1[:, None] * k1[None, :]).expand(c, 1, -1, -1)  # the outer product, [C, 1, 5, 5]
    return F.conv2d(F.pad(x, (pad,) * 4, mode="replicate"), k2, groups=c)


def _lowpass_folded(lowpass, x):  # channels into the batch: single-channel convolutions, NCHW
    b, c, h, w = x.shape
    k1 = lowpass.kernel.to(x.dtype)
    y = F.pad(x.contiguous().reshape(b * c, 1, h, w), (lowpass.pad,) * 4, mode="replicate")
    y = F.conv2d(y, k1.reshape(1, 1, 1, -1))
    return F.conv2d(y, k1.reshape(1, 1, -1, 1)).reshape(b, c, h, w)


# x: [B, C, H, W] after a pixel shuffle; every form is replicate padding and the same separable
# 5-tap Gaussian, summed in a different order.
LOWPASS_FORMS = {
    "model": lambda lowpass, x: lowpass(x),
    "depthwise_5x5": _lowpass_5x5,
    "batch_folded": _lowpass_folded,
    "channels_last": lambda lowpass, x: lowpass(x.contiguous(memory_format=torch.channels_last)),
}


# Super-resolution: each SRBlock's up-sample + first convolution. The FIR x2 up-sampler makes
# u[2a + p] of x[a - 1 .. a + 1]; row d + 1 of _PHASES[p] holds the weights of x[a - 1], x[a],
# x[a + 1] in u[2a + p + d], d the convolution's tap offset (-1, 0, 1).
_PHASES = ((( 0.75, 0.25, 0.0), (0.25, 0.75, 0.0), (0.0, 0.75, 0.25)),  # noqa: E201
           ((0.25, 0.75, 0.0), (0.0, 0.75, 0.25), (0.0, 0.25, 0.75)))


_POLYPHASE_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def polyphase_weight(conv) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv`` (3 x 3, padding 1) after the x2 up-sampler, as one 3 x 3 convolution of the
    low-resolution input with 4x the output channels (channel 4o + 2p + q: output channel o at
    sub-pixel (p, q), pixel_shuffle's order): weights ``A_p^T W A_q`` computed in fp32. Kept
    per module until its weights change (a model adopting the form would compute them once;
    and a CUDA graph capture must not build a tensor from Python data, a host copy)."""
    w = conv.weight
    key = (w._version, w.dtype, w.device, w.data_ptr())
    cached = _POLYPHASE_CACHE.get(conv)
    if cached is not None and cached[0] == key:
        return cached[1]
    a = torch.tensor(_PHASES, device=w.device)
    k = torch.einsum("pdm,oide,qen->opqimn", a, w.float(), a)
    o, i = w.shape[:2]
    k = k.reshape(4 * o, i, 3, 3).to(w.dtype)
    result = (k, conv.bias.repeat_interleave(4))
    _POLYPHASE_CACHE[conv] = (key, result)
    return result


def _up_conv_polyphase(block, x):
    """``block.conv0(block.up(x))`` as one convolution of ``x`` and a pixel shuffle: the same
    multiply-adds without the 4x up-sampled tensor (at paper512's second block, 128 MB of bf16
    written, scaled and read again). The four border lines differ (the convolution's zero
    padding of the up-sampled image is not the up-sampler's), so they are recomputed the
    model's way from two-line strips of ``x``."""
    k, b = polyphase_weight(block.conv0)
    z = F.pixel_shuffle(F.conv2d(x, k, b, padding=1), 2)
    conv, up = block.conv0, block.up
    z[..., :1, :] = conv(up(x[..., :2, :]))[..., :1, :]
    z[..., -1:, :] = conv(up(x[..., -2:, :]))[..., -1:, :]
    z[..., :, :1] = conv(up(x[..., :, :2]))[..., :, :1]
    z[..., :, -1:] = conv(up(x[..., :, -2:]))[..., :, -1:]
    return z


def _sr_block_polyphase(block, x, rgb):
    h = F.leaky_relu(_up_conv_polyphase(block, x), 0.2)
    h = F.leaky_relu(block.conv1(h), 0.2)
    return h, block.up(rgb) + block.torgb(h)


# (block, x, rgb) -> (features, rgb), as export3d.superres.SRBlock.forward.
SUPERRES_FORMS = {
    "model": lambda block, x, rgb: block(x, rgb),
    "polyphase": _sr_block_polyphase,
}


def _eadaln_affine_in_norm(norm, x, code):
    """EAdaLN with a batch of one: the modulation as the layer norm's own affine (one kernel
    that rounds once, where the model's form is three: normalise, scale, shift)."""
    if x.shape[0] != 1:
        return norm(x, code)
    mod = norm.proj(F.silu(code)).unsqueeze(1)
    dim = norm.dim
    out = F.layer_norm(x, (dim,), 1 + mod[0, 0, :dim], mod[0, 0, dim: 2 * dim])
    return out, (mod[..., 2 * dim:] if norm.gate else None)


# (norm, x, code) -> (out, gate or None), as export3d.generator.EAdaLN.forward.
EADALN_FORMS = {
    "model": lambda norm, x, code: norm(x, code),
    "affine_in_norm": _eadaln_affine_in_norm,
}


def superres_forms(x, rgb, block) -> dict:
    return {name: (lambda f=f: f(block, x, rgb)) for name, f in SUPERRES_FORMS.items()}


def attention_forms(q, k, v, kwargs) -> dict:
    return {name: (lambda f=attention_form(name): f(q, k, v, kwargs))
            for name in attention_form_names()}


def depthwise_forms(x, conv) -> dict:
    """x: the [B, C, h, w] token-grid view Mix-FFN passes its depthwise conv (channels-last
    strides); each form ends in a tensor the next Linear reads as tokens without a copy."""
    return {name: (lambda f=f: f(conv, x)) for name, f in DEPTHWISE_FORMS.items()}


def lowpass_forms(x, lowpass) -> dict:
    return {name: (lambda f=f: f(lowpass, x)) for name, f in LOWPASS_FORMS.items()}


class _Unpatched:
    """A module as a form sees it in :func:`fastest_forms`: its attributes, and calling it runs
    the class's own forward (not the one put in its place, which would call the form again)."""

    def __init__(self, module):
        self._module = module
        self._forward = type(module).forward.__get__(module)

    def __call__(self, *args, **kwargs):
        return self._forward(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._module, name)


@contextlib.contextmanager
def fastest_forms(model, sites: list[dict]):
    """Within the block, ``model``'s generator runs each site that ``op_candidates`` measured
    (``sites``: its result's ``sites``) in the site's ``fastest_within`` form, chosen by the
    call's input shapes (the same module can serve sites of several shapes); calls of other
    shapes, and sites whose fastest form is the model's own, run as before. Eager and CUDA-graph
    use (it replaces module forwards and ``F.scaled_dot_product_attention`` for the block);
    yields {kind: {shapes: form}} of what it put in place."""
    from export3d.generator import EAdaLN, GaussianLowPass, MixFFN
    from export3d.superres import SRBlock

    chosen: dict = {"attention": {}, "depthwise": {}, "lowpass": {}, "superres": {},
                    "eadaln": {}}
    for site in sites:
        best = site.get("fastest_within")
        if best and best != "model":
            chosen[site["kind"]][tuple(tuple(shape) for shape in site["shapes"])] = best
    patched = []

    def patch(module, kind, table):
        own = _Unpatched(module)

        def forward(*args, **kwargs):
            name = chosen[kind].get(tuple(tuple(a.shape) for a in args))
            if name is None or kwargs:
                return own(*args, **kwargs)
            return table[name](own, *args)
        module.forward = forward
        patched.append(module)

    for module in model.modules():
        if isinstance(module, GaussianLowPass) and chosen["lowpass"]:
            patch(module, "lowpass", LOWPASS_FORMS)
        elif isinstance(module, MixFFN) and chosen["depthwise"]:
            patch(module.dwconv, "depthwise", DEPTHWISE_FORMS)
        elif isinstance(module, SRBlock) and chosen["superres"]:
            patch(module, "superres", SUPERRES_FORMS)
        elif isinstance(module, EAdaLN) and chosen["eadaln"]:
            patch(module, "eadaln", EADALN_FORMS)
    original = F.scaled_dot_product_attention

    def sdpa(q, k, v, *args, **kwargs):
        name = chosen["attention"].get((tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        if name is None or args:
            return original(q, k, v, *args, **kwargs)
        return attention_form(name)(q, k, v, kwargs, sdpa=original)

    if chosen["attention"]:
        F.scaled_dot_product_attention = sdpa
    try:
        yield {kind: {" ".join("x".join(map(str, s)) for s in shapes): name
                      for shapes, name in table.items()} for kind, table in chosen.items()}
    finally:
        F.scaled_dot_product_attention = original
        for module in patched:
            del module.forward


def _forms(site) -> dict:
    inputs = site["inputs"]
    if site["kind"] == "attention":
        return attention_forms(*inputs, site["extra"])
    if site["kind"] == "depthwise":
        return depthwise_forms(inputs[0], site["extra"])
    if site["kind"] == "superres":
        return superres_forms(*inputs, site["extra"])
    if site["kind"] == "eadaln":
        x, code = inputs
        return {name: (lambda f=f: f(site["extra"], x, code)) for name, f in EADALN_FORMS.items()}
    return lowpass_forms(inputs[0], site["extra"])


def _flat(result) -> torch.Tensor:
    """A form's result as one fp32 tensor (a super-resolution block returns two)."""
    if isinstance(result, (tuple, list)):
        return torch.cat([t.float().flatten() for t in result if t is not None])
    return result.float()


def _fp32_reference(site) -> torch.Tensor:
    """The model's form in fp32 on the same (upcast) inputs: the truth the candidates and
    the model's own form are compared with."""
    import copy

    inputs = [t.float() for t in site["inputs"]]
    extra = site["extra"]
    # No TF32 in the truth (the suite allows it for the model's fp32 variants).
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        if site["kind"] == "attention":
            return attention_form("math" if inputs[0].is_cuda else "model")(*inputs, extra)
        return _flat(copy.deepcopy(extra).float()(*inputs))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def measure_site(site, warmup: int, iters: int) -> dict:
    from benchmarks.gpu_suite import stats, time_cuda

    first = site["inputs"][0]
    out = {"kind": site["kind"], "calls_per_frame": site["calls"],
           "shapes": [list(t.shape) for t in site["inputs"]],
           "dtype": str(first.dtype).replace("torch.", ""), "layout": _layout(first),
           "forms": {}}
    with torch.inference_mode():
        reference = _fp32_reference(site)
        scale = float(reference.abs().max())
        for name, fn in _forms(site).items():
            row: dict = {}
            try:
                result = fn()
                row["max_abs_err"] = float((_flat(result) - reference).abs().max())
                row["out_layout"] = _layout(result[0] if isinstance(result, tuple) else result)
                row.update(stats(time_cuda(fn, warmup, iters, torch)))
            except Exception as exc:  # a backend that refuses these shapes or this card
                row = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
            out["forms"][name] = row
    model_row = out["forms"]["model"]
    if "p50_ms" not in model_row:
        out["error"] = f"the model's own form failed: {model_row.get('error')}"
        return out
    tolerance = 2.0 * model_row["max_abs_err"] + RELATIVE_TOLERANCE * scale
    out["tolerance"] = tolerance
    good = {}
    for name, row in out["forms"].items():
        if "p50_ms" in row:
            row["within"] = row["max_abs_err"] <= tolerance
            if row["within"]:
                good[name] = row["p50_ms"]
    if not good:  # the model's own error is not finite: nothing to compare against
        out["error"] = (f"no form within tolerance (the model's own form is "
                        f"{model_row['max_abs_err']:.3g} from fp32)")
        return out
    best = min(good, key=good.get)
    out["fastest_within"] = best
    out["saving_ms_per_frame"] = round((model_row["p50_ms"] - good[best]) * site["calls"], 4)
    return out


def op_candidates(model, source, expr, warmup: int, iters: int, progress=None,
                  time_left=None) -> dict:
    """Every site of ``model.generate`` measured (see the module docstring), and the total
    saving per frame if each site took its fastest form within tolerance. ``progress``: a
    callable given a line as each site starts; ``time_left``: a callable giving the seconds
    left, below 20 the remaining sites are skipped. A site that fails is recorded as such and
    the others still run, unless its error left the CUDA context unusable (every later call
    would fail): then the rest are skipped, saying so."""
    from benchmarks.gpu_suite import context_lost

    sites, stopped = [], None
    for site in capture_sites(model, source, expr):
        shape = "x".join(map(str, site["inputs"][0].shape))
        head = {"kind": site["kind"], "calls_per_frame": site["calls"],
                "shapes": [list(t.shape) for t in site["inputs"]]}
        if stopped is None and time_left is not None and time_left() < 20:
            stopped = f"time budget ({time_left():.0f} s left)"
        if stopped:
            sites.append({**head, "skipped": stopped})
            continue
        if progress:
            progress(f"{site['kind']} {shape} ...")
        try:
            sites.append(measure_site(site, warmup, iters))
        except Exception as exc:  # noqa: BLE001 - recorded; the other sites still run
            sites.append({**head, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
            if context_lost(torch):
                stopped = f"the CUDA context was lost at {site['kind']} {shape}"
    sites.sort(key=lambda s: -s.get("saving_ms_per_frame", 0.0))
    return {"sites": sites,
            "saving_ms_per_frame": round(sum(s.get("saving_ms_per_frame", 0.0)
                                             for s in sites), 4)}


def print_table(result: dict) -> None:
    print(f"{'site':12} {'shape':28} {'calls':>5}  form             p50 ms   max err   within")
    for s in result["sites"]:
        shape = "x".join(map(str, s["shapes"][0]))
        if "forms" not in s:  # skipped, or failed before its forms ran
            print(f"{s['kind']:12} {shape:28} {s['calls_per_frame']:>5}  "
                  f"{s.get('skipped') or s.get('error', '')}"[:120])
            continue
        for i, (name, row) in enumerate(s["forms"].items()):
            head = (f"{s['kind']:12} {shape:28} {s['calls_per_frame']:>5}" if i == 0
                    else " " * 47)
            if "p50_ms" in row:
                print(f"{head}  {name:15} {row['p50_ms']:8.4f} {row['max_abs_err']:9.2e}   "
                      f"{row.get('within', '-')}")
            else:
                print(f"{head}  {name:15} {row.get('error', '')[:60]}")
        if "fastest_within" in s:
            print(f"{'':47}  -> {s['fastest_within']}, saves {s['saving_ms_per_frame']:.4f} "
                  f"ms per frame")
    print(f"total saving per frame: {result['saving_ms_per_frame']:.4f} ms")


def prepared_model(preset: str, dtype, device, channels_last: bool, render_impl="auto"):
    """A randomly initialised model of ``preset`` in ``dtype`` on ``device`` with a cached
    source and an expression code, as the suite's model variants run it."""
    from export3d import get_config
    from export3d.model import build_model

    config = get_config(preset)
    model = build_model(config, seed=0, render_impl=render_impl).eval()
    model.clebs.freeze_basis()
    model = model.to(device=device, dtype=dtype)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=memory_format)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, config.image_size, config.image_size, generator=generator) * 2 - 1
    image = image.to(device=device, dtype=dtype).contiguous(memory_format=memory_format)
    expr = torch.randn(1, config.expr_dim, generator=generator).to(device=device, dtype=dtype)
    with torch.inference_mode():
        source = model.encode_source(image)
    return model, source, expr


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ops",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="default: paper512 on CUDA, tiny on CPU")
    parser.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    check_output(parser, args.json)
    try:
        device = torch.device(resolve_device(args.device))
    except ValueError as exc:  # export3d's UserError: no such device here
        parser.error(str(exc))
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    preset = args.preset or ("paper512" if cuda else "tiny")
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    model, source, expr = prepared_model(preset, dtype, device, not args.no_channels_last)
    iters = args.iters or (50 if cuda else 3)
    result = {"preset": preset, "dtype": str(dtype).replace("torch.", ""),
              "device": torch.cuda.get_device_name() if cuda else "cpu",
              "channels_last": not args.no_channels_last,
              **op_candidates(model, source, expr, 5 if cuda else 1, iters)}
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(jsonfile.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
