"""Every live control through Pipeline.command on a running pipeline (tiny preset, torch):
recalibrate, absolute/relative pose, HUD, swap the source photo (a photo without a face is
refused and the old one kept; the output never stalls while the new one is prepared), quit."""
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime.capture import CapturedFrame
from realtime.config import (CaptureConfig, GeneratorConfig, PipelineConfig, SinkConfig,
                             TrackingConfig)
from realtime.pipeline import Pipeline
from realtime.tracking import Tracker


class GreyCamera:
    """A webcam stand-in: grey frames at 50 fps with no scripted driving (so they go through
    the tracker), until the pipeline stops."""

    def __init__(self):
        self.i = 0

    def read(self):
        time.sleep(0.02)
        self.i += 1
        return CapturedFrame(self.i - 1, time.monotonic(), np.full((48, 64, 3), 90, np.uint8))

    def close(self):
        pass


class FakeExtractor:
    """Always a face; the absolute camera looks 0.3 rad to the side, the relative one ahead."""

    def __init__(self):
        from export3d.tracking.extractor import eg3d_label

        c, s = np.cos(0.3), np.sin(0.3)
        self.absolute = eg3d_label(np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]))
        self.relative = eg3d_label(np.eye(3))
        self.calibrations = 0
        self.calibrated_on = []  # the threads calibrate() ran on
        self.sources = []  # R_src handed over by the pipeline, in order

    def process(self, rgb, t):
        from types import SimpleNamespace

        return SimpleNamespace(expr=np.zeros(64, np.float32), camera=self.absolute,
                               camera_relative=self.relative, state="tracked",
                               face_found=True, confidence=1.0)

    def calibrate(self):
        self.calibrations += 1
        self.calibrated_on.append(threading.current_thread().name)

    def set_source(self, rotation):
        self.sources.append(np.array(rotation))

    def close(self):
        pass


class Recorder:
    def __init__(self):
        self.frames = []

    def write(self, rgb):
        self.frames.append(rgb.copy())

    def poll(self):
        return []

    def close(self):
        pass


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def photos(tmp_path):
    import matplotlib.cbook

    from export3d.media import default_portrait

    hopper = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 128, np.uint8))
    return default_portrait(), hopper, blank


