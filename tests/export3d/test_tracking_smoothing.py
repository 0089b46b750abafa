"""One Euro step and rest response, quaternion continuity, hold / ease / reset on loss."""
from __future__ import annotations

import math

import numpy as np
import pytest

from export3d.tracking.extractor import rotation_angle_deg
from export3d.tracking.pose import rotation_matrix
from export3d.tracking.smoothing import (OneEuro, RotationFilter, SmoothingConfig, TrackSmoother,
                                         matrix_from_quat, quat_from_matrix)

FPS = 30.0


def test_one_euro_rest_suppresses_jitter():
    rng = np.random.default_rng(0)
    f = OneEuro(1.0, 0.0)
    noisy = 0.5 + rng.normal(0, 0.05, 300)
    out = np.array([f(x, i / FPS) for i, x in enumerate(noisy)])
    # a first-order low-pass at 1 Hz, 30 fps: alpha = 0.173, noise variance x alpha/(2-alpha)
    assert out[60:].std() < 0.35 * noisy[60:].std()
    assert abs(out[60:].mean() - 0.5) < 0.01


def test_one_euro_step_response():
    step = [0.0] * 30 + [1.0] * 60
    slow = OneEuro(1.0, 0.0)
    out = np.array([slow(x, i / FPS) for i, x in enumerate(step)])
    alpha = 1 / (1 + FPS / (2 * math.pi))
    # beta = 0 is an exponential smoother: after n samples the residual is (1 - alpha)^n
    np.testing.assert_allclose(out[30 + 9], 1 - (1 - alpha) ** 10, rtol=1e-9)
    fast = OneEuro(1.0, 1.0)
    out_fast = np.array([fast(x, i / FPS) for i, x in enumerate(step)])
    assert out_fast[33] > out[33] + 0.1  # speed raises the cutoff: less lag on fast motion
    assert out_fast[-1] == pytest.approx(1.0, abs=1e-3)


def test_one_euro_uses_timestamps():
    a, b = OneEuro(1.0, 0.0), OneEuro(1.0, 0.0)
    a(0.0, 0.0), b(0.0, 0.0)
    assert b(1.0, 0.1) > a(1.0, 1 / FPS)  # a longer gap lets more of the new value through


def test_quaternion_round_trip_and_sign_continuity():
    rng = np.random.default_rng(2)
    for _ in range(20):
        r = rotation_matrix(*rng.uniform(-3, 3, 3))
        np.testing.assert_allclose(matrix_from_quat(quat_from_matrix(r)), r, atol=1e-9)
    f = RotationFilter(0.5, 0.5)
    yaw = np.radians(np.linspace(170, 190, 40))  # crosses the quaternion sign flip at 180 deg
    outs = [f(rotation_matrix(0, 0, y), i / FPS) for i, y in enumerate(yaw)]
    steps = [rotation_angle_deg(a, b) for a, b in zip(outs, outs[1:])]
    assert max(steps) < 2.0


def test_hold_then_ease_then_reset():
    cfg = SmoothingConfig(hold_s=0.3, ease_s=0.5)
    sm = TrackSmoother(cfg)
    e = np.full(64, 0.8)
    r = rotation_matrix(0.0, math.radians(20), 0.0)
    for i in range(30):
        sm.update(i / FPS, e, r, np.array([100.0, 100.0, 200.0]))
    t0 = 30 / FPS
    held = sm.update(t0 + 0.2)
    assert held[3] == "held" and held[0][0] == pytest.approx(0.8, abs=0.02)
    mid = sm.update(t0 + 0.55)
    assert mid[3] == "easing" and 0.1 < mid[0][0] < 0.7
    end = sm.update(t0 + 0.9)
    assert end[3] == "neutral" and np.abs(end[0]).max() < 1e-9
    assert rotation_angle_deg(end[1], np.eye(3)) < 1e-6
    back = sm.update(t0 + 1.0, np.zeros(64), np.eye(3), np.array([10.0, 10.0, 50.0]))
    assert back[3] == "tracked"
    np.testing.assert_allclose(back[0], 0.0)  # reset: no drag from the pre-loss value
    np.testing.assert_allclose(back[2], (10, 10, 50))  # the box follows the face at once


def test_a_missed_frame_inside_the_hold_keeps_the_filters():
    # One missed detection reset every filter, and the next frame snapped to the raw pose
    # (up to 7 deg on a real clip). Inside the hold the filters now go on.
    def output_at_31(drop: bool):
        sm = TrackSmoother(SmoothingConfig())
        for i in range(32):
            yaw = math.radians(2 * i + (6 if i % 2 else 0))  # a turn with 6-degree jitter
            if drop and i == 30:
                assert sm.update(i / FPS)[3] == "held"  # no face this frame
                continue
            out = sm.update(i / FPS, np.zeros(64), rotation_matrix(0.0, yaw, 0.0), np.zeros(3))
        return out

    kept, after = output_at_31(False), output_at_31(True)
    assert after[3] == "tracked"
    assert rotation_angle_deg(after[1], kept[1]) < 1.0


def test_a_reacquired_face_blends_in_from_the_eased_pose():
    cfg = SmoothingConfig(hold_s=0.3, ease_s=0.5, reacquire_s=0.3)
    sm = TrackSmoother(cfg)
    r = rotation_matrix(0.0, math.radians(20), 0.0)
    for i in range(30):
        sm.update(i / FPS, np.full(64, 0.5), r, np.zeros(3))
    t0 = 30 / FPS
    eased = sm.update(t0 + 0.5)  # half-way through the ease
    assert eased[3] == "easing"
    turned = rotation_matrix(0.0, math.radians(-30), 0.0)  # the face comes back turned away
    first = sm.update(t0 + 0.5 + 1 / FPS, np.zeros(64), turned, np.zeros(3))
    # From where the ease was, not a 40-degree pop to the new pose in one frame.
    assert rotation_angle_deg(first[1], eased[1]) < 5.0
    assert rotation_angle_deg(first[1], turned) > 20.0
    later = [sm.update(t0 + 0.5 + k / FPS, np.zeros(64), turned, np.zeros(3))
             for k in range(2, 20)]
    assert rotation_angle_deg(later[-1][1], turned) < 1e-6  # done after reacquire_s


def test_a_miss_during_the_reacquire_blend_holds_what_was_shown():
    # The hold showed the unblended track: a 30-degree jump on a miss inside the blend.
    sm = TrackSmoother(SmoothingConfig(hold_s=0.3, ease_s=0.5, reacquire_s=0.3))
    for i in range(30):
        sm.update(i / FPS, np.zeros(64), np.eye(3), np.zeros(3))
    t = 30 / FPS + 1.0
    assert sm.update(t)[3] == "neutral"  # eased fully back to the reference
    turned = rotation_matrix(0.0, math.radians(30), 0.0)
    shown = sm.update(t + 1 / FPS, np.zeros(64), turned, np.zeros(3))
    shown = sm.update(t + 2 / FPS, np.zeros(64), turned, np.zeros(3))
    held = sm.update(t + 3 / FPS)
    assert held[3] == "held" and rotation_angle_deg(held[1], shown[1]) < 1e-9
