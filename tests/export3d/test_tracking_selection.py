"""The landmark stage keeps one face: the largest on acquisition, then the one it was tracking."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from export3d.tracking.landmarker import Landmarker, LandmarkerConfig


def face(cx: float, cy: float, half: float):
    """A fake mediapipe face: 478 points on a square of side 2*half around (cx, cy)."""
    rng = np.random.default_rng(int(cx * 100 + cy * 10))
    pts = rng.uniform(-half, half, size=(478, 2)) + (cx, cy)
    pts[0], pts[1] = (cx - half, cy - half), (cx + half, cy + half)
    return [SimpleNamespace(x=float(x), y=float(y), z=0.0) for x, y in pts]


def result(*faces):
    return SimpleNamespace(face_landmarks=list(faces), face_blendshapes=[])


def selector():
    stage = Landmarker.__new__(Landmarker)  # the selection logic only; no mediapipe task
    stage.config = LandmarkerConfig()
    stage._prev_box = None
    return stage


def test_default_asks_for_two_faces():
    assert LandmarkerConfig().candidates == 2


def test_largest_face_on_acquisition_then_the_tracked_one():
    stage = selector()
    small, large = face(0.2, 0.3, 0.05), face(0.7, 0.5, 0.2)
    first = stage._select(result(small, large), 640, 480, 0)
    assert abs(first.landmarks[:, 0].mean() - 0.7) < 0.02
    # A larger face walks in: the track stays on the face it had.
    intruder = face(0.3, 0.5, 0.3)
    moved = face(0.72, 0.5, 0.2)
    second = stage._select(result(intruder, moved), 640, 480, 33)
    assert abs(second.landmarks[:, 0].mean() - 0.72) < 0.02
    # Lost, then re-acquired: the largest again.
    assert stage._select(result(), 640, 480, 66) is None
    third = stage._select(result(face(0.7, 0.5, 0.1), intruder), 640, 480, 99)
    assert abs(third.landmarks[:, 0].mean() - 0.3) < 0.02


def test_photos_are_independent_the_largest_face_each_time():
    followed, intruder = face(0.72, 0.5, 0.19), face(0.3, 0.5, 0.3)
    chosen = {}
    for mode in ("video", "image"):
        stage = selector()
        stage.config = LandmarkerConfig(mode=mode)
        first = stage._select(result(face(0.7, 0.5, 0.2)), 640, 480, 0)
        assert abs(first.landmarks[:, 0].mean() - 0.7) < 0.02
        second = stage._select(result(followed, intruder), 640, 480, 1)
        chosen[mode] = round(float(second.landmarks[:, 0].mean()), 1)
    # Video follows the face it had; a photo takes its own largest face.
    assert chosen == {"video": 0.7, "image": 0.3}
