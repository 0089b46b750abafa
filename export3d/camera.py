"""Camera conventions: the EG3D 25-d label, look-at and orbit cameras, head rotation ->
camera, rays.

A camera label is ``[B, 25]`` float32: ``cam2world.reshape(16)`` (OpenCV axes: x right, y down,
z forward; row-major) followed by the normalised intrinsics ``K.reshape(9)`` (focal 4.2647,
principal point 0.5, in units of the image size). World frame: y up, the face looks toward +z,
+x is the subject's left. The frontal camera sits at (0, 0, 2.7) with rotation diag(1, -1, -1).
(tracking.md 1.1 and 4.3; EG3D ``docs/camera_conventions.md``.)
"""
from __future__ import annotations

import math

import torch

FOCAL = 2985.29 / 700.0  # 4.2647, normalised by image size
RADIUS = 2.7
PIVOT = (0.0, 0.0, 0.2)  # EG3D FFHQ visualisation pivot


def intrinsics(focal: float = FOCAL, dtype=torch.float32) -> torch.Tensor:
    """Normalised intrinsics ``[3, 3]``."""
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], dtype=dtype)


def make_label(cam2world: torch.Tensor, focal: float = FOCAL) -> torch.Tensor:
    """``[B, 4, 4]`` cam2world -> ``[B, 25]`` label (row-major pose, then intrinsics)."""
    k = intrinsics(focal, cam2world.dtype).to(cam2world.device).reshape(1, 9)
    return torch.cat([cam2world.reshape(-1, 16), k.expand(cam2world.shape[0], 9)], dim=1)


