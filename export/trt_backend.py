"""The TensorRT backend: the engines ``export3d export engine`` built, behind the backend
protocol of :mod:`export.backend`.

Construction opens ``source_encoder.engine`` and ``frame_generator.engine`` with
``engines.trt.runtime.EngineRunner`` (each refused, in one sentence naming the rebuild command,
when its metadata does not match this GPU or TensorRT; ``rebuild=True`` rebuilds them instead,
from the ONNX folder their metadata names). Buffers: every engine input and output
is one torch CUDA tensor allocated once; the encoder's outputs ARE the generator's source
inputs (bound by name to the same memory), so encoding a photo moves nothing. ``frame`` copies
``expr`` and ``camera`` into their device buffers, enqueues the generator (or replays its
captured CUDA graph, ``cuda_graph=True``) on the backend's own stream, copies the outputs into
pinned host buffers and returns numpy views of them, valid until the next call.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backend import FRAME_KEYS, BackendError, _ContextMixin

STAGES = ("source_encoder", "frame_generator")


def _engine_errors():
    from engines.trt.errors import TensorRTError

    return TensorRTError


class TensorRTBackend(_ContextMixin):
    name = "tensorrt"

    def __init__(self, engines: str | Path, device: str = "cuda", cuda_graph: bool = False,
                 allow_other_gpu: bool = False, rebuild: bool = False, runner_factory=None):
        import torch

        from engines.trt.errors import EngineMismatch
        from engines.trt.runtime import EngineRunner

        self.directory = Path(engines)
        self.device = torch.device(device)
        factory = runner_factory or (lambda path: EngineRunner(
            path, allow_other_gpu=allow_other_gpu))
        # On cuda:N everything happens with N as the current device: the GPU check, the
        # engines' deserialisation and buffers (allocated on "cuda", the current device).
        with self._on_device():
            try:
                try:
                    self._open(factory)
                except EngineMismatch:
                    if not rebuild:
                        raise
                    self._rebuild()
                    self._open(factory)
            except _engine_errors() as exc:
                raise BackendError(str(exc)) from None
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        # Pinned host copies of the three outputs: the device-to-host copy is asynchronous.
        self.host = {name: torch.empty(self.generator.buffers[name].shape,
                                       dtype=self.generator.buffers[name].dtype,
                                       pin_memory=cuda) for name in FRAME_KEYS}
        self.cuda_graph = cuda_graph and cuda
        self._captured = False
        self._encoded = False

    def _open(self, factory) -> None:
        from engines.trt.runtime import check_pair

        self.encoder = self.generator = None
        self.encoder = factory(self.directory / f"{STAGES[0]}.engine")
        self.generator = factory(self.directory / f"{STAGES[1]}.engine")
        check_pair(self.encoder.meta, self.generator.meta, self.directory)
        from .manifest import check_expression_code

        check_expression_code(self.generator.meta.get("expression_code"), self.directory,
                              "engines")
        for name in self.encoder.outputs:  # source features straight into the generator
            self.generator.bind(name, self.encoder.buffers[name])

    def _rebuild(self) -> None:
        """Rebuild both engines here from the ONNX folder their metadata names (the graphs'
        sha256 is checked again by the builder)."""
        import sys

        from engines.trt.builder import build_engines
        from engines.trt.runtime import read_metadata

        onnx_dir = read_metadata(self.directory / f"{STAGES[1]}.engine").get("onnx_dir")
        if not onnx_dir or not Path(onnx_dir).is_dir():
            raise BackendError(f"the engines in {self.directory} do not match this machine and "
                               f"the graphs they were built from ({onnx_dir}) are gone; export "
                               "and build them again here")
        print(f"tensorrt: rebuilding the engines in {self.directory} for this GPU from "
              f"{onnx_dir}", file=sys.stderr)
        build_engines(onnx_dir, self.directory,
                      report=lambda line: print(f"  {line}", file=sys.stderr))

    def _handle(self) -> int:
        return self.stream.cuda_stream if self.stream is not None else 0

    def _on_stream(self):
        """Every copy, launch and replay of this backend goes on its one stream, so they run
        in order without waiting on other work (torch's copies would otherwise use the
        current stream, racing the engine)."""
        import contextlib

        import torch

        if self.stream is None:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(self._on_device())
        stack.enter_context(torch.cuda.stream(self.stream))
        return stack

    def _on_device(self):
        """``self.device`` as the current CUDA device within the block (a no-op on the CPU)."""
        import contextlib

        import torch

        return torch.cuda.device(self.device) if self.device.type == "cuda" else \
            contextlib.nullcontext()

    def _upload(self, runner, name: str, value) -> None:
        import torch

        buf = runner.buffers[name]
        value = np.asarray(value)
        if value.size != buf.numel():
            raise BackendError(f"{name} must have {buf.numel()} values ({list(buf.shape)}), got "
                               f"shape {list(value.shape)}")
        src = torch.from_numpy(np.ascontiguousarray(value)).reshape(buf.shape)
        # A pageable source: the copy has left host memory when copy_ returns.
        buf.copy_(src.to(buf.dtype))

    def encode_source(self, image) -> None:
        image = np.asarray(image)
        name = self.encoder.inputs[0]
        expected = tuple(self.encoder.buffers[name].shape)
        if image.shape != expected:
            raise BackendError(f"source image must be {list(expected)}, got {list(image.shape)}")
        with self._on_stream():
            self._upload(self.encoder, name, image)
            self.encoder.execute(self._handle())
        if self.stream is not None:
            self.stream.synchronize()
        self._encoded = True

    def frame(self, expr, camera) -> dict[str, np.ndarray]:
        if not self._encoded:
            raise BackendError("call encode_source(image) before frame()")
        if self.cuda_graph and not self._captured:
            with self._on_device():
                self.generator.capture()
            self._captured = True
        with self._on_stream():
            self._upload(self.generator, "expr", expr)
            self._upload(self.generator, "camera", camera)
            if self.cuda_graph:
                self.generator.replay()
            else:
                self.generator.execute(self._handle())
            for name in FRAME_KEYS:
                self.host[name].copy_(self.generator.buffers[name], non_blocking=self.stream
                                      is not None)
        if self.stream is not None:
            self.stream.synchronize()
        return {name: self.host[name].numpy() for name in FRAME_KEYS}

    def close(self) -> None:
        for attr in ("encoder", "generator"):
            runner = getattr(self, attr, None)
            if runner is not None:
                runner.close()
                delattr(self, attr)
        self._encoded = False


def open_tensorrt(engines: str | Path | None, device: str = "cuda", **kwargs) -> TensorRTBackend:
    """Checks in the order a user can act on them: TensorRT installed, an engine folder given,
    a GPU present; then :class:`TensorRTBackend`."""
    from engines.trt import import_tensorrt

    try:
        import_tensorrt()
    except _engine_errors() as exc:
        raise BackendError(str(exc)) from None
    if engines is None:
        raise BackendError("the tensorrt backend needs the folder that 'export3d export engine' "
                           "wrote (export3d live --engines DIR; engines=DIR in Python)")
    import torch

    if not torch.cuda.is_available():
        raise BackendError("the tensorrt backend runs on an NVIDIA GPU and this torch sees none; "
                           "use --backend torch or onnxruntime here")
    if not str(device).startswith("cuda"):
        device = "cuda"
    return TensorRTBackend(engines, device=device, **kwargs)
