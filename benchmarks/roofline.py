"""Per-stage roofline of one frame on a named GPU, with no GPU: the time below which generate
and super-resolution cannot run, from their arithmetic and their memory traffic.

``python -m benchmarks.roofline [--preset paper512] [--gpu h100] [--dtype bfloat16] [--json F]``

Why: the issue's frame target (paper512, expression -> 512 x 512 frame, <= 5 ms p50 on an H100)
can only be timed on a GPU, and most sessions have none. What a CPU can count exactly is what
each stage asks of the card. Every operator a stage dispatches is recorded on the meta device
(batch 1, source cached, weights and activations in ``--dtype``): its FLOPs
(``torch.utils.flop_counter``'s formulas) and the bytes it reads and writes (its tensor inputs
and outputs; views move nothing). Then, per stage:
- ``compute_ms``: all FLOPs at the card's dense tensor-core peak;
- ``eager_ms``: the sum over operators of max(FLOPs / peak, bytes / memory bandwidth), each
  operator its own kernel reading and writing memory, as eager PyTorch runs them;
- ``fused_ms``: max(compute, the stage's compulsory traffic (weights, input, output) at the
  memory bandwidth): what a perfectly fused stage could reach.
Attention is counted as the flash kernel the GPU runs (q, k, v and the output in memory,
4 n m d FLOPs per head), not as the softmax matrix the meta device would otherwise
materialise. The renderer is the fused ray-march kernel, whose costs ``benchmarks.kernel_sass``
counts; it is not repeated here.
Peaks are datasheet numbers (dense, no sparsity), so the bounds are optimistic: real kernels
reach a fraction of them, which a GPU run of ``benchmarks.gpu_suite`` measures.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from export3d import get_config, jsonfile  # noqa: E402
from export3d.model import build_model  # noqa: E402

from benchmarks import check_output  # noqa: E402
from export3d.config import PRESETS  # noqa: E402

# Datasheet figures: dense bf16/fp16 tensor-core TFLOPS, HBM TB/s.
GPUS = {
    "h100": {"name": "NVIDIA H100 SXM", "tensor_tflops": 989.4, "memory_tbps": 3.35},
    "h200": {"name": "NVIDIA H200", "tensor_tflops": 989.4, "memory_tbps": 4.8},
}
# Factories allocate without touching memory; metadata ops move nothing.
FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach",
        "lift_fresh", "_local_scalar_dense"}


class Ledger(TorchDispatchMode):
    """Records (operator, FLOPs, bytes read + written) for every operator dispatched."""

    def __init__(self):
        super().__init__()
        self.rows: list[dict] = []

    def add(self, name: str, flops: int, nbytes: int, shapes) -> None:
        self.rows.append({"op": name, "flops": int(flops), "bytes": int(nbytes),
                          "shapes": shapes})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        if func.is_view or name in FREE:
            return out
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        flops = 0
        if func._overloadpacket in flop_registry:
            flops = flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        nbytes = sum(t.numel() * t.element_size() for t in ins + outs)
        self.add(name, flops, nbytes, [list(t.shape) for t in ins[:2]])
        return out


@contextlib.contextmanager
def flash_attention(ledger: Ledger):
    """F.scaled_dot_product_attention as one flash kernel: q, k, v read, the output written,
    2 n m d FLOPs for q k^T and 2 n m d_v for the weighted sum, per batch and head."""
    original = torch.nn.functional.scaled_dot_product_attention

    def counted(q, k, v, *args, **kwargs):
        b, h, n, d = q.shape
        m, dv = k.shape[-2], v.shape[-1]
        with torch._C._DisableTorchDispatch():
            out = torch.empty((*q.shape[:-1], dv), dtype=q.dtype, device=q.device)
        nbytes = sum(t.numel() * t.element_size() for t in (q, k, v, out))
        ledger.add("flash_attention", 2 * b * h * n * m * (d + dv), nbytes,
                   [list(q.shape), list(k.shape)])
        return out

    torch.nn.functional.scaled_dot_product_attention = counted
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def stage_ledgers(preset: str, dtype: torch.dtype) -> dict:
    """{stage: (ledger rows, compulsory bytes)} for generate and superresolve, batch 1."""
    config = get_config(preset)
    with torch.device("meta"):
        model = build_model(config, seed=None)
    model = model.to(dtype).eval()
    image = torch.zeros(1, 3, config.image_size, config.image_size, device="meta", dtype=dtype)
    expr = torch.zeros(1, config.expr_dim, device="meta", dtype=dtype)
    features = torch.zeros(1, config.triplane_channels, config.render_size, config.render_size,
                           device="meta", dtype=dtype)
    gen = model.generator
    per_source = {id(p) for part in (gen.high, gen.stem, gen.merge) for p in part.parameters()}
    frame_weights = [p for p in gen.parameters() if id(p) not in per_source]
    out = {}
    with torch.no_grad():
        source = model.encode_source(image)
        code = model.expression_code(expr)
        ledger = Ledger()
        with ledger, flash_attention(ledger):
            triplane = gen.generate(source, code)
        compulsory = _bytes(frame_weights) + _bytes([source.high, source.tokens, code,
                                                     triplane, gen.triplane_ema])
        out["generate"] = (ledger.rows, compulsory)
        ledger = Ledger()
        with ledger:
            image_out = model.superresolve(features)
        compulsory = _bytes(model.superres.parameters()) + _bytes([features, image_out])
        out["superresolve"] = (ledger.rows, compulsory)
    return out


def bounds(rows: list[dict], compulsory: int, gpu: dict, top: int = 8) -> dict:
    peak = gpu["tensor_tflops"] * 1e12
    bandwidth = gpu["memory_tbps"] * 1e12
    flops = sum(r["flops"] for r in rows)
    traffic = sum(r["bytes"] for r in rows)
    per_op = [max(r["flops"] / peak, r["bytes"] / bandwidth) for r in rows]
    by_op: dict = {}
    for r, seconds in zip(rows, per_op):
        entry = by_op.setdefault(r["op"], {"op": r["op"], "calls": 0, "flops": 0, "bytes": 0,
                                           "eager_ms": 0.0})
        entry["calls"] += 1
        entry["flops"] += r["flops"]
        entry["bytes"] += r["bytes"]
        entry["eager_ms"] += seconds * 1e3
    ranked = sorted(by_op.values(), key=lambda e: -e["eager_ms"])[:top]
    for e in ranked:
        e["eager_ms"] = round(e["eager_ms"], 4)
    return {"operators": len(rows), "gflops": round(flops / 1e9, 2),
            "eager_traffic_mb": round(traffic / 1e6, 1),
            "compulsory_traffic_mb": round(compulsory / 1e6, 1),
            "compute_ms": round(flops / peak * 1e3, 4),
            "eager_ms": round(sum(per_op) * 1e3, 4),
            "fused_ms": round(max(flops / peak, compulsory / bandwidth) * 1e3, 4),
            "top": ranked}


def roofline(preset: str = "paper512", gpu: str = "h100", dtype: str = "bfloat16") -> dict:
    spec = GPUS[gpu]
    ledgers = stage_ledgers(preset, getattr(torch, dtype))
    stages = {name: bounds(rows, compulsory, spec) for name, (rows, compulsory) in ledgers.items()}
    return {"preset": preset, "dtype": dtype, "gpu": spec, "batch": 1, "stages": stages,
            "eager_ms": round(sum(s["eager_ms"] for s in stages.values()), 4),
            "fused_ms": round(sum(s["fused_ms"] for s in stages.values()), 4)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roofline",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper512", choices=sorted(PRESETS))
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16",
                                                                 "float32"))
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    check_output(parser, args.json)
    report = roofline(args.preset, args.gpu, args.dtype)
    print(f"{report['gpu']['name']}, {args.preset}, {args.dtype}, batch 1 (render: see "
          f"benchmarks.kernel_sass)")
    print(f"{'stage':<14}{'GFLOP':>9}{'ops':>6}{'compute ms':>12}{'eager ms':>10}"
          f"{'fused ms':>10}   top operators (eager ms)")
    for name, s in report["stages"].items():
        top = ", ".join(f"{e['op']} {e['eager_ms']:.3f}" for e in s["top"][:4])
        print(f"{name:<14}{s['gflops']:>9.1f}{s['operators']:>6}{s['compute_ms']:>12.3f}"
              f"{s['eager_ms']:>10.3f}{s['fused_ms']:>10.3f}   {top}")
    print(f"{'both':<14}{'':>9}{'':>6}{'':>12}{report['eager_ms']:>10.3f}"
          f"{report['fused_ms']:>10.3f}")
    if args.json:
        args.json.write_text(jsonfile.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
