"""Head pose: weighted similarity Procrustes of mediapipe's rigid landmarks onto its canonical mesh.

In: landmarks ``[478, 3]`` in mediapipe's normalised image coordinates (x right in [0, 1] of the
width, y down in [0, 1] of the height, z with the scale of x, negative toward the camera) and the
image size. Out: ``R [3, 3]`` (canonical frame -> viewer frame), ``s`` (pixels per canonical cm),
``t [3]`` (pixels) with ``p_i ~= s R c_i + t``, and the canonicalised landmarks
``q = R^T (p - t) / s`` ``[478, 3]`` in canonical cm (tracking.md 4.2).

The canonical mesh (468 vertices, cm; x toward the subject's left, y up, z out of the face) and
the 33 Procrustes landmark ids and weights are read from the model bundle itself: the
``geometry_pipeline_metadata_landmarks.binarypb`` member of ``face_landmarker.task`` is a
protobuf ``GeometryPipelineMetadata`` which this module decodes with a small wire-format reader
(mediapipe 1.x ships no ``*_pb2`` modules), so no mesh numbers are copied into the source.
R is exactly Deep3D's ``R_f`` role (world -> viewer, OpenGL-style axes): it goes straight into
:func:`export3d.camera.label_from_rotation`.
"""
from __future__ import annotations

import functools
import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GEOMETRY_MEMBER = "geometry_pipeline_metadata_landmarks.binarypb"


@dataclass(frozen=True)
class CanonicalFace:
    vertices: np.ndarray  # [468, 3] float64, canonical cm
    uv: np.ndarray  # [468, 2]
    triangles: np.ndarray  # [F, 3] int
    landmark_ids: np.ndarray  # [33] int, the rigid Procrustes landmarks
    weights: np.ndarray  # [33] float64


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes):
    """Yield ``(field_number, wire_type, value)``; value is int (varint), bytes (length-delimited)
    or the raw 4/8 bytes of fixed-width fields."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i: i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i: i + n], i + n
        elif wire == 5:
            value, i = buf[i: i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _floats(wire: int, value) -> list[float]:
    # repeated float may be stored unpacked (wire 5, one per tag) or packed (wire 2)
    if wire == 5:
        return [struct.unpack("<f", value)[0]]
    return list(struct.unpack(f"<{len(value) // 4}f", value))


def _uints(wire: int, value) -> list[int]:
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(v)
    return out


def parse_geometry_metadata(data: bytes) -> CanonicalFace:
    """Decode ``GeometryPipelineMetadata{1: Mesh3d canonical_mesh, 2: repeated
    WeightedLandmarkRef{1: landmark_id, 2: weight}, 3: input_source}`` with
    ``Mesh3d{1: vertex_type, 2: primitive_type, 3: repeated float vertex_buffer (x y z u v),
    4: repeated uint32 index_buffer}``."""
    vertex_buffer: list[float] = []
    index_buffer: list[int] = []
    ids: list[int] = []
    weights: list[float] = []
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            for n2, w2, v2 in _fields(value):
                if n2 == 3:
                    vertex_buffer += _floats(w2, v2)
                elif n2 == 4:
                    index_buffer += _uints(w2, v2)
        elif number == 2 and wire == 2:
            landmark_id, weight = 0, 0.0
            for n2, w2, v2 in _fields(value):
                if n2 == 1:
                    landmark_id = v2
                elif n2 == 2:
                    weight = _floats(w2, v2)[0]
            ids.append(landmark_id)
            weights.append(weight)
    vb = np.asarray(vertex_buffer, dtype=np.float64)
    if vb.size == 0 or vb.size % 5 or not ids:
        raise ValueError("geometry metadata has no canonical mesh or no Procrustes landmarks")
    vb = vb.reshape(-1, 5)
    tris = np.asarray(index_buffer, dtype=np.int64).reshape(-1, 3)
    return CanonicalFace(vb[:, :3].copy(), vb[:, 3:].copy(), tris,
                         np.asarray(ids, dtype=np.int64), np.asarray(weights, dtype=np.float64))


@functools.lru_cache(maxsize=4)
def load_canonical_face(model_path: str | Path) -> CanonicalFace:
    """The canonical face read from a ``face_landmarker.task`` bundle (a zip)."""
    with zipfile.ZipFile(model_path) as zf:
        return parse_geometry_metadata(zf.read(GEOMETRY_MEMBER))


def to_pixel_frame(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised mediapipe landmarks ``[N, 3]`` -> right-handed pixel frame ``[N, 3]``
    (x right, y up, z toward the viewer): ``(W x, -H y, -W z)``."""
    p = np.empty(landmarks.shape, dtype=np.float64)
    p[:, 0] = landmarks[:, 0] * width
    p[:, 1] = -landmarks[:, 1] * height
    p[:, 2] = -landmarks[:, 2] * width
    return p


@dataclass
class Pose:
    rotation: np.ndarray  # [3, 3] canonical -> viewer
    scale: float  # pixels per canonical cm
    translation: np.ndarray  # [3] pixels (pixel frame: x right, y up)
    residual: float  # weighted RMS fit error, canonical cm


class PoseEstimator:
    """Weighted Umeyama fit of the rigid landmarks; built once, allocation-light per frame."""

    def __init__(self, canonical: CanonicalFace):
        self.canonical = canonical
        self.ids = canonical.landmark_ids
        w = canonical.weights / canonical.weights.sum()
        self.w = w  # [33], normalised
        c = canonical.vertices[self.ids]  # [33, 3]
        self.mu_c = w @ c
        self.c_centred = c - self.mu_c  # [33, 3]
        self.c_var = float(w @ np.sum(self.c_centred ** 2, axis=1))

    def fit(self, points: np.ndarray) -> Pose:
        """``points [>=468, 3]`` in the pixel frame -> :class:`Pose`."""
        p = points[self.ids]
        mu_p = self.w @ p
        p_centred = p - mu_p
        cov = (p_centred * self.w[:, None]).T @ self.c_centred  # [3, 3] = sum w P~ C~^T
        u, sig, vt = np.linalg.svd(cov)
        d = np.ones(3)
        if np.linalg.det(u @ vt) < 0:
            d[2] = -1.0
        rotation = (u * d) @ vt
        scale = float((sig * d).sum() / self.c_var)
        translation = mu_p - scale * rotation @ self.mu_c
        fitted = scale * self.c_centred @ rotation.T
        residual = math.sqrt(float(self.w @ np.sum((p_centred - fitted) ** 2, axis=1))) / scale
        return Pose(rotation, scale, translation, residual)

    @staticmethod
    def canonicalise(points: np.ndarray, pose: Pose) -> np.ndarray:
        """``q = R^T (p - t) / s`` for all points ``[N, 3]`` (canonical cm)."""
        return (points - pose.translation) @ pose.rotation / pose.scale


def euler_from_rotation(rotation: np.ndarray) -> tuple[float, float, float]:
    """Deep3D angles (pitch, yaw, roll) in radians of ``R = Rz(roll) Ry(yaw) Rx(pitch)``."""
    r = rotation
    pitch = math.atan2(r[2, 1], r[2, 2])
    yaw = math.asin(max(-1.0, min(1.0, -r[2, 0])))
    roll = math.atan2(r[1, 0], r[0, 0])
    return pitch, yaw, roll


def rotation_matrix(pitch: float, yaw: float, roll: float = 0.0) -> np.ndarray:
    """Numpy twin of :func:`export3d.camera.rotation_from_euler` (float64)."""
    cx, sx, cy, sy, cz, sz = (math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw),
                              math.cos(roll), math.sin(roll))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx
