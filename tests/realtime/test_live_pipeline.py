import concurrent.futures
import threading
import time

import cv2
import numpy as np
import pytest

from realtime.config import CaptureConfig, PipelineConfig, SinkConfig
from realtime.pipeline import Pipeline, format_summary, write_json


@pytest.fixture(scope="module")
def face_video():
    from export3d.assets import asset_path

    return asset_path("single_face.mp4", fetch=True)


def test_real_face_video_through_the_pipeline_to_a_file(face_video, tmp_path):
    out = tmp_path / "live.mkv"
    n = 12
    cfg = PipelineConfig(capture=CaptureConfig(source=f"file:{face_video}", realtime=False,
                                               frames=n),
                         sink=SinkConfig(sink=f"file:{out}", fps=25))
    pipe = Pipeline(cfg)
    summary = pipe.run()
    assert pipe.hung == []
    assert summary["frames"] == n
    assert pipe.stats.indices == list(range(n))  # in order, none dropped (offline run)
    assert sum(summary["drops"].values()) == 0
    for stage in ("capture", "tracking", "generator", "sink"):
        assert summary["stages"][stage]["n"] == n
    g = summary["glass_to_glass"]
    assert 0 < g["p50_ms"] <= g["p95_ms"] <= g["p99_ms"]
    assert summary["states"].get("tracked", 0) >= n // 2  # a face is really tracked
    cap = cv2.VideoCapture(str(out))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == n
    text = format_summary(summary)
    assert "glass-to-glass" in text and "tracking" in text
    write_json(summary, tmp_path / "s.json")
    assert (tmp_path / "s.json").stat().st_size > 0


class SlowSink:
    def __init__(self, delay):
        self.delay, self.frames = delay, 0

    def write(self, rgb):
        time.sleep(self.delay)
        self.frames += 1

    def poll(self):
        return []

    def close(self):
        self.closed = True


def test_synthetic_live_run_drops_late_frames_and_stops_cleanly():
    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic", fps=200, frames=0,
                                               width=64, height=48))
    sink = SlowSink(0.03)
    pipe = Pipeline(cfg, sink=sink)
    before = threading.active_count()
    timer = threading.Timer(1.5, pipe.stop)
    timer.start()
    t0 = time.monotonic()
    summary = pipe.run()
    assert time.monotonic() - t0 < 6.0
    assert pipe.hung == [] and sink.closed
    assert threading.active_count() <= before + 1  # only the (finished) timer may linger
    assert summary["frames"] == sink.frames > 5
    assert sum(summary["drops"].values()) > 0  # the camera outruns the sink: latest wins
    assert summary["states"] == {"scripted": summary["frames"]}
    idx = pipe.stats.indices
    assert idx == sorted(idx)


def test_quit_command_and_hud_toggle():
    class CmdSink(SlowSink):
        def __init__(self):
            super().__init__(0.0)
            self.pending = ["hud"]
            self.shapes = []

        def write(self, rgb):
            super().write(rgb)
            if self.frames == 3:
                self.pending.append("quit")

        def poll(self):
            out, self.pending = self.pending, []
            return out

    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic", fps=50, frames=0,
                                               width=64, height=48))
    sink = CmdSink()
    pipe = Pipeline(cfg, sink=sink)
    pipe.run()
    assert pipe.hud is False and pipe.hung == []
    assert 3 <= sink.frames < 10


def test_errors_in_a_stage_surface_and_nothing_hangs():
    class Broken:
        def process(self, frame):
            raise RuntimeError("tracker broke")

        def calibrate(self):
            pass

        def close(self):
            pass

    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic", fps=100, width=64,
                                               height=48))
    pipe = Pipeline(cfg, tracker=Broken(), sink=SlowSink(0))
    with pytest.raises(RuntimeError, match="tracker broke"):
        pipe.run()
    assert pipe.hung == []


def test_hud_draws_on_a_copy():
    from realtime.pipeline import Stats, draw_hud
    from realtime.tracking import Driving

    rgb = np.zeros((64, 64, 3), np.uint8)
    out = draw_hud(rgb, Stats(), Driving(None, None, "held", False, 0.0))
    assert rgb.max() == 0 and out.max() > 0


