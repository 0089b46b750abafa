"""Output sinks by name: ``null``, ``file:OUT``, ``window``, ``virtualcam``, ``preview[:PORT]``,
and ``auto`` (the default): with a webcam the virtual camera, or the preview page where no
virtual-camera driver is found; with any other source ``null``.

Each sink: constructed once, ``write(rgb [H, W, 3] uint8)`` per frame, ``close()``. A sink may
report user commands through ``poll() -> list[str]`` (``"quit"``, ``"calibrate"``, ``"hud"``,
``"pose"``, ``"source"``, ``"source:PATH"``; see :meth:`realtime.pipeline.Pipeline.command`)
and shows live stats through ``stats`` (a callable returning a dict) when it has a page.
"""
from __future__ import annotations

import dataclasses
import http.server
import json
import os
import socketserver
import sys
import tempfile
import threading
import urllib.parse

import numpy as np

from export3d.errors import UserError

from .config import SinkConfig

V4L2LOOPBACK_FIX = ("run 'sudo modprobe v4l2loopback devices=1 exclusive_caps=1' (package "
                    "v4l2loopback-dkms)")
OBS_FIX = "install OBS Studio and start its Virtual Camera once"
VIRTUALCAM_HELP = (
    f"no virtual camera driver found; on Linux {V4L2LOOPBACK_FIX}, on Windows/macOS {OBS_FIX}; "
    "'--sink preview' or '--sink window' work without a driver; 'export3d doctor' shows what "
    "this machine has")


class SinkError(UserError):
    """A sink that cannot be opened."""


class NullSink:
    def __init__(self):
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        self.frames += 1

    def poll(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


class FileSink:
    """``.mp4`` (mp4v), ``.avi`` or ``.mkv`` (FFV1, lossless) via export3d.media.VideoWriter;
    opened at the first frame's size. ``keeps_time``: the pipeline writes a dropped frame's
    slot as the previous picture, so the file lasts as long as the capture did."""

    keeps_time = True

    def __init__(self, path: str, fps: float):
        from export3d.media import output_path

        self.path, self.fps = output_path(path), fps  # checked now, opened at the first frame
        self._writer = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        if self._writer is None:
            from export3d.media import VideoWriter

            self._writer = VideoWriter(self.path, self.fps, (rgb.shape[1], rgb.shape[0]))
        self._writer.write(rgb)
        self.frames += 1

    def poll(self) -> list[str]:
        return []

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def abort(self):
        """End a run stopped by an error: the frames so far as ``NAME.partial.EXT``
        (returned; None when there are none), never under the name asked for."""
        if self._writer is None:
            return None
        kept, self._writer = self._writer.abort(), None
        return kept


def lacks_display(platform: str = sys.platform) -> bool:
    """Whether a window cannot open here: on Linux (and the BSDs) a desktop is an X11 or Wayland
    server named by ``DISPLAY`` / ``WAYLAND_DISPLAY``; Windows and macOS windows need neither
    (macOS has ``DISPLAY`` unset unless XQuartz runs, and OpenCV draws through Cocoa)."""
    if platform.startswith(("win32", "cygwin", "darwin")):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class WindowSink:
    """An OpenCV window. Keys: q/Esc quit, c recalibrate neutral, h toggle the HUD, p switch
    absolute/relative pose, s next source photo."""

    KEYS = {ord("q"): "quit", 27: "quit", ord("c"): "calibrate", ord("h"): "hud",
            ord("p"): "pose", ord("s"): "source"}

    def __init__(self, title: str = "export3d live", platform: str = sys.platform):
        if lacks_display(platform):
            raise SinkError("no display for '--sink window' (DISPLAY is not set); use "
                            "'--sink preview' and open the printed address in a browser")
        import cv2

        self.cv2, self.title = cv2, title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError(f"OpenCV cannot open a window ({exc.msg}); use '--sink preview'") \
                from None
        self._commands: list[str] = []

    def write(self, rgb: np.ndarray) -> None:
        self.cv2.imshow(self.title, self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2BGR))
        key = self.cv2.waitKey(1) & 0xFF
        if key in self.KEYS:
            self._commands.append(self.KEYS[key])

    def poll(self) -> list[str]:
        out, self._commands = self._commands, []
        return out

    def close(self) -> None:
        self.cv2.destroyWindow(self.title)


