"""The engine runtime and the ``tensorrt`` backend against the recording stand-in: metadata
checks (another GPU, compute capability or TensorRT: one sentence naming the rebuild
command), binding by name, wrong input shapes, execution, and the backend protocol end to end
with CPU buffers standing in for device memory. Proves our logic, not TensorRT."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import trt_standin

from engines.trt import runtime
from engines.trt.errors import EngineMismatch, ShapeError, TensorRTError
from export.backend import BackendError, open_backend

GPU = ("NVIDIA H100 80GB HBM3", "9.0")
VERSION = "10.7.0.23"

ENCODER = [("source_image", (1, 3, 8, 8), "float32", "input"),
           ("source_high", (1, 4, 4, 4), "float32", "output"),
           ("source_tokens", (1, 4, 8), "float32", "output")]
GENERATOR = [("source_high", (1, 4, 4, 4), "float32", "input"),
             ("source_tokens", (1, 4, 8), "float32", "input"),
             ("expr", (1, 64), "float32", "input"), ("camera", (1, 25), "float32", "input"),
             ("image", (1, 3, 8, 8), "float32", "output"),
             ("image_raw", (1, 3, 4, 4), "float32", "output"),
             ("depth", (1, 1, 4, 4), "float32", "output")]


def encode(t):
    t["source_high"][...] = t["source_image"].mean()
    t["source_tokens"][...] = t["source_image"].max()


def generate(t):
    t["image"][...] = t["expr"].sum() + t["source_high"].mean()
    t["image_raw"][...] = t["camera"].sum()
    t["depth"][...] = t["source_tokens"].mean()


def write_engine(folder, stage, blob, **meta):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stage}.engine").write_bytes(blob)
    info = {"format": 1, "stage": stage, "gpu": GPU[0], "compute_capability": GPU[1],
            "tensorrt": VERSION, "onnx_dir": "/data/graphs", "export_id": "export-1",
            "expression_code": "mpx64-v1",
            "engine_sha256": hashlib.sha256(blob).hexdigest(), **meta}
    (folder / f"{stage}.engine.json").write_text(json.dumps(info))
    return folder / f"{stage}.engine"


@pytest.fixture
def standin(monkeypatch, tmp_path):
    outcome = trt_standin.Outcome(engines={b"ENC": trt_standin.EngineSpec(ENCODER, encode),
                                           b"GEN": trt_standin.EngineSpec(GENERATOR, generate)})
    trt, trtp, calls = trt_standin.make(VERSION, outcome=outcome)
    trt_standin.install(monkeypatch, trt, trtp)
    monkeypatch.setattr(runtime, "gpu_info", lambda: GPU)
    folder = tmp_path / "engines"
    write_engine(folder, "source_encoder", b"ENC")
    write_engine(folder, "frame_generator", b"GEN")
    return trt, calls, outcome, folder


def cpu(shape, dtype):
    return torch.zeros(shape, dtype=getattr(torch, dtype))


def named(calls, name):
    return [c for c in calls if c[0] == name]


@pytest.mark.parametrize("field, value, words", [
    ("compute_capability", "8.9", "compute capability 8.9"),
    ("tensorrt", "10.8.0.43", "TensorRT 10.8.0.43"),
    ("gpu", "NVIDIA L4", "NVIDIA L4"),
])
def test_mismatched_engine_names_the_rebuild_command(field, value, words, tmp_path):
    meta = {"gpu": GPU[0], "compute_capability": GPU[1], "tensorrt": VERSION,
            "onnx_dir": "/data/graphs", field: value}
    engine = tmp_path / "eng" / "frame_generator.engine"
    with pytest.raises(EngineMismatch) as err:
        runtime.check_metadata(meta, engine, *GPU, VERSION)
    message = str(err.value)
    assert words in message and "but this machine has NVIDIA H100 80GB HBM3" in message
    assert message.endswith(f"rebuild it here with 'export3d export engine --onnx /data/graphs "
                            f"--out {tmp_path / 'eng'}'")
    assert "\n" not in message
    if field == "gpu":  # same compute capability and TensorRT: runs if the user accepts it
        runtime.check_metadata(meta, engine, *GPU, VERSION, allow_other_gpu=True)
    else:
        with pytest.raises(EngineMismatch):
            runtime.check_metadata(meta, engine, *GPU, VERSION, allow_other_gpu=True)


def test_runner_binds_every_tensor_by_name(standin):
    trt, calls, _, folder = standin
    runner = runtime.EngineRunner(folder / "frame_generator.engine", allocate=cpu)
    assert runner.inputs == ["source_high", "source_tokens", "expr", "camera"]
    assert runner.outputs == ["image", "image_raw", "depth"]
    assert [c[1:] for c in named(calls, "set_input_shape")] == [
        (n, s) for n, s, _, mode in GENERATOR if mode == "input"]
    addresses = {c[1]: c[2] for c in named(calls, "set_tensor_address")}
    assert addresses == {n: runner.buffers[n].data_ptr() for n, *_ in GENERATOR}
    runner.execute(1234)
    assert named(calls, "execute_async_v3") == [("execute_async_v3", 1234)]
    other = torch.zeros(1, 64)
    runner.bind("expr", other)
    assert named(calls, "set_tensor_address")[-1] == ("set_tensor_address", "expr",
                                                     other.data_ptr())
    runner.close()


def test_wrong_shapes_and_names_are_one_sentence(standin):
    _, _, outcome, folder = standin
    runner = runtime.EngineRunner(folder / "frame_generator.engine", allocate=cpu)
    with pytest.raises(ShapeError, match=r"^expr of frame_generator.engine must be \[1, 64\] "
                       r"float32, got \[1, 63\] float32$"):
        runner.bind("expr", torch.zeros(1, 63))
    with pytest.raises(ShapeError, match="must be \\[1, 25\\] float32, got \\[1, 25\\] float16"):
        runner.bind("camera", torch.zeros(1, 25, dtype=torch.float16))
    with pytest.raises(ShapeError, match="has no tensor 'exp'"):
        runner.bind("exp", torch.zeros(1, 64))
    outcome.execute_ok = False
    with pytest.raises(TensorRTError, match="failed to enqueue"):
        runner.execute(0)


def test_engine_from_elsewhere_is_refused_before_deserialising(standin, monkeypatch):
    _, calls, outcome, folder = standin
    monkeypatch.setattr(runtime, "gpu_info", lambda: ("NVIDIA GeForce RTX 4090", "8.9"))
    with pytest.raises(EngineMismatch, match="built for NVIDIA H100.*rebuild it here with "
                       "'export3d export engine --onnx /data/graphs --out"):
        runtime.EngineRunner(folder / "frame_generator.engine", allocate=cpu)
    assert named(calls, "deserialize_cuda_engine") == []


def test_damaged_or_unlabelled_engines(standin):
    _, _, outcome, folder = standin
    (folder / "source_encoder.engine").write_bytes(b"ENX")
    with pytest.raises(EngineMismatch, match="does not match the sha256 in its metadata"):
        runtime.EngineRunner(folder / "source_encoder.engine", allocate=cpu)
    write_engine(folder, "source_encoder", b"ENC")
    outcome.deserialize_ok = False
    with pytest.raises(EngineMismatch, match="cannot deserialise"):
        runtime.EngineRunner(folder / "source_encoder.engine", allocate=cpu)
    (folder / "source_encoder.engine.json").unlink()
    with pytest.raises(EngineMismatch, match="has no metadata file source_encoder.engine.json"):
        runtime.EngineRunner(folder / "source_encoder.engine", allocate=cpu)
    with pytest.raises(EngineMismatch, match="does not exist; build the engines"):
        runtime.EngineRunner(folder / "nothing.engine", allocate=cpu)


@pytest.mark.parametrize("content,why", [
    (b"\xff\xfe not text", "is unreadable"),  # not UTF-8: was a UnicodeDecodeError traceback
    (b"[]", "is not the metadata of a source_encoder engine"),  # was an AttributeError
    (json.dumps({"format": 1, "stage": "frame_generator", "engine_sha256": "0"}).encode(),
     "is not the metadata of a source_encoder engine"),  # another stage's metadata
    (json.dumps({"format": 2, "stage": "source_encoder", "engine_sha256": "0"}).encode(),
     "of format 1"),
    (json.dumps({"format": 1, "stage": "source_encoder"}).encode(),  # no sha256: was accepted
     "sha256 missing"),
])
def test_metadata_that_is_not_ours_is_one_error(standin, content, why):
    _, _, _, folder = standin
    (folder / "source_encoder.engine.json").write_bytes(content)
    with pytest.raises(EngineMismatch, match=why):
        runtime.EngineRunner(folder / "source_encoder.engine", allocate=cpu)


def test_engines_from_two_exports_are_not_paired(standin):
    # A new encoder beside an old generator (another export's weights) ran and gave wrong
    # frames; now the pair is refused with the command that rebuilds both.
    from export.trt_backend import TensorRTBackend

    _, _, _, folder = standin
    write_engine(folder, "source_encoder", b"ENC", export_id="export-2")

    def factory(path):
        return runtime.EngineRunner(path, allocate=cpu)

    with pytest.raises(BackendError, match="were not built from the same export; rebuild both"):
        TensorRTBackend(folder, device="cpu", runner_factory=factory)


@pytest.mark.parametrize("code,told", [("mpx64-v0", "expression code 'mpx64-v0'"),
                                       (None, "an unrecorded expression code")])
def test_engines_for_another_expression_code_are_refused(standin, code, told):
    # Checkpoints refused another extractor's code; engines (and graphs) were run with it,
    # every frame quietly wrong.
    from export.manifest import ManifestError
    from export.trt_backend import TensorRTBackend

    _, _, _, folder = standin
    write_engine(folder, "frame_generator", b"GEN", expression_code=code)

    def factory(path):
        return runtime.EngineRunner(path, allocate=cpu)

    with pytest.raises(ManifestError, match=f"engines in {folder} were exported from weights "
                       f"trained on {told}, but this extractor produces 'mpx64-v1'"):
        TensorRTBackend(folder, device="cpu", runner_factory=factory)


def test_backend_protocol_end_to_end(standin):
    from export.trt_backend import TensorRTBackend

    _, calls, _, folder = standin

    def factory(path):
        return runtime.EngineRunner(path, allocate=cpu)

    backend = TensorRTBackend(folder, device="cpu", runner_factory=factory)
    # the encoder writes straight into the generator's inputs
    for name in ("source_high", "source_tokens"):
        assert backend.generator.buffers[name] is backend.encoder.buffers[name]
    with pytest.raises(BackendError, match="call encode_source"):
        backend.frame(np.zeros(64), np.zeros(25))
    image = np.full((1, 3, 8, 8), 0.5, dtype=np.float32)
    image[0, 0, 0, 0] = 0.75
    backend.encode_source(image)
    expr = np.ones((1, 64), dtype=np.float32)
    camera = np.arange(25, dtype=np.float32)  # [25] is accepted as [1, 25]
    out = backend.frame(expr, camera)
    assert set(out) == {"image", "image_raw", "depth"}
    np.testing.assert_allclose(out["image"], 64 + image.mean(), rtol=1e-6)
    np.testing.assert_allclose(out["image_raw"], 300.0)
    np.testing.assert_allclose(out["depth"], 0.75)
    assert out["image"].shape == (1, 3, 8, 8) and out["depth"].shape == (1, 1, 4, 4)
    again = backend.frame(expr * 2, camera)
    assert again["image"] is not None and float(again["image"].flat[0]) == pytest.approx(
        128 + image.mean())
    with pytest.raises(BackendError, match="expr must have 64 values"):
        backend.frame(np.zeros(63), camera)
    with pytest.raises(BackendError, match="source image must be \\[1, 3, 8, 8\\]"):
        backend.encode_source(np.zeros((1, 3, 16, 16), dtype=np.float32))
    assert len(named(calls, "execute_async_v3")) == 3
    backend.close()


def test_open_backend_without_tensorrt_is_one_sentence(monkeypatch, tmp_path):
    trt_standin.uninstall(monkeypatch)
    with pytest.raises(BackendError, match=r"TensorRT cannot be imported here.*pip install "
                       r"export3d\[trt\]") as err:
        open_backend("tensorrt", engines=tmp_path)
    assert "\n" not in str(err.value)


def test_open_backend_needs_a_folder_and_a_gpu(monkeypatch, tmp_path):
    trt, trtp, _ = trt_standin.make(VERSION)
    trt_standin.install(monkeypatch, trt, trtp)
    with pytest.raises(BackendError, match="needs the folder that 'export3d export engine'"):
        open_backend("tensorrt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendError, match="runs on an NVIDIA GPU"):
        open_backend("tensorrt", engines=tmp_path)


def test_live_generator_with_tensorrt_missing(monkeypatch):
    """``export3d live --backend tensorrt`` where TensorRT is missing: one sentence."""
    from realtime.config import GeneratorConfig
    from realtime.generator import _open

    trt_standin.uninstall(monkeypatch)
    with pytest.raises(BackendError, match=r"pip install export3d\[trt\]"):
        _open(GeneratorConfig(backend="tensorrt"))


@pytest.mark.trt
@pytest.mark.gpu
def test_real_tensorrt_engines_match_pytorch(tmp_path):
    """Where TensorRT and a GPU exist: build the tiny preset's engines and compare a frame
    with the PyTorch backend (never run here: TensorRT cannot be installed)."""
    from engines.trt.builder import BuildOptions, build_engines
    from export.backend import TorchBackend
    from export.graphs import example_inputs
    from export.onnx_export import export_onnx
    from export.trt_backend import open_tensorrt
    from export3d.config import get_config
    from export3d.model import build_model

    model = build_model(get_config("tiny"), seed=0, render_impl="reference")
    export_onnx(model, tmp_path / "graphs", variant="plugin")
    build_engines(tmp_path / "graphs", tmp_path / "engines", BuildOptions(opt_level=0))
    inputs = example_inputs(model.config)
    with open_tensorrt(tmp_path / "engines") as trt_backend, TorchBackend(model) as ref:
        for backend in (trt_backend, ref):
            backend.encode_source(inputs["source_image"].numpy())
        got = trt_backend.frame(inputs["expr"].numpy(), inputs["camera"].numpy())
        want = ref.frame(inputs["expr"].numpy(), inputs["camera"].numpy())
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=2e-3)


def test_backend_rebuilds_mismatched_engines_when_asked(standin, monkeypatch, tmp_path):
    from engines.trt import builder
    from export.trt_backend import TensorRTBackend

    _, _, _, folder = standin
    graphs = tmp_path / "graphs"
    graphs.mkdir()
    for stage in ("source_encoder", "frame_generator"):
        write_engine(folder, stage, {"source_encoder": b"ENC", "frame_generator": b"GEN"}[stage],
                     compute_capability="8.0", onnx_dir=str(graphs))
    built = []

    def fake_build(onnx_dir, out_dir, options=None, report=print):
        built.append((str(onnx_dir), str(out_dir)))
        for stage in ("source_encoder", "frame_generator"):
            write_engine(folder, stage, {"source_encoder": b"ENC",
                                         "frame_generator": b"GEN"}[stage])

    monkeypatch.setattr(builder, "build_engines", fake_build)

    def factory(path):
        return runtime.EngineRunner(path, allocate=cpu)

    with pytest.raises(BackendError, match="built for NVIDIA H100 80GB HBM3 \\(compute "
                       "capability 8.0\\).*export3d export engine"):
        TensorRTBackend(folder, device="cpu", runner_factory=factory)
    assert built == []
    backend = TensorRTBackend(folder, device="cpu", runner_factory=factory, rebuild=True)
    assert built == [(str(graphs), str(folder))]
    assert backend.generator.buffers["source_high"] is backend.encoder.buffers["source_high"]
    backend.close()


def test_runner_without_torch_uses_cuda_python_memory(standin, monkeypatch):
    """``buffers="cuda"``: device memory from cuda-python's runtime (a recording stand-in of
    ``cuda.bindings.runtime`` here), bound by name, freed on close."""
    import sys
    import types

    _, calls, _, folder = standin
    rt = types.SimpleNamespace(cudaMemcpyKind=types.SimpleNamespace(
        cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2))
    log = []
    next_ptr = iter(range(0x1000, 0x100000, 0x1000))

    def malloc(nbytes):
        log.append(("cudaMalloc", nbytes))
        return 0, next(next_ptr)

    rt.cudaMalloc = malloc
    rt.cudaFree = lambda ptr: log.append(("cudaFree", ptr)) or 0
    rt.cudaMemcpyAsync = lambda dst, src, n, kind, stream: log.append(
        ("cudaMemcpyAsync", dst, n, kind, stream)) or (0,)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    runner = runtime.EngineRunner(folder / "frame_generator.engine", buffers="cuda")
    sizes = [e[1] for e in log if e[0] == "cudaMalloc"]
    assert sizes == [int(np.prod(shape)) * 4 for _, shape, _, _ in GENERATOR]
    addresses = {c[1]: c[2] for c in named(calls, "set_tensor_address")}
    assert addresses == {n: runner.buffers[n].data_ptr() for n, *_ in GENERATOR}
    runner.buffers["expr"].upload(np.zeros((1, 64), np.float32), 7)
    assert log[-1] == ("cudaMemcpyAsync", addresses["expr"], 256, 1, 7)
    runner.close()
    assert sorted(e[1] for e in log if e[0] == "cudaFree") == sorted(addresses.values())


def test_backend_on_cuda_n_makes_n_the_current_device(standin, monkeypatch):
    # The engines, their buffers (allocated on "cuda") and the GPU check follow the current
    # device, so on cuda:1 they were made on GPU 0 and run on a GPU 1 stream. Needs two GPUs to
    # run for real; here torch.cuda.device, the stream and pinned memory are stand-ins that
    # record which device was current when each engine was opened and each frame ran.
    from export.trt_backend import TensorRTBackend

    _, _, _, folder = standin
    current = [None]
    seen = []

    class Device:
        def __init__(self, device):
            self.index = torch.device(device).index

        def __enter__(self):
            self.previous, current[0] = current[0], self.index

        def __exit__(self, *exc):
            current[0] = self.previous

    class Stream:
        cuda_stream = 0

        def __init__(self, device):
            self.device = device

        def synchronize(self):
            seen.append(("sync", current[0]))

    empty = torch.empty
    monkeypatch.setattr(torch.cuda, "device", Device)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: Device(stream.device))
    monkeypatch.setattr(torch, "empty", lambda *a, pin_memory=False, **k: empty(*a, **k))

    execute = runtime.EngineRunner.execute

    def recorded(self, *args, **kwargs):
        seen.append((self.path.name, "execute", current[0]))
        return execute(self, *args, **kwargs)

    monkeypatch.setattr(runtime.EngineRunner, "execute", recorded)

    def factory(path):
        seen.append((path.name, current[0]))
        return runtime.EngineRunner(path, allocate=cpu)

    backend = TensorRTBackend(folder, device="cuda:1", runner_factory=factory)
    backend.encode_source(np.zeros((1, 3, 8, 8), np.float32))
    backend.frame(np.zeros(64), np.zeros(25))
    assert seen == [("source_encoder.engine", 1), ("frame_generator.engine", 1),
                    ("source_encoder.engine", "execute", 1), ("sync", None),
                    ("frame_generator.engine", "execute", 1), ("sync", None)]
    assert current[0] is None
