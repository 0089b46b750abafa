"""The backend protocol: one source encoded once, then frame after frame.

Every backend (``torch``, ``onnxruntime``, ``tensorrt``: :mod:`export.trt_backend` over
``engines.trt``) is constructed once, then:
- ``encode_source(image)``: ``image [1, 3, H, W]`` float in [-1, 1] (numpy or torch), once per
  source photo; the backend keeps the source features;
- ``frame(expr, camera) -> dict``: ``expr [1, 64]`` (or ``[64]``), ``camera [1, 25]`` (or
  ``[25]``) -> ``{"image": [1, 3, H, W], "image_raw": [1, 3, r, r], "depth": [1, 1, r, r]}``
  numpy arrays (images in [-1, 1], depth in world units). The arrays may be buffers the
  backend reuses: they are valid until the next ``frame`` call; copy to keep them;
- ``close()``. Backends are also context managers.
:func:`open_backend` picks one by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from export3d.errors import UserError

FRAME_KEYS = ("image", "image_raw", "depth")


@runtime_checkable
class Backend(Protocol):
    name: str

    def encode_source(self, image) -> None: ...

    def frame(self, expr, camera) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class BackendError(UserError):
    """A backend that cannot be opened or used as asked."""


class _ContextMixin:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TorchBackend(_ContextMixin):
    """The PyTorch reference behind the protocol: ``Export3D`` on ``device`` in ``dtype``
    (float16 keeps the ray march in float32, as the model itself does); ``channels_last``
    runs the convolutions in that memory format (faster on CUDA); ``cuda_graph`` (CUDA only)
    captures the per-frame path in one CUDA graph at the first frame and replays it after
    (no launch overhead; its outputs are overwritten by the next frame, so read them first);
    ``compile`` runs the per-frame path through ``torch.compile``, on CUDA captured the same
    way. There the compiled frame is captured here, not by Inductor's own CUDA graphs (mode
    "reduce-overhead"): those keep their state in thread-local storage that only the thread
    which first ran them has, and the live app compiles on its main thread (the warm-up) but
    runs frames on its generator thread, where a graph they had not yet recorded stopped with
    an AssertionError. Captured, the compiled frame is also only ever called on the same
    static input buffers, so a caller's strided view cannot make it recompile.
    Either way the encoded source is replaced in place on a new photo, so what was compiled
    or captured keeps reading it."""

    name = "torch"

    def __init__(self, model, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 impl: str | None = None, channels_last: bool = False, compile: bool = False,
                 cuda_graph: bool = False):
        self.device = torch.device(device)
        if cuda_graph and self.device.type != "cuda":
            raise BackendError(f"CUDA graphs need a CUDA device, not {device!r}")
        self.cuda_graph = cuda_graph or (compile and self.device.type == "cuda")
        self._cuda = torch.cuda  # what captures and replays (a stand-in in the CPU tests)
        self._graph = None  # (graph, static expr, static camera, static outputs)
        self.dtype = dtype
        self.impl = impl
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, dtype)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if dtype != torch.float32:
            self.model.renderer.float()
        self.model.clebs.freeze_basis()
        self.compiled = compile
        self._synthesize = self.model.synthesize
        if compile:
            self._synthesize = torch.compile(self.model.synthesize, dynamic=False)
        self._source = None

    def encode_source(self, image) -> None:
        image = torch.as_tensor(np.asarray(image)).to(self.device, self.dtype)
        image = image.contiguous(memory_format=self.memory_format)
        with torch.inference_mode():
            source = self.model.encode_source(image)
            if (self.compiled or self.cuda_graph) and self._source is not None:
                # A new portrait goes into the tensors the compiled frame was traced with:
                # same object, same addresses, no re-trace on a swap.
                self._source.high.copy_(source.high)
                self._source.tokens.copy_(source.tokens)
            else:
                self._source = source

    def synthesize(self, expr: torch.Tensor, camera: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's per-frame path on the encoded source (compiled when asked): ``expr
        [1, 64]`` in the backend's dtype and ``camera [1, 25]`` float32, on its device."""
        if self._source is None:
            raise BackendError("call encode_source(image) before frame()")
        if not self.cuda_graph:
            return self._synthesize(self._source, expr, camera, impl=self.impl)
        if self._graph is None:
            self._graph = self._capture(expr, camera)
        graph, static_expr, static_camera, outputs = self._graph
        static_expr.copy_(expr)
        static_camera.copy_(camera)
        graph.replay()
        return outputs

    def _capture(self, expr: torch.Tensor, camera: torch.Tensor):
        """The frame on static input buffers, run three times on a side stream (cuDNN's
        algorithm search, the kernel's first load and the allocator's first blocks happen
        there, outside the capture), then captured."""
        cuda = self._cuda
        static_expr, static_camera = expr.clone(), camera.clone()

        def run():
            return self._synthesize(self._source, static_expr, static_camera, impl=self.impl)

        with cuda.device(self.device):  # the capture stream is the current device's
            side = cuda.Stream(self.device)
            side.wait_stream(cuda.current_stream(self.device))
            with cuda.stream(side):
                for _ in range(3):
                    run()
            cuda.current_stream(self.device).wait_stream(side)
            graph = cuda.CUDAGraph()
            with cuda.graph(graph):
                outputs = run()
        return graph, static_expr, static_camera, outputs

    def frame(self, expr, camera) -> dict[str, np.ndarray]:
        expr = torch.as_tensor(np.asarray(expr, dtype=np.float32)).reshape(1, -1)
        camera = torch.as_tensor(np.asarray(camera, dtype=np.float32)).reshape(1, 25)
        with torch.inference_mode():
            out = self.synthesize(expr.to(self.device, self.dtype), camera.to(self.device))
            return {k: out[k].float().cpu().numpy() for k in FRAME_KEYS}

    def close(self) -> None:
        self._source = None
        self._graph = None


BACKENDS = ("torch", "onnxruntime", "tensorrt")


def open_backend(name: str, *, model=None, graphs: str | Path | None = None,
                 providers=("cpu",), device: str = "cpu", **kwargs) -> Backend:
    """``open_backend("torch", model=m)``, ``open_backend("onnxruntime", graphs=DIR,
    providers=("cuda", "cpu"))`` or ``open_backend("tensorrt", engines=DIR)``."""
    if name == "torch":
        if model is None:
            raise BackendError("the torch backend needs a model (export3d.model.build_model or "
                               "export3d.checkpoint.load_checkpoint)")
        return TorchBackend(model, device=device, **kwargs)
    if name == "onnxruntime":
        if graphs is None:
            raise BackendError("the onnxruntime backend needs the folder that 'export3d export "
                               "onnx' wrote")
        from .ort_backend import OrtBackend

        return OrtBackend(graphs, providers=providers, **kwargs)
    if name == "tensorrt":  # ``graphs`` here is the folder 'export3d export engine' wrote
        from .trt_backend import open_tensorrt

        return open_tensorrt(kwargs.pop("engines", graphs), device=device, **kwargs)
    raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
