"""EG3D-style aligned crop of a portrait from 5 mediapipe points (tracking.md 1.2 and 4.8).

In: landmarks ``[478, 3]`` (normalised) and the image size; out: the crop box ``(cx, cy, side)``
in pixels of the original image and, with :func:`aligned_crop`, the uint8 RGB ``[512, 512, 3]``
crop. Same recipe as EG3D's in-the-wild preprocessing (POS fit to a 5-point 3D template,
rescale to 300 px per decimetre, 1024 crop, 700 centre crop, resize to 512), collapsed into
one square: side ``(7/3) s`` centred on the projected template origin ``t``.

The 5 points, in the template's order: image-left eye centre mean(33, 133), image-right eye
centre mean(362, 263), nose tip 1, mouth corners 61 and 291. The 3D template is built from
mediapipe's own canonical mesh (no BFM numbers): ``0.0985 c_k + (-0.003, 0.032, -0.202)`` dm,
which matches Deep3D's ``lm3d_std`` to about 0.3 cm (tracking.md 4.2). The same crop serves the
source photo and the training data.
"""
from __future__ import annotations

import numpy as np

FIVE_POINTS = ((33, 133), (362, 263), (1,), (61,), (291,))
CM_TO_DM = 0.0985
TEMPLATE_OFFSET = np.array([-0.003, 0.032, -0.202])
OUTPUT_SIZE = 512


def five_points(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[5, 2]`` pixel coordinates (x right, y down) of the 5 alignment points."""
    xy = np.asarray(landmarks)[:, :2].astype(np.float64) * (width, height)
    return np.stack([xy[list(ids)].mean(0) for ids in FIVE_POINTS])


def template_from_canonical(vertices: np.ndarray) -> np.ndarray:
    """The 5-point 3D template ``[5, 3]`` in decimetres from the canonical mesh ``[468, 3]``."""
    pts = np.stack([vertices[list(ids)].mean(0) for ids in FIVE_POINTS])
    return CM_TO_DM * pts + TEMPLATE_OFFSET


def pos_fit(points_2d: np.ndarray, template: np.ndarray) -> tuple[float, np.ndarray]:
    """Weak-perspective fit ``x_2d (y up) ~= [r1; r2] X + t`` by linear least squares.
    Returns (scale ``s = (|r1| + |r2|) / 2`` in px per dm, ``t [2]``)."""
    n = len(template)
    a = np.zeros((2 * n, 8))
    a[0::2, :3] = template
    a[0::2, 3] = 1.0
    a[1::2, 4:7] = template
    a[1::2, 7] = 1.0
    k = np.linalg.lstsq(a, points_2d.reshape(-1), rcond=None)[0]
    scale = 0.5 * (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7]))
    return float(scale), np.array([k[3], k[7]])


def crop_box(landmarks: np.ndarray, width: int, height: int, template: np.ndarray) -> np.ndarray:
    """``[cx, cy, side]`` (pixels, y down) of the EG3D-aligned square."""
    p = five_points(landmarks, width, height)
    p[:, 1] = height - 1 - p[:, 1]  # POS works y up, as Deep3D does
    scale, t = pos_fit(p, template)
    return np.array([t[0], height - 1 - t[1], 7.0 / 3.0 * scale])


def crop_image(rgb: np.ndarray, box, size: int = OUTPUT_SIZE) -> np.ndarray:
    """Cut the square ``box = (cx, cy, side)`` out of ``rgb`` (black outside the image, as PIL's
    crop pads) and resize it to ``size`` with Lanczos."""
    import cv2

    cx, cy, side = (float(v) for v in box)
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    n = max(1, int(round(side)))
    h, w = rgb.shape[:2]
    out = np.zeros((n, n, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + n, w), min(y0 + n, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = rgb[sy0:sy1, sx0:sx1, :3]
    return cv2.resize(out, (size, size), interpolation=cv2.INTER_LANCZOS4)


def aligned_crop(rgb: np.ndarray, landmarks: np.ndarray, template: np.ndarray,
                 size: int = OUTPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(crop ``[size, size, 3]``, box ``[3]``) of a portrait."""
    box = crop_box(landmarks, rgb.shape[1], rgb.shape[0], template)
    return crop_image(rgb, box, size), box
