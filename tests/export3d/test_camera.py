"""EG3D camera labels, look-at cameras, orbits, head rotation -> camera, rays."""
from __future__ import annotations

import math

import torch
from tolerances import assert_close

from export3d.camera import (FOCAL, label_from_rotation, look_at, orbit_camera, orbit_path, rays,
                             rotation_from_euler, split_label)


def test_frontal_label_from_identity_rotation():
    label = label_from_rotation(torch.eye(3).unsqueeze(0))
    assert label.shape == (1, 25)
    pose, k = split_label(label)
    assert_close(pose[0, :3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])))
    # c1 = 0.27 * (0, 0, 10) + (0, 0.006, 0.161) = (0, 0.006, 2.861), scaled to radius 2.7
    assert_close(pose[0, :3, 3], torch.tensor([0.0, 2.7 * 0.006 / math.hypot(0.006, 2.861),
                                               2.7 * 2.861 / math.hypot(0.006, 2.861)]))
    assert_close(pose[0, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert_close(k[0], torch.tensor([[4.2647, 0, 0.5], [0, 4.2647, 0.5], [0, 0, 1]]), atol=1e-4,
                 rtol=0)
    assert abs(FOCAL - 2985.29 / 700) < 1e-12


def test_rotation_labels_are_proper_with_radius_and_yaw_sign():
    for pitch, yaw, roll in [(0.1, 0.3, 0.0), (-0.2, -0.4, 0.1), (0.0, 0.0, 0.3)]:
        pose, _ = split_label(label_from_rotation(rotation_from_euler(pitch, yaw, roll)))
        assert_close(torch.linalg.det(pose[0, :3, :3]), torch.tensor(1.0))
        assert_close(pose[0, :3, :3] @ pose[0, :3, :3].t(), torch.eye(3))
        assert_close(pose[0, :3, 3].norm(), torch.tensor(2.7))
    left, _ = split_label(label_from_rotation(rotation_from_euler(0.0, math.radians(20))))
    right, _ = split_label(label_from_rotation(rotation_from_euler(0.0, math.radians(-20))))
    # A positive (Deep3D) head yaw moves the camera to -x, as EG3D's recipe does.
    assert left[0, 0, 3] < -0.5 and right[0, 0, 3] > 0.5


def test_orbit_camera_matches_rotation_recipe_in_direction():
    yaw = math.radians(20)
    orbit, _ = split_label(orbit_camera(yaw, pivot=(0.0, 0.0, 0.0)))
    recipe, _ = split_label(label_from_rotation(rotation_from_euler(0.0, yaw)))
    # Same side and nearly the same viewing direction (the recipe's 0.161 offset aside).
    cos = torch.dot(orbit[0, :3, 2], recipe[0, :3, 2])
    assert cos > math.cos(math.radians(2))


def test_look_at_is_orthonormal_and_aims_at_target():
    origin = torch.tensor([[1.0, 0.5, 2.0], [-0.3, 0.2, 2.6]])
    target = torch.tensor([[0.0, 0.0, 0.2], [0.1, 0.0, 0.0]])
    pose = look_at(origin, target)
    rot = pose[:, :3, :3]
    assert_close(rot @ rot.transpose(1, 2), torch.eye(3).expand(2, 3, 3))
    assert_close(torch.linalg.det(rot), torch.ones(2))
    assert_close(rot[:, :, 2], torch.nn.functional.normalize(target - origin, dim=-1))
    assert bool((rot[:, 1, 1] < 0).all())  # OpenCV: camera y (down) points to world -y


def test_orbit_paths():
    frontal = orbit_path("frontal", 4)
    assert torch.equal(frontal[0], frontal[3])
    pose, _ = split_label(frontal)
    assert_close(pose[0, :3, 3], torch.tensor([0.0, 0.0, 2.9]))
    assert_close(pose[0, :3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])))
    circle, _ = split_label(orbit_path("circle", 8))
    assert_close((circle[:, :3, 3] - torch.tensor([0.0, 0.0, 0.2])).norm(dim=-1),
                 torch.full((8,), 2.7))
    assert len({tuple(p.round(decimals=4).tolist()) for p in circle[:, :3, 3]}) == 8