def test_every_control_through_pipeline_command(photos):
    portrait, hopper, blank = photos
    extractor = FakeExtractor()
    cfg = PipelineConfig(capture=CaptureConfig(realtime=True),
                         generator=GeneratorConfig(preset="tiny",
                                                   source=(str(portrait), str(hopper))),
                         sink=SinkConfig(hud=False))
    sink = Recorder()
    pipe = Pipeline(cfg, capture=GreyCamera(), sink=sink,
                    tracker=Tracker(TrackingConfig(), extractor=extractor))
    cameras, calls = [], []  # pushed cameras; what ran on the compute stream, in order
    push = pipe.generator.push
    pipe.generator.push = lambda expr, camera: (cameras.append(camera.copy()),
                                                push(expr, camera))[1]
    backend = pipe.generator.backend
    encode, frame = backend.encode_source, backend.frame
    backend.encode_source = lambda image: (calls.append(("encode", image.copy())),
                                           encode(image))[1]
    backend.frame = lambda expr, camera: (calls.append(("frame", None)), frame(expr, camera))[1]
    runner = threading.Thread(target=pipe.run)
    runner.start()
    try:
        wait_until(lambda: len(sink.frames) >= 3)
        assert np.allclose(cameras[-1], extractor.relative)  # relative by default
        before = sink.frames[-1]

        pipe.command("pose")
        n = len(cameras)
        wait_until(lambda: len(cameras) > n + 1)
        assert np.allclose(cameras[-1], extractor.absolute)
        assert pipe.live_stats()["pose"] == "absolute" and "absolute" in pipe.message
        pipe.command("pose")
        n = len(cameras)
        wait_until(lambda: len(cameras) > n + 1)
        assert np.allclose(cameras[-1], extractor.relative)

        pipe.command("calibrate")
        # Started by the tracking thread at its next frame, never under a frame in progress
        # from the thread that took the key (run here from this test's thread).
        wait_until(lambda: extractor.calibrations == 1)
        assert extractor.calibrated_on == ["tracking"]

        pipe.command("hud")
        assert pipe.hud is True
        n = len(sink.frames)
        wait_until(lambda: len(sink.frames) > n + 2)
        assert not np.array_equal(sink.frames[-1], before)  # the HUD is drawn
        pipe.command("hud")
        assert pipe.hud is False

        # the next photo: prepared off the frame path, the output keeps flowing meanwhile
        n = len(sink.frames)
        preparing = pipe.swap_source()
        while preparing.is_alive():
            time.sleep(0.01)
        wait_until(lambda: pipe.generator.source == hopper)
        assert len(sink.frames) > n  # frames kept coming while the photo was prepared
        n = len(sink.frames)
        wait_until(lambda: len(sink.frames) > n + 3)
        # the new photo was encoded on the compute stream between two frames (random tiny
        # weights barely depend on the source, so the encoder's input is what is checked)
        kinds = [k for k, _ in calls]
        assert kinds.count("encode") == 1
        at = kinds.index("encode")
        assert "frame" in kinds[:at] and "frame" in kinds[at + 1:]
        from realtime.generator import prepare_source

        hopper_input = prepare_source(hopper, pipe.generator.image_size)
        np.testing.assert_array_equal(calls[at][1], hopper_input)
        assert pipe.live_stats()["source"] == str(hopper)
        # and its head pose went to the tracker for the relative camera (it never did: the
        # driver's motion was applied to a frontal head whatever the photo)
        from export3d.render import source_crop
        from export3d.media import load_image

        _, hopper_pose = source_crop(load_image(hopper), 64, "hopper", with_pose=True)
        _, portrait_pose = source_crop(load_image(portrait), 64, "astronaut", with_pose=True)
        assert len(extractor.sources) == 2
        np.testing.assert_allclose(extractor.sources[0], portrait_pose, atol=1e-9)
        np.testing.assert_allclose(extractor.sources[1], hopper_pose, atol=1e-9)

        # a photo without a face: a message, the old source kept
        pipe.command(f"source:{blank}")
        wait_until(lambda: "no face" in pipe.message)
        assert "keeping" in pipe.message and pipe.generator.source == hopper
        assert [k for k, _ in calls].count("encode") == 1

        pipe.command("source")  # cycles back to the first photo
        wait_until(lambda: pipe.generator.source == portrait)
        n = len(sink.frames)
        wait_until(lambda: len(sink.frames) > n + 3)
        np.testing.assert_array_equal(sink.frames[-1], before)  # the same face as at first

        pipe.command("quit")
        runner.join(timeout=20)
        assert not runner.is_alive() and pipe.hung == []
    finally:
        pipe.stop()
        runner.join(timeout=20)


def test_source_folder_lists_its_photos(photos, tmp_path):
    from realtime.generator import source_photos

    portrait, hopper, _ = photos
    folder = tmp_path / "faces"
    folder.mkdir()
    for name, src in (("b.png", portrait), ("a.jpg", hopper)):
        (folder / name).write_bytes(open(src, "rb").read())
    (folder / "notes.txt").write_text("not a photo")
    assert [p.name for p in source_photos(str(folder))] == ["a.jpg", "b.png"]
    assert source_photos((str(folder), str(portrait)))[-1] == portrait


def test_source_with_one_photo_and_unknown_commands_only_say_so():
    pipe = Pipeline(PipelineConfig(capture=CaptureConfig(frames=1)), sink=Recorder())
    try:
        pipe.command("source")
        assert "one source photo only" in pipe.message and pipe._source_threads == []
        pipe.command("format-disk")
        assert "unknown command" in pipe.message
    finally:
        pipe.close()
