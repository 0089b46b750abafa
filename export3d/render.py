"""``export3d render``: source portrait + driving description -> video of frames and depth maps.

Driving description, one of:
- a driving file: ``.npz`` with ``expr [T, 64]`` and ``camera [T, 25]`` (optional
  ``timestamps [T]``), or ``.json`` ``{"expr": [[64 floats] x T], "camera": [[25 floats] x T]}``
  (what ``export3d track`` writes);
- a named camera orbit (``frontal``, ``yaw``, ``pitch``, ``circle``) with a neutral expression.
Each output frame is ``[rendered frame | depth map]`` side by side at the model's resolution.
"""
from __future__ import annotations


import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import camera as cam
from .config import get_config
from .devices import resolve_device
from .media import (MAX_FPS, MediaError, VideoWriter, center_crop, default_portrait, depth_to_rgb,
                    load_image, to_model_input, to_uint8_rgb)
from .renderer import kernel_interpreted

def random_weights_warning() -> str:
    """What render and live print without a checkpoint, naming the demo checkpoint where this
    install has it."""
    from . import demo
    from .errors import UserError

    text = ("WARNING: no --checkpoint given: the model's weights are RANDOM, so every frame is "
            "noise. Pass --checkpoint FILE.safetensors for real output")
    try:
        where = demo.checkpoint()
    except UserError:
        return text + "."
    return (f"{text} (the one trained model shipped is the demo's, 64 px and one identity: "
            f"--checkpoint {where}).")


@dataclass
class Driving:
    expr: torch.Tensor  # [T, 64]
    camera: torch.Tensor  # [T, 25]
    fps: float = 25.0

    def __len__(self) -> int:
        return self.expr.shape[0]


MAX_FRAMES = 1_000_000  # ~11 hours at 25 fps; --frames above it is a typo, not a video


def load_driving(path: str | Path, expr_dim: int = 64) -> Driving:
    """A driving file, checked whole before any work: readable, ``expr [T, expr_dim]`` and
    ``camera [T, 25]`` of finite numbers, a frame rate in (0, MAX_FPS]."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"driving file {path} does not exist")
    if path.suffix not in (".npz", ".json"):
        raise MediaError(f"driving file {path.name} must be .npz or .json")
    try:
        if path.suffix == ".npz":
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            with data:
                expr, camera = data["expr"], data["camera"]
                fps = _fps_from_timestamps(data["timestamps"]) if "timestamps" in data else 25.0
        else:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            expr, camera = data["expr"], data["camera"]
            fps = float(data.get("fps", 25.0))
        expr = np.asarray(expr, dtype=np.float32)
        camera = np.asarray(camera, dtype=np.float32)
    except (KeyError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise MediaError(f"{path} is not a driving file with 'expr' and 'camera' arrays of "
                         f"numbers ({type(exc).__name__}: {exc})") from None
    if expr.ndim != 2 or expr.shape[1] != expr_dim or camera.ndim != 2 or camera.shape[1] != 25 \
            or expr.shape[0] != camera.shape[0] or expr.shape[0] == 0:
        raise MediaError(f"{path}: expected expr [T, {expr_dim}] and camera [T, 25] with the same "
                         f"T > 0, got {tuple(expr.shape)} and {tuple(camera.shape)}")
    finite = np.isfinite(expr).all(axis=1) & np.isfinite(camera).all(axis=1)
    if not finite.all():  # rendered as black or garbage frames before, and reported done
        raise MediaError(f"{path}: frame {int(np.argmin(finite))} holds NaN or infinite values "
                         f"({int((~finite).sum())} of {len(finite)} frames)")
    if not 0 < fps <= MAX_FPS:
        raise MediaError(f"{path}: frame rate {fps:g} is not in (0, {MAX_FPS:g}] (timestamps "
                         "are in seconds)")
    return Driving(torch.from_numpy(expr), torch.from_numpy(camera), fps)


def _fps_from_timestamps(ts) -> float:
    ts = np.asarray(ts, dtype=np.float64)
    if ts.size < 2 or not np.all(np.diff(ts) > 0):
        return 25.0
    return float(1.0 / np.median(np.diff(ts)))


def orbit_driving(name: str, frames: int, expr_dim: int = 64, fps: float = 25.0) -> Driving:
    return Driving(torch.zeros(frames, expr_dim), cam.orbit_path(name, frames), fps)


def render_video(source: str | Path | None, out: str | Path, driving: Driving,
                 checkpoint: str | Path | None = None, preset: str = "tiny",
                 device: str = "cpu", impl: str = "auto", batch: int = 1,
                 progress: bool = True) -> Path:
    """Render ``driving`` from ``source`` and write ``out``; returns the path written."""
    from tqdm import tqdm

    from .model import build_model

    if checkpoint is None:
        print(random_weights_warning(), file=sys.stderr)
        model = build_model(get_config(preset), seed=0, render_impl=impl)
    else:
        from .checkpoint import load_checkpoint

        model = load_checkpoint(checkpoint, render_impl=impl)
    model = model.to(device)
    config = model.config

    source_path = source if source is not None else default_portrait()
    rgb = load_image(source_path)
    image = to_model_input(source_crop(rgb, config.image_size, source_path)).to(device)
    size = config.image_size
    with torch.inference_mode():
        source_features = model.encode_source(image)  # once per photo
        writer = VideoWriter(out, driving.fps, (2 * size, size))
        try:
            with writer:
                bar = tqdm(total=len(driving), unit="frame", desc="render", disable=not progress,
                           file=sys.stderr)
                for start in range(0, len(driving), batch):
                    expr = driving.expr[start: start + batch].to(device)
                    camera = driving.camera[start: start + batch].to(device)
                    n = expr.shape[0]
                    source_batch = _repeat(source_features, n)
                    frame = model.synthesize(source_batch, expr, camera)
                    for i in range(n):
                        depth = torch.nn.functional.interpolate(
                            frame["depth"][i: i + 1], size=(size, size), mode="nearest")[0]
                        writer.write(np.concatenate(
                            [to_uint8_rgb(frame["image"][i]),
                             depth_to_rgb(depth, config.ray_near, config.ray_far)], axis=1))
                    bar.update(n)
                bar.close()
        except BaseException:  # Ctrl-C or an error: say where the frames so far are
            if writer.frames:
                print(f"render stopped after {writer.frames} frames; they are in "
                      f"{writer.partial_path}", file=sys.stderr)
            raise
    return Path(out)


def source_crop(rgb: np.ndarray, size: int, name, with_pose: bool = False):
    """The EG3D-aligned crop of the portrait (tracking.md 4.8) at ``size``; a centred crop, with
    a note, where the face model has not been set up (``export3d assets``). A photo without a
    detectable face is refused. ``with_pose``: (crop, R_src), the head rotation of the face
    (tracking.md 4.3; None without the face model), which the live app's relative camera
    applies the driver's motion to."""
    from .assets import find_face_model
    from .errors import UserError

    try:
        model_path = find_face_model()
    except UserError as exc:
        print(f"note: {exc}; using a centred crop of the source instead", file=sys.stderr)
        return (center_crop(rgb, size), None) if with_pose else center_crop(rgb, size)
    from .tracking.crop import aligned_crop, template_from_canonical
    from .tracking.landmarker import Landmarker, LandmarkerConfig
    from .tracking.pose import load_canonical_face

    with Landmarker(LandmarkerConfig(mode="image", model_path=str(model_path))) as landmarker:
        face = landmarker.detect_in_photo(rgb)
    if face is None:
        raise MediaError(f"no face found in {name}; use a photo with one clearly visible face")
    canonical = load_canonical_face(model_path)
    crop = aligned_crop(rgb, face.landmarks, template_from_canonical(canonical.vertices),
                        size)[0]
    if not with_pose:
        return crop
    from .tracking.pose import PoseEstimator, to_pixel_frame

    points = to_pixel_frame(face.landmarks, face.width, face.height)
    return crop, PoseEstimator(canonical).fit(points).rotation


