"""Faults the live pipeline must ride through: the face leaves the frame, the user quits from
the preview page, the source ends or raises, the camera sends empty frames, Ctrl-C."""
import re
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


class FakeCam:
    """cv2.VideoCapture's surface for WebcamCapture (opened by index); subclasses read."""

    def __init__(self, index):
        self.reads, self.released = 0, False

    def isOpened(self):
        return True

    def set(self, prop, value):
        pass

    def release(self):
        self.released = True


def test_a_camera_sending_empty_frames_backs_off_then_stops_with_one_message():
    class EmptyCam(FakeCam):
        def read(self):
            self.reads += 1
            return (True, np.zeros((48, 64, 3), np.uint8)) if self.reads <= 2 else (False, None)

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
    # On a busy machine the sink can fall behind and a frame is dropped on the way (latest
    # frame wins); the file then repeats the previous picture to keep time, so the file's
    # frames span the capture indices from the first frame shown to the last, and the
    # summary counts the frames that arrived.
    indices = pipe.stats.indices
    assert pipe.hung == [] and summary["frames"] == len(indices) and sink.frames >= 6
    assert indices[-1] - indices[0] + 1 == sink.frames
    cap = cv2.VideoCapture(str(out))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == sink.frames  # closed properly: the container is playable to the last frame


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


class BlockingCam(FakeCam):
    """A webcam that sends two frames, then blocks in read() until ``release_event`` is set
    (some drivers do this when the camera is unplugged)."""

    def __init__(self, index):
        super().__init__(index)
        self.release_event = threading.Event()

    def read(self):
        self.reads += 1
        if self.reads > 2:
            self.release_event.wait(30)
            return False, None
        return True, np.zeros((48, 64, 3), np.uint8)


def test_a_webcam_whose_read_never_returns_ends_the_run_with_the_cameras_message():
    # Before: the output froze on the last picture for ever, and Ctrl-C then ended the run
    # with status 0 and nothing said; closing the camera under the blocked read could hang.
    from realtime.capture import CaptureError, open_capture

    cfg = CaptureConfig(source="webcam:0", stall_s=0.5, realtime=False)  # every frame kept
    capture, sink = open_capture(cfg, opener=BlockingCam), Sink()
    pipe = Pipeline(PipelineConfig(capture=cfg, tracking=TrackingConfig(enabled=False),
                                   join_timeout_s=0.3), capture=capture, sink=sink)
    t0 = time.monotonic()
    try:
        with pytest.raises(CaptureError, match=r"sent no frame for 0.5 s: was it unplugged"):
            pipe.run()
        elapsed = time.monotonic() - t0
    finally:
        capture.cap.release_event.set()
    assert 0.5 <= elapsed < 5
    assert pipe.hung == ["capture"]  # still inside read(): not closed under it
    assert not capture.cap.released and sink.closed and sink.frames == 2


def test_a_second_ctrl_c_while_threads_stop_still_finishes_the_file(tmp_path):
    # Ctrl-C, then Ctrl-C again while the run waits for a stuck thread: the second one
    # skipped closing the stages, and the video was left unplayable (a 44-byte part file).
    # The run ends as a Ctrl-C does (stats returned), saying which thread it left behind.
    import signal

    from realtime.capture import open_capture
    from realtime.sinks import FileSink

    class CtrlC(FileSink):
        def poll(self):
            if self.frames >= 1:
                # To the main thread, as a terminal's Ctrl-C reaches a Python program: sent to
                # the process, it once left the wait uninterrupted for the whole join timeout
                # in the full suite (cause not pinned down; never seen alone).
                threading.Timer(0.3, signal.pthread_kill,
                                (threading.main_thread().ident, signal.SIGINT)).start()
                raise KeyboardInterrupt
            return []

    cfg = CaptureConfig(source="webcam:0", stall_s=60)  # the read blocks at the third frame
    capture = open_capture(cfg, opener=BlockingCam)
    out = tmp_path / "live.mkv"
    sink = CtrlC(str(out), 25)
    pipe = Pipeline(PipelineConfig(capture=cfg, tracking=TrackingConfig(enabled=False),
                                   join_timeout_s=10), capture=capture, sink=sink)
    # Python's own Ctrl-C handler, SIGINT not blocked, as a program started from a terminal
    # has them: in the full suite something before this test left SIGINT not raising (the
    # wait ran its whole 10 s), though Python's view of the handler was unchanged after every
    # realtime test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        summary = pipe.run()
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C escaped the run")
    finally:
        capture.cap.release_event.set()
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    assert pipe.hung == ["capture"] and not capture.cap.released
    waited = re.search(r"the capture thread did not stop within ([0-9.]+) s", pipe.message)
    assert waited and float(waited.group(1)) < 5  # cut short by the second Ctrl-C, not 10 s
    cap = cv2.VideoCapture(str(out))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == sink.frames == summary["frames"] >= 1


def test_a_slow_pace_does_not_hold_a_stopping_run():
    # At --fps 0.05 the capture slept 20 s between frames, longer than the run waits for its
    # threads: a plain quit then reported the capture as stuck.
    class QuitAfterOne(Sink):
        def poll(self):
            return ["quit"] if self.frames else []

    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic", fps=0.05, width=64,
                                               height=48),
                         tracking=TrackingConfig(enabled=False), join_timeout_s=2)
    pipe = Pipeline(cfg, sink=QuitAfterOne())
    t0 = time.monotonic()
    summary = pipe.run()
    assert time.monotonic() - t0 < 5 and pipe.hung == [] and summary["frames"] == 1