def split_label(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 25]`` -> (cam2world ``[B, 4, 4]``, intrinsics ``[B, 3, 3]``)."""
    if label.ndim != 2 or label.shape[1] != 25:
        raise ValueError(f"camera labels must be [B, 25], got {tuple(label.shape)}")
    return label[:, :16].reshape(-1, 4, 4), label[:, 16:].reshape(-1, 3, 3)


def look_at(origin: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """cam2world ``[B, 4, 4]`` for cameras at ``origin [B, 3]`` looking at ``target`` (default:
    the origin), world up = +y, no roll. Columns are the OpenCV camera axes in world space."""
    if target is None:
        target = torch.zeros_like(origin)
    forward = torch.nn.functional.normalize(target - origin, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=origin.dtype, device=origin.device).expand_as(forward)
    right = -torch.nn.functional.normalize(torch.cross(up, forward, dim=-1), dim=-1)
    down = torch.cross(forward, right, dim=-1)
    pose = torch.eye(4, dtype=origin.dtype, device=origin.device).repeat(origin.shape[0], 1, 1)
    pose[:, :3, 0] = right
    pose[:, :3, 1] = down
    pose[:, :3, 2] = forward
    pose[:, :3, 3] = origin
    return pose


def orbit_camera(yaw: float, pitch: float = 0.0, radius: float = RADIUS,
                 pivot: tuple[float, float, float] = PIVOT) -> torch.Tensor:
    """One look-at label ``[1, 25]`` at ``yaw`` / ``pitch`` radians around ``pivot``.

    Positive yaw moves the camera toward -x (the subject's right), the same sign as a positive
    Deep3D / head yaw in :func:`label_from_rotation`; positive pitch moves it up (+y)."""
    p = torch.tensor(pivot, dtype=torch.float32)
    offset = torch.tensor([-math.sin(yaw) * math.cos(pitch), math.sin(pitch),
                           math.cos(yaw) * math.cos(pitch)], dtype=torch.float32)
    origin = (p + radius * offset).reshape(1, 3)
    return make_label(look_at(origin, p.reshape(1, 3)))


ORBITS = ("frontal", "yaw", "pitch", "circle")


def orbit_path(name: str, frames: int, yaw_range: float = math.radians(25),
               pitch_range: float = math.radians(12)) -> torch.Tensor:
    """Labels ``[frames, 25]`` along a named path: ``frontal`` (still), ``yaw`` (left-right sweep),
    ``pitch`` (up-down sweep) or ``circle`` (yaw and pitch together, EG3D's video orbit)."""
    if name not in ORBITS:
        raise ValueError(f"unknown orbit {name!r}; choose one of: {', '.join(ORBITS)}")
    t = torch.arange(frames, dtype=torch.float64) / max(frames, 1) * 2 * math.pi
    yaw = {"frontal": 0 * t, "yaw": yaw_range * torch.sin(t), "pitch": 0 * t,
           "circle": yaw_range * torch.sin(t)}[name]
    pitch = {"frontal": 0 * t, "yaw": 0 * t, "pitch": pitch_range * torch.sin(t),
             "circle": pitch_range * torch.cos(t)}[name]
    return torch.cat([orbit_camera(float(y), float(p)) for y, p in zip(yaw, pitch)], dim=0)


def label_from_rotation(rotation: torch.Tensor, focal: float = FOCAL) -> torch.Tensor:
    """Head rotation ``R_f [B, 3, 3]`` (world -> viewer, OpenGL-style axes, as the Procrustes fit
    of tracking.md 4.2 returns it) -> EG3D label ``[B, 25]`` by EG3D's Deep3D recipe with the
    translation taken as 0 (tracking.md 4.3): the camera centre is ``10 R_f^T e_z`` decimetres,
    scaled by 0.27, offset by (0, 0.006, 0.161), re-normalised to radius 2.7; the rotation is
    ``R_f^T diag(1, -1, -1)`` (not re-aimed at the origin, matching the training distribution)."""
    rotation = rotation.reshape(-1, 3, 3)
    c0 = 10.0 * rotation[:, 2, :]  # R_f^T e_z = third row of R_f
    offset = torch.tensor([0.0, 0.006, 0.161], dtype=rotation.dtype, device=rotation.device)
    c1 = 0.27 * c0 + offset
    centre = RADIUS * torch.nn.functional.normalize(c1, dim=-1)
    like = dict(dtype=rotation.dtype, device=rotation.device)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], **like))
    pose = torch.eye(4, **like).repeat(rotation.shape[0], 1, 1)
    pose[:, :3, :3] = rotation.transpose(1, 2) @ flip
    pose[:, :3, 3] = centre
    return make_label(pose, focal)


def rotation_from_euler(pitch: float, yaw: float, roll: float = 0.0) -> torch.Tensor:
    """Deep3D's ``R_f = Rz(roll) Ry(yaw) Rx(pitch)`` ``[3, 3]``, angles in radians."""
    cx, sx, cy, sy, cz, sz = (math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw),
                              math.cos(roll), math.sin(roll))
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float32)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float32)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float32)
    return rz @ ry @ rx


def rays(label: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel centres: (origins ``[B, R, 3]``, unit directions ``[B, R, 3]``) with
    ``R = resolution**2`` in row-major pixel order (row outer). Pixel (i, j) has normalised image
    coordinates u = (j + 0.5)/res, v = (i + 0.5)/res; the camera-space direction is
    ((u - cx)/fx, (v - cy)/fy, 1) (EG3D's RaySampler, no skew)."""
    cam2world, k = split_label(label)
    b = label.shape[0]
    centres = (torch.arange(resolution, dtype=label.dtype, device=label.device) + 0.5) / resolution
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    u = u.reshape(1, -1)
    v = v.reshape(1, -1)
    x = (u - k[:, 0, 2:3]) / k[:, 0, 0:1]
    y = (v - k[:, 1, 2:3]) / k[:, 1, 1:2]
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [B, R, 3]
    dirs = torch.nn.functional.normalize(dirs_cam @ cam2world[:, :3, :3].transpose(1, 2), dim=-1)
    origins = cam2world[:, :3, 3].unsqueeze(1).expand(b, resolution * resolution, 3)
    return origins.contiguous(), dirs
