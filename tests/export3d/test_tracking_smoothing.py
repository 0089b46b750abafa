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


# -- Exact values for the ease curves, the re-acquire blend and the One Euro step --------------
# (a mutation audit found a linear ease, a dropped expression blend on re-acquire and a One Euro
# filter without its derivative low-pass all survived the bounds above.)


def _cosine(w: float) -> float:
    return 0.5 - 0.5 * math.cos(math.pi * w)


def test_loss_eases_along_a_cosine_not_a_line():
    cfg = SmoothingConfig(hold_s=0.3, ease_s=0.5)
    sm = TrackSmoother(cfg)
    yaw = math.radians(20)
    for i in range(30):
        sm.update(i / FPS, np.full(64, 0.8), rotation_matrix(0.0, yaw, 0.0), np.zeros(3))
    last_t = 29 / FPS  # the loss starts after the last tracked frame
    assert _cosine(0.25) == pytest.approx(0.1464466, abs=1e-7)
    for fraction in (0.25, 0.5, 0.75):
        out = sm.update(last_t + cfg.hold_s + fraction * cfg.ease_s)
        assert out[3] == "easing"
        w = _cosine(fraction)  # 0.146, 0.5, 0.854 (a line: 0.25, 0.5, 0.75)
        np.testing.assert_allclose(out[0], 0.8 * (1 - w), atol=1e-9)
        # the rotation slerps to the reference (identity) by the same weight
        assert rotation_angle_deg(out[1], np.eye(3)) == pytest.approx(20 * (1 - w), abs=1e-4)


def test_a_reacquired_face_blends_its_expression_in_from_the_eased_one():
    cfg = SmoothingConfig(hold_s=0.3, ease_s=0.5, reacquire_s=0.3)
    sm = TrackSmoother(cfg)
    for i in range(30):
        sm.update(i / FPS, np.full(64, 0.8), np.eye(3), np.zeros(3))
    last_t = 29 / FPS
    assert sm.update(last_t + 0.4)[3] == "easing"
    t_back = last_t + cfg.hold_s + 0.25 * cfg.ease_s  # a quarter through the ease
    eased = 0.8 * (1 - _cosine(0.25))  # 0.683: where the ease had taken the expression
    new = np.full(64, -0.4)  # the face comes back with another expression
    outs = [sm.update(t_back + k / FPS, new, np.eye(3), np.zeros(3)) for k in range(12)]
    assert all(o[3] == "tracked" for o in outs)
    # the first frame shows the eased expression, then a cosine blend into the (constant, so
    # unfiltered) new one over reacquire_s
    for k, out in enumerate(outs):
        w = _cosine(min(1.0, (k / FPS) / cfg.reacquire_s))
        np.testing.assert_allclose(out[0], (1 - w) * eased + w * new, atol=1e-9)
    mid = outs[4][0]
    assert np.all((mid < eased - 0.05) & (mid > new + 0.05))  # strictly between the two
    np.testing.assert_allclose(outs[-1][0], new, atol=1e-12)  # done after reacquire_s


def _one_euro_by_hand(xs, ts, min_cutoff, beta, d_cutoff):
    """tracking.md 4.7, one scalar channel, written out step by step."""
    def alpha(f, te):
        return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * f * te))

    x_hat, dx_hat, out = xs[0], 0.0, [xs[0]]
    for i in range(1, len(xs)):
        te = ts[i] - ts[i - 1]
        dx = (xs[i] - x_hat) / te
        dx_hat = alpha(d_cutoff, te) * dx + (1 - alpha(d_cutoff, te)) * dx_hat
        f = min_cutoff + beta * abs(dx_hat)
        x_hat = alpha(f, te) * xs[i] + (1 - alpha(f, te)) * x_hat
        out.append(x_hat)
    return np.array(out)


def test_one_euro_matches_the_formulas_step_by_step():
    # Uneven timestamps, a ramp, a jump and a reversal; two channels with their own cutoffs.
    ts = [0.0, 0.033, 0.066, 0.11, 0.14, 0.2, 0.233, 0.3]
    xs = np.array([[0.0, 1.0], [0.1, 1.0], [0.25, 0.8], [0.3, 0.2], [1.2, 0.25], [1.0, 0.9],
                   [0.4, 0.9], [0.45, 0.3]])
    min_cutoff, beta, d_cutoff = np.array([1.0, 2.0]), np.array([0.7, 3.0]), 1.2
    f = OneEuro(min_cutoff, beta, d_cutoff)
    got = np.array([f(x, t) for x, t in zip(xs, ts)])
    for ch in range(2):
        want = _one_euro_by_hand(xs[:, ch], ts, min_cutoff[ch], beta[ch], d_cutoff)
        np.testing.assert_allclose(got[:, ch], want, rtol=0, atol=1e-12)
    # the speed term matters here: without it (beta = 0) the output is visibly different
    plain = _one_euro_by_hand(xs[:, 1], ts, min_cutoff[1], 0.0, d_cutoff)
    assert np.abs(got[:, 1] - plain).max() > 0.05
