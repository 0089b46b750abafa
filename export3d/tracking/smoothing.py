"""Temporal smoothing and loss of tracking (tracking.md 4.7).

:class:`OneEuro` is the 1-euro filter (Casiez, Roussel, Vogel, CHI 2012), vectorised over
channels, with the sampling period taken from timestamps (seconds), never from an assumed fps:

    alpha(f) = 1 / (1 + 1 / (2 pi f Te))
    dx_hat   = alpha(f_d) (x - x_hat_prev) / Te + (1 - alpha(f_d)) dx_hat_prev
    f        = f_min + beta |dx_hat|
    x_hat    = alpha(f) x + (1 - alpha(f)) x_hat_prev

:class:`RotationFilter` filters a unit quaternion (sign made continuous with the previous one,
then renormalised). :class:`TrackSmoother` runs the expression ``[64]``, rotation ``[3, 3]`` and
crop box ``[3]`` (centre x, centre y, side, px) filters; when the face is lost it holds the last
output for ``hold_s``, then eases the expression to 0 and the rotation to the reference over
``ease_s``; the first frame after re-acquisition resets every filter to the new measurement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class OneEuro:
    def __init__(self, min_cutoff, beta, d_cutoff: float = 1.0):
        self.min_cutoff = np.asarray(min_cutoff, np.float64)
        self.beta = np.asarray(beta, np.float64)
        self.d_cutoff = float(d_cutoff)
        self.reset()

    def reset(self) -> None:
        self.x = None
        self.dx = None
        self.t = None

    @staticmethod
    def _alpha(cutoff, te):
        return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * cutoff * te))

    def __call__(self, x, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x is None or t <= self.t:
            if self.x is None:
                self.x, self.dx = x.copy(), np.zeros_like(x)
                self.t = t
            return self.x.copy()
        te = t - self.t
        self.t = t
        a_d = self._alpha(self.d_cutoff, te)
        self.dx = a_d * (x - self.x) / te + (1.0 - a_d) * self.dx
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        a = self._alpha(cutoff, te)
        self.x = a * x + (1.0 - a) * self.x
        return self.x.copy()


def quat_from_matrix(r: np.ndarray) -> np.ndarray:
    """Rotation ``[3, 3]`` -> unit quaternion ``[w, x, y, z]`` (Shepperd's method)."""
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def matrix_from_quat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def slerp(q0: np.ndarray, q1: np.ndarray, w: float) -> np.ndarray:
    if np.dot(q0, q1) < 0:
        q1 = -q1
    dot = min(1.0, float(np.dot(q0, q1)))
    if dot > 0.9995:
        q = q0 + w * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(dot)
    return (math.sin((1 - w) * theta) * q0 + math.sin(w * theta) * q1) / math.sin(theta)


class RotationFilter:
    """One Euro on the quaternion of ``R``, with sign continuity; returns ``[3, 3]``."""

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float = 1.0):
        self.filter = OneEuro(min_cutoff, beta, d_cutoff)
        self.prev = None

    def reset(self) -> None:
        self.filter.reset()
        self.prev = None

    def __call__(self, rotation: np.ndarray, t: float) -> np.ndarray:
        q = quat_from_matrix(rotation)
        if self.prev is not None and np.dot(q, self.prev) < 0:
            q = -q  # q and -q are the same rotation; keep the path continuous
        self.prev = q
        return matrix_from_quat(self.filter(q, t))


@dataclass(frozen=True)
class SmoothingConfig:
    enabled: bool = True
    expr_min_cutoff: float = 1.0  # Hz, blendshape-like channels
    expr_fast_min_cutoff: float = 2.0  # Hz: lids, mouth, jaw (blinks of 100-150 ms survive)
    expr_beta: float = 1.0
    rot_min_cutoff: float = 0.5
    rot_beta: float = 0.5  # per rad/s
    box_min_cutoff: float = 0.3
    box_beta: float = 0.01
    d_cutoff: float = 1.0
    hold_s: float = 0.3
    ease_s: float = 0.5
    # After a loss longer than the hold, the output blends from where the ease had taken it
    # into the new track over this long (a re-acquire inside the hold keeps the filters).
    reacquire_s: float = 0.3


