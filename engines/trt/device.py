"""Which GPU is this, and CUDA streams, events and memory without torch (cuda-python).

:func:`gpu_info` answers (name, compute capability "major.minor") through torch when it sees
a GPU, else through ``cuda.bindings.runtime``; no GPU gives :class:`NoGPU`. :class:`CudaRuntime`
wraps the few ``cuda.bindings.runtime`` calls the engine runtime needs when torch does not
drive the GPU: device memory, host<->device copies, streams, events. Each call's status is
checked; a failure raises RuntimeError naming the call.
"""
from __future__ import annotations

from .errors import NoGPU

NO_GPU = ("no CUDA GPU is visible here (TensorRT engines are built and run on the GPU they are "
          "for); run this on a machine with an NVIDIA GPU and its driver")


def gpu_info() -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of the current CUDA device."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return torch.cuda.get_device_name(), f"{major}.{minor}"
    except ImportError:
        pass
    try:
        from cuda.bindings import runtime
    except ImportError:
        raise NoGPU(NO_GPU) from None
    try:
        err, count = runtime.cudaGetDeviceCount()
    except Exception:  # noqa: BLE001 - the driver library itself may be missing
        raise NoGPU(NO_GPU) from None
    if int(err) != 0 or not count:
        raise NoGPU(NO_GPU)
    _, device = runtime.cudaGetDevice()
    _, props = runtime.cudaGetDeviceProperties(device)
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"


class CudaRuntime:
    """Minimal ``cuda.bindings.runtime`` helpers (used only when torch is not driving)."""

    def __init__(self):
        from cuda.bindings import runtime

        self.rt = runtime

    def _check(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"{what} failed with CUDA error {int(err)}.")
        return rest[0] if len(rest) == 1 else tuple(rest)

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(1, int(nbytes))), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    def stream(self) -> int:
        return int(self._check(self.rt.cudaStreamCreateWithFlags(
            self.rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags"))

    def destroy_stream(self, stream: int) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def event(self, timing: bool = True) -> int:
        flags = self.rt.cudaEventDefault if timing else self.rt.cudaEventDisableTiming
        return int(self._check(self.rt.cudaEventCreateWithFlags(flags),
                               "cudaEventCreateWithFlags"))

    def record(self, event: int, stream: int) -> None:
        self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: int, end: int) -> float:
        self._check(self.rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self._check(self.rt.cudaEventElapsedTime(start, end),
                                 "cudaEventElapsedTime"))

    def synchronize(self, stream: int) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def to_device(self, dst: int, host_array, stream: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(dst, host_array.ctypes.data, host_array.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                            stream), "cudaMemcpyAsync (to device)")

    def to_host(self, host_array, src: int, stream: int) -> None:
        self._check(self.rt.cudaMemcpyAsync(host_array.ctypes.data, src, host_array.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                            stream), "cudaMemcpyAsync (to host)")
