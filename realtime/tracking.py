"""Tracking stage: RGB frame -> (expr [64], camera [25], state) via FaceExtractor.

Scripted frames (``synthetic`` capture) carry their own driving and bypass the extractor. No
face: the extractor holds the last pose, then eases to neutral (state ``held``/``easing``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import TrackingConfig


@dataclass
class Driving:
    expr: np.ndarray  # [64]
    camera: np.ndarray  # [25]
    state: str  # tracked | held | easing | neutral | none | scripted
    face_found: bool
    confidence: float


class Tracker:
    def __init__(self, config: TrackingConfig, extractor=None):
        self.config = config
        self._extractor = extractor
        self._t0 = None
        self._last_t = -1.0
        # relative: the driver's head rotation relative to the calibrated reference, applied to
        # the source's (cross-identity); absolute: the driver's own head pose. The extractor
        # computes both every frame, so switching is just this flag (read once per frame).
        self.relative_camera = config.relative_camera
        self.source_rotation = None  # R_src; None: frontal
        # 'c' comes from the sink's thread; the extractor's state belongs to the tracking
        # thread, which starts the calibration at its next frame (calibrating under a frame
        # in progress broke it: a neutral of None, an empty stack of rotations).
        self._calibrate = False

    @property
    def extractor(self):
        if self._extractor is None and self.config.enabled:
            from export3d.tracking.extractor import FaceExtractor

            self._extractor = FaceExtractor()
            if self.source_rotation is not None:
                self._extractor.set_source(self.source_rotation)
        return self._extractor

    def set_source(self, rotation) -> None:
        """The source portrait's head rotation (None: frontal), which relative pose applies the
        driver's motion to (tracking.md 4.3). Safe from another thread: one reference swap."""
        self.source_rotation = None if rotation is None else np.asarray(rotation, np.float64)
        if self._extractor is not None:
            self._extractor.set_source(np.eye(3) if rotation is None else self.source_rotation)

    def process(self, frame) -> Driving:
        if frame.driving is not None or not self.config.enabled:
            expr, camera = frame.driving if frame.driving is not None else (
                np.zeros(64, np.float32), _frontal_camera())
            return Driving(expr, camera, "scripted", True, 1.0)
        if self._t0 is None:
            self._t0 = frame.t_capture
        # the landmarker's VIDEO mode needs strictly increasing timestamps
        t = max(frame.t_capture - self._t0, self._last_t + 1e-3)
        self._last_t = t
        if self._calibrate:
            self._calibrate = False
            self.extractor.calibrate()
        tf = self.extractor.process(frame.rgb, t)
        camera = tf.camera_relative if self.relative_camera else tf.camera
        return Driving(np.asarray(tf.expr, np.float32), np.asarray(camera, np.float32),
                       tf.state, bool(tf.face_found), float(tf.confidence))

    def toggle_pose(self) -> str:
        self.relative_camera = not self.relative_camera
        return "relative" if self.relative_camera else "absolute"

    def calibrate(self) -> None:
        """Recalibrate the neutral face from the next frames; safe from any thread."""
        self._calibrate = True

    def close(self) -> None:
        if self._extractor is not None:
            self._extractor.close()
            self._extractor = None


def _frontal_camera() -> np.ndarray:
    from export3d.tracking.extractor import eg3d_label

    return eg3d_label(np.eye(3))
