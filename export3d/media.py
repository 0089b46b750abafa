"""Images in and videos out, with one-sentence errors for bad input.

``load_image(path) -> uint8 RGB [H, W, 3]``; ``to_model_input(rgb, size) -> [1, 3, size, size]``
in [-1, 1]; ``VideoWriter`` writes BGR frames to .mp4 (mp4v), .avi (MJPG) or .mkv (FFV1).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from .errors import UserError


class MediaError(UserError):
    """Bad user media; the message says what is wrong and what to do."""


def default_portrait() -> Path:
    """scikit-image's astronaut (Eileen Collins, public domain), shipped inside its wheel."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise MediaError("no default portrait: install scikit-image or pass --source PHOTO")
    path = Path(spec.submodule_search_locations[0], "data", "astronaut.png")
    if not path.is_file():
        raise MediaError(f"scikit-image's astronaut.png is missing at {path}; pass --source PHOTO")
    return path


def load_image(path: str | Path) -> np.ndarray:
    import cv2

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"source image {path} does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:  # e.g. a small file that decodes to more pixels than OpenCV allows
        raise MediaError(f"{path} is too large to decode (over OpenCV's limit of "
                         f"{2**30:,} pixels) or damaged; use a smaller JPEG or PNG photo") from None
    if bgr is None:
        raise MediaError(f"{path} is not a readable image (corrupt, empty or not an image file); "
                         "use a JPEG or PNG photo")
    if min(bgr.shape[:2]) < 32:
        raise MediaError(f"{path} is {bgr.shape[1]}x{bgr.shape[0]} pixels, too small for a "
                         "portrait")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """Largest centred square, resized to ``size`` (area filter when shrinking). The tracking
    stage replaces this with the EG3D-aligned crop when a face model is available."""
    import cv2

    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top: top + side, left: left + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interp)


def to_model_input(rgb: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``[H, W, 3]`` -> float ``[1, 3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div(127.5).sub(1.0).unsqueeze(0)


def to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` in [-1, 1] -> uint8 ``[H, W, 3]``."""
    x = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return x.permute(1, 2, 0).cpu().numpy()


def depth_to_rgb(depth: torch.Tensor, near: float, far: float) -> np.ndarray:
    """``[1, h, w]`` depth -> uint8 RGB colour map (near = bright), on a fixed [near, far] scale
    so frames of one video are comparable."""
    import cv2

    d = depth.detach().float().squeeze(0).cpu().numpy()
    scaled = np.clip((far - d) / (far - near), 0, 1)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def output_path(path: str | Path) -> Path:
    """``path``, a file a command will write, checked before the work that fills it: its
    folder is created, and a folder that cannot be, a folder that is not writable or a path
    that is itself a folder is a MediaError now, not after minutes of work."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MediaError(f"cannot write {path}: cannot create {exc.filename} "
                         f"({exc.strerror or exc}); choose a writable location") from None
    if path.is_dir():
        raise MediaError(f"cannot write {path}: it is a folder; give a file name")
    if not os.access(path.parent, os.W_OK):
        raise MediaError(f"cannot write {path}: {path.parent} is not writable; choose a "
                         "writable location")
    return path


_FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
# The highest frame rate a video is written at. OpenCV's writer never returns from an infinite
# rate (in native code: Ctrl-C cannot stop it) and fails to open at 1e6; every command's
# --fps and a driving file's rate are checked against this before their work starts.
MAX_FPS = 1000.0
VIDEO_SUFFIXES = tuple(_FOURCC)  # what VideoWriter writes


class VideoWriter:
    """RGB frames to a video file; the container picks the codec (see ``_FOURCC``).

    Frames go to a hidden part file beside ``path`` (``.NAME.part.mp4``), renamed to ``path``
    by :meth:`close`: a run that stops half-way (Ctrl-C, an error) never leaves a playable,
    shorter video under the name asked for. Leaving a ``with`` block on an exception calls
    :meth:`abort` instead, which keeps the frames written so far as ``NAME.partial.mp4``
    (:attr:`partial_path`), or nothing when there are none."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        import cv2

        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in _FOURCC:
            raise MediaError(f"cannot write {self.path.name}: use a .mp4, .avi or .mkv file name")
        if not 0 < fps <= MAX_FPS:  # also NaN and infinity
            raise MediaError(f"cannot write {self.path.name} at {fps:g} frames per second; use "
                             f"a rate above 0 and at most {MAX_FPS:g}")
        output_path(self.path)
        self.part_path = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self.partial_path = self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}")
        self._writer = cv2.VideoWriter(str(self.part_path),
                                       cv2.VideoWriter_fourcc(*_FOURCC[suffix]), fps, size)
        if not self._writer.isOpened():
            self.part_path.unlink(missing_ok=True)
            raise MediaError(f"OpenCV cannot write {self.path} with codec {_FOURCC[suffix]}")
        self.size = size
        self.frames = 0
        self._done = False

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        if (rgb.shape[1], rgb.shape[0]) != self.size:
            raise ValueError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}, video is "
                             f"{self.size[0]}x{self.size[1]}")
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the file and give it its name."""
        if not self._done:
            self._done = True
            self._writer.release()
            os.replace(self.part_path, self.path)

    def abort(self) -> Path | None:
        """Stop without finishing ``path``: the frames so far are kept as
        :attr:`partial_path` (returned), or removed when there are none."""
        if self._done:
            return None
        self._done = True
        self._writer.release()
        if not self.frames:
            self.part_path.unlink(missing_ok=True)
            return None
        os.replace(self.part_path, self.partial_path)
        return self.partial_path

    def __enter__(self):
        return self

    def __exit__(self, kind, *exc):
        if kind is None:
            self.close()
        else:
            self.abort()
