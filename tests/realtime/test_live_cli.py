import argparse
import json

import pytest

from realtime.cli import build_config, register


def parse(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["live", *argv])


def test_flags_override_the_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("capture:\n  source: synthetic\n  fps: 12\nsink:\n  sink: window\n")
    cfg = build_config(parse(["--config", str(path), "--sink", "null", "--frames", "3"]))
    assert cfg.capture.source == "synthetic" and cfg.capture.fps == 12
    assert cfg.sink.sink == "null" and cfg.capture.frames == 3
    assert build_config(parse([])).capture.source == "webcam:0"
    assert build_config(parse(["--camera", "2"])).capture.source == "webcam:2"
    # --source repeated: the photos 's' cycles through; YAML lists become tuples
    assert build_config(parse(["--source", "a.jpg"])).generator.source == "a.jpg"
    assert build_config(parse(["--source", "a.jpg", "--source", "faces/"])).generator.source \
        == ("a.jpg", "faces/")
    path.write_text("generator:\n  source: [a.jpg, b.png]\n")
    assert build_config(parse(["--config", str(path)])).generator.source == ("a.jpg", "b.png")


def test_live_synthetic_to_a_file_with_stats_json(tmp_path, capsys):
    out, stats = tmp_path / "o.mp4", tmp_path / "s.json"
    args = parse(["--synthetic", "--frames", "5", "--fast", "--sink", f"file:{out}",
                  "--stats-json", str(stats)])
    args.run(args)
    summary = json.loads(stats.read_text())
    assert summary["frames"] == 5 and out.stat().st_size > 0
    printed = capsys.readouterr()
    assert "glass-to-glass" in printed.out
    # the start line names the device the backend runs on (--device auto resolved), not "auto"
    assert f"-> torch/cpu -> file:{out}" in printed.err


def test_missing_camera_is_one_user_error():
    from export3d.errors import UserError

    args = parse(["--camera", "97", "--frames", "1"])
    with pytest.raises(UserError, match="no camera at index 97"):
        args.run(args)


def test_the_default_sink_is_auto_and_the_start_line_says_what_it_became():
    from realtime.cli import _sink_shown
    from realtime.sinks import NullSink, PreviewSink, VirtualCamOrPreview

    assert build_config(parse([])).sink.sink == "auto"
    assert build_config(parse(["--sink", "null"])).sink.sink == "null"
    assert _sink_shown("auto", NullSink()) == "null"
    assert _sink_shown("window", None) == "window"
    auto = VirtualCamOrPreview.__new__(VirtualCamOrPreview)
    auto.sink = PreviewSink.__new__(PreviewSink)
    assert _sink_shown("auto", auto) == "preview"


def test_demo_fills_in_the_shipped_model_its_identity_and_another_driver():
    from export3d import demo

    cfg = build_config(parse(["--demo"]))
    assert cfg.generator.checkpoint == str(demo.checkpoint())
    assert cfg.generator.source == str(demo.source_photo())
    assert cfg.capture.source == f"file:{demo.driver_video()}" and not cfg.capture.realtime
    assert cfg.sink.sink == "file:demo.mp4" and cfg.sink.size == 256 and cfg.sink.side_by_side
    # flags next to --demo win
    cfg = build_config(parse(["--demo", "--sink", "null", "--synthetic", "--size", "128"]))
    assert cfg.sink.sink == "null" and cfg.capture.source == "synthetic" and cfg.sink.size == 128


def test_compose_scales_the_output_and_puts_the_driver_beside_it():
    import numpy as np

    from realtime.pipeline import compose

    out = np.zeros((64, 64, 3), np.uint8)
    out[:, 32:] = 200
    driver = np.full((480, 640, 3), 50, np.uint8)
    assert compose(out, None).shape == (64, 64, 3)
    big = compose(out, None, 256)
    assert big.shape == (256, 256, 3) and big[:, :120].max() < 10 and big[:, 136:].min() > 190
    both = compose(out, driver, 256)
    assert both.shape == (256, 341 + 256, 3)
    assert (both[:, :341] == 50).all() and (both[:, 341:] == big).all()
    # A later driving frame of another shape keeps the first one's panel width.
    assert compose(out, np.full((100, 200, 3), 50, np.uint8), 256, left_width=341).shape == \
        both.shape


