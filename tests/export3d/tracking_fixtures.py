"""Shared helpers for the tracking tests: real portraits, cached assets, synthetic faces."""
from __future__ import annotations

import functools

import numpy as np

from export3d.tracking.pose import load_canonical_face, rotation_matrix


@functools.lru_cache(maxsize=1)
def model_path() -> str:
    from export3d.assets import FACE_MODEL, asset_path

    return str(asset_path(FACE_MODEL, fetch=True))


def media(name: str) -> str:
    from export3d.assets import asset_path

    return str(asset_path(name, fetch=True))


def canonical():
    return load_canonical_face(model_path())


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def grace_hopper() -> np.ndarray:
    import cv2
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def identity_offsets(seed: int, amplitude: float = 0.3) -> np.ndarray:
    """Smooth random "identity" offsets ``[478, 3]`` (cm, at most ``amplitude``): mirror-symmetric
    quadratic functions of position (wider jaw, flatter face, longer nose ...). Linear terms are
    left out on purpose: a linear shear of the whole head is indistinguishable from a rotation,
    so it would make the rotation ground truth ambiguous."""
    rng = np.random.default_rng(seed)
    v = synthetic_face(np.zeros((478, 3))) / 8.0
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    even = np.stack([x * x, y * y, z * z, y * z], axis=1)  # even in x
    off = np.zeros((478, 3))
    off[:, 0] = x * (np.stack([y, z], axis=1) @ rng.normal(0, 1, 2))  # odd in x: symmetric
    off[:, 1] = even @ rng.normal(0, 1, 4)
    off[:, 2] = even @ rng.normal(0, 1, 4)
    return amplitude * off / np.abs(off).max()


def synthetic_face(offsets: np.ndarray) -> np.ndarray:
    """Canonical mesh + iris points (at the eye centres) + ``offsets`` -> ``[478, 3]`` cm."""
    c = canonical().vertices
    q = np.zeros((478, 3))
    q[:468] = c
    q[468:473] = 0.5 * (c[33] + c[133])
    q[473:478] = 0.5 * (c[362] + c[263])
    return q + offsets


def expression_offsets(jaw: float = 0.0, brows: float = 0.0, gaze: float = 0.0) -> np.ndarray:
    """Scripted expression displacements ``[478, 3]`` (cm): open jaw (points below the mouth
    corners move down, weighted by how far below), lift brows, move the irises sideways."""
    q = synthetic_face(np.zeros((478, 3)))
    d = np.zeros((478, 3))
    mouth_y = 0.5 * (q[61, 1] + q[291, 1])
    below = np.clip((mouth_y - q[:, 1]) / 4.0, 0.0, 1.0)
    below[14] = max(below[14], 0.3)  # lower inner lip follows the jaw
    d[:, 1] -= jaw * below
    brow_ids = [46, 52, 53, 55, 63, 65, 66, 70, 105, 107, 276, 282, 283, 285, 293, 295, 296, 300,
                334, 336]
    d[brow_ids, 1] += brows
    d[468:478, 0] += gaze
    d[canonical().landmark_ids] = 0.0  # the rigid landmarks are the ones expressions leave alone
    return d


def project(q: np.ndarray, rotation: np.ndarray, scale: float, t, width: int, height: int):
    """Orthographic projection ``s R q + t`` in the pixel frame -> mediapipe-normalised
    landmarks ``[478, 3]`` (inverse of ``pose.to_pixel_frame``)."""
    p = scale * q @ rotation.T + np.asarray(t, np.float64)
    lm = np.empty_like(p)
    lm[:, 0] = p[:, 0] / width
    lm[:, 1] = -p[:, 1] / height
    lm[:, 2] = -p[:, 2] / width
    return lm.astype(np.float32)


def random_rotation(rng, max_deg: float = 30.0) -> tuple[np.ndarray, tuple]:
    angles = tuple(np.radians(rng.uniform(-max_deg, max_deg, 3)))
    return rotation_matrix(*angles), angles
