"""Expression code MPX-64 (tracking.md 4.4), relative to a neutral face (4.6).

In: blendshapes ``b [52]`` (mediapipe order, 0 = ``_neutral``) and canonicalised landmarks
``q [478, 3]`` (canonical cm, from :mod:`.pose`). Out: ``e [64]`` float32:

- ``e[0:51]  = clip(b[1:52] - b0[1:52], -1, 1)`` (the 51 ARKit blendshapes);
- ``e[51:64] = geometric channels g(q) - g(q0)``; dims 51-59 (lengths, in cm) are divided by the
  neutral inter-ocular distance IOD0 = |q0_33 - q0_263|, dims 60-63 (iris offsets) are already
  ratios of the eye width.

The neutral ``(b0, q0)`` comes from an explicit calibration ("look at the camera, relax": the
per-dimension median of b and per-vertex median of q over ~1.5 s) or, until then, from the
automatic fallback: the median over the 20 % least active frames (lowest sum of b) of a 10 s
buffer, re-estimated once a second; offline, the same rule over a whole clip
(:func:`robust_neutral`). Training data and the webcam use the same rule and code version
(:data:`export3d.config.EXPRESSION_CODE_VERSION`). 4.4's last step, dividing each channel by
its training-set spread sigma_k, is the model's (``ModelConfig.expr_spread``, applied by
CLeBS), so the code here is the same for every checkpoint.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ..config import EXPRESSION_CODE_VERSION

EXPR_DIM = 64
NUM_GEOMETRIC = 13
GEOMETRIC_NAMES = ("mouthAperture", "mouthWidth", "jawDrop", "jawLateral", "lipProtrusion",
                   "eyelidApertureRight", "eyelidApertureLeft", "browHeightRight",
                   "browHeightLeft", "irisRightX", "irisRightY", "irisLeftX", "irisLeftY")
BLENDSHAPE_NAMES = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft",
    "noseSneerRight")
CHANNEL_NAMES = BLENDSHAPE_NAMES + GEOMETRIC_NAMES
assert len(CHANNEL_NAMES) == EXPR_DIM

# Landmark ids (mediapipe 478-point topology; 468 / 473 are the iris centres).
R_EYE_OUT, R_EYE_IN, L_EYE_IN, L_EYE_OUT = 33, 133, 362, 263
R_IRIS, L_IRIS = 468, 473
LIP_UP_IN, LIP_LOW_IN, MOUTH_R, MOUTH_L, CHIN = 13, 14, 61, 291, 152
LIP_UP_OUT, LIP_LOW_OUT = 0, 17
R_LID_UP, R_LID_LOW, L_LID_UP, L_LID_LOW = 159, 145, 386, 374
R_BROW, L_BROW = 105, 334


def geometric_raw(q: np.ndarray) -> np.ndarray:
    """The 13 geometric measurements ``[13]`` of canonicalised landmarks ``q [478, 3]`` before
    neutral subtraction (cm for 0-8, eye-width ratios for 9-12)."""
    g = np.empty(NUM_GEOMETRIC)
    r_eye = 0.5 * (q[R_EYE_OUT] + q[R_EYE_IN])
    l_eye = 0.5 * (q[L_EYE_IN] + q[L_EYE_OUT])
    g[0] = np.linalg.norm(q[LIP_UP_IN] - q[LIP_LOW_IN])
    g[1] = np.linalg.norm(q[MOUTH_R] - q[MOUTH_L])
    g[2] = -q[CHIN, 1]  # minus the neutral's gives -(q152 - q0_152)_y
    g[3] = q[CHIN, 0]
    g[4] = 0.5 * (q[LIP_UP_OUT, 2] + q[LIP_LOW_OUT, 2])
    g[5] = np.linalg.norm(q[R_LID_UP] - q[R_LID_LOW])
    g[6] = np.linalg.norm(q[L_LID_UP] - q[L_LID_LOW])
    g[7] = q[R_BROW, 1] - r_eye[1]
    g[8] = q[L_BROW, 1] - l_eye[1]
    r_w = np.linalg.norm(q[R_EYE_OUT] - q[R_EYE_IN])
    l_w = np.linalg.norm(q[L_EYE_IN] - q[L_EYE_OUT])
    g[9:11] = (q[R_IRIS, :2] - r_eye[:2]) / r_w
    g[11:13] = (q[L_IRIS, :2] - l_eye[:2]) / l_w
    return g


def inter_ocular(q: np.ndarray) -> float:
    return float(np.linalg.norm(q[R_EYE_OUT] - q[L_EYE_OUT]))


@dataclass
class Neutral:
    """The neutral reference: blendshapes ``[52]``, geometric measurements ``[13]``, IOD (cm)."""
    blendshapes: np.ndarray
    geometric: np.ndarray
    iod: float
    source: str  # "calibration", "auto", "clip", "default"

    @classmethod
    def from_landmarks(cls, blendshapes: np.ndarray, q: np.ndarray, source: str) -> "Neutral":
        return cls(np.asarray(blendshapes, np.float64), geometric_raw(q), inter_ocular(q), source)

    @classmethod
    def default(cls, canonical_vertices: np.ndarray) -> "Neutral":
        """Before any face was seen: zero blendshapes and the canonical mesh (iris centres put at
        the eye centres, since the 468-vertex mesh has no iris points)."""
        q = np.zeros((478, 3))
        q[:468] = canonical_vertices
        q[R_IRIS] = 0.5 * (q[R_EYE_OUT] + q[R_EYE_IN])
        q[L_IRIS] = 0.5 * (q[L_EYE_IN] + q[L_EYE_OUT])
        return cls.from_landmarks(np.zeros(52), q, "default")


def mpx64(blendshapes: np.ndarray, geometric: np.ndarray, neutral: Neutral) -> np.ndarray:
    """MPX-64 ``[64]`` float32 from raw blendshapes ``[52]`` and :func:`geometric_raw` ``[13]``.
    Also works batched: ``[T, 52]`` and ``[T, 13]`` -> ``[T, 64]``."""
    b = np.asarray(blendshapes, np.float64)
    g = np.asarray(geometric, np.float64)
    e = np.empty(b.shape[:-1] + (EXPR_DIM,), np.float32)
    e[..., :51] = np.clip(b[..., 1:] - neutral.blendshapes[1:], -1.0, 1.0)
    d = g - neutral.geometric
    d[..., :9] /= neutral.iod
    e[..., 51:] = d
    return e


def activity(blendshapes: np.ndarray) -> np.ndarray:
    """Expression activity: the sum of the 51 non-neutral blendshape scores."""
    return np.asarray(blendshapes)[..., 1:].sum(-1)


def robust_neutral(blendshapes: np.ndarray, q: np.ndarray, fraction: float = 0.2,
                   source: str = "clip") -> Neutral:
    """The automatic neutral: median of ``b [T, 52]`` and ``q [T, 478, 3]`` over the ``fraction``
    of frames with the lowest :func:`activity` (at least one frame)."""
    b = np.asarray(blendshapes, np.float64)
    k = max(1, int(round(fraction * len(b))))
    calm = np.argsort(activity(b), kind="stable")[:k]
    return Neutral.from_landmarks(np.median(b[calm], axis=0), np.median(q[calm], axis=0), source)


class NeutralTracker:
    """Keeps the current neutral: explicit calibration wins; otherwise the automatic fallback
    over a rolling buffer (``window_s``), re-estimated every ``refresh_s``."""

    def __init__(self, default: Neutral, window_s: float = 10.0, refresh_s: float = 1.0,
                 fraction: float = 0.2, calibration_s: float = 1.5):
        self.neutral = default
        self.window_s, self.refresh_s, self.fraction = window_s, refresh_s, fraction
        self.calibration_s = calibration_s
        self._buffer: deque = deque()  # (t, b [52], q [478, 3])
        self._last_refresh = -np.inf
        self._calib: list | None = None
        self._calib_start = 0.0
        self.calibrated = False
        self.automatic = True  # False: keep the default neutral until calibrated or set

    def begin_calibration(self, seconds: float | None = None) -> None:
        """Start "look at the camera, relax": the next ``seconds`` of tracked frames set it."""
        if seconds is not None:
            self.calibration_s = seconds
        self._calib = []
        self._calib_start = None

    @property
    def calibrating(self) -> bool:
        return self._calib is not None

    def reset(self) -> None:
        """Forget calibration and buffer (a new person)."""
        self._buffer.clear()
        self._calib = None
        self.calibrated = False
        self._last_refresh = -np.inf

    def observe(self, t: float, blendshapes: np.ndarray, q: np.ndarray) -> Neutral:
        if self._calib is not None:
            if self._calib_start is None:
                self._calib_start = t
            self._calib.append((blendshapes, q))
            if t - self._calib_start >= self.calibration_s:
                b = np.stack([c[0] for c in self._calib])
                qs = np.stack([c[1] for c in self._calib])
                self.neutral = Neutral.from_landmarks(np.median(b, 0), np.median(qs, 0),
                                                      "calibration")
                self._calib = None
                self.calibrated = True
            return self.neutral
        if self.calibrated or not self.automatic:
            return self.neutral
        self._buffer.append((t, blendshapes, q))
        while self._buffer and t - self._buffer[0][0] > self.window_s:
            self._buffer.popleft()
        if t - self._last_refresh >= self.refresh_s:
            self._last_refresh = t
            b = np.stack([x[1] for x in self._buffer])
            k = max(1, int(round(self.fraction * len(b))))
            calm = np.argsort(activity(b), kind="stable")[:k]
            # stack only the calm frames' landmarks: same result as robust_neutral, less copying
            qs = np.stack([self._buffer[i][2] for i in calm])
            self.neutral = Neutral.from_landmarks(np.median(b[calm], axis=0),
                                                  np.median(qs, axis=0), "auto")
        return self.neutral


__all__ = ["EXPRESSION_CODE_VERSION", "EXPR_DIM", "CHANNEL_NAMES", "Neutral", "NeutralTracker",
           "geometric_raw", "mpx64", "robust_neutral"]