def test_a_file_sink_runs_at_the_driving_videos_rate(tmp_path, capsys):
    # It was always written at 30 fps: a 24 fps clip played 25% fast. Now the video's own rate,
    # the capture's --fps for images, and a YAML sink.fps over both.
    import cv2
    import numpy as np

    from export3d.media import VideoWriter

    clip = tmp_path / "clip24.avi"
    writer = VideoWriter(clip, 24.0, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 60 * i, np.uint8))
    writer.close()
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), np.zeros((48, 64, 3), np.uint8))
    yaml = tmp_path / "c.yaml"
    yaml.write_text("sink:\n  fps: 15\n")
    for source, extra, rate in ((["--video", str(clip)], [], 24.0),
                                (["--images", str(images)], ["--fps", "12"], 12.0),
                                (["--video", str(clip)], ["--config", str(yaml)], 15.0)):
        out = tmp_path / f"out{rate:g}.avi"
        args = parse([*source, *extra, "--fast", "--no-hud", "--sink", f"file:{out}"])
        args.run(args)
        assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS) == pytest.approx(rate), source
    # A container rate out of range (1500 fps here) falls back to the capture's, not an error
    # about a sink.fps the user never set.
    fast = tmp_path / "fast.mkv"
    writer = VideoWriter(fast, 1000.0, (64, 48))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.close()
    import realtime.capture as capture_module

    class Fast(capture_module.VideoFileCapture):
        def __init__(self, config, path):
            super().__init__(config, path)
            self.fps = 1500.0

    original = capture_module.VideoFileCapture
    capture_module.VideoFileCapture = Fast
    try:
        out = tmp_path / "fast_out.avi"
        args = parse(["--video", str(fast), "--fast", "--no-hud", "--sink", f"file:{out}"])
        args.run(args)
    finally:
        capture_module.VideoFileCapture = original
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)