def test_rays_through_pixel_centres():
    origins, dirs = rays(orbit_path("frontal", 1), 3)
    assert origins.shape == (1, 9, 3) and dirs.shape == (1, 9, 3)
    assert_close(dirs.norm(dim=-1), torch.ones(1, 9))
    assert_close(dirs[0, 4], torch.tensor([0.0, 0.0, -1.0]))  # centre pixel looks at the pivot
    # Pixel (0, 0) is top-left: image x left -> world -x; image y up -> world +y.
    assert dirs[0, 0, 0] < 0 and dirs[0, 0, 1] > 0
    expected = torch.nn.functional.normalize(torch.tensor([-1 / 3 / FOCAL, 1 / 3 / FOCAL, -1.0]),
                                             dim=0)
    assert_close(dirs[0, 0], expected)


# -- Independent ground truth for rays, orbit signs and Euler composition ----------------------
# (a mutation audit found R vs R^T in the rays, swapped pixel rows / columns, the orbit pitch sign
# and the Euler composition order all survived: the frontal camera's diag(1, -1, -1) is its own
# transpose and a symmetric 3x3 grid cannot tell rows from columns.)


def _camera_basis(origin: torch.Tensor, target: torch.Tensor):
    """(right, down, forward) in world space, from the geometry alone (not from look_at): a
    camera looking along ``forward`` with world up +y and no roll has image-right
    ``forward x up`` and image-up ``right x forward``; OpenCV's y axis points down."""
    forward = torch.nn.functional.normalize(target - origin, dim=0)
    right = torch.nn.functional.normalize(torch.cross(forward, torch.tensor([0.0, 1.0, 0.0]),
                                                      dim=0), dim=0)
    up = torch.cross(right, forward, dim=0)
    return right, -up, forward


