"""Faults the live pipeline must ride through: the face leaves the frame, the user quits from
the preview page."""
import threading
import time
import urllib.request

import cv2
import numpy as np

from realtime.config import CaptureConfig, PipelineConfig, SinkConfig
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
