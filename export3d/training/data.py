"""Training data: ``export3d prepare`` (video -> aligned crops + codes) and the dataset reader.

Format (``DATASET/``, format ``export3d-dataset-v1``), one folder per clip::

    dataset.json              format, image_size, expression_code, face_model_sha256, clips
    <clip>/meta.npz           frame [N] (index in the video), t [N] s, expr [N, 64],
                              camera [N, 25] (absolute EG3D label), euler [N, 3], confidence [N],
                              neutral_blendshapes [52], neutral_geometric [13], neutral_iod
    <clip>/000123.png         the aligned crop of video frame 123, image_size^2 RGB

Only frames with a face are written (the others are counted in ``dataset.json``); the per-clip
neutral is the training rule of tracking.md 4.6 (calmest 20 % of the clip), the same the
``export3d track`` command uses, so the codes are those the live pipeline produces for a
calibrated user. Crops are read one by one when a batch is drawn: nothing needs to fit in
memory.

Held-out frames (:func:`holdout_split`): every ``every``-th frame (interpolation) and the last
``tail`` fraction of the clip as one block (new poses and expressions). Training never draws
them; ``export3d eval`` scores them.

:meth:`Dataset.expression_spread` is tracking.md 4.4's sigma_k, which training puts in the
model's config (``expr_spread``) so that CLeBS sees every expression channel at unit spread.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import EXPRESSION_CODE_VERSION
from ..errors import UserError

FORMAT = "export3d-dataset-v1"
# A channel's spread is taken as at least this fraction of the median channel's, and at least
# SPREAD_MIN: a channel that barely moves in the training frames (or not at all) would otherwise
# be scaled up without bound, and a webcam's noise on it with it.
SPREAD_FLOOR = 0.25
SPREAD_MIN = 1e-3


class DatasetError(UserError):
    pass


def _clip_name(path: Path, taken: set[str]) -> str:
    base = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem) or "clip"
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def prepare(videos, out, image_size: int, max_frames: int | None = None,
            progress: bool = True, log=print) -> dict:
    """Track every frame of ``videos`` and write the dataset described in the module doc."""
    import cv2

    from ..assets import ASSETS, FACE_MODEL
    from ..tracking.cli import read_frames, track_file
    from ..tracking.crop import crop_image

    out = Path(out)
    if (out / "dataset.json").exists():
        raise DatasetError(f"{out} already holds a dataset; choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    clips, taken = [], set()
    for video in map(Path, videos):
        name = _clip_name(video, taken)
        taken.add(name)
        folder = out / name
        folder.mkdir(exist_ok=True)
        scratch = folder / "track.npz"
        arrays = track_file(video, scratch, neutral="clip", max_frames=max_frames,
                            progress=progress)
        scratch.unlink()
        found = arrays["face_found"]
        _, _, frames = read_frames(video, max_frames)
        kept = []
        for i, rgb in enumerate(frames):
            if i < len(found) and found[i]:
                crop = crop_image(rgb, arrays["crop_box"][i], image_size)
                cv2.imwrite(str(folder / f"{i:06d}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                kept.append(i)
        kept = np.array(kept, np.int64)
        np.savez(folder / "meta.npz", frame=kept, t=arrays["timestamps"][kept],
                 expr=arrays["expr"][kept], camera=arrays["camera_absolute"][kept],
                 euler=arrays["euler"][kept], confidence=arrays["confidence"][kept],
                 neutral_blendshapes=arrays["neutral_blendshapes"],
                 neutral_geometric=arrays["neutral_geometric"],
                 neutral_iod=arrays["neutral_iod"])
        if not len(kept):
            raise DatasetError(f"{video} has no frame with a face ({len(found)} frames "
                               "searched); give talking-head videos")
        entry = {"name": name, "video": video.name, "frames": int(len(found)),
                 "kept": int(len(kept)), "skipped_no_face": int(len(found) - len(kept)),
                 "fps": float(arrays["fps"])}
        clips.append(entry)
        log(f"{name}: {entry['kept']} of {entry['frames']} frames kept "
            f"({entry['skipped_no_face']} without a face)")
    manifest = {"format": FORMAT, "image_size": int(image_size),
                "expression_code": EXPRESSION_CODE_VERSION,
                "face_model_sha256": ASSETS[FACE_MODEL].sha256, "clips": clips}
    (out / "dataset.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def holdout_split(n: int, every: int = 10, tail: float = 0.15) -> dict[str, np.ndarray]:
    """Positions ``0..n-1`` split into ``train``, ``interp`` (every ``every``-th of the frames
    before the tail, starting at ``every - 1``) and ``extrap`` (the last ``tail`` of the clip)."""
    start_tail = n - int(round(tail * n)) if tail > 0 else n
    idx = np.arange(n)
    extrap = idx[start_tail:]
    interp = idx[:start_tail][every - 1::every] if every > 0 else idx[:0]
    train = np.setdiff1d(idx[:start_tail], interp)
    return {"train": train, "interp": interp, "extrap": extrap}


@dataclass
class Clip:
    name: str
    folder: Path
    frame: np.ndarray  # [N] video frame indices
    expr: np.ndarray  # [N, 64]
    camera: np.ndarray  # [N, 25]
    euler: np.ndarray  # [N, 3]

    def __len__(self) -> int:
        return len(self.frame)

    def image(self, k: int) -> np.ndarray:
        """RGB uint8 ``[S, S, 3]`` of position ``k``."""
        import cv2

        path = self.folder / f"{int(self.frame[k]):06d}.png"
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"{path} is missing or unreadable; run export3d prepare again")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Dataset:
    """A prepared dataset: ``clips`` (list of :class:`Clip`), with the held-out split applied
    per clip (``positions(clip, "train"|"interp"|"extrap"|"all")``)."""

    def __init__(self, root, image_size: int | None = None, every: int = 10,
                 tail: float = 0.15):
        self.root = Path(root)
        path = self.root / "dataset.json"
        if not path.is_file():
            raise DatasetError(f"{self.root} is not a dataset (no dataset.json); create one with "
                               "export3d prepare VIDEO --out DIR")
        try:
            self.manifest = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DatasetError(f"{path} is damaged (not JSON); prepare the dataset "
                               "again") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            found = self.manifest.get("format") if isinstance(self.manifest, dict) else None
            raise DatasetError(f"{path} has format {found!r}, expected {FORMAT!r}; prepare it "
                               "again")
        missing = [k for k in ("expression_code", "image_size", "clips") if k not in
                   self.manifest]
        if missing or not isinstance(self.manifest["clips"], list):
            raise DatasetError(f"{path} is damaged (no {', '.join(missing) or 'clip list'}); "
                               "prepare the dataset again")
        if self.manifest["expression_code"] != EXPRESSION_CODE_VERSION:
            raise DatasetError(f"{self.root} was prepared with expression code "
                               f"{self.manifest['expression_code']!r}, this extractor makes "
                               f"{EXPRESSION_CODE_VERSION!r}; prepare it again")
        self.image_size = int(self.manifest["image_size"])
        if image_size is not None and image_size != self.image_size:
            raise DatasetError(f"{self.root} holds {self.image_size}px crops but the model needs "
                               f"{image_size}px; prepare it with a matching --preset")
        self.every, self.tail = every, tail
        self.clips: list[Clip] = []
        for entry in self.manifest["clips"]:
            self.clips.append(self._read_clip(entry))
        if not any(len(c) for c in self.clips):
            raise DatasetError(f"{self.root} has no frames with a face")

    def _read_clip(self, entry) -> Clip:
        """One clip's codes, checked (shapes, finite values, a crop for every frame), so a
        damaged dataset is found before training, not when a batch draws the damage."""
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise DatasetError(f"{self.root / 'dataset.json'} is damaged (a clip without a "
                               "name); prepare the dataset again")
        folder = self.root / name
        path = folder / "meta.npz"
        try:
            with np.load(path) as meta:
                frame, expr, camera, euler = (meta[k] for k in ("frame", "expr", "camera",
                                                               "euler"))
        except FileNotFoundError:
            raise DatasetError(f"{path} is missing; prepare the dataset again") from None
        except Exception as exc:  # a cut or foreign file: zip, pickle or key errors
            raise DatasetError(f"{path} is damaged ({type(exc).__name__}); prepare the dataset "
                               "again") from None
        n = len(frame)
        if expr.shape != (n, 64) or camera.shape != (n, 25) or euler.shape != (n, 3):
            raise DatasetError(f"{path} holds arrays of mismatched shapes (frame {frame.shape}, "
                               f"expr {expr.shape}, camera {camera.shape}); prepare the "
                               "dataset again")
        bad = ~(np.isfinite(expr).all(1) & np.isfinite(camera).all(1))
        if bad.any():
            raise DatasetError(f"{path}: frame {int(frame[np.argmax(bad)])} (and "
                               f"{int(bad.sum()) - 1} more) has a NaN or infinite code; "
                               "prepare the dataset again")
        absent = [int(f) for f in frame if not (folder / f"{int(f):06d}.png").is_file()]
        if absent:
            raise DatasetError(f"{folder / f'{absent[0]:06d}.png'} is missing (and "
                               f"{len(absent) - 1} more crops of {name}); prepare the dataset "
                               "again")
        return Clip(name, folder, frame, expr.astype(np.float32), camera.astype(np.float32),
                    euler.astype(np.float32))

    def clip(self, name: str) -> Clip:
        for c in self.clips:
            if c.name == name:
                return c
        raise DatasetError(f"{self.root} has no clip {name!r}; it has "
                           f"{', '.join(c.name for c in self.clips)}")

    def positions(self, clip: Clip, part: str = "train") -> np.ndarray:
        if part == "all":
            return np.arange(len(clip))
        return holdout_split(len(clip), self.every, self.tail)[part]

    def expression_spread(self) -> tuple[float, ...]:
        """sigma_k (tracking.md 4.4): each expression channel's standard deviation over the
        training frames of all clips together (codes are relative to each clip's neutral),
        floored (``SPREAD_FLOOR`` of the median channel's, ``SPREAD_MIN``), to 4 significant
        digits so that the config in a checkpoint reads as it is used."""
        codes = [c.expr[self.positions(c, "train")] for c in self.clips]
        codes = [e for e in codes if len(e)]
        if not codes:
            raise DatasetError(f"{self.root} has no training frames (all are held out)")
        codes = np.concatenate(codes).astype(np.float64)
        std = codes.std(axis=0)
        floor = max(SPREAD_FLOOR * float(np.median(std)), SPREAD_MIN)
        return tuple(float(f"{v:.4g}") for v in np.maximum(std, floor))

    def split_summary(self) -> dict:
        return {c.name: {p: int(len(self.positions(c, p))) for p in ("train", "interp", "extrap")}
                for c in self.clips}


def to_tensor(images: list[np.ndarray]):
    """uint8 RGB list -> float ``[B, 3, S, S]`` in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0
