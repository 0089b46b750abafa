"""Double-buffered slots: upload frame n+1 while frame n computes and frame n-1 downloads.

In: one host array per frame (the generator's ``[89]`` = expr [64] + camera [25]); out: one
host array per frame (the generator's ``[H, W, 3]`` uint8). :class:`DoubleBuffer` keeps two
slots, each a (host input, device input, device output, host output) quadruple, and three
streams (upload, compute, download) ordered by events:

- upload n   (upload stream):   waits for compute n-2 (it read ``d_in[n % 2]``), copies in;
- compute n  (compute stream):  waits for upload n and download n-2 (it read ``d_out[n % 2]``);
- download n (download stream): waits for compute n, copies out.

The host keeps two :class:`SlotRing` s for the host-side buffers: ``h_in[s]`` is refilled only
once the host has seen upload n-2 complete, ``h_out[s]`` is handed to download n only once the
consumer has :meth:`~DoubleBuffer.pop` ped frame n-2. The only host wait on a *current* frame
is in ``pop()``: the sink needs its pixels.

The streams come from a provider: :class:`CudaStreams` (torch.cuda streams and events, pinned
host and device buffers) or :class:`ThreadStreams`, the CPU twin, where each stream is a
worker thread running its work in order and an event is set when the work queued before its
``record`` has run. The ordering code is the same, so a CPU test with random delays on the
worker threads proves it keeps frames in order and never reuses a buffer still in use.
"""
from __future__ import annotations

import collections
import queue
import threading
import time

import numpy as np


class SlotError(RuntimeError):
    pass


class SlotRing:
    """``acquire(n)`` blocks until slot ``n % size`` is free and frames take it in order;
    ``release(n)`` frees it. ``log`` records ("acquire"|"release", frame, slot)."""

    def __init__(self, size: int = 2, name: str = "slots"):
        self.size, self.name = size, name
        self.owner: list[int | None] = [None] * size
        self.next_frame = 0
        self.log: list[tuple[str, int, int]] = []
        self._cond = threading.Condition()

    def acquire(self, frame: int, timeout: float | None = None) -> int:
        slot = frame % self.size
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self.next_frame == frame and self.owner[slot] is None, timeout)
            if not ok:
                raise SlotError(f"{self.name}: slot {slot} for frame {frame} not free in time "
                                f"(held by frame {self.owner[slot]})")
            self.owner[slot] = frame
            self.next_frame += 1
            self.log.append(("acquire", frame, slot))
            return slot

    def release(self, frame: int) -> None:
        slot = frame % self.size
        with self._cond:
            if self.owner[slot] != frame:
                raise SlotError(f"{self.name}: frame {frame} releases slot {slot} held by "
                                f"frame {self.owner[slot]}")
            self.owner[slot] = None
            self.log.append(("release", frame, slot))
            self._cond.notify_all()


class CudaStreams:
    """torch.cuda streams and events; pinned host buffers so the copies are asynchronous."""

    def __init__(self, device: str = "cuda"):
        import torch

        self.torch, self.device = torch, torch.device(device)

    def stream(self):
        return self.torch.cuda.Stream(self.device)

    def event(self):
        return self.torch.cuda.Event()

    def host(self, shape, dtype):
        return self.torch.empty(shape, dtype=_torch_dtype(dtype)).pin_memory()

    def buffer(self, shape, dtype):
        return self.torch.empty(shape, dtype=_torch_dtype(dtype), device=self.device)

    def launch(self, stream, fn) -> None:
        with self.torch.cuda.stream(stream):
            fn()

    def record(self, event, stream) -> None:
        event.record(stream)

    def wait(self, stream, event) -> None:
        stream.wait_event(event)

    def synchronize(self, event) -> None:
        event.synchronize()

    def copy(self, dst, src) -> None:  # on the current stream; host side: a plain copy
        dst.copy_(self.torch.as_tensor(src), non_blocking=True)

    def read(self, host):
        return host.numpy().copy()  # the slot goes back to the ring right after

    def close(self) -> None:
        pass


class _ThreadEvent:
    """A CUDA-like event: ``wait``/``synchronize`` refer to the latest ``record``."""

    def __init__(self):
        self.latest: threading.Event | None = None  # None: never recorded, waits are no-ops


