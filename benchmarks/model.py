"""Model benchmark: parameters and FLOPs per stage for each preset, CPU latency per stage.

``python -m benchmarks.model [--json PATH] [--repeats N]``

FLOPs come from ``torch.utils.flop_counter`` (matmuls, convolutions, attention), counted on the
``meta`` device so paper512 costs nothing to count. Stages are split per source (run once per
photo) and per frame (run for every webcam frame). grid_sample is not counted by torch's flop
counter; the renderer row adds an explicit estimate for the tri-plane lookups (3 planes x 4 taps
x C channels x 2 flops per sample), and says so in ``notes``.
"""
from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from export3d import PRESETS, get_config, jsonfile
from export3d.camera import orbit_path
from export3d.generator import count_parameters
from export3d.model import build_model
from benchmarks import check_output
from export3d.cli import at_least

STAGES = ("encode_source", "expression_code", "generate", "render", "superresolve")
PER_SOURCE = {"encode_source"}


def stage_calls(model, batch: int, device):
    """(name, thunk) per stage, each thunk feeding the next stage's cached input."""
    c = model.config
    image = torch.rand(batch, 3, c.image_size, c.image_size, device=device) * 2 - 1
    expr = torch.randn(batch, c.expr_dim, device=device)
    camera = orbit_path("circle", batch).to(device)
    state = {}

    def encode():
        state["source"] = model.encode_source(image)

    def code():
        state["code"] = model.expression_code(expr)

    def generate():
        state["triplane"] = model.generator.generate(state["source"], state["code"])

    def render():
        state["features"] = model.render(state["triplane"], camera, impl="reference")[0]

    def superresolve():
        state["image"] = model.superresolve(state["features"])

    return list(zip(STAGES, (encode, code, generate, render, superresolve)))


def grid_sample_flops(config, batch: int) -> int:
    samples = config.render_size ** 2 * (config.samples_coarse + config.samples_fine)
    return batch * samples * 3 * 4 * config.triplane_channels * 2


def count_flops(preset: str) -> dict:
    config = get_config(preset)
    with torch.device("meta"):
        model = build_model(config, seed=None)
    params = {"clebs": count_parameters(model.clebs),
              "generator": count_parameters(model.generator),
              "decoder": count_parameters(model.renderer.decoder),
              "superres": count_parameters(model.superres)}
    flops = {}
    with torch.no_grad():
        for name, call in stage_calls(model, 1, "meta"):
            counter = FlopCounterMode(display=False)
            with counter:
                call()
            flops[name] = counter.get_total_flops()
    flops["render"] += grid_sample_flops(config, 1)
    per_frame = sum(v for k, v in flops.items() if k not in PER_SOURCE)
    return {"preset": preset, "parameters": params, "parameters_total": sum(params.values()),
            "flops": flops, "flops_per_source": flops["encode_source"],
            "flops_per_frame": per_frame}


def time_stages(preset: str, repeats: int, device: str = "cpu") -> dict:
    config = get_config(preset)
    model = build_model(config).to(device)
    calls = stage_calls(model, 1, device)
    times = {name: [] for name, _ in calls}
    with torch.inference_mode():
        for _ in range(2):  # warm-up
            for _, call in calls:
                call()
        for _ in range(repeats):
            for name, call in calls:
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"p50_ms": statistics.median(v), "min_ms": min(v)} for name, v in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="model_benchmark.json", help="where to write the JSON")
    parser.add_argument("--repeats", type=at_least(1), default=10,
                        help="timed runs per stage (tiny, CPU)")
    args = parser.parse_args(argv)
    check_output(parser, args.json)

    report = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_threads": torch.get_num_threads(), "python": sys.version.split()[0],
                          "torch": torch.__version__},
              "presets": {}}
    for preset in PRESETS:
        report["presets"][preset] = count_flops(preset)
    report["presets"]["tiny"]["cpu_latency"] = time_stages("tiny", args.repeats)
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["notes"] = ("FLOPs: torch.utils.flop_counter on the meta device, batch 1; the render "
                       "row adds 3*4*C*2 FLOPs per sample for grid_sample, which the counter "
                       "does not see. CPU latency: tiny preset, batch 1, median of --repeats.")

    print(f"{'preset':<10}{'stage':<17}{'runs':<11}{'GFLOPs':>10}{'CPU p50 ms':>12}")
    for preset, r in report["presets"].items():
        lat = r.get("cpu_latency", {})
        for stage, flops in r["flops"].items():
            runs = "per source" if stage in PER_SOURCE else "per frame"
            ms = f"{lat[stage]['p50_ms']:.2f}" if stage in lat else "-"
            print(f"{preset:<10}{stage:<17}{runs:<11}{flops / 1e9:>10.3f}{ms:>12}")
        print(f"{preset:<10}{'= per frame':<17}{'':<11}{r['flops_per_frame'] / 1e9:>10.3f}"
              f"{'':>12}   params {r['parameters_total'] / 1e6:.2f} M")
    print(f"peak RSS {report['peak_rss_mib']:.0f} MiB")
    with open(args.json, "w") as f:
        jsonfile.dump(report, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