class VirtualCamSink:
    """pyvirtualcam, opened at the first frame's size (RGB)."""

    def __init__(self, fps: float, backend: str | None = None):
        try:
            import pyvirtualcam
            import pyvirtualcam.camera  # noqa: F401  (its BACKENDS, by platform)
        except ImportError:
            raise SinkError("pyvirtualcam is not installed (pip install pyvirtualcam); "
                            "'--sink preview' or '--sink window' work instead") from None
        known = getattr(getattr(pyvirtualcam, "camera", None), "BACKENDS", None)
        if backend and known is not None and backend not in known:
            # Checked here: pyvirtualcam's own KeyError comes from a half-made Camera whose
            # finaliser then prints an AttributeError traceback.
            raise SinkError(f"virtual camera backend {backend!r} does not exist on this system; "
                            f"it has {', '.join(known) or 'none'}")
        self.fps, self.backend = fps, backend
        self.cam = None
        self.frames = 0

    def _open(self, width: int, height: int) -> None:
        import pyvirtualcam

        try:
            self.cam = pyvirtualcam.Camera(width, height, self.fps, backend=self.backend,
                                           fmt=pyvirtualcam.PixelFormat.RGB)
        except (RuntimeError, KeyError) as exc:
            raise SinkError(f"{VIRTUALCAM_HELP} ({exc})") from None

    def write(self, rgb: np.ndarray) -> None:
        if self.cam is None:
            self._open(rgb.shape[1], rgb.shape[0])
        self.cam.send(np.ascontiguousarray(rgb))
        self.frames += 1

    def poll(self) -> list[str]:
        return []

    def close(self) -> None:
        if self.cam is not None:
            self.cam.close()
            self.cam = None


class VirtualCamOrPreview:
    """Sink ``auto`` with a webcam: what a video-call user runs the app for, the virtual camera.
    Where there is no driver (pyvirtualcam missing, or no device when the first frame opens
    it), the output goes to the browser preview instead (port ``port``, any free one if that
    is taken), with one line on stderr saying why, the fix and the page's address, rather than
    the run ending after its start-up."""

    def __init__(self, fps: float, stats=None, port: int = 8765, say=None,
                 platform: str = sys.platform, video4linux=None):
        self.stats, self.port = stats, port
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.url = None  # the preview's, once it serves
        if platform.startswith("linux"):
            # Linux lists v4l2loopback's devices in sysfs (doctor reads them the same way):
            # without one, fall back now, so the page's address is known before the first frame
            from .doctor import SYSFS_VIDEO, video_devices

            if not video_devices(video4linux or SYSFS_VIDEO)[0]:
                self._fall_back(SinkError(f"{VIRTUALCAM_HELP} (no v4l2loopback device)"))
                return
        try:
            self.sink = VirtualCamSink(fps)
        except SinkError as exc:
            self._fall_back(exc)

    @property
    def frames(self) -> int:
        return self.sink.frames

    def _fall_back(self, exc: SinkError) -> None:
        try:
            self.sink = PreviewSink(self.port, stats=self.stats)
        except SinkError:
            self.sink = PreviewSink(0, stats=self.stats)  # the port is taken: any free one
        self.url = self.sink.url
        why = str(exc).removeprefix("no virtual camera driver found; ")
        self.say(f"no virtual camera driver found, so the output is at {self.url} instead "
                 f"(in OBS: a Browser source with {self.url}stream.mjpg); for the virtual "
                 f"camera: {why}")

    def write(self, rgb: np.ndarray) -> None:
        if isinstance(self.sink, VirtualCamSink) and self.sink.cam is None:
            try:
                self.sink.write(rgb)  # the first frame opens the device
                return
            except SinkError as exc:
                self._fall_back(exc)
        self.sink.write(rgb)

    def poll(self) -> list[str]:
        return self.sink.poll()

    def close(self) -> None:
        self.sink.close()


_PAGE = """<!doctype html><html><head><title>export3d live</title></head><body>
<img src="/stream.mjpg" style="max-width:100%%"><pre id="s"></pre>
<button onclick="cmd('calibrate')">recalibrate neutral</button>
<button onclick="cmd('pose')">absolute / relative pose</button>
<button onclick="cmd('hud')">toggle HUD</button>
<button onclick="cmd('source')">next source photo</button>
<button onclick="cmd('quit')">quit</button><br>
source photo: <input type="file" id="upload" accept="image/*"
 onchange="fetch('/upload',{method:'POST',body:this.files[0]})">
or path <input id="path" size="40"><button onclick="fetch('/cmd/source',
{method:'POST',body:document.getElementById('path').value})">use</button>
<script>function cmd(c){fetch('/cmd/'+c,{method:'POST'})}
setInterval(async()=>{document.getElementById('s').textContent=
JSON.stringify(await (await fetch('/stats.json')).json(),null,1)},1000)</script>
</body></html>"""


