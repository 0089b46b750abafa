"""Generator stage: the source portrait encoded once, then (expr [64], camera [25]) -> RGB
uint8 frame [S, S, 3], over any backend of :mod:`export.backend`.

Per frame the stage goes through a :class:`~realtime.buffers.DoubleBuffer`: ``push(expr,
camera)`` queues frame n and returns, ``pop()`` gives the oldest frame's pixels, so frame n+1
uploads while frame n computes and frame n-1 downloads. The torch backend on CUDA runs the
model on the buffer's compute stream and converts to uint8 on the GPU (a quarter of the bytes
to download); every other backend (ONNX Runtime, TensorRT, torch on CPU) moves its own
tensors, so its stages run on the CPU twin, :class:`~realtime.buffers.ThreadStreams`.

Swapping the source portrait: :func:`prepare_source` (load, face check, aligned crop; the
slow part) runs off the frame path; :meth:`Generator.set_source` then queues the encode on the
compute stream, between the frames pushed before and after it.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from export3d.devices import resolve_device

from .buffers import CudaStreams, DoubleBuffer, ThreadStreams
from .config import PRECISIONS, GeneratorConfig

DRIVING = 64 + 25  # expr [64] + camera [25], one host input slot
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def source_photos(source) -> list[Path]:
    """``--source`` as given: a photo, a folder of photos, or a list of either; ``None``: the
    default portrait."""
    from export3d.errors import UserError
    from export3d.media import default_portrait

    if source is None:
        return [default_portrait()]
    items = source if isinstance(source, (list, tuple)) else [source]
    photos: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            photos += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            photos.append(path)
    if not photos:
        raise UserError(f"no source photos in {source} ({', '.join(IMAGE_SUFFIXES)})")
    return photos


def prepare_source(path, image_size: int, with_pose: bool = False):
    """Photo -> model input [1, 3, S, S] in [-1, 1]; a photo without a face raises MediaError.
    ``with_pose``: (input, R_src), the face's head rotation for the relative camera (None
    where it cannot be measured)."""
    from export3d.media import load_image, to_model_input
    from export3d.render import source_crop

    if not with_pose:
        return to_model_input(source_crop(load_image(path), image_size, path)).numpy()
    crop, rotation = source_crop(load_image(path), image_size, path, with_pose=True)
    return to_model_input(crop).numpy(), rotation


class Generator:
    def __init__(self, config: GeneratorConfig, backend=None, image_size: int | None = None):
        self.config = config
        if backend is None:
            backend, image_size = _open(config)
        self.backend = backend
        self.image_size = image_size
        self.photos = source_photos(config.source)
        self.source = self.photos[0]
        image, self.source_rotation = prepare_source(self.source, image_size, with_pose=True)
        self.backend.encode_source(image)
        on_cuda = getattr(backend, "name", "") == "torch" and str(backend.device).startswith(
            "cuda")
        if getattr(backend, "compiled", False) or on_cuda:
            warm_up(backend, compiled=getattr(backend, "compiled", False))
        shape = (image_size, image_size, 3)
        if on_cuda:
            import torch

            torch.cuda.synchronize()  # the source was encoded on the default stream
            self.buffer = DoubleBuffer(self._compute_cuda, (DRIVING,), shape,
                                       streams=CudaStreams(str(backend.device)))
        else:
            self.buffer = DoubleBuffer(self._compute_host, (DRIVING,), shape,
                                       streams=ThreadStreams())
        self._driving = np.zeros(DRIVING, np.float32)  # host staging for push()

    # -- per frame ---------------------------------------------------------------------------
    def push(self, expr: np.ndarray, camera: np.ndarray) -> int:
        self._driving[:64], self._driving[64:] = expr, camera
        return self.buffer.push(self._driving)

    def pop(self) -> np.ndarray:
        return self.buffer.pop()[1]

    @property
    def in_flight(self) -> int:
        return self.buffer.in_flight

    def frame(self, expr: np.ndarray, camera: np.ndarray) -> np.ndarray:
        """One frame, synchronously (no overlap): push then pop."""
        self.push(expr, camera)
        return self.pop()

    def _compute_host(self, d_in: np.ndarray, d_out: np.ndarray) -> None:
        out = self.backend.frame(d_in[None, :64], d_in[None, 64:])["image"][0]  # [3, S, S]
        rgb = (np.clip(out, -1, 1) + 1) * 127.5
        np.copyto(d_out, rgb.round().transpose(1, 2, 0), casting="unsafe")

    def _compute_cuda(self, d_in, d_out) -> None:
        import torch

        b = self.backend  # TorchBackend: model and encoded source live on this device
        with torch.inference_mode():
            out = b.synthesize(d_in[None, :64].to(b.dtype),
                               d_in[None, 64:])["image"][0].float()  # [3, S, S]
            d_out.copy_(((out.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0))

    # -- source portrait ---------------------------------------------------------------------
    def set_source(self, path, image: np.ndarray) -> None:
        """``image`` from :func:`prepare_source`; encoded on the compute stream, in order."""
        def encode():
            self.backend.encode_source(image)
        self.buffer.on_compute_stream(encode)
        self.source = Path(path)

    def close(self) -> None:
        try:
            self.buffer.close()
        finally:
            self.backend.close()


def warm_up(backend, compiled: bool) -> None:
    """Frames before the first real one, so that the call's first frames do not stall.
    ``compiled``: trace and compile the torch backend's frame (a minute or more at paper512
    size), saying so, so that the pipeline does not look hung (on CUDA that first frame also
    records the CUDA graph), then one more frame. Else (eager on CUDA) one frame: cuDNN picks
    its convolution algorithms and the ray-march kernel loads on its first call (with
    ``--cuda-graph`` the graph is recorded there too)."""
    import time

    from export3d.camera import orbit_camera

    if compiled:
        print("compiling the frame (torch.compile, once per run; this can take a minute) ...",
              file=sys.stderr, flush=True)
    start = time.monotonic()
    expr = np.zeros((1, 64), np.float32)
    camera = orbit_camera(0.0).numpy()
    for _ in range(2 if compiled else 1):
        backend.frame(expr, camera)
    if compiled:
        print(f"compiled in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def torch_precision(precision: str, device: str, capability=None):
    """(dtype, channels_last) for the torch backend. "auto": bf16 on a CUDA GPU with bf16
    tensor cores (compute capability 8.0+), fp16 on older GPUs, fp32 on the CPU; channels-last
    convolutions on CUDA (the GPU suite's fastest eager layout). ``capability``: (major,
    minor), read from the device when None."""
    import torch

    from export3d.errors import UserError

    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    cuda = str(device).startswith("cuda")
    if cuda and capability is None:
        capability = torch.cuda.get_device_capability(torch.device(device))
    if precision == "auto":
        precision = "fp32" if not cuda else "bf16" if capability >= (8, 0) else "fp16"
    if precision == "bf16" and cuda and capability < (8, 0):
        raise UserError(f"this GPU (compute capability {capability[0]}.{capability[1]}) has no "
                        "bf16 tensor cores; use --precision fp16")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    return dtype, cuda


def _warn_if_random(config: GeneratorConfig) -> None:
    if not config.checkpoint:
        from export3d.render import random_weights_warning

        print(random_weights_warning(), file=sys.stderr)


def default_providers(device: str, auto: bool) -> tuple[str, ...]:
    """onnxruntime's execution providers when ``--providers`` is not given: CUDA then the CPU
    on a CUDA ``device``, else the CPU. Where ``auto`` chose the device (the default), CUDA
    only when the installed onnxruntime has it: PyPI's ``onnxruntime`` is a CPU build, and a
    GPU in the machine must not stop a run that asked for no GPU."""
    if not device.startswith("cuda"):
        return ("cpu",)
    if auto:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return ("cpu",)
    return ("cuda", "cpu")


def _open(config: GeneratorConfig):
    from export.backend import open_backend
    from export3d.config import get_config
    from export3d.errors import UserError

    auto = (config.device or "auto").strip().lower() == "auto"  # not a device the user named
    config = dataclasses.replace(config, device=resolve_device(config.device))
    if config.backend != "torch" and config.precision != "auto":
        raise UserError(f"--precision is the torch backend's; {config.backend} runs in the "
                        "precision its graphs or engines were exported with")
    if config.backend == "onnxruntime" and config.cuda_graph:
        raise UserError("--cuda-graph is the torch and tensorrt backends'; onnxruntime runs its "
                        "graphs as its provider does")
    if config.backend == "torch" and config.cuda_graph and not config.device.startswith("cuda"):
        if auto:
            raise UserError("--cuda-graph needs a CUDA GPU and PyTorch sees none here (--device "
                            "auto chose the CPU); leave --cuda-graph out")
        raise UserError(f"--cuda-graph needs a CUDA device (--device cuda), not "
                        f"{config.device!r}")
    if config.backend != "torch" and config.compile:
        raise UserError(f"--compile is the torch backend's; {config.backend} runs its own "
                        "compiled graphs or engines")
    if config.backend == "tensorrt" and config.checkpoint and config.engines:
        raise UserError("give --engines or --checkpoint, not both: the engines in --engines "
                        "carry the weights they were exported with")
    if config.backend == "onnxruntime" and config.checkpoint and config.graphs:
        raise UserError("give --graphs or --checkpoint, not both: the graphs in --graphs carry "
                        "the weights they were exported with")
    if config.backend != "tensorrt" and (not config.rebuild or config.allow_other_gpu):
        raise UserError(f"--no-rebuild and --allow-other-gpu are the tensorrt backend's; "
                        f"{config.backend} builds nothing per GPU")
    if config.backend != "onnxruntime" and config.providers:
        raise UserError(f"--providers is the onnxruntime backend's; {config.backend} runs on "
                        "--device")

    if config.backend == "onnxruntime":
        providers = config.providers or default_providers(config.device, auto)
        graphs = config.graphs
        if graphs is None:  # exported once from --checkpoint (or the preset) into the cache
            from export.cache import cached_graphs

            _warn_if_random(config)
            graphs = cached_graphs(config.checkpoint, config.preset)
        backend = open_backend("onnxruntime", graphs=graphs, providers=providers)
        encoder_input = next(iter(getattr(backend, "enc_in", {}).values()), None)
        size = encoder_input.shape[-1] if encoder_input is not None else \
            get_config(config.preset).image_size
        return backend, size
    if config.backend == "tensorrt":  # the engines hold the weights and fix the image size
        engines = config.engines
        if engines is None:  # built once from --checkpoint (or the preset) into the cache
            from export.cache import cached_engines

            _warn_if_random(config)
            engines = cached_engines(config.checkpoint, config.preset)
        backend = open_backend("tensorrt", engines=engines, device=config.device,
                               rebuild=config.rebuild, allow_other_gpu=config.allow_other_gpu,
                               cuda_graph=config.cuda_graph)
        encoder_input = backend.encoder.buffers[backend.encoder.inputs[0]]
        return backend, int(encoder_input.shape[-1])
    if config.checkpoint:
        from export3d.checkpoint import load_checkpoint

        model = load_checkpoint(config.checkpoint)
    else:
        from export3d.model import build_model

        _warn_if_random(config)
        model = build_model(get_config(config.preset), seed=0)
    dtype, channels_last = torch_precision(config.precision, config.device)
    if config.device.startswith("cuda"):
        import torch

        # Every frame has the same shapes: let cuDNN time its convolution algorithms once
        # (on the first frames) and keep the fastest, as the GPU suite does.
        torch.backends.cudnn.benchmark = True
    backend = open_backend(config.backend, model=model, device=config.device, dtype=dtype,
                           channels_last=channels_last, compile=config.compile,
                           cuda_graph=config.cuda_graph)
    return backend, model.config.image_size
