"""Faults the live pipeline must ride through: the face leaves the frame, the user quits from
the preview page, the source ends or raises, the camera sends empty frames, Ctrl-C."""
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

from realtime.config import CaptureConfig, PipelineConfig, SinkConfig, TrackingConfig
from realtime.pipeline import Pipeline


def test_no_face_holds_then_eases_and_the_hud_says_so(tmp_path):
    from export3d.assets import asset_path

    cap = cv2.VideoCapture(str(asset_path("single_face.mp4", fetch=True)))
    for i in range(8):
        ok, bgr = cap.read()
        assert ok
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), bgr)
    cap.release()
    for i in range(8, 40):  # the face leaves: blank frames
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.zeros_like(bgr))
    seen = []

    class Sink:
        def write(self, rgb):
            seen.append(rgb)

        def poll(self):
            return []

        def close(self):
            pass

    # 10 fps pacing gives the 0.5 s hold and the ease time to pass within the blank frames
    cfg = PipelineConfig(capture=CaptureConfig(source=f"images:{tmp_path}", fps=10,
                                               realtime=True),
                         queue_size=4)
    pipe = Pipeline(cfg, sink=Sink())
    summary = pipe.run()
    states = summary["states"]
    assert states.get("tracked", 0) >= 4
    assert states.get("held", 0) >= 1 and (states.get("easing", 0) + states.get("neutral", 0)
                                          + states.get("none", 0)) >= 1
    assert summary["frames"] == 40 and len(seen) == 40  # output never stops


def test_quit_from_the_preview_page_ends_the_run():
    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic", fps=30, width=64, height=48),
                         sink=SinkConfig(sink="preview:0"))
    pipe = Pipeline(cfg)
    url = pipe.sink.url
    result = {}
    t = threading.Thread(target=lambda: result.update(pipe.run()))
    t.start()
    try:
        deadline = time.monotonic() + 10
        while pipe.sink.frames < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        with urllib.request.urlopen(url + "stats.json", timeout=3) as r:
            assert b"tracking_state" in r.read()
        req = urllib.request.Request(url + "cmd/quit", data=b"", method="POST")
        urllib.request.urlopen(req, timeout=3).close()
    finally:
        t.join(timeout=10)
    assert not t.is_alive() and pipe.hung == []
    assert result["frames"] >= 3


class Sink:
    def __init__(self):
        self.frames, self.closed = 0, False

    def write(self, rgb):
        self.frames += 1

    def poll(self):
        return []

    def close(self):
        self.closed = True


def test_a_source_that_ends_ends_the_run_cleanly(tmp_path):
    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
    cfg = PipelineConfig(capture=CaptureConfig(source=f"images:{tmp_path}", realtime=False),
                         tracking=TrackingConfig(enabled=False))
    sink = Sink()
    pipe = Pipeline(cfg, sink=sink)
    summary = pipe.run()  # frames=0: until the source ends
    assert summary["frames"] == sink.frames == 5 and pipe.stats.indices == list(range(5))
    assert pipe.hung == [] and sink.closed and pipe.generator.in_flight == 0


def test_a_source_that_raises_ends_the_run_with_its_error():
    class Broken:
        def __init__(self):
            self.i, self.closed = 0, False

        def read(self):
            from realtime.capture import CapturedFrame

            self.i += 1
            if self.i > 3:
                raise OSError("decoder crashed")
            return CapturedFrame(self.i - 1, time.monotonic(), np.zeros((48, 64, 3), np.uint8))

        def close(self):
            self.closed = True

    capture, sink = Broken(), Sink()
    pipe = Pipeline(PipelineConfig(tracking=TrackingConfig(enabled=False)), capture=capture,
                    sink=sink)
    with pytest.raises(OSError, match="decoder crashed"):
        pipe.run()
    assert pipe.hung == [] and capture.closed and sink.closed


def test_a_camera_sending_empty_frames_backs_off_then_stops_with_one_message():
    class EmptyCam:
        def __init__(self, index):
            self.reads = 0

        def isOpened(self):
            return True

        def set(self, prop, value):
            pass

        def read(self):
            self.reads += 1
            return (True, np.zeros((48, 64, 3), np.uint8)) if self.reads <= 2 else (False, None)

        def release(self):
            pass

    from realtime.capture import CaptureError, open_capture

    cfg = CaptureConfig(source="webcam:0", retries=4, backoff_s=0.01)
    capture, sink = open_capture(cfg, opener=EmptyCam), Sink()
    pipe = Pipeline(PipelineConfig(capture=cfg, tracking=TrackingConfig(enabled=False)),
                    capture=capture, sink=sink)
    t0 = time.monotonic()
    with pytest.raises(CaptureError, match=r"stopped sending frames \(4 empty reads\)") as e:
        pipe.run()
    assert time.monotonic() - t0 >= 0.01 + 0.02 + 0.04 + 0.08  # exponential back-off
    assert "\n" not in str(e.value) and capture.cap.reads == 6
    assert pipe.hung == [] and sink.closed and sink.frames <= 2


def test_ctrl_c_finalises_the_file_sink(tmp_path):
    from realtime.sinks import FileSink

    class CtrlC(FileSink):  # Ctrl-C lands in the main thread, which runs the sink loop
        def poll(self):
            if self.frames >= 6:
                raise KeyboardInterrupt
            return []

    out = tmp_path / "live.mkv"
    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic", fps=50, width=64,
                                               height=48))
    sink = CtrlC(str(out), 25)
    pipe = Pipeline(cfg, sink=sink)
    summary = pipe.run()  # returns the stats, like a normal end
    assert pipe.hung == [] and summary["frames"] == 6
    cap = cv2.VideoCapture(str(out))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == 6  # closed properly: the container is playable to the last frame


def test_a_stage_that_cannot_open_closes_the_ones_already_made(monkeypatch):
    # A sink that cannot open (no display) closed only the capture: the generator's three
    # stream threads and the tracker's landmarker stayed, once per attempt.
    from realtime.sinks import SinkError

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    closed = []

    class Stage:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)

    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic"), sink=SinkConfig(sink="window"))
    with pytest.raises(SinkError, match="no display"):
        Pipeline(cfg, capture=Stage("capture"), tracker=Stage("tracker"),
                 generator=Stage("generator"))
    assert closed == ["generator", "tracker", "capture"]