def _run(args) -> None:
    if args.driving and args.frames is not None:  # was silently ignored
        raise MediaError("--frames is for --orbit; a driving file renders all of its frames")
    frames = 48 if args.frames is None else args.frames
    if not 1 <= frames <= MAX_FRAMES:
        raise MediaError(f"--frames must be 1 to {MAX_FRAMES}")
    if args.batch < 1:
        raise MediaError("--batch must be at least 1")
    if args.fps is not None and not 0 < args.fps <= MAX_FPS:
        raise MediaError(f"--fps must be more than 0 and at most {MAX_FPS:g}")
    device = resolve_device(args.device)
    if args.impl == "kernel" and not device.startswith("cuda") and not kernel_interpreted():
        if args.device.strip().lower() == "auto":
            raise MediaError("--impl kernel runs the fused kernel on a CUDA GPU and PyTorch sees "
                             "none here (--device auto chose the CPU); use --impl auto or "
                             "reference")
        raise MediaError(f"--impl kernel runs the fused kernel on a CUDA GPU, not on {device}; "
                         "use --device cuda, or --impl auto or reference")
    if args.driving:
        driving = load_driving(args.driving)
        if args.fps is not None:  # the file's own rate otherwise (was always the file's)
            driving.fps = args.fps
    else:
        driving = orbit_driving(args.orbit, frames, fps=args.fps or 25.0)
    out = render_video(args.source, args.out, driving, checkpoint=args.checkpoint,
                       preset=args.preset, device=device, impl=args.impl,
                       batch=args.batch, progress=not args.quiet)
    print(f"wrote {out} ({len(driving)} frames: rendered frame | depth)")


def register(subparsers) -> None:
    """Add ``export3d render`` to the CLI."""
    from .config import PRESETS

    p = subparsers.add_parser("render", help="render a video of a portrait driven by a file or "
                              "a camera orbit")
    p.add_argument("--source", help="source portrait (JPEG/PNG); default: scikit-image's "
                   "astronaut")
    drive = p.add_mutually_exclusive_group()
    drive.add_argument("--driving", help="driving file (.npz or .json with expr [T,64] and "
                       "camera [T,25])")
    drive.add_argument("--orbit", choices=cam.ORBITS, default="circle",
                       help="named camera orbit with a neutral expression (default: circle)")
    p.add_argument("--frames", type=int, default=None, help="frames of an orbit (default 48)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of the video (default: "
                   "the driving file's, else 25)")
    p.add_argument("--checkpoint", help="weights (.safetensors); without it they are random")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                   help="model preset when no checkpoint is given (default: tiny)")
    p.add_argument("--device", default="auto", help="auto (default: a CUDA GPU when PyTorch "
                   "sees one, else the CPU), cpu, cuda or cuda:N")
    p.add_argument("--impl", choices=("auto", "reference", "kernel"), default="auto",
                   help="ray marcher: the fused kernel on CUDA (auto) or the reference")
    p.add_argument("--batch", type=int, default=1, help="frames per forward pass")
    p.add_argument("--out", default="export3d_render.mp4", help=".mp4, .avi or .mkv")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run)


def _repeat(source, n: int):
    if source.high.shape[0] == n:
        return source
    return type(source)(source.high.expand(n, -1, -1, -1), source.tokens.expand(n, -1, -1))
