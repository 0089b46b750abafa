"""Double-buffered slots: upload frame n+1 while frame n computes and frame n-1 downloads.

The bookkeeping (:class:`SlotRing`) is plain Python so the ordering can be tested on CPU with
threads; :class:`ThreadedDoubleBuffer` runs upload / compute / download on three threads, and
:class:`CudaDoubleBuffer` runs them on three CUDA streams (pinned host + device buffers,
events) with the same two rings:

- the *input* ring: frame n's input slot is ``n % 2``; uploading n waits until compute n-2
  released it (it read its input);
- the *output* ring: frame n's output slot is ``n % 2``; computing n waits until download n-2
  released it.

So with two slots upload n+1, compute n and download n-1 can all be in flight, and a slot is
never handed to a new frame while an older one still uses it (``SlotRing`` raises if a release
comes out of order or from the wrong frame).
"""
from __future__ import annotations

import queue
import threading


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


_END = object()


class ThreadedDoubleBuffer:
    """``upload(slot, item)``, ``compute(in_slot, out_slot)``, ``download(slot) -> result`` on
    three threads; :meth:`run` feeds items and returns the results in order."""

    def __init__(self, upload, compute, download, slots: int = 2, timeout: float = 10.0):
        self.upload, self.compute, self.download = upload, compute, download
        self.inputs = SlotRing(slots, "input")
        self.outputs = SlotRing(slots, "output")
        self.timeout = timeout

    def run(self, items) -> list:
        to_compute: queue.Queue = queue.Queue()
        to_download: queue.Queue = queue.Queue()
        results: list = []
        errors: list = []

        def guard(fn):
            def body():
                try:
                    fn()
                except BaseException as exc:
                    errors.append(exc)
                    to_compute.put(_END)
                    to_download.put(_END)
            return body

        def uploader():
            for n, item in enumerate(items):
                slot = self.inputs.acquire(n, self.timeout)
                self.upload(slot, item)
                to_compute.put(n)
            to_compute.put(_END)

        def computer():
            while (n := to_compute.get(timeout=self.timeout)) is not _END:
                out = self.outputs.acquire(n, self.timeout)
                self.compute(n % self.inputs.size, out)
                self.inputs.release(n)
                to_download.put(n)
            to_download.put(_END)

        def downloader():
            while (n := to_download.get(timeout=self.timeout)) is not _END:
                results.append(self.download(n % self.outputs.size))
                self.outputs.release(n)

        threads = [threading.Thread(target=guard(f), daemon=True)
                   for f in (uploader, computer, downloader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=self.timeout * 3)
        if errors:
            raise errors[0]
        return results


class CudaDoubleBuffer:
    """The CUDA twin: pinned host buffers and device buffers per slot, an upload, a compute and
    a download stream, ordered by events; the host keeps the same two :class:`SlotRing` s,
    releasing a slot once the event of the stage that last used it has completed. ``fn``
    maps a device input tensor to a device output tensor (e.g. a backend's forward)."""

    def __init__(self, fn, in_shape, out_shape, dtype=None, slots: int = 2):
        import torch

        self.torch = torch
        dtype = dtype or torch.float32
        self.fn = fn
        self.h_in = [torch.empty(in_shape, dtype=dtype).pin_memory() for _ in range(slots)]
        self.d_in = [torch.empty(in_shape, dtype=dtype, device="cuda") for _ in range(slots)]
        self.d_out = [torch.empty(out_shape, dtype=dtype, device="cuda") for _ in range(slots)]
        self.h_out = [torch.empty(out_shape, dtype=dtype).pin_memory() for _ in range(slots)]
        self.s_up, self.s_comp, self.s_down = (torch.cuda.Stream() for _ in range(3))
        self.uploaded = [torch.cuda.Event() for _ in range(slots)]
        self.computed = [torch.cuda.Event() for _ in range(slots)]
        self.downloaded = [torch.cuda.Event() for _ in range(slots)]
        self.inputs = SlotRing(slots, "input")
        self.outputs = SlotRing(slots, "output")

    def run(self, items) -> list:
        torch = self.torch
        size = self.inputs.size
        results = []
        for n, item in enumerate(items):
            if n >= size:  # frame n-2 must be done with both slots before n takes them
                old = n - size
                self.computed[old % size].synchronize()
                self.inputs.release(old)
                self.downloaded[old % size].synchronize()
                results.append(self.h_out[old % size].clone())
                self.outputs.release(old)
            i = self.inputs.acquire(n)
            self.h_in[i].copy_(torch.as_tensor(item))
            with torch.cuda.stream(self.s_up):
                self.d_in[i].copy_(self.h_in[i], non_blocking=True)
                self.uploaded[i].record()
            o = self.outputs.acquire(n)
            with torch.cuda.stream(self.s_comp):
                self.s_comp.wait_event(self.uploaded[i])
                self.d_out[o].copy_(self.fn(self.d_in[i]))
                self.computed[o].record()
            with torch.cuda.stream(self.s_down):
                self.s_down.wait_event(self.computed[o])
                self.h_out[o].copy_(self.d_out[o], non_blocking=True)
                self.downloaded[o].record()
        first = max(0, self.inputs.next_frame - size)
        for old in range(first, self.inputs.next_frame):
            self.computed[old % size].synchronize()
            self.inputs.release(old)
            self.downloaded[old % size].synchronize()
            results.append(self.h_out[old % size].clone())
            self.outputs.release(old)
        return results
