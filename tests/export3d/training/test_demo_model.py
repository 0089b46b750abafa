"""The model that ships in assets/ really reenacts: scored on its held-out frames (never
trained on) against the baselines, and driven by another person.

Thresholds sit well inside what the shipped checkpoint measured (assets/demo64.eval.json) and
well outside what a model that ignores the driver scores (the copy-source baseline)."""
from __future__ import annotations

import pytest

from export3d import demo
from export3d.training.data import prepare
from export3d.training.evaluate import evaluate

MARGIN_PSNR_DB = 2.0  # over copying the source frame
MARGIN_SSIM = 0.1


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from export3d.assets import asset_path

    data = tmp_path_factory.mktemp("demo") / "data"
    prepare([asset_path(demo.SOURCE_VIDEO, fetch=True)], data, image_size=64, progress=False,
            log=lambda *_: None)
    return evaluate(demo.checkpoint(), data, drive=demo.driver_video(), progress=False,
                    source_frame=demo.SOURCE_FRAME)


@pytest.mark.parametrize("part", ["interp", "extrap"])
def test_held_out_frames_beat_copying_the_source(report, part):
    s = report["sets"][part]
    assert s["frames"] >= 40
    assert s["model"]["psnr"] > s["copy_source"]["psnr"] + MARGIN_PSNR_DB, s
    assert s["model"]["ssim"] > s["copy_source"]["ssim"] + MARGIN_SSIM, s
    # the head pose follows the driver: re-tracked pose error well below the source's
    assert s["model"]["apd_mp_deg"] < 0.6 * s["copy_source"]["apd_mp_deg"], s


def test_another_person_drives_expression_and_pose(report):
    s = report["sets"]["cross"]
    assert s["frames"] == 72 and s["model"]["tracked"] >= 60
    assert s["model"]["aed_mp"] < s["copy_source"]["aed_mp"], s
    assert s["model"]["apd_mp_deg"] < 0.7 * s["copy_source"]["apd_mp_deg"], s
