import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from realtime.config import SinkConfig
from realtime.sinks import (VIRTUALCAM_HELP, NullSink, PreviewSink, SinkError, VirtualCamOrPreview,
                            VirtualCamSink, WindowSink, open_sink)

pyvirtualcam = pytest.importorskip("pyvirtualcam")


class FakeCam:
    instances = []

    def __init__(self, *, width, height, fps, fourcc, device=None, **kw):
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.frames = []
        FakeCam.instances.append(self)

    def send(self, frame):
        self.frames.append(np.array(frame, copy=True))

    def close(self):
        self.closed = True

    def device(self):
        return "fake0"

    def native_fourcc(self):
        return None


def test_virtualcam_sink_through_the_fake_backend(monkeypatch):
    import pyvirtualcam.camera

    monkeypatch.setattr(pyvirtualcam.camera, "BACKENDS", dict(pyvirtualcam.camera.BACKENDS))
    pyvirtualcam.register_backend("fake", FakeCam)
    sink = VirtualCamSink(fps=20, backend="fake")
    frames = [np.full((24, 32, 3), i, np.uint8) for i in range(3)]
    for f in frames:
        sink.write(f)
    cam = FakeCam.instances[-1]
    assert (cam.width, cam.height, cam.fps) == (32, 24, 20)
    assert len(cam.frames) == 3
    assert [int(np.asarray(f).reshape(-1)[0]) for f in cam.frames] == [0, 1, 2]
    sink.close()
    assert cam.closed


def test_virtualcam_without_a_driver_says_what_to_do():
    sink = open_sink(SinkConfig(sink="virtualcam"))
    with pytest.raises(SinkError) as err:
        sink.write(np.zeros((24, 32, 3), np.uint8))
    msg = str(err.value)
    assert msg.startswith(VIRTUALCAM_HELP)
    assert "v4l2loopback" in msg and "OBS" in msg and "--sink preview" in msg


def loopback_sysfs(root, devices: dict):
    """A stand-in of /sys/class/video4linux: ``{"video10": "virtual"}`` links videoN under
    devices/virtual (v4l2loopback), anything else under a USB bus (a webcam)."""
    import os

    cls = root / "class" / "video4linux"
    cls.mkdir(parents=True)
    for node, bus in devices.items():
        target = root / "devices" / (bus if bus == "virtual" else "usb1/1-6") / "video4linux"
        (target / node).mkdir(parents=True)
        (target / node / "name").write_text(node + "\n")
        os.symlink(target / node, cls / node)
    return cls


def test_auto_is_the_virtual_camera_with_a_webcam_and_null_otherwise(monkeypatch, tmp_path):
    import pyvirtualcam.camera

    assert SinkConfig().sink == "auto"
    for capture in ("file:clip.mp4", "images:frames", "synthetic", ""):
        assert isinstance(open_sink(SinkConfig(), capture=capture), NullSink)
    monkeypatch.setattr(pyvirtualcam.camera, "BACKENDS", dict(pyvirtualcam.camera.BACKENDS))
    pyvirtualcam.register_backend("fake", FakeCam)
    monkeypatch.setattr(VirtualCamSink, "__init__", _fake_backend(VirtualCamSink.__init__))
    said = []
    sysfs = loopback_sysfs(tmp_path, {"video0": "usb", "video10": "virtual"})
    sink = VirtualCamOrPreview(fps=20, say=said.append, platform="linux", video4linux=sysfs)
    try:
        for i in range(2):
            sink.write(np.full((24, 32, 3), i, np.uint8))
        cam = FakeCam.instances[-1]
        assert len(cam.frames) == 2 and sink.url is None and said == []
        assert sink.frames == 2
    finally:
        sink.close()
    assert cam.closed


def _fake_backend(init):
    def patched(self, fps, backend=None):
        init(self, fps, backend="fake")
    return patched


