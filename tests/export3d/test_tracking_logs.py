"""mediapipe's start-up log stays off the terminal; everything else written meanwhile does not."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from export3d.tracking.native_logs import ENV, is_start_up_line, quiet_startup

# What mediapipe 0.10 printed while a FaceLandmarker was created on this machine.
START_UP = [
    b"WARNING: Logging before InitGoogle() is written to STDERR\n",
    b"W0000 00:00:1795901891.978938    6493 face_landmarker_graph.cc:181] Sets "
    b"FaceBlendshapesGraph acceleration to xnnpack by default.\n",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
    b"W0000 00:00:1795901892.001702    6497 inference_feedback_manager.cc:121] Feedback manager "
    b"requires a model with a single signature inference. Disabling support for feedback "
    b"tensors.\n",
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1731930035.529357   21253 gl_context_egl.cc:85] Successfully initialized EGL.\n",
]
KEPT = [
    b"E0000 00:00:1795901892.001702    6497 model_resources.cc:88] the model file is corrupt\n",
    b"F0000 00:00:1795901892.001702    6497 calculator_graph.cc:12] Check failed: ok\n",
    b"WARNING: no --checkpoint given: the model's weights are RANDOM\n",
    b"export3d: error: something the user must read\n",
    b"W0000 is not a log line without its source location\n",
]


def test_start_up_lines_are_told_from_the_rest():
    assert all(is_start_up_line(line) for line in START_UP)
    assert not any(is_start_up_line(line) for line in KEPT)


ORDER_SCRIPT = """
import os, sys, threading
from export3d.tracking.native_logs import quiet_startup

START_UP, KEPT = {start_up!r}, {kept!r}
before = os.fstat(2)
sys.stderr.write("python, before\\n")  # buffered before the block: must come out first
with quiet_startup():
    for start_up, kept in zip(START_UP, KEPT):
        os.write(2, start_up)
        os.write(2, kept)
    worker = threading.Thread(
        target=lambda: print("python, another thread", file=sys.stderr, flush=True))
    worker.start()
    worker.join()
    with quiet_startup():  # nested: the outer block does the filtering
        os.write(2, START_UP[0] + b"nested, kept\\n")
    os.write(2, b"no newline at the end")
after = os.fstat(2)
print((after.st_dev, after.st_ino) == (before.st_dev, before.st_ino))  # fd 2 restored
"""


def test_the_block_drops_start_up_lines_and_keeps_the_rest_in_order():
    """In a process of its own, so that Python's stderr is file descriptor 2 (under pytest's
    capture it is not)."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop(ENV, None)
    proc = subprocess.run([sys.executable, "-c", ORDER_SCRIPT.format(start_up=START_UP,
                                                                     kept=KEPT)],
                          capture_output=True, timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout == b"True\n", proc.stderr
    assert proc.stderr == (b"python, before\n" + b"".join(KEPT) + b"python, another thread\n"
                           + b"nested, kept\n" + b"no newline at the end")


def test_a_block_that_raises_keeps_every_line(capfd):
    with pytest.raises(RuntimeError, match="creation failed"):
        with quiet_startup():
            os.write(2, b"".join(START_UP))
            raise RuntimeError("creation failed")
    assert capfd.readouterr().err == b"".join(START_UP).decode()
    with quiet_startup():  # and the next block filters again
        os.write(2, b"".join(START_UP))
    assert capfd.readouterr().err == ""


def test_the_environment_switch_turns_the_filter_off(capfd, monkeypatch):
    monkeypatch.setenv(ENV, "1")
    with quiet_startup():
        os.write(2, b"".join(START_UP))
    assert capfd.readouterr().err == b"".join(START_UP).decode()


def _landmarker_stderr(env_value: str | None) -> str:
    from tracking_fixtures import model_path

    env = {**os.environ, "PYTHONPATH": os.getcwd(), "EXPORT3D_FACE_MODEL": model_path()}
    env.pop(ENV, None)
    if env_value is not None:
        env[ENV] = env_value
    code = ("import numpy as np\n"
            "from export3d.tracking.landmarker import Landmarker, LandmarkerConfig\n"
            "with Landmarker(LandmarkerConfig(mode='video')) as lm:\n"
            "    assert lm.detect(np.full((64, 64, 3), 128, np.uint8), 0) is None\n"
            "print('created', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout == "created\n", proc.stderr
    return proc.stderr


def test_a_real_landmarker_starts_without_its_log():
    """The real mediapipe: its start-up lines reach stderr only with the filter turned off
    (which shows the filter, not mediapipe, keeps them out)."""
    unfiltered = _landmarker_stderr("1")
    assert any(is_start_up_line(line.encode()) for line in unfiltered.splitlines()), unfiltered
    assert _landmarker_stderr(None) == ""


def test_a_photo_without_a_face_gets_our_line_and_nothing_above_it(tmp_path):
    import cv2
    from tracking_fixtures import model_path

    photo = tmp_path / "grey.png"
    cv2.imwrite(str(photo), np.full((256, 256, 3), 128, np.uint8))
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "EXPORT3D_FACE_MODEL": model_path()}
    env.pop(ENV, None)
    proc = subprocess.run([sys.executable, "-m", "export3d.cli", "live", "--source", str(photo),
                           "--synthetic", "--frames", "1", "--sink", "null"],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and not line.startswith("WARNING: no --checkpoint given")]
    assert lines == [f"export3d: error: no face found in {photo}; use a photo with one clearly "
                     "visible face"], proc.stderr
