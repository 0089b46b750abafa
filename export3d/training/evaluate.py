"""``export3d eval``: a checkpoint scored on a dataset's held-out frames, next to baselines.

Same identity (self-reenactment, ground truth exists): one source crop (``--source-frame``, a
training frame; default the clip's first) is driven by the expression code and camera of
every held-out frame, in the two held-out sets of :func:`.data.holdout_split` (``interp``:
every 10th frame; ``extrap``: the last 15 % of the clip). Scores: PSNR (dB, on uint8 RGB)
and SSIM (Gaussian 11-tap, :func:`.losses.ssim`) against the real frame, for
- the model;
- ``copy_source``: the source crop itself (a model that ignores the driver scores this);
- ``nearest_train``: for each held-out frame, the training crop closest to it in pixels, an
  oracle (it looks at the answer) that no model which only memorises its training frames can
  beat.

Expression and pose fidelity: every generated frame and every driving frame is re-tracked by
the project's own tracker (mediapipe on the crop up-scaled to 256 px, image mode): AED-mp is
the mean L1 distance between their MPX-64 codes (each sequence relative to its own neutral,
the calmest 20 % of its frames, as in training), APD-mp the mean geodesic angle in degrees
between their head rotations, and APD-mp L1 tracking.md's definition, the mean of |d pitch| +
|d yaw| + |d roll| in degrees. These are the project's measures, not the paper's BFM-based
AED/APD. Cross identity (``--drive VIDEO`` of another person): the same source driven by
that video's codes and cameras; no ground truth, so AED-mp / APD-mp only, with the
``copy_source`` baseline.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint, read_config
from ..errors import UserError
from .data import Dataset, prepare, to_tensor
from .losses import ssim

RETRACK_SIZE = 256


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def ssim_u8(a: np.ndarray, b: np.ndarray) -> float:
    return float(ssim(to_tensor([a]), to_tensor([b]))[0])


class Retracker:
    """Crops -> (found [N], MPX-64 codes [N, 64], rotations [N, 3, 3])."""

    def __init__(self):
        from ..tracking.extractor import ExtractorConfig, FaceExtractor
        from ..tracking.landmarker import LandmarkerConfig

        self.extractor = FaceExtractor(ExtractorConfig(landmarker=LandmarkerConfig(mode="image")))

    def __call__(self, crops: list[np.ndarray]):
        import cv2

        from ..tracking.expression import mpx64, robust_neutral

        found, ms = [], []
        for crop in crops:
            big = cv2.resize(crop, (RETRACK_SIZE, RETRACK_SIZE), interpolation=cv2.INTER_CUBIC)
            obs = self.extractor.landmarker.detect(big)
            found.append(obs is not None)
            if obs is not None:
                ms.append(self.extractor.measure(obs))
        found = np.array(found, bool)
        codes = np.full((len(crops), 64), np.nan, np.float32)
        rotations = np.full((len(crops), 3, 3), np.nan)
        if ms:
            b = np.stack([m.observation.blendshapes for m in ms])
            neutral = robust_neutral(b, np.stack([m.q for m in ms]))
            codes[found] = np.stack([mpx64(m.observation.blendshapes, m.geometric, neutral)
                                     for m in ms])
            rotations[found] = np.stack([m.rotation for m in ms])
        return found, codes, rotations

    def close(self):
        self.extractor.close()


def fidelity(retracked_out, retracked_ref) -> dict:
    """AED-mp, APD-mp over frames where both were tracked, and that count. Two pose errors:
    ``apd_mp_euler_l1_deg`` is tracking.md's APD-mp, the mean over frames of
    |d pitch| + |d yaw| + |d roll| (Deep3D's angles, degrees); ``apd_mp_deg`` the mean geodesic
    angle between the two rotations (one number per frame however the error splits over the
    axes, and free of Euler angles' wrap-around: this project's headline pose error)."""
    from ..tracking.extractor import rotation_angle_deg
    from ..tracking.pose import euler_from_rotation

    f_out, c_out, r_out = retracked_out
    f_ref, c_ref, r_ref = retracked_ref
    both = f_out & f_ref
    if not both.any():
        return {"aed_mp": None, "apd_mp_deg": None, "apd_mp_euler_l1_deg": None, "tracked": 0}
    aed = float(np.mean(np.abs(c_out[both] - c_ref[both])))
    apd = float(np.mean([rotation_angle_deg(a, b) for a, b in zip(r_out[both], r_ref[both])]))
    l1 = float(np.mean([np.degrees(np.abs(np.subtract(euler_from_rotation(a),
                                                      euler_from_rotation(b)))).sum()
                        for a, b in zip(r_out[both], r_ref[both])]))
    return {"aed_mp": aed, "apd_mp_deg": apd, "apd_mp_euler_l1_deg": l1,
            "tracked": int(both.sum())}


@torch.no_grad()
def generate(model, source: np.ndarray, expr: np.ndarray, camera: np.ndarray, device,
             batch: int = 16) -> list[np.ndarray]:
    from ..media import to_uint8_rgb

    src = model.encode_source(to_tensor([source]).to(device))
    frames = []
    for i in range(0, len(expr), batch):
        e = torch.from_numpy(expr[i:i + batch]).to(device)
        c = torch.from_numpy(camera[i:i + batch]).to(device)
        s = type(src)(src.high.expand(len(e), -1, -1, -1), src.tokens.expand(len(e), -1, -1))
        out = model.synthesize(s, e, c)
        frames += [to_uint8_rgb(img) for img in out["image"]]
    return frames


def evaluate(checkpoint, data, drive=None, device: str = "cpu", progress: bool = True,
             retrack: bool = True, source_frame: int | None = None,
             clip_name: str | None = None) -> dict:
    """The report described in the module doc, for one clip: ``clip_name``, default the
    longest (the report's ``clips_not_scored`` counts the others). ``source_frame``: the video
    frame index of the source crop (a training frame); default the clip's first training
    frame."""
    config, meta = read_config(checkpoint)
    training = json.loads(meta.get("training", "{}") or "{}")
    tc = training.get("train_config", {})
    dataset = Dataset(data, config.image_size, tc.get("holdout_every", 10),
                      tc.get("holdout_tail", 0.15))
    model = load_checkpoint(checkpoint, render_impl="auto").to(device).eval()
    clip = dataset.clip(clip_name) if clip_name is not None else max(dataset.clips, key=len)
    if not any(len(dataset.positions(clip, p)) for p in ("interp", "extrap")):
        raise UserError(f"{clip.name} has no held-out frames ({len(clip)} frames with a face); "
                        "evaluate a longer clip")
    train = dataset.positions(clip, "train")
    if not len(train):
        raise UserError(f"{clip.name} has no training frame to take the source from")
    source_pos = int(train[0])
    if source_frame is not None:
        hits = np.flatnonzero(clip.frame == source_frame)
        if not len(hits) or int(hits[0]) not in set(train.tolist()):
            raise UserError(f"frame {source_frame} of {clip.name} is not a training frame "
                            "(held out, or without a face); choose another --source-frame")
        source_pos = int(hits[0])
    source = clip.image(source_pos)
    train_images = np.stack([clip.image(k) for k in train])
    train_f32 = train_images.astype(np.float32)  # for the nearest-frame search, once
    tracker = Retracker() if retrack else None
    report = {"checkpoint": str(checkpoint), "preset": config.preset, "dataset": str(data),
              "clip": clip.name, "source_frame": int(clip.frame[source_pos]),
              "step": meta.get("step"), "split": dataset.split_summary()[clip.name],
              "clips_not_scored": len(dataset.clips) - 1, "sets": {}}
    try:
        for part in ("interp", "extrap"):
            pos = dataset.positions(clip, part)
            if not len(pos):
                continue
            real = [clip.image(k) for k in pos]
            fake = generate(model, source, clip.expr[pos], clip.camera[pos], device)
            nearest = []
            for r in real:
                d = np.mean((train_f32 - r.astype(np.float32)) ** 2,
                            axis=(1, 2, 3))
                nearest.append(train_images[int(np.argmin(d))])
            candidates = {"model": fake, "copy_source": [source] * len(real),
                          "nearest_train": nearest}
            entry = {"frames": int(len(pos))}
            ref = tracker(real) if tracker else None
            for name, images in candidates.items():
                scores = {"psnr": float(np.mean([psnr(a, b) for a, b in zip(images, real)])),
                          "ssim": float(np.mean([ssim_u8(a, b) for a, b in zip(images, real)]))}
                if tracker:
                    scores.update(fidelity(tracker(images), ref))
                entry[name] = scores
            report["sets"][part] = entry
        if drive is not None:
            report["sets"]["cross"] = _cross(model, source, drive, config, tracker, device,
                                             progress)
    finally:
        if tracker:
            tracker.close()
    return report


def _cross(model, source, drive, config, tracker, device, progress) -> dict:
    drive = Path(drive)
    with tempfile.TemporaryDirectory() as tmp:
        if (drive / "dataset.json").is_file():
            ds = Dataset(drive, config.image_size)
        else:
            try:
                prepare([drive], Path(tmp) / "drive", config.image_size, progress=progress,
                        log=lambda *_: None)
                ds = Dataset(Path(tmp) / "drive", config.image_size)
            except UserError as exc:  # name the video, not the scratch folder
                raise UserError(f"--drive {drive}: {str(exc).replace(tmp, '(scratch)')}"
                                ) from None
        clip = max(ds.clips, key=len)
        real = [clip.image(k) for k in range(len(clip))]
        fake = generate(model, source, clip.expr, clip.camera, device)
        entry = {"video": drive.name, "frames": len(real)}
        if tracker:
            ref = tracker(real)
            entry["model"] = fidelity(tracker(fake), ref)
            entry["copy_source"] = fidelity(tracker([source] * len(real)), ref)
        return entry


def format_table(report: dict) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    others = report.get("clips_not_scored", 0)
    lines = [f"{report['checkpoint']} (preset {report['preset']}, step {report.get('step')}) on "
             f"{report['clip']}, source frame {report['source_frame']}"
             + (f" ({others} other clip(s) not scored; --clip NAME scores another)"
                if others else ""),
             f"{'set':8s} {'method':14s} {'PSNR dB':>8s} {'SSIM':>6s} {'AED-mp':>7s} "
             f"{'APD-mp':>7s} {'APD L1':>7s}"]
    for part, entry in report["sets"].items():
        for name in ("model", "copy_source", "nearest_train"):
            if name not in entry:
                continue
            s = entry[name]
            lines.append(f"{part:8s} {name:14s} {f(s.get('psnr'), '8.2f'):>8s} "
                         f"{f(s.get('ssim'), '6.3f'):>6s} {f(s.get('aed_mp'), '7.3f'):>7s} "
                         f"{f(s.get('apd_mp_deg'), '7.2f'):>7s} "
                         f"{f(s.get('apd_mp_euler_l1_deg'), '7.2f'):>7s}")
    return "\n".join(lines)
