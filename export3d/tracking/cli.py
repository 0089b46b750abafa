"""``export3d track VIDEO_OR_IMAGE --out FILE.npz [--overlay OUT.mp4]`` (and ``export3d assets``).

Writes a driving file ``export3d render --driving`` reads: ``expr [T, 64]``, ``camera [T, 25]``,
``timestamps [T]`` (seconds), plus ``camera_absolute``/``camera_relative [T, 25]``,
``rotation [T, 3, 3]``, ``euler [T, 3]`` (pitch, yaw, roll, rad), ``confidence [T]``,
``face_found [T]``, ``blendshapes [T, 52]``, ``landmarks [T, 478, 3]``, ``crop_box [T, 3]``, the
neutral used and ``expression_code_version``. A frame without a face is flagged
(``face_found`` False) and holds / eases its values; it never stops the run.

Neutral: ``clip`` (default; the training-data rule, tracking.md 4.6: median over the 20 % least
active frames of the whole clip, two passes, the second one without the landmarker) or ``auto``
(the causal rolling fallback the webcam uses).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..cli import at_least
from ..config import EXPRESSION_CODE_VERSION
from ..media import VIDEO_SUFFIXES, MediaError, VideoWriter, load_image, output_path
from .expression import CHANNEL_NAMES, activity, robust_neutral
from .landmarker import LandmarkerConfig

# .jfif/.jpe: Windows saves JPEGs so; read as a video they lost their EXIF rotation.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def read_frames(path: Path, max_frames: int | None = None, with_times: bool = False):
    """(fps, frame count or None, iterator of RGB frames) for an image or a video file.
    ``with_times``: the iterator yields (t seconds, RGB), t from the frames' own timestamps
    (tracking.md 4.7; a variable-rate clip's are not i / fps), else i / fps where the container
    gives none or they do not increase."""
    import cv2

    if not path.is_file():
        raise MediaError(f"{path} does not exist; pass a video or image file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        rgb = load_image(path)
        return 25.0, 1, iter([(0.0, rgb) if with_times else rgb])
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise MediaError(f"{path} is not a readable video or image (corrupt, empty or an "
                         "unsupported codec); use an .mp4/.mov/.avi video or a JPEG/PNG photo")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and math.isfinite(fps) and fps > 0 else 25.0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if max_frames is not None:
        count = min(count, max_frames) if count else max_frames

    def frames():
        try:
            frame, n, last = first, 0, -math.inf
            stamp = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000  # the frame just read
            while frame is not None and (max_frames is None or n < max_frames):
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                if with_times:
                    t = stamp if math.isfinite(stamp) and stamp > last and (
                        n > 0 or stamp == 0) else n / fps
                    if t <= last:
                        t = last + 1 / fps
                    last = t
                    yield t, rgb
                else:
                    yield rgb
                n += 1
                ok, frame = cap.read()
                stamp = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000 if ok else math.nan
                if not ok:
                    frame = None
        finally:
            cap.release()

    return fps, count, frames()


def draw_overlay(rgb: np.ndarray, frame, panel_width: int = 220) -> np.ndarray:
    """Frame with landmarks, head axes and a panel of the 64 expression bars ``[H, W + 220, 3]``."""
    import cv2

    h, w = rgb.shape[:2]
    canvas = np.zeros((h, w + panel_width, 3), np.uint8)
    canvas[:, :w] = rgb
    if frame.face_found:
        xy = (frame.landmarks[:, :2] * (w, h)).astype(np.int32)
        for x, y in xy[::2]:
            cv2.circle(canvas, (int(x), int(y)), 1, (0, 255, 0), -1, cv2.LINE_AA)
    if np.all(np.isfinite(frame.crop_box)):
        cx, cy, side = frame.crop_box
        cv2.rectangle(canvas, (int(cx - side / 2), int(cy - side / 2)),
                      (int(cx + side / 2), int(cy + side / 2)), (255, 255, 0), 1)
    if frame.state != "none":
        origin = (frame.landmarks[1, :2] * (w, h)) if frame.face_found else \
            np.array([w / 2, h / 2])
        length = 0.25 * min(h, w) if not np.isfinite(frame.crop_box[2]) else 0.3 * frame.crop_box[2]
        # canonical axes in the viewer frame (x right, y up): columns of R; image y is down
        for axis, colour in zip(frame.rotation.T, ((255, 0, 0), (0, 255, 0), (0, 128, 255))):
            tip = origin + length * np.array([axis[0], -axis[1]])
            cv2.arrowedLine(canvas, tuple(int(v) for v in origin), tuple(int(v) for v in tip),
                            colour, 2, cv2.LINE_AA, tipLength=0.15)
    # expression bars: one row per channel, centred at 0, full scale +-1
    row = max(1, (h - 24) // 64)
    mid = w + panel_width // 2
    for k, value in enumerate(frame.expr):
        y = 20 + k * row
        length = int(np.clip(value, -1, 1) * (panel_width // 2 - 4))
        colour = (80, 200, 255) if k < 51 else (255, 160, 60)
        cv2.rectangle(canvas, (mid, y), (mid + length, y + max(1, row - 1)), colour, -1)
    top = np.argsort(-np.abs(frame.expr))[:3]
    label = f"{frame.state} {frame.confidence:.2f}"
    cv2.putText(canvas, label, (w + 4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    for i, k in enumerate(top):
        cv2.putText(canvas, f"{CHANNEL_NAMES[k]} {frame.expr[k]:+.2f}", (4, 16 + 14 * i),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    pitch, yaw, roll = np.degrees(frame.euler)
    cv2.putText(canvas, f"pitch {pitch:+.1f} yaw {yaw:+.1f} roll {roll:+.1f}", (4, h - 8),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    return canvas


def track_file(path, out, overlay=None, neutral: str = "clip", camera: str = "absolute",
               source=None, max_frames: int | None = None, smooth: bool = True,
               progress: bool = True) -> dict:
    """Track ``path`` and write ``out`` (.npz); returns the arrays written."""
    from dataclasses import replace

    from tqdm import tqdm

    from ..assets import ASSETS, FACE_MODEL
    from .extractor import ExtractorConfig, FaceExtractor

    path, out = Path(path), Path(out)
    if out.suffix != ".npz":
        raise MediaError(f"--out {out.name} must end in .npz (the driving-file format)")
    if neutral not in ("clip", "auto"):
        raise MediaError(f"--neutral must be 'clip' or 'auto', got {neutral!r}")
    output_path(out)  # before the tracking, not after it
    if overlay is not None:
        output_path(overlay)
        if Path(overlay).suffix.lower() not in VIDEO_SUFFIXES:  # was found after the tracking
            raise MediaError(f"cannot write {Path(overlay).name}: use a .mp4, .avi or .mkv "
                             "file name for --overlay")
    fps, count, frames = read_frames(path, max_frames, with_times=True)
    is_image = path.suffix.lower() in IMAGE_SUFFIXES
    if is_image:  # a photo cannot be its own neutral (its code was all zeros): the default
        neutral = "auto"
    config = ExtractorConfig(landmarker=LandmarkerConfig(mode="image" if is_image else "video"))
    config = replace(config, smoothing=replace(config.smoothing, enabled=smooth))
    with FaceExtractor(config) as extractor:
        if source is not None:
            with FaceExtractor(ExtractorConfig(landmarker=LandmarkerConfig(mode="image")),
                               ) as src:
                sf = src.process(load_image(source), 0.0)
            if not sf.face_found:
                raise MediaError(f"no face found in the source photo {source}; use a portrait "
                                 "with one clearly visible face")
            extractor.set_source(sf.raw_rotation)
        observations, results = [], []
        bar = tqdm(total=count, unit="frame", desc="track", disable=not progress, leave=False)
        for t, rgb in frames:
            # A photo is searched as a source photo is (small faces, several people): the
            # plain detector missed faces there that render --source found.
            obs = (extractor.landmarker.detect_in_photo(rgb) if is_image else
                   extractor.landmarker.detect(rgb, int(round(t * 1000))))
            observations.append((t, obs))
            if neutral == "auto":
                results.append(extractor.update(obs, t))
            bar.update(1)
        bar.close()
        if not observations:
            raise MediaError(f"{path} has no frames")
        found = [(t, o) for t, o in observations if o is not None]
        neutral_used = extractor.neutral.neutral
        if neutral == "clip" and found:
            ms = [extractor.measure(o) for _, o in found]
            b = np.stack([o.blendshapes for _, o in found])
            q = np.stack([m.q for m in ms])
            neutral_used = robust_neutral(b, q, source="clip")
            calm = np.argsort(activity(b), kind="stable")[:max(1, round(0.2 * len(b)))]
            mean = np.mean([ms[k].rotation for k in calm], axis=0)
            u, _, vt = np.linalg.svd(mean)
            reference = u @ np.diag([1, 1, np.linalg.det(u @ vt)]) @ vt
            extractor.set_neutral(neutral_used, reference)
            results = [extractor.update(o, t) for t, o in observations]
        elif neutral == "clip":
            results = [extractor.update(None, t) for t, _ in observations]
        else:
            neutral_used = extractor.neutral.neutral
    if overlay is not None:  # a second read of the clip: its frames were never all in memory
        _, _, again = read_frames(path, max_frames)
        writer = None
        try:
            for rgb, fr in zip(again, results):
                if writer is None:
                    h, w = rgb.shape[:2]
                    writer = VideoWriter(overlay, fps, (w + 220, h))
                writer.write(draw_overlay(rgb, fr))
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if writer is not None:
            writer.close()
    cam_abs = np.stack([r.camera for r in results])
    cam_rel = np.stack([r.camera_relative for r in results])
    arrays = {
        "expr": np.stack([r.expr for r in results]).astype(np.float32),
        "camera": cam_abs if camera == "absolute" else cam_rel,
        "timestamps": np.array([r.t for r in results], np.float64),
        "camera_absolute": cam_abs, "camera_relative": cam_rel,
        "rotation": np.stack([r.rotation for r in results]).astype(np.float32),
        "euler": np.stack([r.euler for r in results]).astype(np.float32),
        "confidence": np.array([r.confidence for r in results], np.float32),
        "face_found": np.array([r.face_found for r in results], bool),
        "blendshapes": np.stack([r.blendshapes for r in results]).astype(np.float32),
        "landmarks": np.stack([r.landmarks for r in results]).astype(np.float32),
        "crop_box": np.stack([r.crop_box for r in results]).astype(np.float32),
        "neutral_blendshapes": neutral_used.blendshapes.astype(np.float32),
        "neutral_geometric": neutral_used.geometric.astype(np.float32),
        "neutral_iod": np.float32(neutral_used.iod),
        "neutral_source": np.array(neutral_used.source),
        "expression_code_version": np.array(EXPRESSION_CODE_VERSION),
        "face_model_sha256": np.array(ASSETS[FACE_MODEL].sha256),
        "fps": np.float64(fps),
    }
    np.savez_compressed(out, **arrays)
    return arrays


def run_track(args) -> None:
    arrays = track_file(args.input, args.out, overlay=args.overlay, neutral=args.neutral,
                        camera=args.camera, source=args.source, max_frames=args.max_frames,
                        smooth=not args.no_smooth)
    n = len(arrays["expr"])
    found = int(arrays["face_found"].sum())
    print(f"wrote {args.out} ({n} frames, face in {found})"
          + (f" and {args.overlay}" if args.overlay else ""))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "track", help="track a face video/photo: expression code, EG3D camera, aligned crop",
        description="Run the face tracker on a video or photo and write a driving file "
                    "(.npz: expr [T,64], camera [T,25], timestamps, rotation, confidence, "
                    "face_found, ...) that 'export3d render --driving' reads.")
    parser.add_argument("input", metavar="VIDEO_OR_IMAGE")
    parser.add_argument("--out", required=True, help="driving file to write (.npz)")
    parser.add_argument("--overlay", help="also write a video (.mp4/.avi/.mkv) with landmarks, "
                                          "head axes and expression bars")
    parser.add_argument("--neutral", choices=("clip", "auto"), default="clip",
                        help="neutral face: 'clip' = calmest 20%% of the whole clip (training "
                             "rule, default), 'auto' = rolling 10 s fallback as on a webcam")
    parser.add_argument("--camera", choices=("absolute", "relative"), default="absolute",
                        help="which label goes into 'camera' (both are saved)")
    parser.add_argument("--source", help="source portrait whose head pose the relative camera "
                                         "starts from (default: frontal)")
    parser.add_argument("--max-frames", type=at_least(1), help="stop after this many frames")
    parser.add_argument("--no-smooth", action="store_true", help="turn the One Euro filters off")
    parser.set_defaults(run=run_track)


def register_assets(subparsers) -> None:
    from ..assets import register as register_assets_command

    register_assets_command(subparsers)
