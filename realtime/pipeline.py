"""The live pipeline, wired in one place:

    capture thread -> [latest-frame-wins queue] -> tracking thread -> [queue] ->
    generator thread (double buffer: push n+1 before popping n) -> [queue] ->
    sink (the calling thread: OpenCV windows want it)

Every packet carries the capture timestamp; each stage stamps its start and end, so the stats
give per-stage latency, queue waits and glass-to-glass (capture -> sink written) p50/p95/p99,
output fps and drops per queue. ``run()`` returns the stats; every thread is joined with a
timeout on the way out, whatever ended the run (source end, ``frames``, quit, Ctrl-C, error).

Commands (from the sink's keys or page, or :meth:`Pipeline.command`): ``quit``, ``hud``,
``calibrate`` (neutral face), ``pose`` (absolute/relative camera), ``source`` (next photo) or
``source:PATH`` (that photo; face-checked and cropped on a helper thread, encoded between
frames, a photo without a face keeps the old one and says so).
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from export3d import jsonfile
from export3d.errors import UserError

from .capture import CaptureError, open_capture
from .config import MAX_FPS, MIN_FPS, PipelineConfig
from .generator import Generator, prepare_source
from .queues import CLOSED, LatestQueue
from .sinks import open_sink
from .tracking import Tracker

STAGES = ("capture", "tracking", "generator", "sink")


class PipelineError(UserError):
    """A run that cannot go on: a stage out of GPU memory."""


@dataclass
class Packet:
    index: int
    t_capture: float
    rgb: np.ndarray
    driving: object = None  # capture's scripted driving, then tracking.Driving
    output: np.ndarray | None = None
    times: dict = field(default_factory=dict)  # stage -> (start, end) monotonic


def percentiles(values) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000.0
    return {"n": len(a), "p50_ms": float(np.percentile(a, 50)),
            "p95_ms": float(np.percentile(a, 95)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean())}


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self.stage = {s: [] for s in STAGES}
        self.glass = []
        self.indices = []
        self.states: dict[str, int] = {}
        self.t_first = None
        self.t_last = None
        self.last_state = "-"

    def record(self, p: Packet) -> None:
        now = p.times["sink"][1]
        with self._lock:
            for s, (a, b) in p.times.items():
                self.stage[s].append(b - a)
            self.glass.append(now - p.t_capture)
            self.indices.append(p.index)
            state = getattr(p.driving, "state", "-")
            self.states[state] = self.states.get(state, 0) + 1
            self.last_state = state
            self.t_first = now if self.t_first is None else self.t_first
            self.t_last = now

    def fps(self) -> float:
        with self._lock:
            n = len(self.indices)
            if n < 2 or self.t_last == self.t_first:
                return 0.0
            return (n - 1) / (self.t_last - self.t_first)

    def recent_ms(self, stage: str, k: int = 30) -> float:
        with self._lock:
            v = self.stage[stage][-k:] if stage != "glass" else self.glass[-k:]
            return float(np.median(v) * 1000) if v else 0.0

    def summary(self, queues: dict) -> dict:
        with self._lock:
            out = {"frames": len(self.indices),
                   "stages": {s: percentiles(v) for s, v in self.stage.items()},
                   "glass_to_glass": percentiles(self.glass),
                   "states": dict(self.states)}
        out["fps"] = self.fps()
        out["drops"] = {name: q.drops for name, q in queues.items()}
        return out


def format_summary(s: dict) -> str:
    lines = [f"{s['frames']} frames, {s['fps']:.1f} fps, drops "
             + ", ".join(f"{k}={v}" for k, v in s["drops"].items()),
             f"{'stage':<16}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"]
    rows = list(s["stages"].items()) + [("glass-to-glass", s["glass_to_glass"])]
    for name, p in rows:
        if p.get("n"):
            lines.append(f"{name:<16}{p['p50_ms']:>9.1f}{p['p95_ms']:>9.1f}{p['p99_ms']:>9.1f}")
    if "audio_delay_ms" in s:
        lines.append(f"audio: this video runs at least {s['audio_delay_ms']} ms behind your "
                     "microphone; to match them, delay the microphone by that much (OBS: "
                     "Edit > Advanced Audio Properties > Sync Offset)")
    return "\n".join(lines)


def compose(output: np.ndarray, driving_rgb: np.ndarray | None, size: int = 0,
            left_width: int | None = None) -> np.ndarray:
    """The presented picture: ``output`` scaled to ``size`` pixels high (0: as it is), with the
    driving frame, scaled to the same height, on its left when given: ``left_width`` pixels
    wide (the run's first driving frame's, so that every picture has the size the sink
    opened with), else as wide as its own aspect ratio makes it."""
    h = size or output.shape[0]
    if h != output.shape[0] or driving_rgb is not None:
        import cv2  # only when there is something to scale (the GPU suite runs without it)
    if h != output.shape[0]:
        output = cv2.resize(output, (h * output.shape[1] // output.shape[0], h),
                            interpolation=cv2.INTER_CUBIC)
    if driving_rgb is None:
        return output
    w = left_width or max(1, round(driving_rgb.shape[1] * h / driving_rgb.shape[0]))
    left = cv2.resize(np.ascontiguousarray(driving_rgb[..., :3]), (w, h),
                      interpolation=cv2.INTER_AREA)
    return np.concatenate([left, output], axis=1)


def draw_hud(rgb: np.ndarray, stats: Stats, driving, message: str = "") -> np.ndarray:
    import cv2

    out = rgb.copy()
    state = getattr(driving, "state", "-")
    lines = [f"{stats.fps():.1f} fps  g2g {stats.recent_ms('glass'):.0f} ms",
             " ".join(f"{s[:3]} {stats.recent_ms(s):.0f}" for s in STAGES[1:3]),
             {"held": "no face: holding", "easing": "no face: easing to neutral",
              "none": "no face"}.get(state, state)] + ([message] if message else [])
    scale = max(0.3, out.shape[0] / 600)
    for i, text in enumerate(lines):
        y = int((i + 1) * 16 * scale * 1.4)
        cv2.putText(out, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3,
                    cv2.LINE_AA)
        cv2.putText(out, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), 1,
                    cv2.LINE_AA)
    return out


class Pipeline:
    """Stages built once (``capture``, ``tracker``, ``generator``, ``sink`` may be injected
    for tests), then :meth:`run`; :meth:`stop` from any thread."""

    def __init__(self, config: PipelineConfig, *, capture=None, tracker=None, generator=None,
                 sink=None):
        self.config = config
        self.stats = Stats()
        lossless = not config.capture.realtime  # offline runs keep every frame
        self.queues = {name: LatestQueue(config.queue_size, lossless=lossless)
                       for name in ("tracking", "generator", "sink")}
        self._stop = threading.Event()
        self.hud = config.sink.hud
        self.errors: list[BaseException] = []
        self.message, self._message_until = "", 0.0  # last command's outcome, on the HUD
        self._new_source = None  # (path, model input) prepared off the frame path
        self._source_lock = threading.Lock()
        self._source_threads: list[threading.Thread] = []
        self._photo = 0  # index in generator.photos of the current source
        self._left_width = None  # --side-by-side: the driving panel's width, from frame 0
        self.hung: list[str] = []  # threads that did not end when the run did
        self._ended: set[str] = set()  # threads whose function has returned or raised
        self._reading_since = None  # monotonic start of the capture read under way, if any
        self._last_written = None  # (capture index, picture) of the sink's last frame
        self.capture = capture or open_capture(config.capture)
        pace = getattr(self.capture, "pace", None)
        if pace is not None:
            pace.stop = self._stop  # a stop ends a pacing wait at once
        self.tracker = self.generator = None
        try:
            self.tracker = tracker or Tracker(config.tracking)
            self.generator = generator or Generator(config.generator)
            # relative pose: the driver's motion applied to the source's own head pose
            self._set_source_pose(getattr(self.generator, "source_rotation", None))
            if sink is None and config.sink.fps is None:
                # A video's own rate (a 24 fps clip written at 30 would play 25% fast), else
                # the rate asked of the capture.
                rate = getattr(self.capture, "fps", None)
                if not (isinstance(rate, (int, float)) and MIN_FPS <= rate <= MAX_FPS):
                    rate = config.capture.fps  # none, or a container's rate out of range
                config = self.config = dataclasses.replace(config, sink=dataclasses.replace(
                    config.sink, fps=float(rate)))
            self.sink = sink or open_sink(config.sink, stats=self.live_stats,
                                          capture=config.capture.source)
        except BaseException:
            # Every stage made so far is closed (the generator's stream threads, the tracker's
            # landmarker), not only the capture; the first error is the one raised.
            for stage in (self.generator, self.tracker, self.capture):
                if stage is not None:
                    try:
                        stage.close()
                    except Exception:  # noqa: BLE001
                        pass
            raise

    def live_stats(self) -> dict:
        s = self.summary()
        s["tracking_state"] = self.stats.last_state
        s["pose"] = "relative" if getattr(self.tracker, "relative_camera", True) else "absolute"
        s["source"] = str(getattr(self.generator, "source", ""))
        s["message"] = self.message
        return s

    def summary(self) -> dict:
        s = self.stats.summary(self.queues)
        if self.config.capture.source.startswith("webcam") and s["glass_to_glass"].get("n"):
            # The microphone is not delayed: the call hears the user this much before it
            # shows them (at least: the camera's own latency comes on top).
            s["audio_delay_ms"] = round(s["glass_to_glass"]["p50_ms"])
        return s

    def stop(self) -> None:
        self._stop.set()
        for q in self.queues.values():
            q.close()

    # -- the stages' threads -------------------------------------------------------------
    def _capture_loop(self) -> None:
        out = self.queues["tracking"]
        limit = self.config.capture.frames
        n = 0
        while not self._stop.is_set() and (limit <= 0 or n < limit):
            self._reading_since = time.monotonic()
            frame = self.capture.read()
            self._reading_since = None  # not while waiting for room downstream (--fast)
            if frame is None:
                break
            p = Packet(frame.index, frame.t_capture, frame.rgb, frame)
            # read/decode time; pacing waits are not a stage's cost
            p.times["capture"] = (frame.t_capture - frame.read_s, frame.t_capture)
            out.put(p)
            n += 1
        out.close()

    def _stage_loop(self, name: str, inbox: LatestQueue, outbox: LatestQueue, fn) -> None:
        while not self._stop.is_set():
            p = inbox.get(timeout=0.1)
            if p is None:
                continue
            if p is CLOSED:
                break
            t0 = time.monotonic()
            fn(p)
            p.times[name] = (t0, time.monotonic())
            outbox.put(p)
        outbox.close()

    def _track(self, p: Packet) -> None:
        p.driving = self.tracker.process(p.driving)

    def _generator_loop(self) -> None:
        """Push frame n into the double buffer, then pop frame n-1 if frame n+1 is not
        waiting yet: a finished frame never waits for the next input, and a generator that
        is the bottleneck always has the next frame uploading while one computes."""
        inbox, outbox, gen = self.queues["generator"], self.queues["sink"], self.generator
        in_flight: list[Packet] = []

        def emit():
            p = in_flight.pop(0)
            p.output = gen.pop()
            p.times["generator"] = (p.times["generator"][0], time.monotonic())
            outbox.put(p)

        while not self._stop.is_set():
            self._apply_new_source()
            p = inbox.get(timeout=0.0 if in_flight else 0.1)
            if p is None:
                if in_flight:
                    emit()
                continue
            if p is CLOSED:
                break
            if len(in_flight) >= gen.buffer.size:
                emit()
            p.times["generator"] = (time.monotonic(), None)
            gen.push(p.driving.expr, p.driving.camera)
            in_flight.append(p)
        while in_flight and not self._stop.is_set():
            emit()
        outbox.close()

    # -- source photo swap -------------------------------------------------------------------
    def _prepare_source(self, path) -> None:
        try:
            image, rotation = prepare_source(path, self.generator.image_size, with_pose=True)
        except Exception as exc:  # MediaError (no face, unreadable): keep the old source
            self.say(f"{exc}; keeping {getattr(self.generator, 'source', 'the current source')}")
            return
        with self._source_lock:
            self._new_source = (path, image, rotation)

    def _set_source_pose(self, rotation) -> None:
        set_source = getattr(self.tracker, "set_source", None)  # stand-in trackers lack it
        if set_source is not None:
            set_source(rotation)

    def _apply_new_source(self) -> None:
        with self._source_lock:
            new, self._new_source = self._new_source, None
        if new is not None:
            path, image, rotation = new
            self.generator.set_source(path, image)
            self._set_source_pose(rotation)  # the relative camera turns to the new face's pose
            self.say(f"source: {path}")

    def swap_source(self, path=None) -> threading.Thread | None:
        """Next photo of ``--source`` (or ``path``), prepared on a helper thread."""
        if path is None:
            photos = getattr(self.generator, "photos", [])
            if len(photos) < 2:
                self.say("one source photo only; give --source several times or a folder")
                return None
            self._photo = (self._photo + 1) % len(photos)
            path = photos[self._photo]
        t = threading.Thread(target=self._prepare_source, args=(path,), daemon=True,
                             name="source")
        self._source_threads.append(t)
        t.start()
        return t

    def say(self, text: str, seconds: float = 4.0) -> None:
        print(f"live: {text}", file=sys.stderr)
        self.message, self._message_until = text, time.monotonic() + seconds

    def _guard(self, name: str, fn, *args):
        def body():
            try:
                fn(*args)
            except BaseException as exc:  # reported on the calling thread after the join
                self.errors.append(_explained(exc, name))
                self.stop()
            finally:
                self._ended.add(name)
        return body

    def run(self) -> dict:
        q = self.queues
        threads = [
            threading.Thread(target=self._guard("capture", self._capture_loop), name="capture"),
            threading.Thread(target=self._guard("tracking", self._stage_loop, "tracking",
                                                q["tracking"], q["generator"], self._track),
                             name="tracking"),
            threading.Thread(target=self._guard("generator", self._generator_loop),
                             name="generator"),
        ]
        for t in threads:
            t.daemon = True
            t.start()
        try:
            self._sink_loop()
        except KeyboardInterrupt:
            pass
        except BaseException as exc:
            self.errors.append(_explained(exc, "sink"))
        finally:
            self.stop()
            waiting = time.monotonic()
            try:
                for t in threads:
                    t.join(timeout=self.config.join_timeout_s)
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting; the output still closes
                pass
            # A thread that did not end is stuck in a call that never returned (a camera's
            # read, a GPU call); its stage is not closed under it, and the run says so. Not
            # is_alive(): a join interrupted by Ctrl-C marks a running thread as stopped
            # (CPython 3.11 and 3.12, threading's bpo-45274 handling).
            self.hung = [t.name for t in threads if t.name not in self._ended]
            if self.hung:  # said, not raised: a slow frame (paper512 on a CPU) is not an error
                self.say(f"the {' and '.join(self.hung)} thread"
                         f"{'s' if len(self.hung) > 1 else ''} did not stop within "
                         f"{time.monotonic() - waiting:.1f} s of the end of the run (a camera "
                         "or model call still under way); the output was closed without it")
            self.close()
        if self.errors:
            raise self.errors[0]
        return self.summary()

    def _sink_loop(self) -> None:
        inbox = self.queues["sink"]
        while not self._stop.is_set():
            for cmd in self.sink.poll():
                self.command(cmd)
            p = inbox.get(timeout=0.1)
            if p is None:
                self._check_camera()
                continue
            if p is CLOSED:
                break
            t0 = time.monotonic()
            if self.message and time.monotonic() > self._message_until:
                self.message = ""
            cfg = self.config.sink
            frame = compose(p.output, p.rgb if cfg.side_by_side else None, cfg.size,
                            self._left_width)
            if cfg.side_by_side and self._left_width is None:
                self._left_width = frame.shape[1] - compose(p.output, None, cfg.size).shape[1]
            if self.hud:
                frame = draw_hud(frame, self.stats, p.driving, self.message)
            if getattr(self.sink, "keeps_time", False) and self._last_written is not None:
                # A file plays at the capture's rate: a frame dropped on the way (latest frame
                # wins) is the previous picture again, or the video would play fast and short.
                index, last = self._last_written
                for _ in range(max(0, p.index - index - 1)):
                    if self._stop.is_set():
                        break
                    self.sink.write(last)
            self.sink.write(frame)
            self._last_written = (p.index, frame)
            p.times["sink"] = (t0, time.monotonic())
            self.stats.record(p)

    def _check_camera(self) -> None:
        """A webcam whose read never returns (unplugged mid-call, on some drivers) sends no
        frame and no error: once a read has been under way for ``capture.stall_s``, the run
        ends with the camera's message instead of showing its last picture forever."""
        stall, since = self.config.capture.stall_s, self._reading_since
        if (not self.config.capture.source.startswith("webcam") or since is None
                or time.monotonic() - since < stall):
            return
        self.errors.append(CaptureError(
            f"the camera sent no frame for {stall:g} s: was it unplugged, or taken by another "
            "app?"))
        self.stop()

    def command(self, cmd: str) -> None:
        name, _, arg = cmd.partition(":")
        if name == "quit":
            self.stop()
        elif name == "hud":
            self.hud = not self.hud
        elif name == "calibrate":
            self.tracker.calibrate()  # applied by the tracking thread at its next frame
            self.say("calibrating: look at the camera and relax")
        elif name == "pose":
            self.say(f"pose: {self.tracker.toggle_pose()}")
        elif name == "source":
            self.swap_source(arg or None)
        else:
            self.say(f"unknown command {cmd!r}")

    def close(self) -> None:
        """Close the stages, the sink first: its output is finished whatever the others do
        (a camera whose release blocks behind a read that never returned). After an error a
        file sink keeps what it wrote as ``NAME.partial`` rather than under the name asked
        for. A stage whose thread is listed in :attr:`hung` is left as it is."""
        stages = (("sink", self.sink), ("generator", self.generator),
                  ("tracking", self.tracker), ("capture", self.capture))
        for name, stage in stages:
            if name == "generator":  # a photo swap being prepared may still hand it a source
                try:
                    for t in self._source_threads:
                        t.join(timeout=self.config.join_timeout_s)
                except KeyboardInterrupt:  # the output is already finished
                    pass
            if name in self.hung:
                continue
            try:
                if name != "sink":
                    stage.close()
                    continue
                with _deferred_interrupt():  # a Ctrl-C here would lose the whole file
                    if self.errors and hasattr(stage, "abort"):
                        kept = stage.abort()
                        if kept is not None:
                            self.say(f"stopped by an error: the frames written so far are in "
                                     f"{kept}")
                    else:
                        stage.close()
            except Exception as exc:  # keep closing the others
                self.errors.append(exc)


@contextlib.contextmanager
def _deferred_interrupt():
    """Ctrl-C ignored within the block (main thread only): the run is ending anyway, and one
    landing while a video file is being finished would leave it unplayable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _explained(exc: BaseException, stage: str) -> BaseException:
    """A stage's error as the run reports it: running out of GPU memory is one sentence
    with what to change; anything else keeps its type and trace, with the stage named."""
    if isinstance(exc, UserError) or not isinstance(exc, Exception):
        return exc
    if type(exc).__name__ == "OutOfMemoryError":  # torch's, from any stage's GPU work
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        return PipelineError(
            f"the {stage} stage ran out of GPU memory ({first[:160]}); try --precision bf16 "
            "or fp16, a smaller --preset, or close other programs using the GPU")
    exc.add_note(f"(raised in the live pipeline's {stage} stage)")
    return exc


def write_json(summary: dict, path) -> None:
    with open(path, "w") as f:
        jsonfile.dump(summary, f, indent=2)
