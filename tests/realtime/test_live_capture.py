import time

import numpy as np
import pytest

from realtime.capture import CaptureError, open_capture
from realtime.config import (CaptureConfig, PipelineConfig, load_config, with_overrides)
from export3d.errors import UserError


class DeadCam:
    opened = 0

    def __init__(self, index):
        DeadCam.opened += 1

    def isOpened(self):
        return False

    def release(self):
        pass


def test_missing_camera_retries_with_backoff_then_one_message():
    DeadCam.opened = 0
    cfg = CaptureConfig(source="webcam:3", retries=3, backoff_s=0.01)
    t0 = time.monotonic()
    with pytest.raises(CaptureError, match=r"no camera at index 3 \(tried 3 times\)") as e:
        open_capture(cfg, opener=DeadCam)
    assert DeadCam.opened == 3
    assert time.monotonic() - t0 >= 0.03  # 0.01 + 0.02
    assert "--synthetic" in str(e.value) and "\n" not in str(e.value)


class FlakyCam:
    """Opens, asks MJPG; the first two reads are empty."""

    def __init__(self, index):
        self.sets = {}
        self.reads = 0

    def isOpened(self):
        return True

    def set(self, prop, value):
        self.sets[prop] = value

    def read(self):
        self.reads += 1
        if self.reads <= 2:
            return False, None
        return True, np.zeros((48, 64, 3), np.uint8)

    def release(self):
        pass


def test_webcam_asks_mjpg_resolution_fps_and_retries_empty_frames():
    import cv2

    cfg = CaptureConfig(source="webcam:0", width=64, height=48, fps=15, backoff_s=0.001)
    cap = open_capture(cfg, opener=FlakyCam)
    assert cap.cap.sets[cv2.CAP_PROP_FOURCC] == cv2.VideoWriter_fourcc(*"MJPG")
    assert cap.cap.sets[cv2.CAP_PROP_FRAME_WIDTH] == 64
    assert cap.cap.sets[cv2.CAP_PROP_FPS] == 15
    f = cap.read()
    assert f.rgb.shape == (48, 64, 3) and cap.empty_frames == 2
    t1 = cap.read().t_capture
    assert t1 >= f.t_capture


def test_file_capture_own_pace_and_image_sequence(tmp_path):
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((40, 40, 3), i * 50, np.uint8))
    cap = open_capture(CaptureConfig(source=f"images:{tmp_path}", fps=20, realtime=True))
    frames = [cap.read() for _ in range(4)]
    assert frames[-1] is None
    assert [int(f.rgb[0, 0, 0]) for f in frames[:3]] == [0, 50, 100]
    assert frames[2].t_capture - frames[0].t_capture >= 0.09  # 20 fps pacing


def test_unknown_and_missing_sources():
    with pytest.raises(CaptureError, match="unknown source"):
        open_capture(CaptureConfig(source="nope"))
    with pytest.raises(CaptureError, match="does not exist"):
        open_capture(CaptureConfig(source="file:/nonexistent.mp4"))


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "live.yaml"
    path.write_text("capture:\n  fps: 25\n  width: 320\nsink:\n  hud: false\n")
    cfg = load_config(path)
    assert cfg.capture.fps == 25 and cfg.capture.width == 320 and cfg.sink.hud is False
    cfg = with_overrides(cfg, {"capture": {"fps": 60, "width": None}})
    assert cfg.capture.fps == 60 and cfg.capture.width == 320
    with pytest.raises(UserError, match="unknown setting capture.fsp"):
        with_overrides(PipelineConfig(), {"capture": {"fsp": 1}})