class ThreadStreams:
    """The CPU twin of :class:`CudaStreams`: one worker thread per stream, work runs in launch
    order; buffers are plain numpy arrays. ``delay()`` (tests) runs before every piece of work
    to shuffle the interleaving."""

    def __init__(self, delay=None):
        self.delay = delay
        self._threads: list[threading.Thread] = []
        self._queues: list[queue.Queue] = []
        self.errors: list[BaseException] = []

    def stream(self):
        q: queue.Queue = queue.Queue()

        def worker():
            while (work := q.get()) is not None:
                if self.delay is not None:
                    self.delay()
                try:
                    work()
                except BaseException as exc:  # reported by synchronize()
                    self.errors.append(exc)

        t = threading.Thread(target=worker, daemon=True, name=f"stream-{len(self._queues)}")
        t.start()
        self._threads.append(t)
        self._queues.append(q)
        return q

    def event(self):
        return _ThreadEvent()

    def host(self, shape, dtype):
        return np.zeros(shape, dtype)

    buffer = host

    def launch(self, stream, fn) -> None:
        stream.put(fn)

    def record(self, event, stream) -> None:
        done = threading.Event()
        event.latest = done
        stream.put(done.set)

    def wait(self, stream, event) -> None:
        if event.latest is not None:
            stream.put(event.latest.wait)  # the snapshot: later records do not move it

    def synchronize(self, event, timeout: float | None = None) -> None:
        """Wait for ``event``'s work. With no ``timeout``, as long as it takes while the
        stream threads live: a paper512 frame takes ~26 s on a 2-core CPU, and a fixed limit
        turned a slow frame into an error (the waits are in slices, so Ctrl-C still lands)."""
        start = time.monotonic()
        while event.latest is not None and not event.latest.wait(0.5):
            waited = time.monotonic() - start
            if (timeout is not None and waited >= timeout) or \
                    not any(t.is_alive() for t in self._threads):
                raise SlotError(f"a stream did not finish in {waited:.0f} s"
                                + (f" ({self.errors[0]!r})" if self.errors else ""))
        if self.errors:
            raise self.errors[0]

    def copy(self, dst, src) -> None:
        np.copyto(dst, src)

    def read(self, host):
        return host.copy()

    def close(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join(timeout=5.0)


class DoubleBuffer:
    """``push(item)`` queues upload/compute/download of the next frame and returns at once;
    ``pop()`` returns ``(n, output)`` of the oldest frame in flight. ``compute(d_in, d_out)``
    reads the device input and writes the device output, on the compute stream. A consumer
    keeps one frame in flight while it pushes the next (see :meth:`run`)."""

    def __init__(self, compute, in_shape, out_shape, in_dtype=np.float32,
                 out_dtype=np.uint8, streams=None, slots: int = 2, timeout: float = 30.0):
        self.streams = streams if streams is not None else ThreadStreams()
        st = self.streams
        self.compute, self.timeout = compute, timeout
        self.h_in = [st.host(in_shape, in_dtype) for _ in range(slots)]
        self.d_in = [st.buffer(in_shape, in_dtype) for _ in range(slots)]
        self.d_out = [st.buffer(out_shape, out_dtype) for _ in range(slots)]
        self.h_out = [st.host(out_shape, out_dtype) for _ in range(slots)]
        self.s_up, self.s_comp, self.s_down = st.stream(), st.stream(), st.stream()
        self.uploaded = [st.event() for _ in range(slots)]
        self.computed = [st.event() for _ in range(slots)]
        self.downloaded = [st.event() for _ in range(slots)]
        self.inputs = SlotRing(slots, "input")  # host side of h_in
        self.outputs = SlotRing(slots, "output")  # host side of h_out
        self.pending: collections.deque[int] = collections.deque()
        self.size = slots

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def push(self, item) -> int:
        st, n = self.streams, self.inputs.next_frame
        s, old = n % self.size, n - self.size
        # blocks until pop(n-2) handed h_out[s] back: at most `slots` frames in flight
        self.outputs.acquire(n, self.timeout)
        if old >= 0 and self.inputs.owner[s] == old:
            st.synchronize(self.uploaded[s])  # upload n-2 has copied h_in[s] (long done)
            self.inputs.release(old)
        self.inputs.acquire(n, self.timeout)
        st.copy(self.h_in[s], item)
        d_in, d_out, h_in, h_out = self.d_in[s], self.d_out[s], self.h_in[s], self.h_out[s]
        st.wait(self.s_up, self.computed[s])  # compute n-2 has read d_in[s]
        st.launch(self.s_up, lambda: st.copy(d_in, h_in))
        st.record(self.uploaded[s], self.s_up)
        st.wait(self.s_comp, self.uploaded[s])
        # download n-2 has read d_out[s]; also implied by the output ring (push(n) needs
        # pop(n-2)), kept so the device order does not rest on the host's
        st.wait(self.s_comp, self.downloaded[s])
        st.launch(self.s_comp, lambda: self.compute(d_in, d_out))
        st.record(self.computed[s], self.s_comp)
        st.wait(self.s_down, self.computed[s])
        st.launch(self.s_down, lambda: st.copy(h_out, d_out))
        st.record(self.downloaded[s], self.s_down)
        self.pending.append(n)
        return n

    def pop(self):
        n = self.pending.popleft()
        s = n % self.size
        self.streams.synchronize(self.downloaded[s])  # the sink needs these pixels
        if self.inputs.owner[s] == n:  # downloaded implies uploaded and computed
            self.inputs.release(n)
        out = self.streams.read(self.h_out[s])
        self.outputs.release(n)
        return n, out

    def on_compute_stream(self, fn) -> None:
        """Run ``fn`` on the compute stream between the frames pushed before and after (e.g.
        encoding a new source portrait while frames are in flight)."""
        self.streams.launch(self.s_comp, fn)

    def run(self, items) -> list:
        """Every item through the slots, outputs in order (push n+1 before popping n)."""
        results = []
        for item in items:
            self.push(item)
            if self.in_flight >= self.size:
                results.append(self.pop()[1])
        while self.pending:
            results.append(self.pop()[1])
        return results

    def close(self) -> None:
        """Finish the frames in flight, then stop the streams, even when a frame failed (its
        error was raised by pop already, or is raised here after the streams stop)."""
        try:
            while self.pending:
                self.pop()
        finally:
            self.pending.clear()
            self.streams.close()


def _torch_dtype(dtype):
    import torch

    return {np.dtype(np.float32): torch.float32, np.dtype(np.uint8): torch.uint8,
            np.dtype(np.float16): torch.float16}[np.dtype(dtype)]
