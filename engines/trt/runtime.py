"""Run a TensorRT engine written by :mod:`engines.trt.builder`.

:class:`EngineRunner` loads ``<stage>.engine`` after checking ``<stage>.engine.json`` against
this machine (GPU name, compute capability, TensorRT version, engine sha256: a mismatch is one
sentence naming the command that rebuilds it), deserialises it, opens one execution context,
and binds every input and output BY NAME (``get_tensor_name`` / ``set_input_shape`` /
``set_tensor_address``) to a buffer allocated once: torch CUDA tensors when torch drives the
GPU (the default), or raw device memory from cuda-python (``buffers="cuda"``). A buffer can be
replaced by another of the same shape and dtype (:meth:`EngineRunner.bind`), which is how the
source encoder writes straight into the frame generator's inputs. :meth:`EngineRunner.execute`
enqueues ``execute_async_v3`` on the given CUDA stream and does not synchronise (the caller
owns the stream); :meth:`EngineRunner.capture` records one execution into a CUDA graph that
:meth:`EngineRunner.replay` launches. Shapes are static (export3d exports static graphs).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import import_tensorrt
from .builder import FORMAT, META_SUFFIX, STAGES, rebuild_command
from .device import gpu_info
from .errors import EngineMismatch, ShapeError, TensorRTError

TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
                "int32": "int32", "int64": "int64", "int8": "int8", "uint8": "uint8",
                "bool": "bool"}


def read_metadata(engine_file) -> dict:
    engine_file = Path(engine_file)
    path = engine_file.with_name(engine_file.name[: -len(".engine")] + META_SUFFIX) \
        if engine_file.name.endswith(".engine") else Path(str(engine_file) + ".json")
    if not engine_file.is_file():
        raise EngineMismatch(f"{engine_file} does not exist; build the engines with "
                             "'export3d export engine --onnx GRAPHS --out "
                             f"{engine_file.parent}'")
    if not path.is_file():
        raise EngineMismatch(f"{engine_file} has no metadata file {path.name}, so the GPU and "
                             "TensorRT it was built for are unknown; rebuild it with 'export3d "
                             f"export engine --onnx GRAPHS --out {engine_file.parent}'")
    rebuild = f"export3d export engine --onnx GRAPHS --out {engine_file.parent}"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise EngineMismatch(f"{path} is unreadable ({exc}); rebuild the engines with "
                             f"'{rebuild}'") from None
    stage = engine_file.name.removesuffix(".engine")
    if not (isinstance(meta, dict) and meta.get("format") == FORMAT
            and meta.get("stage") == stage and isinstance(meta.get("engine_sha256"), str)):
        raise EngineMismatch(f"{path} is not the metadata of a {stage} engine of format "
                             f"{FORMAT} (stage, format or sha256 missing or different); rebuild "
                             f"the engines with '{rebuild}'")
    return meta


def check_metadata(meta: dict, engine_file, gpu: str, capability: str, tensorrt: str,
                   allow_other_gpu: bool = False) -> None:
    """Refuse an engine built for another compute capability or TensorRT version (TensorRT
    cannot run it), or for another GPU model (it runs, but its tactics were timed elsewhere;
    ``allow_other_gpu`` accepts that)."""
    engine_file = Path(engine_file)
    built = (f"{meta.get('gpu', '?')} (compute capability {meta.get('compute_capability', '?')})"
             f" with TensorRT {meta.get('tensorrt', '?')}")
    here = f"{gpu} (compute capability {capability}) with TensorRT {tensorrt}"
    mismatch = (meta.get("compute_capability") != capability
                or meta.get("tensorrt") != tensorrt
                or (meta.get("gpu") != gpu and not allow_other_gpu))
    if mismatch:
        raise EngineMismatch(
            f"{engine_file.name} was built for {built} but this machine has {here}; rebuild "
            f"it here with '{rebuild_command(meta.get('onnx_dir', 'GRAPHS'), engine_file.parent)}'")


def check_engine_bytes(meta: dict, engine_file, blob: bytes) -> None:
    """Refuse an engine file that is not the one its metadata was written for."""
    if meta.get("engine_sha256") != hashlib.sha256(blob).hexdigest():
        rebuild = rebuild_command(meta.get("onnx_dir", "GRAPHS"), Path(engine_file).parent)
        raise EngineMismatch(f"{engine_file} does not match the sha256 in its metadata "
                             f"(modified or half-copied); rebuild it with '{rebuild}'")


def check_pair(encoder_meta: dict, generator_meta: dict, folder) -> None:
    """Refuse a source encoder and a frame generator built from different exports (different
    weights): the generator would read features it was not trained with, silently."""
    ids = [m.get("export_id") for m in (encoder_meta, generator_meta)]
    if None in ids or ids[0] != ids[1]:
        rebuild = rebuild_command(generator_meta.get("onnx_dir", "GRAPHS"), folder)
        raise EngineMismatch(f"{Path(folder) / (STAGES[0] + '.engine')} and {STAGES[1]}.engine "
                             f"were not built from the same export; rebuild both with "
                             f"'{rebuild}'")


class EngineRunner:
    """One engine, one execution context, one buffer per I/O tensor (see module docstring).

    ``allocate(shape, dtype_name) -> tensor`` overrides the buffers (tests use CPU tensors with
    a stand-in ``tensorrt``); buffers must expose ``data_ptr()``."""

    def __init__(self, engine_file, *, buffers: str = "torch", allow_other_gpu: bool = False,
                 check: bool = True, allocate=None, trt=None):
        self.path = Path(engine_file)
        self.meta = read_metadata(self.path)
        self.trt = trt = trt or import_tensorrt()
        blob = self.path.read_bytes()
        rebuild = rebuild_command(self.meta.get("onnx_dir", "GRAPHS"), self.path.parent)
        if check:
            gpu, capability = gpu_info()
            check_metadata(self.meta, self.path, gpu, capability, str(trt.__version__),
                           allow_other_gpu)
            check_engine_bytes(self.meta, self.path, blob)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise EngineMismatch(f"TensorRT {trt.__version__} cannot deserialise {self.path} "
                                 f"(damaged, or built by another TensorRT); rebuild it with "
                                 f"'{rebuild}'")
        self.context = self.engine.create_execution_context()
        self.specs = self._io_specs()
        self.inputs = [n for n, s in self.specs.items() if s["input"]]
        self.outputs = [n for n, s in self.specs.items() if not s["input"]]
        self._cuda = None
        if allocate is None:
            allocate = self._torch_allocate if buffers == "torch" else self._cuda_allocate
        self.buffers = {}
        for name, spec in self.specs.items():
            if spec["input"]:
                self.context.set_input_shape(name, spec["shape"])
            self.bind(name, allocate(spec["shape"], spec["dtype"]))
        self.graph = None

    # I/O -----------------------------------------------------------------------------------
    def _dtype_name(self, dtype) -> str:
        trt = self.trt
        table = {trt.float32: "float32", trt.float16: "float16", trt.int32: "int32",
                 trt.int8: "int8", trt.bool: "bool"}
        for attr, name in (("bfloat16", "bfloat16"), ("int64", "int64"), ("uint8", "uint8")):
            if hasattr(trt, attr):
                table[getattr(trt, attr)] = name
        if dtype not in table:
            raise TensorRTError(f"{self.path.name} has a tensor of type {dtype}, which export3d "
                                "engines never have; rebuild it from export3d's graphs")
        return table[dtype]

    def _io_specs(self) -> dict:
        trt = self.trt
        specs = {}
        for i in range(int(self.engine.num_io_tensors)):
            name = self.engine.get_tensor_name(i)
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise TensorRTError(f"{self.path.name} has a dynamic shape {list(shape)} for "
                                    f"{name}; export3d builds static engines, rebuild it")
            specs[name] = {"shape": shape,
                           "dtype": self._dtype_name(self.engine.get_tensor_dtype(name)),
                           "input": self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT}
        return specs

    @staticmethod
    def _torch_allocate(shape, dtype: str):
        import torch

        return torch.empty(shape, dtype=getattr(torch, TORCH_DTYPES[dtype]), device="cuda")

    def _cuda_allocate(self, shape, dtype: str):
        import numpy as np

        from .device import CudaRuntime

        self._cuda = self._cuda or CudaRuntime()
        return DeviceBuffer(self._cuda, tuple(shape), np.dtype(dtype))

    def bind(self, name: str, buffer) -> None:
        """Point tensor ``name`` at ``buffer`` (same shape and dtype as the engine's)."""
        if name not in self.specs:
            raise ShapeError(f"{self.path.name} has no tensor {name!r}; it has "
                             f"{', '.join(self.specs)}")
        self.check(name, tuple(buffer.shape), _dtype_of(buffer))
        if not self.context.set_tensor_address(name, int(buffer.data_ptr())):
            raise TensorRTError(f"TensorRT refused the address of {name} for {self.path.name}")
        self.buffers[name] = buffer

    def check(self, name: str, shape, dtype: str | None = None) -> None:
        """One-sentence ShapeError unless ``shape`` (and ``dtype``) is the engine's for
        ``name``."""
        spec = self.specs[name]
        if tuple(shape) != spec["shape"] or (dtype is not None and dtype != spec["dtype"]):
            got = f"{list(shape)}" + (f" {dtype}" if dtype else "")
            raise ShapeError(f"{name} of {self.path.name} must be {list(spec['shape'])} "
                             f"{spec['dtype']}, got {got}")

    # Execution -------------------------------------------------------------------------------
    def execute(self, stream: int) -> None:
        """Enqueue one run on CUDA stream ``stream`` (a handle; 0 = the legacy default)."""
        if not self.context.execute_async_v3(int(stream)):
            raise TensorRTError(f"TensorRT failed to enqueue {self.path.name} (see its log)")

    def capture(self) -> None:
        """Record one execution into a CUDA graph (torch buffers only). The engine is run once
        first, outside the capture, so that TensorRT's deferred allocations happen then."""
        import torch

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.execute(stream.cuda_stream)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self.execute(torch.cuda.current_stream().cuda_stream)
        self.graph = graph

    def replay(self) -> None:
        if self.graph is None:
            raise TensorRTError("call capture() before replay()")
        self.graph.replay()

    def close(self) -> None:
        self.graph = None
        for buf in self.buffers.values():
            if isinstance(buf, DeviceBuffer):
                buf.free()
        self.buffers = {}
        for attr in ("context", "engine", "runtime"):
            if hasattr(self, attr):
                delattr(self, attr)


def _dtype_of(buffer) -> str:
    return str(buffer.dtype).replace("torch.", "")


class DeviceBuffer:
    """Device memory from cuda-python with a tensor-like ``shape``, ``dtype`` and
    ``data_ptr()``; ``upload`` / ``download`` copy numpy arrays on a stream."""

    def __init__(self, cuda, shape, dtype):
        import math

        self.cuda, self.shape, self.dtype = cuda, tuple(shape), dtype
        self.nbytes = math.prod(shape) * dtype.itemsize
        self.ptr = cuda.malloc(self.nbytes)

    def data_ptr(self) -> int:
        return self.ptr

    def upload(self, array, stream: int) -> None:
        self.cuda.to_device(self.ptr, array, stream)

    def download(self, array, stream: int) -> None:
        self.cuda.to_host(array, self.ptr, stream)

    def free(self) -> None:
        if self.ptr:
            self.cuda.free(self.ptr)
            self.ptr = 0