def _fast_channels() -> np.ndarray:
    from .expression import CHANNEL_NAMES

    keys = ("eyeBlink", "jaw", "mouth", "eyelid", "Aperture", "Width", "lip")
    return np.array([any(k in n for k in keys) for n in CHANNEL_NAMES])


class TrackSmoother:
    """Expression, rotation and crop-box smoothing plus hold / ease on loss."""

    def __init__(self, config: SmoothingConfig = SmoothingConfig(), reference=None):
        self.config = config
        fast = _fast_channels()
        cut = np.where(fast, config.expr_fast_min_cutoff, config.expr_min_cutoff)
        self.expr = OneEuro(cut, config.expr_beta, config.d_cutoff)
        self.rotation = RotationFilter(config.rot_min_cutoff, config.rot_beta, config.d_cutoff)
        self.box = OneEuro(config.box_min_cutoff, config.box_beta, config.d_cutoff)
        self.reference = np.eye(3) if reference is None else np.asarray(reference, np.float64)
        self.last = None  # (expr, rotation, box) of the last tracked output
        self.last_t = 0.0
        self.lost_since = None
        self._blend = None  # (expr, rotation, t) to blend from after a re-acquire

    def reset(self) -> None:
        self.expr.reset()
        self.rotation.reset()
        self.box.reset()
        self.last = None
        self.lost_since = None
        self._blend = None

    def _lost_output(self, t: float):
        """Where the hold-then-ease has taken the output ``t`` into a loss."""
        lost = t - self.lost_since
        hold, ease = self.config.hold_s, self.config.ease_s
        if hold > 0 and lost <= hold:
            return self.last + ("held",)
        w = 1.0 if ease <= 0 else min(1.0, max(0.0, lost - hold) / ease)
        # cosine ease: zero velocity at both ends, so the avatar does not snap
        w = 0.5 - 0.5 * math.cos(math.pi * w)
        e, r, b = self.last
        q = slerp(quat_from_matrix(r), quat_from_matrix(self.reference), w)
        return (1.0 - w) * e, matrix_from_quat(q), b, ("neutral" if w >= 1.0 else "easing")

    def update(self, t: float, expr=None, rotation=None, box=None):
        """A tracked frame (all three given) or a lost one (all ``None``) -> (expr ``[64]``,
        rotation ``[3, 3]``, box ``[3]`` or ``None``, state) with state one of
        ``"tracked"``, ``"held"``, ``"easing"``, ``"neutral"``, ``"none"``."""
        if expr is not None:
            if self.lost_since is not None and self.last is not None:
                if t - self.lost_since > self.config.hold_s and self.config.enabled:
                    # A real loss: the filters restart from the new measurement, and the output
                    # blends in from where the ease had taken it (no one-frame pop).
                    e, r, _, _ = self._lost_output(t)
                    self._blend = (np.asarray(e), np.asarray(r), t)
                    self.expr.reset()
                    self.rotation.reset()
                    self.box.reset()
                # Inside the hold, one missed detection: the filters go on (a longer dt).
            self.lost_since = None
            if self.config.enabled:
                expr = self.expr(expr, t)
                rotation = self.rotation(rotation, t)
                box = self.box(box, t)
            expr, rotation, box = (np.asarray(expr, np.float64), np.asarray(rotation, np.float64),
                                   np.asarray(box, np.float64))
            self.last = (expr, rotation, box)
            self.last_t = t
            if self._blend is not None:
                e0, r0, t0 = self._blend
                w = min(1.0, (t - t0) / self.config.reacquire_s) \
                    if self.config.reacquire_s > 0 else 1.0
                if w >= 1.0:
                    self._blend = None
                else:
                    w = 0.5 - 0.5 * math.cos(math.pi * w)
                    q = slerp(quat_from_matrix(r0), quat_from_matrix(rotation), w)
                    # The crop box is where the face is, not a pose to ease: crops made from
                    # it (training data) must follow the face at once. What is shown is what a
                    # miss during the blend holds.
                    self.last = ((1 - w) * e0 + w * expr, matrix_from_quat(q), box)
            return self.last + ("tracked",)
        if self.last is None:
            return np.zeros(64), self.reference.copy(), None, "none"
        if self.lost_since is None:
            self.lost_since = self.last_t  # the loss started after the last tracked frame
        return self._lost_output(t)