def test_side_by_side_with_driving_images_of_different_sizes(tmp_path, capsys):
    # The file sink opens at the first picture's size; a wider second driving image made a
    # wider picture and the run ended in "ValueError: frame is 192x64, video is 128x64".
    import cv2
    import numpy as np

    images = tmp_path / "imgs"
    images.mkdir()
    for i, (w, h) in enumerate([(100, 100), (200, 100), (100, 100)]):
        cv2.imwrite(str(images / f"{i}.png"), np.full((h, w, 3), 40 * i, np.uint8))
    out = tmp_path / "sbs.avi"
    args = parse(["--images", str(images), "--fast", "--side-by-side", "--sink", f"file:{out}"])
    args.run(args)
    video = cv2.VideoCapture(str(out))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert (video.get(cv2.CAP_PROP_FRAME_WIDTH), video.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (128, 64)


def test_tensorrt_backend_takes_an_engine_folder_and_fails_in_one_sentence(monkeypatch,
                                                                            tmp_path):
    import sys
    import types

    import torch

    from export3d.errors import UserError

    argv = ["--synthetic", "--frames", "1", "--backend", "tensorrt"]
    cfg = build_config(parse([*argv, "--engines", str(tmp_path)]))
    assert cfg.generator.backend == "tensorrt" and cfg.generator.engines == str(tmp_path)
    # What a user meets, in the order they can act on it (TensorRT is not installable here):
    # TensorRT missing; then, with a TensorRT present, no engine folder; then no GPU.
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # "import tensorrt" fails
    args = parse([*argv, "--engines", str(tmp_path)])
    with pytest.raises(UserError, match="TensorRT cannot be imported here"):
        args.run(args)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.8.0"))
    if not torch.cuda.is_available():  # no --engines: built into the cache, which needs a GPU
        args = parse(argv)
        with pytest.raises(UserError, match="no CUDA GPU is visible"):
            args.run(args)
    if not torch.cuda.is_available():
        args = parse([*argv, "--engines", str(tmp_path)])
        with pytest.raises(UserError, match="sees none"):
            args.run(args)


class Opened(Exception):
    """Raised by :func:`recorded_open`'s stand-in once it has recorded the call."""


@pytest.fixture
def recorded_open(monkeypatch):
    """export.backend.open_backend replaced: each call's (name, keywords) is appended to the
    returned list, then Opened is raised (what _open asks for, without opening anything)."""
    from export import backend as backend_mod

    opened = []

    def fake_open(name, **kwargs):
        opened.append((name, kwargs))
        raise Opened

    monkeypatch.setattr(backend_mod, "open_backend", fake_open)
    return opened


def test_tensorrt_engines_are_rebuilt_unless_refused_and_other_gpus_allowed_on_request(
        recorded_open, tmp_path):
    # ARCHITECTURE.md: a mismatched engine "gives a clear message and rebuilds". The backend
    # could (rebuild=True), but live never asked it to, nor let an engine from another GPU
    # model of the same compute capability run.
    from export3d.errors import UserError
    from realtime.generator import _open

    argv = ["--synthetic", "--backend", "tensorrt", "--engines", str(tmp_path)]
    for flags, rebuild, other in (([], True, False), (["--no-rebuild"], False, False),
                                  (["--allow-other-gpu"], True, True)):
        cfg = build_config(parse([*argv, *flags])).generator
        assert (cfg.rebuild, cfg.allow_other_gpu) == (rebuild, other)
        with pytest.raises(Opened):
            _open(cfg)
        name, kwargs = recorded_open.pop()
        assert name == "tensorrt" and kwargs["engines"] == str(tmp_path)
        assert (kwargs["rebuild"], kwargs["allow_other_gpu"]) == (rebuild, other)
    for flag in ("--no-rebuild", "--allow-other-gpu"):
        with pytest.raises(UserError, match="are the tensorrt backend's; torch builds nothing"):
            _open(build_config(parse(["--synthetic", flag])).generator)


def test_cuda_graph_reaches_the_torch_and_tensorrt_backends_and_is_refused_elsewhere(
        recorded_open, monkeypatch, tmp_path):
    import torch

    from export3d.errors import UserError
    from realtime import generator
    from realtime.generator import _open

    # no GPU here: a named device stands, auto is the CPU
    monkeypatch.setattr(generator, "resolve_device",
                        lambda device: "cpu" if device == "auto" else device)
    monkeypatch.setattr(generator, "torch_precision", lambda *a: (torch.float32, True))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    assert build_config(parse([])).generator.cuda_graph is False
    for argv in (["--device", "cuda"], ["--backend", "tensorrt", "--engines", str(tmp_path)]):
        cfg = build_config(parse(["--synthetic", "--cuda-graph", *argv])).generator
        assert cfg.cuda_graph is True
        with pytest.raises(Opened):
            _open(cfg)
        assert recorded_open.pop()[1]["cuda_graph"] is True
    with pytest.raises(UserError, match=r"needs a CUDA GPU and PyTorch sees none here "
                       r"\(--device auto chose the CPU\); leave --cuda-graph out"):
        _open(build_config(parse(["--synthetic", "--cuda-graph"])).generator)
    with pytest.raises(UserError, match="--cuda-graph needs a CUDA device .--device cuda., "
                       "not 'cpu'"):
        _open(build_config(parse(["--synthetic", "--cuda-graph", "--device", "cpu"])).generator)
    with pytest.raises(UserError, match="--cuda-graph is the torch and tensorrt backends'"):
        _open(build_config(parse(["--synthetic", "--cuda-graph", "--backend",
                                  "onnxruntime"])).generator)


def test_precision_picks_bf16_on_ampere_and_later_and_refuses_what_cannot_run():
    import torch

    from export3d.errors import UserError
    from realtime.generator import _open, torch_precision
    from realtime.config import GeneratorConfig

    assert build_config(parse(["--precision", "bf16"])).generator.precision == "bf16"
    assert build_config(parse([])).generator.precision == "auto"
    # auto: fp32 on the CPU; on CUDA bf16 from sm_80, fp16 before; channels-last on CUDA.
    assert torch_precision("auto", "cpu") == (torch.float32, False)
    assert torch_precision("auto", "cuda", (9, 0)) == (torch.bfloat16, True)
    assert torch_precision("auto", "cuda:1", (7, 5)) == (torch.float16, True)
    assert torch_precision("fp16", "cpu") == (torch.float16, False)
    with pytest.raises(UserError, match="no bf16 tensor cores; use --precision fp16"):
        torch_precision("bf16", "cuda", (7, 5))
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        torch_precision("fp8", "cpu")
    # ONNX graphs and engines carry their own precision: naming one is an error, not ignored.
    with pytest.raises(UserError, match="--precision is the torch backend's"):
        _open(GeneratorConfig(backend="onnxruntime", precision="fp16"))


def test_torch_backend_in_bf16_channels_last_stays_close_to_fp32():
    # What --precision auto gives a CUDA user, run on the CPU: same frame within bf16's
    # rounding (the ray march stays fp32), and channels-last alone changes nothing.
    import numpy as np
    import torch

    from export.backend import TorchBackend
    from export3d import get_config
    from export3d.camera import orbit_path
    from export3d.model import build_model

    image = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    expr = np.random.default_rng(1).normal(size=(1, 64)).astype(np.float32)
    camera = orbit_path("circle", 3)[1:2].numpy()
    frames = {}
    for dtype, channels_last in ((torch.float32, False), (torch.float32, True),
                                 (torch.bfloat16, True)):
        with TorchBackend(build_model(get_config("tiny"), seed=0), dtype=dtype,
                          channels_last=channels_last) as backend:
            backend.encode_source(image)
            frames[dtype, channels_last] = backend.frame(expr, camera)["image"]
    reference = frames[torch.float32, False]
    assert reference.std() > 0.05  # not a flat image
    assert np.abs(frames[torch.float32, True] - reference).max() < 1e-5
    bf16 = np.abs(frames[torch.bfloat16, True] - reference)
    assert bf16.mean() < 0.01 and bf16.max() < 0.05 and bf16.max() > 0  # really ran in bf16


def test_compiled_torch_backend_matches_eager_and_swaps_sources_without_retracing():
    # --compile on the CPU (Inductor's C++ code; CUDA adds CUDA graphs, GPU suite only): the
    # same frames as eager, and a new portrait goes into the traced tensors, no new compile.
    import numpy as np
    import torch
    import torch._dynamo

    from export.backend import TorchBackend
    from export3d.camera import orbit_path
    from export3d.errors import UserError
    from realtime.config import GeneratorConfig
    from realtime.generator import _open

    from export3d import demo
    from export3d.checkpoint import load_checkpoint
    from realtime.generator import prepare_source

    # The shipped demo model (trained weights: a new portrait really changes the frame).
    def model():
        return load_checkpoint(demo.checkpoint())

    size = model().config.image_size
    photo = prepare_source(demo.source_photo(), size)
    images = [photo, photo[..., ::-1].copy()]  # the portrait and its mirror image
    expr = np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32)
    cameras = orbit_path("circle", 3).numpy()
    eager, compiled = {}, {}
    with TorchBackend(model()) as backend:
        for i, image in enumerate(images):
            backend.encode_source(image)
            for j in range(2):
                eager[i, j] = backend.frame(expr, cameras[j:j + 1])["image"]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with TorchBackend(model(), compile=True) as backend:
        for i, image in enumerate(images):
            backend.encode_source(image)
            for j in range(2):
                compiled[i, j] = backend.frame(expr, cameras[j:j + 1])["image"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert np.abs(eager[0, 0] - eager[1, 0]).max() > 0.01  # the swap changed the frame
    for key in eager:
        np.testing.assert_allclose(compiled[key], eager[key], atol=2e-4, rtol=0)
    with pytest.raises(UserError, match="--compile is the torch backend's"):
        _open(GeneratorConfig(backend="onnxruntime", compile=True))
    assert build_config(parse(["--compile"])).generator.compile is True
    assert build_config(parse([])).generator.compile is False


def test_missing_camera_prints_only_our_line_on_stderr():
    """OpenCV logs its own error when probing an index with no camera; the user sees the one
    line that says what to do."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "export3d.cli", "live", "--camera", "97",
                           "--frames", "1"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("export3d: error: no camera at index 97"), \
        proc.stderr


def test_settings_out_of_range_are_refused_when_the_config_is_made(tmp_path):
    """Flags and YAML alike, before anything opens: --fps 0 used to be handed to the camera,
    --size -5 ended in OpenCV's traceback at the first frame, a YAML typo in PyYAML's."""
    from export3d.errors import UserError

    for argv, message in [(["--fps", "0"], "--fps (setting capture.fps) must be a number, "
                           "from 0.0167 to 1e+03; got 0.0"),
                          (["--fps", "1e-300"], "--fps (setting capture.fps)"),  # overflowed
                          (["--fps", "inf"], "--fps (setting capture.fps)"),
                          (["--size", "-5"], "--size (setting sink.size) must be a number, 0 "
                           "or more; got -5"),
                          (["--frames", "-3"], "--frames (setting capture.frames)"),
                          (["--fps", "nan"], "--fps (setting capture.fps) must be a number")]:
        with pytest.raises(UserError) as info:
            build_config(parse(["--synthetic", *argv]))
        assert str(info.value).startswith(message)
    path = tmp_path / "c.yaml"
    path.write_text("capture:\n  width: 0\n")
    with pytest.raises(UserError, match=r"^setting capture.width must be a number, 1 or more"):
        build_config(parse(["--config", str(path)]))
    # Wrong types from YAML: each was a traceback from the stage that used it (an int source
    # or sink, 64.5 pixels), and "no" for a switch meant yes. Infinite fps hung OpenCV's writer
    # where Ctrl-C could not reach it.
    for text, message in [("capture:\n  fps: fast\n", "setting capture.fps must be float; got "
                           "'fast'"),
                          ("sink:\n  fps: .inf\n", "setting sink.fps must be a number, from"),
                          ("capture:\n  source: 5\n", "setting capture.source must be str; got 5"),
                          ("sink:\n  sink: 7\n", "setting sink.sink must be str"),
                          ("generator:\n  device: 3\n", "setting generator.device must be str"),
                          ("generator:\n  source: [a.jpg, 5]\n", "setting generator.source must "
                           "be str | tuple[str, ...] | None"),
                          ("capture:\n  width: 64.5\n", "setting capture.width must be int"),
                          ("sink:\n  size: 100.5\n", "setting sink.size must be int"),
                          ("capture:\n  realtime: 'no'\n", "setting capture.realtime must be "
                           "bool")]:
        path.write_text(text)
        with pytest.raises(UserError) as info:
            build_config(parse(["--config", str(path)]))
        assert str(info.value).startswith(message), (text, str(info.value))
    path.write_bytes("capture:\n  fps: 25  # caf\u00e9\n".encode("cp1252"))
    with pytest.raises(UserError, match="is not UTF-8 text"):  # was UnicodeDecodeError
        build_config(parse(["--config", str(path)]))
    path.write_text("capture:\n  fps: 25\n  realtime: false\n")
    assert build_config(parse(["--config", str(path)])).capture.fps == 25
    path.write_text("generator: [1, 2\n")
    with pytest.raises(UserError, match=r"is not valid YAML \(line 2, column 1\)"):
        build_config(parse(["--config", str(path)]))
    assert build_config(parse(["--synthetic", "--size", "0", "--frames", "0"])).sink.size == 0


def test_a_camera_index_or_port_out_of_range_is_refused():
    """OpenCV takes webcam index -1 as "any camera" (it crashed here, status 139); a port
    over 65535 ended in socketserver's OverflowError."""
    from realtime.capture import CaptureError, open_capture
    from realtime.config import CaptureConfig, SinkConfig
    from realtime.sinks import SinkError, open_sink

    opened = []
    with pytest.raises(CaptureError, match="webcam index must be 0 or more, got -1"):
        open_capture(CaptureConfig(source="webcam:-1"), opener=opened.append)
    assert opened == []  # refused before OpenCV is asked
    for port in ("-1", "99999"):
        with pytest.raises(SinkError, match=f"between 0 and 65535, got {port}"):
            open_sink(SinkConfig(sink=f"preview:{port}"))


def test_output_files_are_checked_before_the_run(tmp_path, capsys):
    """A stats file or a video in a folder that cannot be made: refused at the start, with
    the path, not after the run (the stats file used to fail at exit, with a traceback)."""
    from export3d.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for flags in (["--stats-json", str(blocker / "s.json")],
                  ["--sink", f"file:{blocker / 'out.mp4'}"], ["--sink", f"file:{tmp_path}"]):
        assert main(["live", "--synthetic", "--frames", "1", "--sink", "null", *flags]) == 2
        err = [line for line in capsys.readouterr().err.splitlines()
               if line.startswith("export3d:")]
        assert len(err) == 1 and err[0].startswith("export3d: error: cannot write "), err
    assert blocker.read_text() == "x"


def test_onnxruntime_providers_by_flag_and_a_missing_one_in_one_line(tmp_path, capsys):
    # A Mac (CoreML) or a Windows machine with any GPU (DirectML) names its provider; this
    # Linux onnxruntime has neither, and says so before any frame.
    from export.onnx_export import export_onnx
    from export3d.cli import main
    from export3d.config import get_config
    from export3d.errors import UserError
    from export3d.model import build_model
    from realtime.config import GeneratorConfig
    from realtime.generator import _open

    graphs = tmp_path / "graphs"
    export_onnx(build_model(get_config("tiny"), seed=0), graphs)
    base = ["--synthetic", "--frames", "3", "--fast", "--sink", "null", "--backend",
            "onnxruntime", "--graphs", str(graphs)]
    args = parse([*base, "--providers", "cpu"])
    assert build_config(args).generator.providers == "cpu"
    args.run(args)
    assert "-> onnxruntime/CPU -> null" in capsys.readouterr().err
    assert main(["live", *base, "--providers", "dml,cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'dml' (DmlExecutionProvider) is not in this onnxruntime " \
        "build" in err
    assert main(["live", *base, "--providers", "metal"]) == 2
    assert "unknown execution provider 'metal'" in capsys.readouterr().err
    with pytest.raises(UserError, match="--providers is the onnxruntime backend's"):
        _open(GeneratorConfig(backend="torch", providers="cpu"))
    # The graphs hold their weights: a checkpoint beside them was silently ignored.
    assert main(["live", *base, "--checkpoint", "assets/demo64.safetensors"]) == 2
    assert "give --graphs or --checkpoint, not both" in capsys.readouterr().err


def test_onnxruntime_without_graphs_exports_them_once_into_the_cache(monkeypatch, tmp_path,
                                                                      capsys):
    # 'live --backend onnxruntime' needed an 'export onnx' step first; now the graphs of the
    # checkpoint (or preset) are exported into the cache on first use and reused after.
    import export.onnx_export as onnx_export

    monkeypatch.setenv("EXPORT3D_CACHE", str(tmp_path / "cache"))
    base = ["--synthetic", "--frames", "2", "--fast", "--sink", "null", "--backend",
            "onnxruntime"]
    args = parse(base)
    args.run(args)
    err = capsys.readouterr().err
    assert "RANDOM" in err and "exporting the ONNX graphs once into" in err
    assert "-> onnxruntime/CPU -> null" in err
    (folder,) = (tmp_path / "cache" / "graphs").iterdir()
    assert (folder / "manifest.json").is_file()

    def no_export(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_onnx", no_export)
    args = parse(base)
    args.run(args)
    assert "exporting" not in capsys.readouterr().err


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_terminate_and_hangup_finish_the_file_like_quitting(tmp_path, signame):
    # kill (a service manager's stop) or a closed terminal: the process died at once, leaving
    # a 44-byte part file that does not play and no video under the name asked for.
    import os
    import signal
    import subprocess
    import sys
    import time

    import cv2

    out = tmp_path / "live.mkv"
    proc = subprocess.Popen([sys.executable, "-m", "export3d.cli", "live", "--synthetic",
                             "--fps", "20", "--sink", f"file:{out}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.monotonic() + 120
        part = tmp_path / ".live.part.mkv"
        while not (part.exists() and part.stat().st_size > 2000):  # frames are being written
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        proc.send_signal(getattr(signal, signame))
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert f"{signame}: stopping" in stderr
    frames = int(stdout.split(" frames,")[0].split()[-1])  # the printed summary
    cap = cv2.VideoCapture(str(out))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count >= frames >= 1


def test_device_defaults_to_auto_a_gpu_when_there_is_one_and_onnxruntime_stays_on_what_it_has(
        recorded_open, monkeypatch):
    # The CUDA path is the fast one, so live takes a GPU without being told; an onnxruntime
    # without CUDA (PyPI's onnxruntime) on that machine must still run, on the CPU, unless the
    # user asked for CUDA by name.
    import onnxruntime as ort
    import torch

    from realtime import generator
    from realtime.generator import _open

    def one_gpu(device):  # resolve_device on a machine with one CUDA GPU
        return "cuda" if device == "auto" else device

    monkeypatch.setattr(generator, "resolve_device", one_gpu)
    monkeypatch.setattr(generator, "torch_precision", lambda p, d: (torch.bfloat16, True))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    assert build_config(parse(["--synthetic"])).generator.device == "auto"
    with pytest.raises(Opened):
        _open(build_config(parse(["--synthetic"])).generator)
    name, kwargs = recorded_open.pop()
    assert (name, kwargs["device"], kwargs["dtype"]) == ("torch", "cuda", torch.bfloat16)

    for available, argv, providers in (
            (["CPUExecutionProvider"], [], ("cpu",)),
            (["CUDAExecutionProvider", "CPUExecutionProvider"], [], ("cuda", "cpu")),
            (["CPUExecutionProvider"], ["--device", "cuda"], ("cuda", "cpu")),
            (["CUDAExecutionProvider", "CPUExecutionProvider"], ["--device", "cpu"], ("cpu",))):
        monkeypatch.setattr(ort, "get_available_providers", lambda a=available: list(a))
        cfg = build_config(parse(["--synthetic", "--backend", "onnxruntime", "--graphs", "g",
                                  *argv])).generator
        with pytest.raises(Opened):
            _open(cfg)
        assert recorded_open.pop()[1]["providers"] == providers, (available, argv)