def test_auto_without_a_driver_serves_the_preview_and_says_where(monkeypatch):
    # The default sink with a webcam where no virtual-camera driver is installed: the run
    # ended at the first frame with the driver's how-to; now the frames go to the preview
    # page, and one line says why, how to get the camera and where the page is.
    import pyvirtualcam

    def no_device(*args, **kwargs):
        raise RuntimeError("'/dev/video*' not found")

    monkeypatch.setattr(pyvirtualcam, "Camera", no_device)
    said = []
    # macOS or Windows: no sysfs to read first, so the driver is found missing at the first
    # frame; port 0: any free port, not 8765 (another test, or a running app)
    sink = VirtualCamOrPreview(fps=30, say=said.append, port=0, platform="darwin")
    try:
        assert isinstance(sink, VirtualCamOrPreview) and sink.url is None
        sink.write(np.full((24, 32, 3), 200, np.uint8))
        assert isinstance(sink.sink, PreviewSink) and sink.url.startswith("http://127.0.0.1:")
        assert len(said) == 1 and sink.url in said[0] and "v4l2loopback" in said[0]
        assert "'/dev/video*' not found" in said[0]
        sink.write(np.full((24, 32, 3), 100, np.uint8))
        status, ctype, body = _get(sink.url + "frame.jpg")
        assert ctype == "image/jpeg" and body[:2] == b"\xff\xd8" and sink.frames == 2
        assert len(said) == 1
    finally:
        sink.close()


def test_auto_on_linux_without_a_loopback_device_serves_the_preview_from_the_start(tmp_path):
    # sysfs lists no v4l2loopback device (only a webcam): the preview serves before the
    # first frame, so its address is on the terminal at once.
    said = []
    sysfs = loopback_sysfs(tmp_path, {"video0": "usb"})
    sink = VirtualCamOrPreview(fps=30, say=said.append, port=0, platform="linux",
                               video4linux=sysfs)
    try:
        assert isinstance(sink.sink, PreviewSink) and sink.url.startswith("http://127.0.0.1:")
        assert len(said) == 1 and sink.url in said[0] and "no v4l2loopback device" in said[0]
        assert _get(sink.url)[0] == 200
    finally:
        sink.close()


def test_a_virtualcam_backend_this_system_lacks_is_one_sentence_at_start(capsys):
    # pyvirtualcam raised KeyError from a half-made Camera, whose finaliser then printed an
    # AttributeError traceback under our one-line error, and only at the first frame.
    with pytest.raises(SinkError, match="backend 'nope' does not exist on this system"):
        open_sink(SinkConfig(sink="virtualcam:nope"))
    assert "Exception ignored" not in capsys.readouterr().err


def test_window_without_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(SinkError, match="--sink preview"):
        WindowSink()


def test_a_mac_or_windows_window_needs_no_display_variable(monkeypatch):
    # WindowSink refused every platform but Windows without DISPLAY, macOS included, where
    # DISPLAY is unset and OpenCV draws through Cocoa; doctor said the window could open.
    import sys
    import types

    from realtime.doctor import check_display

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    fake = types.SimpleNamespace(WINDOW_NORMAL=0, error=Exception, opened=[],
                                 namedWindow=lambda title, flag: fake.opened.append(title))
    monkeypatch.setitem(sys.modules, "cv2", fake)
    for platform in ("darwin", "win32"):
        WindowSink(platform=platform)
        assert check_display(platform).status == "ok"
    assert fake.opened == ["export3d live"] * 2
    for platform in ("linux", "freebsd14"):
        with pytest.raises(SinkError, match="no display"):
            WindowSink(platform=platform)
        assert check_display(platform).status == "info"
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    WindowSink(platform="linux")
    assert check_display("linux").status == "ok"


def test_unknown_sink():
    with pytest.raises(SinkError, match="unknown sink"):
        open_sink(SinkConfig(sink="nope"))


