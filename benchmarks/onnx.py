"""ONNX benchmark: export time, graph sizes and node counts, and per-frame CPU latency of
ONNX Runtime vs PyTorch on the same machine.

``python -m benchmarks.onnx [--json PATH] [--presets tiny] [--variants portable] [--frames N]
[--threads T]``

For each preset and precision: the portable graphs are exported (time per step), measured (bytes,
nodes), then one source is encoded and ``frames`` frames are timed through both backends of the
backend protocol (``export.backend``): ``onnxruntime`` (CPU provider, I/O binding) and ``torch``
(float32 eager on CPU, reference renderer). Latency is the median of the timed frames after two
warm-up frames. Both run with the same thread count. fp16 graphs run in ONNX Runtime's CPU
provider, which has few float16 kernels and inserts casts: their CPU latency says nothing about
a GPU. ``paper512`` is accepted but slow on a CPU; the default is ``tiny``.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import check_output
from export3d import jsonfile
from export3d.cli import at_least
from export3d.config import PRESETS


def time_frames(backend, config, frames: int, warmup: int = 2) -> dict:
    from export.graphs import example_inputs
    from export.parity import driving_frames

    backend.encode_source(example_inputs(config)["source_image"].numpy())
    drive = list(driving_frames(config, frames + warmup))
    times = []
    for i, (expr, camera) in enumerate(drive):
        t = time.perf_counter()
        backend.frame(expr, camera)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "frames": len(times)}


def run(presets, precisions, variants, frames: int, threads: int) -> dict:
    from export.backend import TorchBackend
    from export.onnx_export import export_onnx
    from export.ort_backend import OrtBackend
    from export.parity import compare_backends
    from export3d.config import get_config
    from export3d.model import build_model

    torch.set_num_threads(threads)
    results = []
    for preset in presets:
        config = get_config(preset)
        model = build_model(config, seed=0, render_impl="reference")
        with TorchBackend(build_model(config, seed=0), impl="reference") as ref:
            torch_latency = time_frames(ref, config, frames)
        for variant in variants:
            for precision in precisions:
                with tempfile.TemporaryDirectory() as tmp:
                    t = time.perf_counter()
                    res = export_onnx(model, tmp, variant=variant, precision=precision)
                    export_s = time.perf_counter() - t
                    row = {
                        "preset": preset, "variant": variant, "precision": precision,
                        "export_seconds": round(export_s, 3),
                        "export_steps": res.manifest["export_seconds"],
                        "graphs": {k: {"bytes": v["bytes"], "nodes": v["nodes"],
                                       "simplifier": v["simplifier"]}
                                   for k, v in res.manifest["graphs"].items()},
                        "torch_cpu_fp32": torch_latency,
                    }
                    with OrtBackend(tmp, threads=threads) as ort_backend:
                        row["onnxruntime_cpu"] = time_frames(ort_backend, config, frames)
                    row["max_abs_error_vs_torch"] = compare_backends(model, tmp, frames=2,
                                                                     check=False)
                row["ort_speedup_vs_torch"] = round(
                    torch_latency["median_ms"] / row["onnxruntime_cpu"]["median_ms"], 2)
                results.append(row)
                print(f"{preset:9s} {variant:8s} {precision}: export {export_s:.2f} s, "
                      f"frame_generator {row['graphs']['frame_generator']['nodes']} nodes "
                      f"{row['graphs']['frame_generator']['bytes'] / 1e6:.1f} MB, ORT "
                      f"{row['onnxruntime_cpu']['median_ms']:.2f} ms vs torch "
                      f"{torch_latency['median_ms']:.2f} ms per frame "
                      f"(x{row['ort_speedup_vs_torch']})", file=sys.stderr)
    import onnxruntime

    return {
        "benchmark": "onnx",
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": threads, "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "results": results,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.onnx", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--json", help="write the report here (default: stdout)")
    p.add_argument("--presets", nargs="+", default=["tiny"], choices=sorted(PRESETS))
    p.add_argument("--precisions", nargs="+", default=["fp32", "fp16"],
                   choices=["fp32", "fp16"])
    p.add_argument("--variants", nargs="+", default=["portable"], choices=["portable"])
    p.add_argument("--frames", type=at_least(1), default=30)
    p.add_argument("--threads", type=at_least(1), default=torch.get_num_threads())
    args = p.parse_args(argv)
    check_output(p, args.json)
    report = run(args.presets, args.precisions, args.variants, args.frames, args.threads)
    text = jsonfile.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
