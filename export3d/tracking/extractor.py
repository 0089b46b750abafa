"""The per-frame extractor: RGB frame -> everything the renderer and the trainer need.

``FaceExtractor.process(rgb [H, W, 3] uint8, t seconds) -> TrackedFrame`` with
``face_found``, ``confidence`` (0 when lost), ``landmarks [478, 3]`` (normalised; NaN when
lost), ``blendshapes [52]``, ``rotation [3, 3]`` (head, canonical -> viewer, smoothed),
``euler [3]`` (pitch, yaw, roll, rad), ``expr [64]`` (MPX-64, neutral-relative, smoothed),
``camera [25]`` (EG3D label, absolute: the driver's own head pose), ``camera_relative [25]``
(cross-identity: ``R_drv(t) R_drv(ref)^T R_src``, tracking.md 4.3) and ``crop_box [3]``.

Stages, in order: :class:`.landmarker.Landmarker` -> :class:`.pose.PoseEstimator` ->
:mod:`.expression` (neutral from calibration or the automatic fallback) ->
:class:`.smoothing.TrackSmoother` -> camera labels. Everything after the landmarker is plain
numpy (the camera label uses :func:`eg3d_label`, a numpy twin of
:func:`export3d.camera.label_from_rotation`, tested equal), about 0.1-0.3 ms per frame.

``confidence``: mediapipe 1.2.3 reports no per-face score in Python, so it is derived from the
rigid fit: ``clip(1 - residual / 2 cm, 0, 1)`` with the weighted RMS residual of the 33 rigid
landmarks (measured: 0.4-0.6 cm on well-lit frontal portraits).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ..camera import FOCAL, RADIUS
from ..config import EXPRESSION_CODE_VERSION
from .crop import crop_box, template_from_canonical
from .expression import EXPR_DIM, Neutral, NeutralTracker, geometric_raw, mpx64
from .landmarker import FaceObservation, Landmarker, LandmarkerConfig
from .pose import PoseEstimator, euler_from_rotation, load_canonical_face, to_pixel_frame
from .smoothing import (SmoothingConfig, TrackSmoother, matrix_from_quat, quat_from_matrix,
                        slerp)

RESIDUAL_SCALE_CM = 2.0
_FLIP = np.diag([1.0, -1.0, -1.0])
_K = np.array([FOCAL, 0.0, 0.5, 0.0, FOCAL, 0.5, 0.0, 0.0, 1.0])


def eg3d_label(rotation: np.ndarray, focal: float = FOCAL) -> np.ndarray:
    """Head rotation ``R_f [3, 3]`` -> EG3D label ``[25]`` float32 (tracking.md 4.3; same math as
    :func:`export3d.camera.label_from_rotation`, in numpy for the per-frame path)."""
    c1 = 0.27 * 10.0 * rotation[2, :] + np.array([0.0, 0.006, 0.161])
    pose = np.eye(4)
    pose[:3, :3] = rotation.T @ _FLIP
    pose[:3, 3] = RADIUS * c1 / np.linalg.norm(c1)
    k = _K if focal == FOCAL else np.array([focal, 0, 0.5, 0, focal, 0.5, 0, 0, 1.0])
    return np.concatenate([pose.reshape(16), k]).astype(np.float32)


@dataclass(frozen=True)
class ExtractorConfig:
    landmarker: LandmarkerConfig = field(default_factory=LandmarkerConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    neutral_window_s: float = 10.0
    calibration_s: float = 1.5


@dataclass
class TrackedFrame:
    t: float
    face_found: bool
    confidence: float
    state: str  # "tracked", "held", "easing", "neutral", "none"
    landmarks: np.ndarray  # [478, 3]
    blendshapes: np.ndarray  # [52]
    rotation: np.ndarray  # [3, 3]
    euler: np.ndarray  # [3]
    expr: np.ndarray  # [64]
    camera: np.ndarray  # [25]
    camera_relative: np.ndarray  # [25]
    crop_box: np.ndarray  # [3] (cx, cy, side) px; NaN before the first face
    raw_rotation: np.ndarray | None = None  # unsmoothed, when a face was found
    geometric: np.ndarray | None = None  # [13] raw measurements (for per-clip neutral)
    canonical_landmarks: np.ndarray | None = None  # q [478, 3]


@dataclass
class Measurement:
    """What one observation gives before any temporal state: pose, q, raw channels."""
    observation: FaceObservation
    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    residual: float
    q: np.ndarray
    geometric: np.ndarray
    box: np.ndarray

    @property
    def confidence(self) -> float:
        return float(np.clip(1.0 - self.residual / RESIDUAL_SCALE_CM, 0.0, 1.0))


class FaceExtractor:
    """Constructed once; :meth:`process` per frame; :meth:`close` (or ``with``) at the end."""

    version = EXPRESSION_CODE_VERSION

    def __init__(self, config: ExtractorConfig = ExtractorConfig(), landmarker=None):
        self.config = config
        self.landmarker = landmarker if landmarker is not None else Landmarker(config.landmarker)
        canonical = load_canonical_face(str(self.landmarker.model_path))
        self.canonical = canonical
        self.pose = PoseEstimator(canonical)
        self.template = template_from_canonical(canonical.vertices)
        self._calib_rotations: list = []
        self.neutral = NeutralTracker(Neutral.default(canonical.vertices),
                                      window_s=config.neutral_window_s,
                                      calibration_s=config.calibration_s)
        smoothing = config.smoothing
        if config.landmarker.mode == "image":
            # independent photos: no temporal filtering, no hold, and no automatic neutral (one
            # person's photo must not become another's neutral); calibrate()/set_neutral() work
            smoothing = dataclasses.replace(smoothing, enabled=False, hold_s=0.0, ease_s=0.0)
            self.neutral.automatic = False
        self.smoother = TrackSmoother(smoothing)
        self._reference: np.ndarray | None = None  # R_drv(ref)
        self._reference_from = None  # (old reference, t of the change): eased over ease_s
        self.source_rotation = np.eye(3)  # R_src (frontal unless set_source is called)

    @property
    def reference_rotation(self) -> np.ndarray | None:
        """R_drv(ref): the driver's rest rotation, which the relative camera is taken against and
        a lost face eases back to."""
        return self._reference

    @reference_rotation.setter
    def reference_rotation(self, rotation) -> None:
        self._reference = None if rotation is None else np.asarray(rotation, np.float64)
        self._reference_from = None
        # a lost face eases to the driver's rest pose, so the relative camera eases to R_src
        self.smoother.reference = np.eye(3) if rotation is None else self._reference

    # -- configuration at run time -----------------------------------------------------------
    def calibrate(self, seconds: float | None = None) -> None:
        """"Look at the camera, relax": the next ``seconds`` of frames set the neutral face and
        the reference head rotation for the relative camera."""
        self.neutral.begin_calibration(seconds)
        # The old reference stays until the new one is measured (it was dropped, and the
        # relative camera jumped by the driver's whole rotation for the 1.5 s).
        self._calib_rotations: list = []

    def set_neutral(self, neutral: Neutral, reference_rotation: np.ndarray | None = None) -> None:
        """Fix the neutral (e.g. the per-clip :func:`.expression.robust_neutral` of training
        data) and optionally the reference rotation; restarts the smoothing."""
        self.neutral.neutral = neutral
        self.neutral.calibrated = True
        if reference_rotation is not None:
            self.reference_rotation = np.asarray(reference_rotation, np.float64)
        self.smoother.reset()

    def set_source(self, rotation: np.ndarray) -> None:
        """The source portrait's head rotation ``R_src`` for the relative camera."""
        self.source_rotation = np.asarray(rotation, np.float64)

    # -- per frame ---------------------------------------------------------------------------
    def measure(self, obs: FaceObservation) -> Measurement:
        points = to_pixel_frame(obs.landmarks, obs.width, obs.height)
        pose = self.pose.fit(points)
        q = PoseEstimator.canonicalise(points, pose)
        box = crop_box(obs.landmarks, obs.width, obs.height, self.template)
        return Measurement(obs, pose.rotation, pose.scale, pose.translation, pose.residual, q,
                           geometric_raw(q), box)

    def process(self, frame: np.ndarray, t: float) -> TrackedFrame:
        """One RGB frame at time ``t`` (seconds, increasing) -> :class:`TrackedFrame`."""
        if self.landmarker.config.mode == "live_stream":
            raise RuntimeError("in live_stream mode use landmarker.submit() and update()")
        stamp = int(round(t * 1000))
        if self.landmarker.config.mode == "image":  # a photo: searched harder than a frame
            obs = self.landmarker.detect_in_photo(frame, stamp)
        else:
            obs = self.landmarker.detect(frame, stamp)
        return self.update(obs, t)

    def update(self, obs: FaceObservation | None, t: float) -> TrackedFrame:
        """Everything after the landmarker: an observation (or ``None``) -> TrackedFrame."""
        if obs is None and self.landmarker.config.mode == "image":
            # independent photos: one without a face is nobody, not the last photo held
            return self._frame(t, None, np.zeros(EXPR_DIM), np.eye(3), None, "none")
        if obs is None:
            expr, rotation, box, state = self.smoother.update(t)
            return self._frame(t, None, expr, rotation, box, state)
        m = self.measure(obs)
        calibrating = self.neutral.calibrating
        neutral = self.neutral.observe(t, obs.blendshapes, m.q)
        if calibrating:
            self._calib_rotations.append(m.rotation)
            if not self.neutral.calibrating:  # calibration just finished
                mean = np.mean(self._calib_rotations, axis=0)
                u, _, vt = np.linalg.svd(mean)  # chordal mean, projected back onto SO(3)
                old = self._reference
                self.reference_rotation = u @ np.diag([1, 1, np.linalg.det(u @ vt)]) @ vt
                if old is not None:  # the relative camera moves to the new reference smoothly
                    self._reference_from = (old, t)
                # The expression filter is kept: it carries the code from the old neutral's
                # zero to the new one at its own pace instead of one jump.
        if self.reference_rotation is None:
            self.reference_rotation = m.rotation.copy()  # first tracked frame, until calibrated
        expr = mpx64(obs.blendshapes, m.geometric, neutral)
        expr_s, rotation, box, state = self.smoother.update(t, expr, m.rotation, m.box)
        return self._frame(t, m, expr_s, rotation, box, state)

    def _reference_at(self, t: float) -> np.ndarray:
        """The reference at ``t``: after a recalibration, a cosine ease from the old one."""
        if self._reference is None:
            return np.eye(3)
        if self._reference_from is None:
            return self._reference
        old, t0 = self._reference_from
        ease = self.config.smoothing.ease_s
        w = 1.0 if ease <= 0 else min(1.0, max(0.0, t - t0) / ease)
        if w >= 1.0:
            self._reference_from = None
            return self._reference
        w = 0.5 - 0.5 * math.cos(math.pi * w)
        return matrix_from_quat(slerp(quat_from_matrix(old), quat_from_matrix(self._reference),
                                      w))

    def _frame(self, t, m: Measurement | None, expr, rotation, box, state) -> TrackedFrame:
        relative = rotation @ self._reference_at(t).T @ self.source_rotation
        nan3 = np.full(3, np.nan)
        return TrackedFrame(
            t=t, face_found=m is not None, confidence=m.confidence if m is not None else 0.0,
            state=state,
            landmarks=m.observation.landmarks if m is not None else np.full((478, 3), np.nan,
                                                                            np.float32),
            blendshapes=m.observation.blendshapes if m is not None else np.zeros(52, np.float32),
            rotation=rotation, euler=np.array(euler_from_rotation(rotation)),
            expr=np.asarray(expr, np.float32).reshape(EXPR_DIM),
            camera=eg3d_label(rotation), camera_relative=eg3d_label(relative),
            crop_box=np.asarray(box, np.float64) if box is not None else nan3,
            raw_rotation=m.rotation if m is not None else None,
            geometric=m.geometric if m is not None else None,
            canonical_landmarks=m.q if m is not None else None)

    def close(self) -> None:
        self.landmarker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Geodesic angle between two rotations, degrees."""
    c = (np.trace(a.T @ b) - 1.0) / 2.0
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))