def _get(url, timeout=3.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def test_preview_serves_page_frame_stream_stats_and_commands():
    sink = PreviewSink(port=0, stats=lambda: {"fps": 12.5})
    try:
        assert sink.url.startswith("http://127.0.0.1:")
        status, ctype, body = _get(sink.url)
        assert status == 200 and b"stream.mjpg" in body and b"recalibrate" in body
        sink.write(np.full((48, 64, 3), 200, np.uint8))
        status, ctype, body = _get(sink.url + "frame.jpg")
        assert ctype == "image/jpeg" and body[:2] == b"\xff\xd8"
        assert json.loads(_get(sink.url + "stats.json")[2]) == {"fps": 12.5}
        # the MJPEG stream: read one part, then hang up
        with urllib.request.urlopen(sink.url + "stream.mjpg", timeout=3.0) as r:
            assert r.headers.get("Content-Type").startswith("multipart/x-mixed-replace")
            head = r.read(64)
            assert head.startswith(b"--frame\r\nContent-Type: image/jpeg")
        req = urllib.request.Request(sink.url + "cmd/hud", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=3.0) as r:
            assert r.status == 200
        assert sink.poll() == ["hud"]
        assert b"pose" in _get(sink.url)[2] and b"upload" in _get(sink.url)[2]
        for path, body in (("cmd/pose", b""), ("cmd/source", b""),
                           ("cmd/source", b"/photos/me.jpg"), ("upload", b"JPEG BYTES"),
                           ("cmd/format-disk", b"")):
            req = urllib.request.Request(sink.url + path, data=body, method="POST")
            try:
                urllib.request.urlopen(req, timeout=3.0).close()
            except urllib.error.HTTPError as exc:
                assert exc.code == 404 and path == "cmd/format-disk"
        commands = sink.poll()
        assert commands[:3] == ["pose", "source", "source:/photos/me.jpg"]
        assert len(commands) == 4 and commands[3].startswith("source:")
        with open(commands[3].partition(":")[2], "rb") as f:  # the upload, saved for the
            assert f.read() == b"JPEG BYTES"  # pipeline to face-check and crop
    finally:
        sink.close()
    assert not sink._thread.is_alive()
    with pytest.raises(OSError):
        urllib.request.urlopen(sink.url, timeout=1.0)


def test_window_keys_map_to_commands(monkeypatch):
    import sys
    import types

    keys = [ord("h"), ord("c"), 255, ord("p"), ord("s"), ord("q")]
    fake = types.SimpleNamespace(
        WINDOW_NORMAL=0, COLOR_RGB2BGR=4, error=Exception, shown=[],
        namedWindow=lambda *a: None, destroyWindow=lambda *a: None,
        cvtColor=lambda img, code: img, waitKey=lambda ms: keys.pop(0))
    fake.imshow = lambda title, img: fake.shown.append(img)
    monkeypatch.setitem(sys.modules, "cv2", fake)
    monkeypatch.setenv("DISPLAY", ":99")
    sink = WindowSink()
    for _ in range(6):
        sink.write(np.zeros((8, 8, 3), np.uint8))
    assert sink.poll() == ["hud", "calibrate", "pose", "source", "quit"]
    assert len(fake.shown) == 6
    sink.close()


def test_preview_refuses_a_negative_content_length():
    # Content-Length -1 passed the size limit and read(-1) read until the client hung up: an
    # upload past MAX_UPLOAD was saved, and a held-open socket blocked its handler.
    import http.client

    sink = PreviewSink(port=0)
    try:
        host, port = sink.url.split("//")[1].rstrip("/").split(":")
        for length in ("-1", "many"):
            conn = http.client.HTTPConnection(host, int(port), timeout=3.0)
            conn.putrequest("POST", "/upload")
            conn.putheader("Content-Length", length)
            conn.endheaders()
            conn.send(b"x" * 1024)
            assert conn.getresponse().status == 400
            conn.close()
        assert sink.poll() == []
    finally:
        sink.close()
