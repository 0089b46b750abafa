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