def test_a_healthy_camera_waiting_for_a_slow_stage_is_not_a_stall():
    # With every frame kept (--fast), the capture waits for room downstream after each read;
    # that wait counted as the camera's silence and ended healthy runs.
    from realtime.capture import open_capture

    class SteadyCam(FakeCam):
        def read(self):
            time.sleep(0.01)
            return True, np.zeros((48, 64, 3), np.uint8)

    class SlowTracker:
        def process(self, frame):
            time.sleep(0.4)  # slower than stall_s per frame
            from realtime.tracking import Driving, _frontal_camera

            return Driving(np.zeros(64, np.float32), _frontal_camera(), "tracked", True, 1.0)

        def calibrate(self):
            pass

        def close(self):
            pass

    cfg = CaptureConfig(source="webcam:0", stall_s=0.3, realtime=False, frames=4)
    pipe = Pipeline(PipelineConfig(capture=cfg, queue_size=1),
                    capture=open_capture(cfg, opener=SteadyCam), tracker=SlowTracker(),
                    sink=Sink())
    assert pipe.run()["frames"] == 4


def test_closing_finishes_the_output_before_waiting_for_a_photo_swap():
    # A photo being prepared (up to join_timeout_s) was waited for before the file was
    # finished, so a Ctrl-C in that wait lost the file.
    order = []

    class Swap:
        def join(self, timeout=None):
            order.append("swap joined")

    class Closing(Sink):
        def close(self):
            order.append("sink closed")

    pipe = Pipeline(PipelineConfig(capture=CaptureConfig(source="synthetic"),
                                   tracking=TrackingConfig(enabled=False)), sink=Closing())
    pipe._source_threads.append(Swap())
    pipe.close()
    assert order == ["sink closed", "swap joined"]


def test_a_generator_out_of_gpu_memory_is_one_sentence_and_the_file_is_kept_as_partial(
        tmp_path):
    import torch

    from realtime.pipeline import PipelineError
    from realtime.sinks import FileSink

    out = tmp_path / "live.mkv"
    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic", fps=100, width=64,
                                               height=48, realtime=False),
                         tracking=TrackingConfig(enabled=False))
    pipe = Pipeline(cfg, sink=FileSink(str(out), 25))
    backend, calls = pipe.generator.backend, []
    frame = backend.frame

    def failing(expr, camera):
        calls.append(1)
        if len(calls) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\n"
                                         "(GPU 0; 79.1 GiB total capacity)")
        return frame(expr, camera)

    backend.frame = failing
    with pytest.raises(PipelineError) as e:
        pipe.run()
    message = str(e.value)
    assert "\n" not in message and "generator stage ran out of GPU memory" in message
    assert "Tried to allocate 2.00 GiB" in message and "--precision" in message
    # Never a shorter video under the name asked for: what was written is the partial file.
    assert not out.exists()
    partial = tmp_path / "live.partial.mkv"
    cap = cv2.VideoCapture(str(partial))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert 1 <= count <= 4


def test_any_other_stage_error_keeps_its_type_and_names_the_stage():
    pipe = Pipeline(PipelineConfig(capture=CaptureConfig(source="synthetic", fps=100, width=64,
                                                         height=48, realtime=False),
                                   tracking=TrackingConfig(enabled=False)), sink=Sink())

    def broken(expr, camera):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR")

    pipe.generator.backend.frame = broken
    with pytest.raises(RuntimeError, match="CUDNN_STATUS_INTERNAL_ERROR") as e:
        pipe.run()
    assert "(raised in the live pipeline's generator stage)" in e.value.__notes__


def test_a_video_with_no_decodable_frame_is_an_error_not_an_empty_run(tmp_path):
    from realtime.capture import CaptureError, open_capture

    bad = tmp_path / "clip.jpg"  # OpenCV opens it (as an image sequence), decodes nothing
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 500)
    capture = open_capture(CaptureConfig(source=f"file:{bad}"))
    with pytest.raises(CaptureError, match="no frame could be read from .*clip.jpg"):
        capture.read()
    capture.close()


def test_a_file_sink_fills_dropped_frames_so_the_video_keeps_the_captures_time():
    # Latest frame wins in real time: a slow generator drops frames. Written at the capture's
    # rate, the file played fast and short (61 of 72 frames: 15% fast); each dropped slot is
    # now the previous picture again.
    written = []

    class TimedSink(Sink):
        keeps_time = True

        def write(self, rgb):
            super().write(rgb)
            written.append(rgb)
            time.sleep(0.03)  # slower than the 100 fps capture: frames drop

    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic", fps=100, width=64,
                                               height=48, frames=40),
                         tracking=TrackingConfig(enabled=False), queue_size=1)
    pipe = Pipeline(cfg, sink=TimedSink())
    summary = pipe.run()
    shown = pipe.stats.indices
    assert summary["frames"] == len(shown) < 40  # frames were dropped
    assert len(written) == shown[-1] - shown[0] + 1  # and their slots filled
    # Each filled slot repeats the picture shown before it.
    slot = {index: i for i, index in enumerate(range(shown[0], shown[-1] + 1))}
    for a, b in zip(shown, shown[1:]):
        for k in range(a + 1, b):
            assert written[slot[k]] is written[slot[a]]