def test_orbit_rays_aim_at_the_pivot_with_rows_down_and_columns_right():
    res = 5  # odd: the centre pixel (2, 2) exists
    yaw, pitch, pivot = 0.5, 0.3, (0.1, -0.05, 0.2)
    label = orbit_camera(yaw, pitch, pivot=pivot)
    origins, dirs = rays(label, res)
    origin = torch.tensor(pivot) + 2.7 * torch.tensor(
        [-math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    assert_close(origins[0], origin.expand(res * res, 3))
    target = torch.tensor(pivot)
    # the central ray runs from the camera origin to the look-at target
    assert_close(dirs[0, (res // 2) * res + res // 2],
                 torch.nn.functional.normalize(target - origin, dim=0))
    right, down, forward = _camera_basis(origin, target)
    f = FOCAL
    for i in range(res):  # every pixel, row-major (row outer)
        for j in range(res):
            x, y = ((j + 0.5) / res - 0.5) / f, ((i + 0.5) / res - 0.5) / f
            expected = torch.nn.functional.normalize(x * right + y * down + forward, dim=0)
            assert_close(dirs[0, i * res + j], expected)
    # Pixel (row 0, last column) is up and to the right in the camera's own frame.
    top_right = dirs[0, res - 1]
    assert torch.dot(top_right, right) > 0.05 / f and torch.dot(top_right, down) < -0.05 / f
    # ... and pixel (last row, column 0) down and to the left.
    bottom_left = dirs[0, (res - 1) * res]
    assert torch.dot(bottom_left, right) < -0.05 / f and torch.dot(bottom_left, down) > 0.05 / f


def test_rays_of_a_batch_of_tilted_cameras_round_trip_through_a_pinhole():
    # A world point projected with an independent pinhole (x = K [R^T (X - C)]) lands on the
    # pixel whose ray passes through it; the cameras are yawed and pitched (R not symmetric).
    res = 8
    labels = torch.cat([orbit_camera(0.4, -0.25), orbit_camera(-0.6, 0.35)], dim=0)
    origins, dirs = rays(labels, res)
    pose, k = split_label(labels)
    for b in range(2):
        rot, centre = pose[b, :3, :3], pose[b, :3, 3]
        for i, j in [(0, res - 1), (1, 6), (5, 2), (res - 1, 0)]:
            d = dirs[b, i * res + j]
            point = centre + 2.5 * d  # a point on the ray
            cam = rot.t() @ (point - centre)  # world -> camera (OpenCV)
            u = k[b, 0, 0] * cam[0] / cam[2] + k[b, 0, 2]
            v = k[b, 1, 1] * cam[1] / cam[2] + k[b, 1, 2]
            assert_close(torch.stack([u * res - 0.5, v * res - 0.5]),
                         torch.tensor([float(j), float(i)]), atol=1e-4, rtol=0)
            assert_close(origins[b, i * res + j], centre)


def test_orbit_camera_pitch_and_yaw_signs():
    pivot = (0.0, 0.0, 0.2)
    for pitch in (0.2, -0.2):
        pose, _ = split_label(orbit_camera(0.0, pitch, pivot=pivot))
        centre = pose[0, :3, 3]
        # positive pitch moves the camera up (+y) by r sin(pitch), and it then looks down
        assert_close(centre[1], torch.tensor(2.7 * math.sin(pitch)))
        assert math.copysign(1.0, float(pose[0, 1, 2])) == -math.copysign(1.0, pitch)
        assert_close(centre[2], torch.tensor(0.2 + 2.7 * math.cos(pitch)))
    pose, _ = split_label(orbit_camera(0.3, 0.25, pivot=pivot))
    centre = pose[0, :3, 3] - torch.tensor(pivot)
    assert centre[0] < -0.5 and centre[1] > 0.5  # yaw > 0: toward -x; pitch > 0: up
    assert_close(torch.asin(centre[1] / centre.norm()), torch.tensor(0.25))
    # the named pitch path starts level and rises first (sin), the circle starts up (cos)
    path, _ = split_label(orbit_path("pitch", 8))
    assert abs(float(path[0, 1, 3])) < 1e-6 and path[2, 1, 3] > 0.5 and path[6, 1, 3] < -0.5
    circle, _ = split_label(orbit_path("circle", 8))
    assert circle[0, 1, 3] > 0.5 and circle[4, 1, 3] < -0.5


def _axis_rotation(axis, angle: float) -> torch.Tensor:
    """Rodrigues: rotation by ``angle`` (right-hand rule) about the unit ``axis``."""
    a = torch.tensor(axis, dtype=torch.float64)
    cross = torch.tensor([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]],
                         dtype=torch.float64)
    return (torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross
            + (1 - math.cos(angle)) * cross @ cross)


def test_rotation_from_euler_is_rz_ry_rx_and_matches_its_numpy_twin():
    from export3d.tracking.pose import rotation_matrix

    ex, ey, ez = torch.eye(3)
    q = math.pi / 2
    # single axes, by hand: a positive pitch turns +y toward +z, yaw turns +z toward +x,
    # roll turns +x toward +y
    assert_close(rotation_from_euler(q, 0.0) @ ey, ez)
    assert_close(rotation_from_euler(0.0, q) @ ez, ex)
    assert_close(rotation_from_euler(0.0, 0.0, q) @ ex, ey)
    t = 0.3
    assert_close(rotation_from_euler(t, 0.0), torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, math.cos(t), -math.sin(t)], [0.0, math.sin(t), math.cos(t)]]))
    # order: pitch is applied first, then yaw, then roll (Rz Ry Rx): +y -> +z -> +x -> +y
    assert_close(rotation_from_euler(q, q) @ ey, ex)
    assert_close(rotation_from_euler(q, q, q) @ ey, ey)
    assert_close(rotation_from_euler(q, 0.0, q) @ ey, ez)
    rng = torch.Generator().manual_seed(0)
    for _ in range(20):
        pitch, yaw, roll = (torch.rand(3, generator=rng, dtype=torch.float64) * 6 - 3).tolist()
        expected = (_axis_rotation((0, 0, 1), roll) @ _axis_rotation((0, 1, 0), yaw)
                    @ _axis_rotation((1, 0, 0), pitch))
        assert_close(rotation_from_euler(pitch, yaw, roll), expected.float())
        assert_close(torch.from_numpy(rotation_matrix(pitch, yaw, roll)), expected,
                     dtype=torch.float64)
