"""Capture sources by name: ``synthetic``, ``file:PATH``, ``images:DIR``, ``webcam:N``.

Each ``read()`` returns a :class:`CapturedFrame` (RGB uint8 + monotonic capture timestamp) or
``None`` at the end. ``synthetic`` renders nothing from a camera: it yields a flat grey frame
carrying a scripted *driving* (neutral expression, a camera orbit) that bypasses tracking.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export3d.errors import UserError

from .config import CaptureConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class CaptureError(UserError):
    """A capture source that cannot be opened or read."""


@dataclass
class CapturedFrame:
    index: int
    t_capture: float  # time.monotonic() when the frame was captured
    rgb: np.ndarray  # [H, W, 3] uint8
    driving: tuple | None = None  # (expr [64], camera [25]) for scripted sources
    read_s: float = 0.0  # time spent reading/decoding (excludes pacing waits)


class _Paced:
    """Release frame i at start + i / fps (own pace) or at once. ``stop``: an event that ends
    the wait early (the pipeline's, so a slow pace, down to a frame a minute, never holds a
    run that is stopping)."""

    def __init__(self, fps: float, realtime: bool):
        self.period = 1.0 / fps if realtime and fps > 0 else 0.0
        self.start = None
        self.stop = threading.Event()

    def wait(self, i: int) -> None:
        if self.start is None:
            self.start = time.monotonic()
        delay = self.start + i * self.period - time.monotonic()
        if delay > 0:
            self.stop.wait(delay)


class SyntheticCapture:
    def __init__(self, config: CaptureConfig):
        from export3d.camera import orbit_path

        self.config = config
        n = 120
        self.cameras = orbit_path("circle", n).cpu().numpy().astype(np.float32)
        self.expr = np.zeros(64, np.float32)
        self.rgb = np.full((config.height, config.width, 3), 96, np.uint8)
        self.pace = _Paced(config.fps, config.realtime)
        self.i = 0

    def read(self) -> CapturedFrame | None:
        self.pace.wait(self.i)
        cam = self.cameras[self.i % len(self.cameras)]
        frame = CapturedFrame(self.i, time.monotonic(), self.rgb.copy(), (self.expr, cam))
        self.i += 1
        return frame

    def close(self) -> None:
        pass


class VideoFileCapture:
    def __init__(self, config: CaptureConfig, path: str):
        import cv2

        if not Path(path).is_file():
            raise CaptureError(f"video {path} does not exist")
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise CaptureError(f"cannot open video {path}; use an .mp4, .avi or .mkv file")
        fps = self.cap.get(cv2.CAP_PROP_FPS) or config.fps
        self.path, self.fps = path, fps
        self.pace = _Paced(fps, config.realtime)
        self.i = 0

    def read(self) -> CapturedFrame | None:
        import cv2

        t0 = time.monotonic()
        ok, bgr = self.cap.read()
        if not ok or bgr is None:
            if self.i == 0:  # opened, but nothing decodes: not a video that ended
                raise CaptureError(f"no frame could be read from {self.path}; is it a video "
                                   "(.mp4, .avi, .mkv)?")
            return None
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        read_s = time.monotonic() - t0
        self.pace.wait(self.i)
        frame = CapturedFrame(self.i, time.monotonic(), rgb, read_s=read_s)
        self.i += 1
        return frame

    def close(self) -> None:
        self.cap.release()


class ImageSequenceCapture:
    def __init__(self, config: CaptureConfig, folder: str):
        folder = Path(folder)
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        if not self.paths:
            raise CaptureError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        self.pace = _Paced(config.fps, config.realtime)
        self.i = 0

    def read(self) -> CapturedFrame | None:
        from export3d.media import load_image

        if self.i >= len(self.paths):
            return None
        t0 = time.monotonic()
        rgb = load_image(self.paths[self.i])
        read_s = time.monotonic() - t0
        self.pace.wait(self.i)
        frame = CapturedFrame(self.i, time.monotonic(), rgb, read_s=read_s)
        self.i += 1
        return frame

    def close(self) -> None:
        pass


@contextlib.contextmanager
def quiet_opencv(cv2):
    """OpenCV's own log silenced within the block (probing a camera index that does not
    exist logs "global obsensor_uvc_stream_channel.cpp:163 getStreamChannelGroup Camera index
    out of range" to stderr, above the error this module raises)."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(level)


class WebcamCapture:
    """``webcam:N``: MJPG asked for, then the resolution and fps; opening and empty frames are
    retried with exponential back-off, then one clear message."""

    def __init__(self, config: CaptureConfig, index: int, opener=None):
        import cv2

        self.config = config
        opener = opener or cv2.VideoCapture
        delay = config.backoff_s
        self.cap = None
        for attempt in range(max(1, config.retries)):
            with quiet_opencv(cv2):  # a missing camera: our one line, not OpenCV's log too
                cap = opener(index)
            if cap is not None and cap.isOpened():
                self.cap = cap
                break
            if cap is not None:
                cap.release()
            if attempt + 1 < config.retries:
                time.sleep(delay)
                delay *= 2
        if self.cap is None:
            raise CaptureError(
                f"no camera at index {index} (tried {max(1, config.retries)} times); plug one "
                "in, close an app that holds it (a call app, OBS), pick another with "
                "--camera N, or use --video FILE or --synthetic")
        if config.mjpg:
            self.cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
        self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
        self.cap.set(cv2.CAP_PROP_FPS, config.fps)
        self.i = 0
        self.empty_frames = 0

    def read(self) -> CapturedFrame | None:
        import cv2

        delay = self.config.backoff_s
        for attempt in range(max(1, self.config.retries)):
            t0 = time.monotonic()
            ok, bgr = self.cap.read()  # blocks until the camera delivers: that is the capture
            if ok and bgr is not None and bgr.size:
                t = time.monotonic()
                frame = CapturedFrame(self.i, t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                                      read_s=t - t0)
                self.i += 1
                return frame
            self.empty_frames += 1
            time.sleep(delay)
            delay *= 2
        raise CaptureError(f"the camera stopped sending frames ({self.empty_frames} empty "
                           "reads): was it unplugged, or taken by another app?")

    def close(self) -> None:
        self.cap.release()


def open_capture(config: CaptureConfig, opener=None):
    name = config.source
    if name == "synthetic":
        return SyntheticCapture(config)
    kind, _, arg = name.partition(":")
    if kind == "file" and arg:
        return VideoFileCapture(config, arg)
    if kind == "images" and arg:
        return ImageSequenceCapture(config, arg)
    if kind == "webcam":
        try:
            index = int(arg or 0)
        except ValueError:
            raise CaptureError(f"webcam index must be a number, got {arg!r}") from None
        if index < 0:  # OpenCV takes -1 as "any camera" and has crashed on it here
            raise CaptureError(f"webcam index must be 0 or more, got {index}")
        return WebcamCapture(config, index, opener=opener)
    raise CaptureError(f"unknown source {name!r}; use synthetic, file:PATH, images:DIR or "
                       "webcam:N")
