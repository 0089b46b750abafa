"""Head pose, camera labels and geometric channels on synthetic ground truth."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from export3d.camera import label_from_rotation
from export3d.tracking.expression import Neutral, geometric_raw, mpx64
from export3d.tracking.extractor import eg3d_label, rotation_angle_deg
from export3d.tracking.landmarker import FaceObservation
from export3d.tracking.pose import (PoseEstimator, euler_from_rotation, parse_geometry_metadata,
                                    rotation_matrix, to_pixel_frame)
from tracking_fixtures import (canonical, expression_offsets, identity_offsets, project,
                               random_rotation, synthetic_face)

W, H = 640, 480


def test_canonical_mesh_from_bundle():
    c = canonical()
    assert c.vertices.shape == (468, 3) and c.triangles.shape[1] == 3
    assert len(c.landmark_ids) == 33 and np.all(c.weights > 0)
    # canonical axes: x toward the subject's left (263 = left outer eye corner), nose tip out
    assert c.vertices[263, 0] > 4.0 and c.vertices[33, 0] < -4.0
    assert c.vertices[1, 2] == pytest.approx(7.4756, abs=1e-3)
    assert 4 in c.landmark_ids and 263 in c.landmark_ids


def test_protobuf_reader_accepts_packed_fields():
    import struct

    def key(n, w):
        return bytes([(n << 3) | w])

    floats = struct.pack("<10f", *range(10))
    mesh = key(3, 2) + bytes([len(floats)]) + floats + key(4, 2) + bytes([3, 0, 1, 1])
    ref = key(1, 0) + bytes([7]) + key(2, 5) + struct.pack("<f", 0.5)
    data = key(1, 2) + bytes([len(mesh)]) + mesh + key(2, 2) + bytes([len(ref)]) + ref
    face = parse_geometry_metadata(data)
    np.testing.assert_array_equal(face.vertices, [[0, 1, 2], [5, 6, 7]])
    assert face.landmark_ids.tolist() == [7] and face.weights.tolist() == [0.5]


def test_rotation_recovered_within_half_degree():
    """50 random heads (identity offsets, an open jaw, 0.3 px landmark noise, +-30 deg per axis).
    A different identity legitimately tilts the best fit to the canonical mesh a little (its
    "frontal" differs), so the ground truth is ``R_true @ B`` with ``B`` the fit of the same face
    un-rotated; that bias itself stays under 1.5 deg for 0.3 cm offsets."""
    rng = np.random.default_rng(0)
    est = PoseEstimator(canonical())
    worst = worst_bias = 0.0
    for k in range(50):
        rotation, _ = random_rotation(rng)
        q = synthetic_face(identity_offsets(k) + expression_offsets(jaw=rng.uniform(0, 1.5)))
        scale = rng.uniform(8, 20)
        bias = est.fit(to_pixel_frame(project(q, np.eye(3), scale, (W / 2, -H / 2, 0), W, H),
                                      W, H)).rotation
        lm = project(q, rotation, scale, (W / 2, -H / 2, 0), W, H)
        lm = lm + rng.normal(0, 0.3 / W, lm.shape).astype(np.float32)  # 0.3 px of noise
        pose = est.fit(to_pixel_frame(lm, W, H))
        worst = max(worst, rotation_angle_deg(pose.rotation, rotation @ bias))
        worst_bias = max(worst_bias, rotation_angle_deg(bias, np.eye(3)))
    assert worst < 0.5, f"worst rotation error {worst:.3f} deg"
    assert worst_bias < 1.5, f"identity bias {worst_bias:.3f} deg"


def test_exact_recovery_and_euler_round_trip():
    est = PoseEstimator(canonical())
    rotation = rotation_matrix(0.2, -0.3, 0.1)
    lm = project(synthetic_face(np.zeros((478, 3))), rotation, 12.0, (300, -250, 5), W, H)
    pose = est.fit(to_pixel_frame(lm, W, H))
    assert rotation_angle_deg(pose.rotation, rotation) < 1e-3
    assert pose.scale == pytest.approx(12.0, rel=1e-5)
    np.testing.assert_allclose(euler_from_rotation(pose.rotation), (0.2, -0.3, 0.1), atol=1e-5)


def test_numpy_label_equals_camera_module():
    rng = np.random.default_rng(1)
    for _ in range(5):
        rotation, _ = random_rotation(rng)
        ref = label_from_rotation(torch.tensor(rotation, dtype=torch.float64)[None])[0].numpy()
        np.testing.assert_allclose(eg3d_label(rotation), ref, atol=1e-6)


def test_camera_label_signs_and_radius():
    frontal = eg3d_label(np.eye(3)).reshape(-1)
    np.testing.assert_allclose(frontal[:16].reshape(4, 4)[:3, :3], np.diag([1, -1, -1]), atol=1e-6)
    np.testing.assert_allclose(frontal[[3, 7, 11]], (0.0, 0.0057, 2.69999), atol=2e-3)
    for yaw in (math.radians(20), math.radians(-20)):
        label = eg3d_label(rotation_matrix(0.0, yaw, 0.0))
        pose = label[:16].reshape(4, 4)
        assert np.linalg.norm(pose[:3, 3]) == pytest.approx(2.7, abs=1e-5)
        assert np.linalg.det(pose[:3, :3]) == pytest.approx(1.0, abs=1e-5)
        assert np.sign(pose[0, 3]) == -np.sign(yaw)  # positive yaw: camera toward -x
    up = eg3d_label(rotation_matrix(math.radians(15), 0.0, 0.0))[:16].reshape(4, 4)
    # positive Deep3D pitch tips the top of the head toward the viewer (looking down): in the
    # head's frame the camera is then above the face
    assert up[1, 3] > 0.5


def test_mirrored_landmarks_flip_yaw_and_roll():
    est = PoseEstimator(canonical())
    rotation = rotation_matrix(math.radians(8), math.radians(15), math.radians(10))
    lm = project(synthetic_face(np.zeros((478, 3))), rotation, 10, (320, -240, 0), W, H)
    mirrored = lm.copy()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    # a mirror also swaps the subject's left and right: relabel with the mesh's symmetry
    v = canonical().vertices
    flipped = v * (-1, 1, 1)
    partner = np.argmin(((v[:, None] - flipped[None]) ** 2).sum(-1), axis=0)
    mirrored[:468] = mirrored[partner]
    p1 = euler_from_rotation(est.fit(to_pixel_frame(lm, W, H)).rotation)
    p2 = euler_from_rotation(est.fit(to_pixel_frame(mirrored, W, H)).rotation)
    np.testing.assert_allclose(p2, (p1[0], -p1[1], -p1[2]), atol=math.radians(0.1))


def test_geometric_channels_equal_across_identities():
    """Two identities making the same expression give the same neutral-relative geometric code
    (to 0.02 of the inter-ocular distance); the expression itself moves it by far more."""
    est = PoseEstimator(canonical())
    expr = expression_offsets(jaw=1.2, brows=0.4, gaze=0.2)
    codes = []
    for seed in (3, 4):
        ident = identity_offsets(seed)
        rotation = rotation_matrix(0.1, 0.2 * (seed - 3.5), 0.05)
        qs = []
        for offsets in (ident, ident + expr):
            lm = project(synthetic_face(offsets), rotation, 11.0, (320, -240, 0), W, H)
            points = to_pixel_frame(lm, W, H)
            qs.append(PoseEstimator.canonicalise(points, est.fit(points)))
        neutral = Neutral.from_landmarks(np.zeros(52), qs[0], "calibration")
        codes.append(mpx64(np.zeros(52), geometric_raw(qs[1]), neutral)[51:])
    diff = np.abs(codes[0] - codes[1])
    assert diff.max() < 0.02, diff
    assert codes[0][2] > 0.05 and codes[0][0] > 0.02  # jaw drop and mouth aperture seen
    assert codes[0][7] > 0.02 and codes[0][8] > 0.02  # both brows up
    assert codes[0][9] > 0.02 and codes[0][11] > 0.02  # irises moved toward +x


def test_neutral_face_gives_zero_code():
    q = synthetic_face(identity_offsets(7))
    b = np.random.default_rng(0).uniform(0, 0.5, 52)
    neutral = Neutral.from_landmarks(b, q, "calibration")
    np.testing.assert_allclose(mpx64(b, geometric_raw(q), neutral), 0.0, atol=1e-6)


def test_face_observation_box():
    lm = np.full((478, 3), 0.5, np.float32)
    lm[0, :2], lm[1, :2] = (0.25, 0.5), (0.75, 1.0)
    np.testing.assert_allclose(FaceObservation(lm, np.zeros(52), 100, 200, 0).box(),
                               (25, 100, 75, 200))
