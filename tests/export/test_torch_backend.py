"""The torch backend's CUDA-graph mode: what it captures and what a replay reads and returns.
On CPU through a stand-in of ``torch.cuda`` whose graph re-runs the captured function and
writes into the captured outputs, as a replay overwrites them; on a GPU the pipeline test
(tests/realtime/test_live_pipeline.py) compares real replays with eager frames."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from export.backend import BackendError, TorchBackend
from export.graphs import example_inputs
from export.parity import driving_frames
from export3d.config import get_config
from export3d.model import build_model


class FakeGraph:
    def __init__(self, log):
        self.fn = self.outputs = None
        self.log = log

    def replay(self):
        self.log.append("replay")
        fresh = self.fn()
        for key, value in self.outputs.items():
            value.copy_(fresh[key])


class FakeCuda:
    """Records the side-stream warm-up and the capture; the graph remembers the function
    running under capture (the frame on the static buffers)."""

    def __init__(self):
        self.log = []
        self.capturing = None

    def Stream(self, device):  # noqa: N802 - torch.cuda's names
        return self

    def current_stream(self, device):
        return self

    def wait_stream(self, other):
        self.log.append("wait")

    @contextlib.contextmanager
    def device(self, device):
        self.log.append(f"device {device}")
        yield

    @contextlib.contextmanager
    def stream(self, stream):
        self.log.append("side stream")
        yield

    def CUDAGraph(self):  # noqa: N802
        return FakeGraph(self.log)

    @contextlib.contextmanager
    def graph(self, graph):
        self.log.append("capture")
        self.capturing = graph
        yield
        self.capturing = None


def test_cuda_graph_mode_captures_once_and_replays_new_inputs_and_sources():
    model = build_model(get_config("tiny"), seed=0)
    eager = TorchBackend(build_model(get_config("tiny"), seed=0))
    backend = TorchBackend(model)
    backend.cuda_graph, backend._cuda = True, FakeCuda()  # no CUDA here: the stand-in
    calls = []
    synthesize = backend._synthesize

    def counted(*args, **kwargs):
        calls.append(args[1])
        out = synthesize(*args, **kwargs)
        graph = backend._cuda.capturing
        if graph is not None:  # what a replay will run: the same call, on the same buffers
            graph.fn, graph.outputs = (lambda: synthesize(*args, **kwargs)), out
        return out

    backend._synthesize = counted
    image = example_inputs(model.config)["source_image"].numpy()
    for b in (backend, eager):
        b.encode_source(image)
    frames = list(driving_frames(model.config, 3))
    outputs = []
    with torch.inference_mode():
        for expr, camera in frames:
            got = backend.frame(expr, camera)
            outputs.append({k: v.copy() for k, v in got.items()})
            # the replay read this frame's inputs (the tiny model's expression path starts at
            # zero, so the pictures alone would not show a stale expression)
            np.testing.assert_array_equal(backend._graph[1].numpy(), np.reshape(expr, (1, -1)))
            np.testing.assert_array_equal(backend._graph[2].numpy(), np.reshape(camera, (1, 25)))
    # three warm-up frames on a side stream, one under capture, then only replays
    assert backend._cuda.log[:4] == ["device cpu", "wait", "side stream", "wait"]
    assert backend._cuda.log[4:] == ["capture"] + ["replay"] * 3
    assert len(calls) == 4 and all(c is backend._graph[1] for c in calls)  # static buffers
    for (expr, camera), got in zip(frames, outputs):
        want = eager.frame(expr, camera)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=0)
    assert not np.array_equal(outputs[0]["image"], outputs[1]["image"])
    # a new photo goes into the captured source tensors: same objects, new values
    source = backend._source
    high = source.high.clone()
    image2 = np.ascontiguousarray(image[..., ::-1])
    backend.encode_source(image2)
    eager.encode_source(image2)
    assert backend._source is source and not torch.equal(source.high, high)
    expr, camera = frames[0]
    np.testing.assert_allclose(backend.frame(expr, camera)["image"],
                               eager.frame(expr, camera)["image"], atol=1e-6, rtol=0)


def test_cuda_graph_mode_is_refused_where_it_cannot_run():
    model = build_model(get_config("tiny"), seed=0)
    with pytest.raises(BackendError, match="CUDA graphs need a CUDA device, not 'cpu'"):
        TorchBackend(model, cuda_graph=True)


def test_compile_on_cuda_is_captured_by_the_backend_not_by_inductors_cuda_graphs(monkeypatch):
    # Inductor's CUDA graphs ("reduce-overhead") keep their state per thread: compiled on the
    # live app's main thread (the warm-up), a graph first recorded on its generator thread
    # stops with an AssertionError. So on CUDA the compiled frame is captured by the backend
    # (torch.cuda.graph, replayable from any thread), and Inductor is asked for no graphs.
    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: modes.append(kwargs) or fn)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # no GPU here
    gpu = TorchBackend(build_model(get_config("tiny"), seed=0), device="cuda", compile=True)
    cpu = TorchBackend(build_model(get_config("tiny"), seed=0), compile=True)
    assert (gpu.compiled, gpu.cuda_graph, cpu.compiled, cpu.cuda_graph) == (True, True, True,
                                                                            False)
    assert modes == [{"dynamic": False}] * 2
    both = TorchBackend(build_model(get_config("tiny"), seed=0), device="cuda", compile=True,
                        cuda_graph=True)  # the same thing asked twice, not an error
    assert both.cuda_graph and len(modes) == 3
