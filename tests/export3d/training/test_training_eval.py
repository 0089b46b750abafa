"""export3d eval: baselines computed right, the oracle ordering holds, re-tracking is sane."""
from __future__ import annotations

import numpy as np
import pytest

from export3d.checkpoint import save_checkpoint
from export3d.config import get_config
from export3d.errors import UserError
from export3d.model import build_model
from export3d.training.evaluate import Retracker, evaluate, fidelity, format_table, psnr


def test_psnr_matches_its_definition():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # mse = 255^2 / 192
    assert psnr(a, b) == pytest.approx(10 * np.log10(192), abs=1e-9)


def test_eval_baselines_and_oracle(dataset, tmp_path):
    ckpt = save_checkpoint(build_model(get_config("tiny")), tmp_path / "tiny.safetensors")
    report = evaluate(ckpt, dataset.root, retrack=False, progress=False)
    clip = dataset.clips[0]
    train = dataset.positions(clip, "train")
    source = clip.image(int(train[0]))
    assert report["source_frame"] == int(clip.frame[train[0]])
    for part in ("interp", "extrap"):
        pos = dataset.positions(clip, part)
        entry = report["sets"][part]
        assert entry["frames"] == len(pos)
        expected = np.mean([psnr(source, clip.image(k)) for k in pos])
        assert entry["copy_source"]["psnr"] == pytest.approx(expected, abs=1e-9)
        # the source is a training frame, so the nearest training frame is never farther
        assert entry["nearest_train"]["psnr"] >= entry["copy_source"]["psnr"] - 1e-9
        # random weights are nowhere near the real frames
        assert entry["model"]["psnr"] < entry["nearest_train"]["psnr"]
    assert "interp" in format_table(report) and "nearest_train" in format_table(report)

    chosen = int(clip.frame[train[3]])
    assert evaluate(ckpt, dataset.root, retrack=False, progress=False,
                    source_frame=chosen)["source_frame"] == chosen
    held_out = int(clip.frame[dataset.positions(clip, "interp")[0]])
    with pytest.raises(UserError, match="not a training frame"):
        evaluate(ckpt, dataset.root, retrack=False, progress=False, source_frame=held_out)


def test_retracked_fidelity_is_zero_against_itself_and_not_against_others(dataset):
    clip = dataset.clips[0]
    crops = [clip.image(k) for k in range(0, 40, 4)]
    tracker = Retracker()
    try:
        real = tracker(crops)
        reversed_ = tracker(crops[::-1])
    finally:
        tracker.close()
    assert real[0].all(), "the tracker must find the face in every 64 px crop (up-scaled)"
    same = fidelity(real, real)
    assert same["aed_mp"] == 0 and same["apd_mp_deg"] < 1e-3 and same["tracked"] == len(crops)
    assert same["apd_mp_euler_l1_deg"] < 1e-3
    other = fidelity(real, reversed_)
    assert other["aed_mp"] > 0.005 and other["apd_mp_deg"] > 0.5
    # tracking.md's APD-mp, the L1 of the Euler-angle differences, is at least the geodesic
    # angle (per frame the geodesic is at most the sum of the three axis angles)
    assert other["apd_mp_euler_l1_deg"] >= other["apd_mp_deg"] - 1e-6


def test_the_euler_l1_pose_error_is_tracking_mds_apd():
    # Known rotations: yaw 10 deg against pitch 5 + roll 5 deg -> |d pitch| + |d yaw| +
    # |d roll| = 20 deg (each rotation's angles come back exactly from its matrix).
    from scipy.spatial.transform import Rotation

    def rot(pitch, yaw, roll):  # Deep3D's R = Rz(roll) Ry(yaw) Rx(pitch)
        return Rotation.from_euler("ZYX", [roll, yaw, pitch], degrees=True).as_matrix()

    found = np.ones(1, bool)
    codes = np.zeros((1, 64), np.float32)
    out = fidelity((found, codes, rot(0, 10, 0)[None]), (found, codes, rot(5, 0, 5)[None]))
    assert abs(out["apd_mp_euler_l1_deg"] - 20.0) < 1e-6