class PreviewSink:
    """A localhost-only HTTP server: ``/`` page with stats and buttons, ``/stream.mjpg``
    (multipart MJPEG), ``/frame.jpg``, ``/stats.json``, ``POST /cmd/{calibrate,pose,hud,quit}``,
    ``POST /cmd/source`` (body: a photo's path, or empty for the next one) and ``POST /upload``
    (body: the photo's bytes, saved to a private temporary folder)."""

    COMMANDS = ("calibrate", "pose", "hud", "source", "quit")
    MAX_UPLOAD = 32 << 20

    def __init__(self, port: int = 8765, stats=None, quality: int = 80):
        self.quality = quality
        self.stats = stats or (lambda: {})
        self._jpeg: bytes | None = None
        self._cond = threading.Condition()
        self._seq = 0
        self._closed = False
        self._commands: list[str] = []
        self._uploads: tempfile.TemporaryDirectory | None = None
        self._upload_count = 0
        self.frames = 0
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: bytes, ctype: str, code: int = 200):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/":
                    self._send((_PAGE % ()).encode(), "text/html; charset=utf-8")
                elif self.path == "/stats.json":
                    self._send(json.dumps(sink.stats()).encode(), "application/json")
                elif self.path == "/frame.jpg":
                    jpeg = sink.wait_frame(-1, 2.0)[1]
                    if jpeg is None:
                        self._send(b"no frame yet", "text/plain", 503)
                    else:
                        self._send(jpeg, "image/jpeg")
                elif self.path == "/stream.mjpg":
                    self.send_response(200)
                    self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                    self.end_headers()
                    seq = -1
                    try:
                        while not sink._closed:
                            seq, jpeg = sink.wait_frame(seq, 1.0)
                            if jpeg is None:
                                continue
                            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                             b"Content-Length: %d\r\n\r\n" % len(jpeg))
                            self.wfile.write(jpeg + b"\r\n")
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                else:
                    self._send(b"not found", "text/plain", 404)

            def do_POST(self):
                try:
                    size = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    size = -1
                if size < 0:  # read(-1) would read until the client closes, past MAX_UPLOAD
                    self._send(b"bad Content-Length", "text/plain", 400)
                    return
                if size > sink.MAX_UPLOAD:
                    self._send(b"too large", "text/plain", 413)
                    return
                body = self.rfile.read(size) if size else b""
                cmd = self.path.rsplit("/", 1)[-1]
                if self.path == "/upload" and body:
                    cmd = "source:" + sink.save_upload(body)
                elif self.path == "/cmd/source" and body:
                    cmd = "source:" + urllib.parse.unquote(body.decode("utf-8", "replace"))
                elif not (self.path.startswith("/cmd/") and cmd in sink.COMMANDS):
                    self._send(b"not found", "text/plain", 404)
                    return
                with sink._cond:
                    sink._commands.append(cmd.strip())
                self._send(b"ok", "text/plain")

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        try:
            self.server = Server(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise SinkError(f"cannot serve the preview on 127.0.0.1:{port} ({exc.strerror}); "
                            "pick another port with --sink preview:PORT") from None
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True,
                                        name="preview-http")
        self._thread.start()

    def save_upload(self, data: bytes) -> str:
        """An uploaded photo -> a file the pipeline can prepare (face check, crop)."""
        if self._uploads is None:
            self._uploads = tempfile.TemporaryDirectory(prefix="export3d-live-")
        with self._cond:
            self._upload_count += 1
            path = os.path.join(self._uploads.name, f"upload{self._upload_count}.img")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def wait_frame(self, seen: int, timeout: float):
        """(seq, jpeg) once a frame newer than ``seen`` exists (or the latest on timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > seen or self._closed, timeout)
            return self._seq, self._jpeg if self._seq > seen else None

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if ok:
            with self._cond:
                self._jpeg = buf.tobytes()
                self._seq += 1
                self._cond.notify_all()
            self.frames += 1

    def poll(self) -> list[str]:
        with self._cond:
            out, self._commands = self._commands, []
        return out

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=2.0)
        if self._uploads is not None:
            self._uploads.cleanup()


def open_sink(config: SinkConfig, stats=None, capture: str = ""):
    """The sink ``config.sink`` names; ``capture``: the capture source (``webcam:N``, ...),
    which decides what ``auto`` is."""
    kind, _, arg = config.sink.partition(":")
    if config.fps is None:  # the pipeline sets the capture's rate; alone, a webcam's usual
        config = dataclasses.replace(config, fps=30.0)
    if kind == "auto" and not arg:
        if capture.startswith("webcam"):
            return VirtualCamOrPreview(config.fps, stats=stats)
        return NullSink()
    if kind == "null":
        return NullSink()
    if kind == "file" and arg:
        return FileSink(arg, config.fps)
    if kind == "window":
        return WindowSink()
    if kind == "virtualcam":
        return VirtualCamSink(config.fps, backend=arg or None)
    if kind == "preview":
        try:
            port = int(arg) if arg else 8765
        except ValueError:
            raise SinkError(f"preview port must be a number, got {arg!r}") from None
        if not 0 <= port <= 65535:  # 0: any free port (the page's address is printed)
            raise SinkError(f"preview port must be between 0 and 65535, got {port}")
        return PreviewSink(port, stats=stats)
    raise SinkError(f"unknown sink {config.sink!r}; use auto, null, file:OUT, window, virtualcam "
                    "or preview[:PORT]")
