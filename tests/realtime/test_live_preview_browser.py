"""The preview page in a real headless Chromium: a running pipeline (tiny preset, synthetic
source) serves ``--sink preview`` on 127.0.0.1; the browser's screenshot shows a frame where the
MJPEG <img> is drawn, and the page's stats (filled by its own script from /stats.json) move on
between two loads. Skips when no chromium binary is installed (apt-get install chromium)."""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

from realtime.config import CaptureConfig, PipelineConfig, SinkConfig
from realtime.pipeline import Pipeline

SIZE = 256  # the output frame's height (the sink scales the model's square frame up)
MARGIN = 8  # the page has no CSS: the <img> sits at the body's default 8 px margin


def chromium_binary():
    return shutil.which("chromium") or shutil.which("chromium-browser")


pytestmark = pytest.mark.skipif(
    not chromium_binary(),
    reason="no chromium binary on PATH: apt-get install chromium (Debian) to run the preview "
           "page's browser test")


def run_chromium(args, profile, timeout=90.0):
    """One headless Chromium run, its stdout; the whole process group is killed afterwards
    (renderer and GPU helpers included), also on timeout."""
    cmd = [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu",
           "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--window-size=800,900"] + args
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def page_stats(dom: str) -> dict:
    """The JSON the page's script wrote into <pre id="s"> (empty until its first poll)."""
    m = re.search(r'<pre id="s">(.*?)</pre>', dom, re.S)
    assert m, "no stats element in the page"
    text = m.group(1).strip()
    assert text, "the page's stats script never filled in the stats"
    return json.loads(text.replace("&quot;", '"').replace("&amp;", "&"))


def test_the_preview_page_shows_frames_and_live_stats_in_chromium(tmp_path):
    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic", fps=15, width=64, height=48),
                         sink=SinkConfig(sink="preview:0", size=SIZE))
    pipe = Pipeline(cfg)
    url = pipe.sink.url
    assert url.startswith("http://127.0.0.1:")
    result = {}
    t = threading.Thread(target=lambda: result.update(pipe.run()), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while pipe.sink.frames < 3 and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipe.sink.frames >= 3, "the pipeline wrote no frames to the preview"

        # virtual time lets the page's 1 s stats poll run at least twice before the capture
        budget = "--virtual-time-budget=2500"
        shot = tmp_path / "page.png"
        run_chromium([budget, f"--screenshot={shot}", url], tmp_path / "profile")
        with urllib.request.urlopen(url + "frame.jpg", timeout=5) as r:
            served = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
        dom1 = run_chromium([budget, "--dump-dom", url], tmp_path / "profile")
        time.sleep(1.0)
        dom2 = run_chromium([budget, "--dump-dom", url], tmp_path / "profile")
    finally:
        pipe.stop()
        t.join(timeout=15)
    assert not t.is_alive() and pipe.hung == []

    page = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert page is not None and page.shape[:2] == (900, 800)
    background = page[MARGIN:MARGIN + SIZE, MARGIN + SIZE + 40:780].astype(np.float32)
    assert background.std() < 2.0  # the page around the image is plain
    img = page[MARGIN:MARGIN + SIZE, MARGIN:MARGIN + SIZE].astype(np.float32)
    # a frame is drawn there: not the page's background, not one flat colour, and close to what
    # the server streams (a blank or broken image is near white and flat)
    assert np.abs(img.mean((0, 1)) - background.mean((0, 1))).max() > 40.0, img.mean((0, 1))
    assert img.std() > 5.0, img.std()
    assert served is not None and served.shape[0] == SIZE
    served = cv2.resize(served, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(img.mean((0, 1)) - served.mean((0, 1))).max() < 30.0
    # the stats text under the image is drawn (dark glyphs on the background)
    text = page[MARGIN + SIZE + 20:MARGIN + SIZE + 200, MARGIN:400].astype(np.float32)
    assert (text.mean(2) < 128).mean() > 0.01

    s1, s2 = page_stats(dom1), page_stats(dom2)
    assert s1["tracking_state"] == s2["tracking_state"] == "scripted"
    assert s1["frames"] >= 3
    assert s2["frames"] > s1["frames"], (s1["frames"], s2["frames"])
    assert result["frames"] >= s2["frames"]
