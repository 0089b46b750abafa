"""``export3d render``: source portrait + driving description -> video of frames and depth maps.

Driving description, one of:
- a driving file: ``.npz`` with ``expr [T, 64]`` and ``camera [T, 25]`` (optional
  ``timestamps [T]``), or ``.json`` ``{"expr": [[64 floats] x T], "camera": [[25 floats] x T]}``
  (what ``export3d track`` writes);
- a named camera orbit (``frontal``, ``yaw``, ``pitch``, ``circle``) with a neutral expression.
Each output frame is ``[rendered frame | depth map]`` side by side at the model's resolution.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import camera as cam
from .config import get_config
from .media import (MediaError, VideoWriter, center_crop, default_portrait, depth_to_rgb,
                    load_image, to_model_input, to_uint8_rgb)

RANDOM_WEIGHTS_WARNING = (
    "WARNING: no --checkpoint given: the model's weights are RANDOM, so every frame is noise. "
    "Pass --checkpoint FILE.safetensors for real output.")


@dataclass
class Driving:
    expr: torch.Tensor  # [T, 64]
    camera: torch.Tensor  # [T, 25]
    fps: float = 25.0

    def __len__(self) -> int:
        return self.expr.shape[0]


def load_driving(path: str | Path, expr_dim: int = 64) -> Driving:
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"driving file {path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                expr, camera = data["expr"], data["camera"]
                fps = _fps_from_timestamps(data["timestamps"]) if "timestamps" in data else 25.0
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
            expr, camera = np.asarray(data["expr"]), np.asarray(data["camera"])
            fps = float(data.get("fps", 25.0))
        else:
            raise MediaError(f"driving file {path.name} must be .npz or .json")
    except (KeyError, ValueError, OSError) as exc:
        if isinstance(exc, MediaError):
            raise
        raise MediaError(f"{path} is not a driving file with 'expr' and 'camera' arrays "
                         f"({exc})") from None
    expr = torch.as_tensor(np.asarray(expr, dtype=np.float32))
    camera = torch.as_tensor(np.asarray(camera, dtype=np.float32))
    if expr.ndim != 2 or expr.shape[1] != expr_dim or camera.ndim != 2 or camera.shape[1] != 25 \
            or expr.shape[0] != camera.shape[0] or expr.shape[0] == 0:
        raise MediaError(f"{path}: expected expr [T, {expr_dim}] and camera [T, 25] with the same "
                         f"T > 0, got {tuple(expr.shape)} and {tuple(camera.shape)}")
    return Driving(expr, camera, fps)


def _fps_from_timestamps(ts) -> float:
    ts = np.asarray(ts, dtype=np.float64)
    if ts.size < 2 or not np.all(np.diff(ts) > 0):
        return 25.0
    return float(1.0 / np.median(np.diff(ts)))


def orbit_driving(name: str, frames: int, expr_dim: int = 64, fps: float = 25.0) -> Driving:
    return Driving(torch.zeros(frames, expr_dim), cam.orbit_path(name, frames), fps)


def render_video(source: str | Path | None, out: str | Path, driving: Driving,
                 checkpoint: str | Path | None = None, preset: str = "tiny",
                 device: str = "cpu", impl: str = "auto", batch: int = 1,
                 progress: bool = True) -> Path:
    """Render ``driving`` from ``source`` and write ``out``; returns the path written."""
    from tqdm import tqdm

    from .model import build_model

    if checkpoint is None:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
        model = build_model(get_config(preset), seed=0, render_impl=impl)
    else:
        from .checkpoint import load_checkpoint

        model = load_checkpoint(checkpoint, render_impl=impl)
    model = model.to(device)
    config = model.config

    rgb = load_image(source if source is not None else default_portrait())
    image = to_model_input(center_crop(rgb, config.image_size)).to(device)
    size = config.image_size
    with torch.inference_mode():
        source_features = model.encode_source(image)  # once per photo
        with VideoWriter(out, driving.fps, (2 * size, size)) as writer:
            bar = tqdm(total=len(driving), unit="frame", desc="render", disable=not progress,
                       file=sys.stderr)
            for start in range(0, len(driving), batch):
                expr = driving.expr[start: start + batch].to(device)
                camera = driving.camera[start: start + batch].to(device)
                n = expr.shape[0]
                source_batch = _repeat(source_features, n)
                frame = model.synthesize(source_batch, expr, camera)
                for i in range(n):
                    depth = torch.nn.functional.interpolate(
                        frame["depth"][i: i + 1], size=(size, size), mode="nearest")[0]
                    writer.write(np.concatenate(
                        [to_uint8_rgb(frame["image"][i]),
                         depth_to_rgb(depth, config.ray_near, config.ray_far)], axis=1))
                bar.update(n)
            bar.close()
    return Path(out)


def _repeat(source, n: int):
    if source.high.shape[0] == n:
        return source
    return type(source)(source.high.expand(n, -1, -1, -1), source.tokens.expand(n, -1, -1))
