"""The ``export3d`` command: one subcommand per job. Bad input ends with one sentence on
stderr and exit status 2, never a stack trace."""
from __future__ import annotations

import argparse
import sys

from .camera import ORBITS
from .config import PRESETS


def _render(args: argparse.Namespace) -> None:
    from .render import load_driving, orbit_driving, render_video

    if args.driving:
        driving = load_driving(args.driving)
    else:
        driving = orbit_driving(args.orbit, args.frames, fps=args.fps)
    out = render_video(args.source, args.out, driving, checkpoint=args.checkpoint,
                       preset=args.preset, device=args.device, impl=args.impl,
                       batch=args.batch, progress=not args.quiet)
    print(f"wrote {out} ({len(driving)} frames: rendered frame | depth)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="export3d", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="render a video of a portrait driven by a file or "
                            "a camera orbit")
    render.add_argument("--source", help="source portrait (JPEG/PNG); default: scikit-image's "
                        "astronaut")
    drive = render.add_mutually_exclusive_group()
    drive.add_argument("--driving", help="driving file (.npz or .json with expr [T,64] and "
                       "camera [T,25])")
    drive.add_argument("--orbit", choices=ORBITS, default="circle",
                       help="named camera orbit with a neutral expression (default: circle)")
    render.add_argument("--frames", type=int, default=48, help="frames of an orbit (default 48)")
    render.add_argument("--fps", type=float, default=25.0)
    render.add_argument("--checkpoint", help="weights (.safetensors); without it they are random")
    render.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="model preset when no checkpoint is given (default: tiny)")
    render.add_argument("--device", default="cpu", help="cpu or cuda")
    render.add_argument("--impl", choices=("auto", "reference", "kernel"), default="auto",
                        help="ray marcher: the fused kernel on CUDA (auto) or the reference")
    render.add_argument("--batch", type=int, default=1, help="frames per forward pass")
    render.add_argument("--out", default="export3d_render.mp4", help=".mp4, .avi or .mkv")
    render.add_argument("--quiet", action="store_true", help="no progress bar")
    render.set_defaults(run=_render)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .media import MediaError

    args = build_parser().parse_args(argv)
    if getattr(args, "frames", 1) < 1:
        print("export3d: error: --frames must be at least 1", file=sys.stderr)
        return 2
    try:
        args.run(args)
    except (MediaError, CheckpointError) as exc:
        print(f"export3d: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("export3d: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