def test_onnxruntime_backend_through_the_pipeline(tmp_path):
    from export.onnx_export import export_onnx
    from export3d.config import get_config
    from export3d.model import build_model
    from realtime.config import GeneratorConfig

    graphs = tmp_path / "graphs"
    export_onnx(build_model(get_config("tiny"), seed=0), graphs)
    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic", realtime=False, frames=4,
                                               width=64, height=48),
                         generator=GeneratorConfig(backend="onnxruntime", graphs=str(graphs)))
    sink = SlowSink(0)
    pipe = Pipeline(cfg, sink=sink)
    summary = pipe.run()
    assert summary["frames"] == 4 and pipe.generator.image_size == 64


@pytest.mark.gpu
def test_cuda_generator_double_buffer_matches_the_synchronous_backend():
    from realtime.buffers import CudaStreams
    from realtime.config import GeneratorConfig
    from realtime.generator import Generator
    from realtime.tracking import _frontal_camera

    gen = Generator(GeneratorConfig(backend="torch", device="cuda", preset="tiny"))
    try:
        assert isinstance(gen.buffer.streams, CudaStreams)
        rng = np.random.default_rng(0)
        drives = [(rng.normal(0, 0.5, 64).astype(np.float32), _frontal_camera())
                  for _ in range(5)]
        outs = []
        for expr, cam in drives:  # push n+1 before popping n
            gen.push(expr, cam)
            if gen.in_flight == 2:
                outs.append(gen.pop())
        outs.append(gen.pop())
        for (expr, cam), out in zip(drives, outs):
            ref = gen.backend.frame(expr[None], cam[None])["image"][0]
            ref = ((np.clip(ref, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
            assert out.shape == ref.shape and out.dtype == np.uint8
            assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1  # float rounding
    finally:
        gen.close()


@pytest.mark.gpu
def test_cuda_compiled_and_captured_generators_match_eager():
    # --compile on CUDA: the torch.compile'd frame captured in a CUDA graph, and --cuda-graph:
    # the eager frame captured, each replayed on the double buffer's compute stream; their
    # frames must be the eager backend's, frame after frame (a graph replay reading a stale
    # input or overwriting an output not yet read shows here). As in the live app, the
    # generator is built (and warmed up) on this thread and driven from another one: Inductor's
    # own CUDA graphs, which keep per-thread state, failed exactly there.
    from export3d import demo
    from export3d.camera import orbit_camera
    from realtime.config import GeneratorConfig
    from realtime.generator import Generator

    rng = np.random.default_rng(0)  # a new expression and head yaw every frame
    drives = [(rng.normal(0, 0.5, 64).astype(np.float32), orbit_camera(0.1 * i).numpy()[0])
              for i in range(6)]
    outs = {}
    for mode in ("eager", "compile", "cuda_graph"):
        gen = Generator(GeneratorConfig(backend="torch", device="cuda",
                                        checkpoint=str(demo.checkpoint()), precision="fp32",
                                        compile=mode == "compile",
                                        cuda_graph=mode == "cuda_graph"))

        def drive(gen=gen, out=outs.setdefault(mode, [])):
            for expr, cam in drives:
                gen.push(expr, cam)
                if gen.in_flight == 2:
                    out.append(gen.pop())
            out.append(gen.pop())

        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:  # the generator thread
                pool.submit(drive).result()
        finally:
            gen.close()
    assert np.abs(outs["eager"][0].astype(int) - outs["eager"][1].astype(int)).max() > 0
    for mode in ("compile", "cuda_graph"):
        assert len(outs[mode]) == len(drives)
        for eager, other in zip(outs["eager"], outs[mode]):
            assert np.abs(eager.astype(int) - other.astype(int)).max() <= 1, mode


def test_a_webcam_run_says_how_far_to_delay_the_microphone():
    """The call hears the user before it sees them, by the glass-to-glass latency: a webcam
    run's summary gives that delay; a file or synthetic run (no microphone beside it) does
    not."""
    from realtime.capture import SyntheticCapture

    capture = CaptureConfig(source="webcam:0", fps=100, frames=6, width=64, height=48)
    cfg = PipelineConfig(capture=capture)
    pipe = Pipeline(cfg, capture=SyntheticCapture(capture), sink=SlowSink(0.01))
    summary = pipe.run()
    g2g = summary["glass_to_glass"]["p50_ms"]
    assert summary["frames"] >= 2 and g2g > 10  # the sink alone takes 10 ms a frame
    assert summary["audio_delay_ms"] == round(g2g)
    assert f"at least {round(g2g)} ms behind your microphone" in format_summary(summary)
    synthetic = CaptureConfig(source="synthetic", fps=100, frames=3, width=64, height=48)
    summary = Pipeline(PipelineConfig(capture=synthetic), sink=SlowSink(0)).run()
    assert "audio_delay_ms" not in summary and "microphone" not in format_summary(summary)


def test_each_written_picture_is_the_generators_frame_for_its_own_driving():
    # What reaches the sink is the model's image for that packet's expression and camera, in
    # [0, 255] with the model's [-1, 1] mapped linearly, in capture order: not another
    # frame's, not blank (the HUD alone passed the other tests' pixel checks).
    from realtime.config import TrackingConfig

    cfg = PipelineConfig(capture=CaptureConfig(source="synthetic", fps=100, width=64,
                                               height=48, frames=6, realtime=False),
                         tracking=TrackingConfig(enabled=False), sink=SinkConfig(hud=False))
    written = []

    class Keep(SlowSink):
        def write(self, rgb):
            written.append(rgb.copy())

    pipe = Pipeline(cfg, sink=Keep(0))
    backend, computed = pipe.generator.backend, []
    frame = backend.frame

    def recording(expr, camera):
        out = frame(expr, camera)
        computed.append((camera.copy(), out["image"][0].copy()))
        return out

    backend.frame = recording
    pipe.run()
    assert len(written) == len(computed) == 6
    cameras = pipe.capture.cameras
    for i, (rgb, (camera, image)) in enumerate(zip(written, computed)):
        assert np.allclose(camera[0], cameras[i % len(cameras)])  # frame i's own camera
        expected = (np.clip(image, -1, 1) + 1) * 127.5
        assert rgb.shape == (*image.shape[1:], 3) and rgb.dtype == np.uint8
        assert np.abs(rgb.astype(np.float64) - expected.transpose(1, 2, 0)).max() <= 0.5 + 1e-6
    assert not np.array_equal(written[0], written[1])  # the camera moved between them


def test_stats_from_known_timestamps():
    # Glass-to-glass is sink end - capture time, stage times are their (start, end) spans,
    # fps counts intervals between the first and last written frame, and percentiles are
    # numpy's linear ones: checked on packets with chosen timestamps.
    from realtime.pipeline import Packet, Stats

    stats = Stats()
    for i in range(101):  # one frame every 40 ms; tracking 10 ms, but 90 ms for the last two
        t = 10.0 + 0.04 * i
        p = Packet(i, t, np.zeros((1, 1, 3), np.uint8))
        track = 0.09 if i >= 99 else 0.01
        p.times = {"capture": (t - 0.002, t), "tracking": (t, t + track),
                   "generator": (t + track, t + track + 0.02),
                   "sink": (t + track + 0.02, t + track + 0.025)}
        stats.record(p)
    summary = stats.summary({})
    assert summary["frames"] == 101
    assert summary["fps"] == pytest.approx(100 / (4.0 + 0.08), rel=1e-9)  # last frame late
    tracking = summary["stages"]["tracking"]
    assert tracking["p50_ms"] == pytest.approx(10.0) and tracking["p95_ms"] == pytest.approx(10.0)
    assert tracking["p99_ms"] == pytest.approx(90.0)  # the 100th of 101 sorted values
    assert summary["stages"]["capture"]["p50_ms"] == pytest.approx(2.0)
    g = summary["glass_to_glass"]  # capture -> sink end: tracking + 20 + 5 ms
    assert g["p50_ms"] == pytest.approx(35.0) and g["p99_ms"] == pytest.approx(115.0)
    assert g["mean_ms"] == pytest.approx((99 * 35.0 + 2 * 115.0) / 101)
    # 0, 1, ..., 100 ms: each percentile is its own value.
    from realtime.pipeline import percentiles

    p = percentiles([k / 1000 for k in range(101)])
    assert (p["p50_ms"], p["p95_ms"], p["p99_ms"]) == pytest.approx((50.0, 95.0, 99.0))
