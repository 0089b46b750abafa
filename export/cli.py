"""``export3d export onnx``: write the ONNX graphs and their manifest;
``export3d export engine``: build TensorRT engines from the plugin graphs.

    export3d export onnx --preset tiny --out graphs/
    export3d export onnx --checkpoint model.safetensors --variant plugin --fp16 --out graphs/
    export3d export onnx --preset tiny --out graphs/ --verify --provider cpu
    export3d export engine --onnx graphs/ --out engines/ [--timing-cache F] [--opt-level N]
    export3d export engine --checkpoint model.safetensors [--fp16] --out engines/

Registered through the ``export3d.commands`` entry point (``export = "export.cli:register"``).
Bad input (a checkpoint for another preset, an unwritable folder, an unknown provider) ends
with one sentence and exit status 2; a failed export leaves no graph behind.
"""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    from export3d.config import PRESETS

    from .graphs import VARIANTS
    from .onnx_export import DEFAULT_OPSET

    p = subparsers.add_parser("export", help="export deployable graphs (ONNX) and TensorRT "
                              "engines")
    sub = p.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    o = sub.add_parser("onnx", help="write source_encoder.onnx, frame_generator.onnx and "
                       "manifest.json")
    o.add_argument("--preset", choices=sorted(PRESETS),
                   help="model preset (default: the checkpoint's; without a checkpoint: tiny)")
    o.add_argument("--checkpoint", help="weights (.safetensors); without it they are random")
    o.add_argument("--variant", choices=VARIANTS, default="portable",
                   help="portable: standard ONNX ops only, any ONNX Runtime provider; plugin: "
                   "the ray marcher as one custom node for the TensorRT plugin")
    o.add_argument("--fp16", action="store_true", help="float16 graphs (the ray march stays "
                   "float32)")
    o.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    o.add_argument("--no-simplify", dest="simplify", action="store_false",
                   help="skip onnxsim/onnxslim")
    o.add_argument("--verify", action="store_true", help="run the graphs in ONNX Runtime and "
                   "compare with PyTorch")
    o.add_argument("--provider", default="cpu", help="ONNX Runtime execution provider(s) for "
                   "--verify, comma-separated (cpu, cuda, directml, coreml, ...)")
    o.add_argument("--out", required=True, help="folder to write into")
    o.add_argument("--quiet", action="store_true", help="no progress display")
    o.set_defaults(run=run_onnx)
    e = sub.add_parser("engine", help="build source_encoder.engine and frame_generator.engine "
                       "(TensorRT, this GPU) from the plugin graphs")
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", help="the folder 'export3d export onnx --variant plugin' "
                        "wrote")
    source.add_argument("--checkpoint", help="one command from weights to engines: export this "
                        "checkpoint's plugin graphs into OUT/onnx, then build from them")
    source.add_argument("--preset", choices=sorted(PRESETS), help="as --checkpoint, with "
                        "RANDOM weights of this preset (to time a build, not to run it)")
    e.add_argument("--fp16", action="store_true", help="with --checkpoint/--preset: float16 "
                   "graphs, so float16 engines (the ray march stays float32)")
    e.add_argument("--out", required=True, help="folder to write the engines into")
    e.add_argument("--timing-cache", help="TensorRT timing cache file, read and updated "
                   "(default: OUT/timing.cache)")
    e.add_argument("--opt-level", type=int, default=3, help="TensorRT builder optimisation "
                   "level, 0 (fast build) to 5 (default 3)")
    e.add_argument("--workspace-gb", type=float, default=4.0,
                   help="workspace memory limit in GiB (default 4)")
    e.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    e.add_argument("--quiet", action="store_true", help="no progress lines")
    e.set_defaults(run=run_engine)


def run_onnx(args) -> None:
    from .onnx_export import export_onnx, load_model

    providers = None
    if args.verify:  # resolve before the export: an unknown provider fails fast
        from .ort_backend import resolve_providers

        providers = resolve_providers(args.provider)
    preset = args.preset or (None if args.checkpoint else "tiny")
    if args.checkpoint is None:
        print("WARNING: no --checkpoint given: the exported graphs carry RANDOM weights.",
              file=sys.stderr)
    model = load_model(preset, args.checkpoint)
    result = export_onnx(model, args.out, variant=args.variant,
                         precision="fp16" if args.fp16 else "fp32", opset=args.opset,
                         simplify=args.simplify, preset=model.config.preset,
                         checkpoint=args.checkpoint, progress=not args.quiet)
    m = result.manifest
    for stage, entry in m["graphs"].items():
        print(f"wrote {result.out_dir / entry['file']} ({entry['bytes'] / 1e6:.1f} MB, "
              f"{entry['nodes']} nodes, {entry['simplifier']})")
    print(f"wrote {result.out_dir / 'manifest.json'} ({m['variant']}, {m['precision']}, opset "
          f"{m['opset']}, {m['export_seconds']['total']:.1f} s)")
    if args.verify:
        from .parity import compare_backends

        errors = compare_backends(model, result.out_dir, providers=providers)
        print("verify (max abs error vs PyTorch): " + ", ".join(
            f"{k} {v:.2e}" for k, v in errors.items()))


def _export_for_engines(args, options) -> str:
    """``export engine --checkpoint/--preset``: the plugin graphs, exported into OUT/onnx once
    this machine is known to build engines (TensorRT importable, a GPU visible), so that a
    machine without them fails in a second, not after the export. The engines' metadata names
    this folder: a mismatched engine is rebuilt from it (``export3d live`` does so unless
    ``--no-rebuild``)."""
    from pathlib import Path

    from engines.trt import builder, import_tensorrt

    from .onnx_export import export_onnx, load_model

    options.checked()  # a bad --opt-level or --workspace-gb, before minutes of export
    import_tensorrt()
    builder.gpu_info()
    if args.checkpoint is None:
        print("WARNING: no --checkpoint given: the engines carry RANDOM weights.",
              file=sys.stderr)
    model = load_model(args.preset, args.checkpoint)
    out = Path(args.out) / "onnx"
    export_onnx(model, out, variant="plugin", precision="fp16" if args.fp16 else "fp32",
                preset=model.config.preset, checkpoint=args.checkpoint, progress=not args.quiet)
    print(f"wrote the plugin graphs into {out}", flush=True)
    return str(out)


def run_engine(args) -> None:
    from pathlib import Path

    from export3d.errors import UserError

    try:
        from engines.trt.builder import BuildOptions, build_engines
        from engines.trt.errors import TensorRTError
    except ImportError as exc:
        raise UserError(f"the TensorRT builder (engines.trt) cannot be imported ({exc}); "
                        "reinstall export3d") from None
    options = BuildOptions(timing_cache=Path(args.timing_cache) if args.timing_cache else None,
                           opt_level=args.opt_level, workspace_gb=args.workspace_gb,
                           verbose=args.verbose)
    report = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    if args.fp16 and args.onnx:
        raise UserError("--fp16 is for --checkpoint/--preset; the graphs in --onnx keep the "
                        "precision they were exported in")
    try:
        onnx_dir = args.onnx or _export_for_engines(args, options)
        built = build_engines(onnx_dir, args.out, options, report=report)
    except TensorRTError as exc:
        raise UserError(str(exc)) from None
    for meta in built:
        print(f"wrote {Path(args.out) / meta['engine']} ({meta['precision']}, {meta['gpu']}, "
              f"TensorRT {meta['tensorrt']}, {meta['build_seconds']:.1f} s)")
