"""The double buffer's ordering, proved on CPU: ThreadStreams runs each stream on its own
thread with random delays, and every buffer access is checked against the others in flight."""
import random
import threading
import time

import numpy as np
import pytest

from realtime.buffers import DoubleBuffer, SlotError, SlotRing, ThreadStreams


class CheckedStreams(ThreadStreams):
    """Every read/write of a slot buffer is registered while it runs (with a random sleep in
    the middle); a write overlapping any other use of the same buffer is recorded as a
    conflict."""

    def __init__(self, seed=0):
        rng = random.Random(seed)
        super().__init__(delay=lambda: time.sleep(rng.uniform(0, 0.002)))
        self.rng = random.Random(seed + 1)
        self.users: dict[int, list[str]] = {}
        self.conflicts: list[str] = []
        self.active = self.max_active = 0
        self._lock = threading.Lock()

    def use(self, buf, mode, fn):
        key = id(buf)
        with self._lock:
            users = self.users.setdefault(key, [])
            if users and (mode == "w" or "w" in users):
                self.conflicts.append(f"{mode} while {users}")
            users.append(mode)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.rng.uniform(0, 0.002))
        out = fn()
        with self._lock:
            self.users[key].remove(mode)
            self.active -= 1
        return out

    def copy(self, dst, src):
        if isinstance(src, np.ndarray) and any(src is b for b in self._slot_buffers):
            return self.use(src, "r", lambda: self.use(dst, "w", lambda: np.copyto(dst, src)))
        return self.use(dst, "w", lambda: np.copyto(dst, src))

    def read(self, host):
        return self.use(host, "r", host.copy)

    _slot_buffers: list = []


def checked_buffer(streams, slots=2):
    def compute(d_in, d_out):
        def body():
            d_out[:] = d_in * 10  # half-written output is visible to a racing download
            time.sleep(streams.rng.uniform(0, 0.002))
            d_out[:] = d_in * 10
        streams.use(d_in, "r", lambda: streams.use(d_out, "w", body))

    buf = DoubleBuffer(compute, (4,), (4,), np.float32, np.float32, streams=streams,
                       slots=slots, timeout=10.0)
    streams._slot_buffers = buf.h_in + buf.d_in + buf.d_out + buf.h_out
    return buf


def test_frames_stay_in_order_and_busy_buffers_are_never_reused():
    streams = CheckedStreams(seed=0)
    buf = checked_buffer(streams)
    items = [np.full(4, i, np.float32) for i in range(80)]
    try:
        out = buf.run(items)
    finally:
        buf.close()
    assert [float(o[0]) for o in out] == [10.0 * i for i in range(80)]
    assert all((o == o[0]).all() for o in out)  # no half-written frame came out
    assert streams.conflicts == []
    assert streams.max_active >= 3  # upload, compute and download really overlapped
    # per slot, the host rings alternate acquire/release with frames n, n+2, n+4 ...
    for ring in (buf.inputs, buf.outputs):
        for slot in range(2):
            events = [(e, f) for e, f, s in ring.log if s == slot]
            assert [e for e, _ in events] == ["acquire", "release"] * 40
            assert [f for e, f in events if e == "acquire"] == list(range(slot, 80, 2))


@pytest.mark.parametrize("dropped", ["uploaded", "computed"])
def test_without_an_event_wait_the_check_sees_it(dropped):
    """The check can fail: drop the wait on one kind of event (compute n on upload n; upload
    n on compute n-2) and frames come out wrong or a buffer is caught in two uses. (Compute n
    waiting on download n-2 is also implied by the output ring: push(n) needs pop(n-2).)"""
    streams = CheckedStreams(seed=1)
    buf = checked_buffer(streams)
    skipped = set(map(id, getattr(buf, dropped)))
    wait = streams.wait
    streams.wait = lambda stream, event: None if id(event) in skipped else wait(stream, event)
    items = [np.full(4, i, np.float32) for i in range(80)]
    try:
        out = buf.run(items)
    finally:
        buf.close()
    wrong = [float(o[0]) for o in out] != [10.0 * i for i in range(80)]
    assert streams.conflicts or wrong


def test_push_streams_while_pop_lags_one_frame():
    buf = DoubleBuffer(lambda d_in, d_out: np.copyto(d_out, d_in + 1), (2,), (2,),
                       np.float32, np.float32)
    try:
        buf.push(np.zeros(2))
        buf.push(np.ones(2))
        assert buf.in_flight == 2
        with pytest.raises(SlotError, match="not free in time"):
            buf.timeout = 0.05
            buf.push(np.ones(2))  # a third frame needs frame 0's output slot back
        buf.timeout = 10.0
        assert buf.pop()[0] == 0
        # work queued on the compute stream runs between the frames around it
        seen = []
        buf.on_compute_stream(lambda: seen.append("between"))
        buf.push(np.full(2, 2.0))
        n1, o1 = buf.pop()
        n2, o2 = buf.pop()
        assert (n1, n2) == (1, 2) and o1[0] == 2.0 and o2[0] == 3.0 and seen == ["between"]
    finally:
        buf.close()


def test_a_failing_compute_is_reported():
    def boom(d_in, d_out):
        raise ValueError("compute failed")

    buf = DoubleBuffer(boom, (2,), (2,))
    buf.push(np.zeros(2))
    with pytest.raises(ValueError, match="compute failed"):
        buf.pop()
    buf.streams.close()


def test_slot_ring_refuses_wrong_release_and_times_out_on_busy_slot():
    ring = SlotRing(2)
    assert ring.acquire(0) == 0 and ring.acquire(1) == 1
    with pytest.raises(SlotError, match="held by frame 0"):
        ring.release(2)
    with pytest.raises(SlotError, match="not free in time"):
        ring.acquire(2, timeout=0.05)  # frame 0 still holds slot 0
    ring.release(0)
    assert ring.acquire(2, timeout=0.05) == 0


@pytest.mark.gpu
def test_cuda_double_buffer_matches_the_function():
    import torch

    from realtime.buffers import CudaStreams

    def compute(d_in, d_out):
        torch.cuda._sleep(1_000_000)  # a slow kernel: overlap bugs would show
        d_out.copy_(d_in * 2 + 1)

    buf = DoubleBuffer(compute, (4, 8), (4, 8), np.float32, np.float32, streams=CudaStreams())
    items = [np.full((4, 8), i, np.float32) for i in range(9)]
    out = buf.run(items)
    buf.close()
    assert [float(o[0, 0]) for o in out] == [2 * i + 1 for i in range(9)]
    assert all(isinstance(o, np.ndarray) and (o == o[0, 0]).all() for o in out)


def test_a_slow_frame_is_waited_for_and_a_failed_one_still_closes_the_streams():
    # A paper512 frame takes ~26 s on a 2-core CPU; a fixed 30 s wait made a slow frame (a
    # third core busy, one thread) a SlotError traceback. Simulated: the event answers only
    # after 40 s of asked-for waiting, which the old single wait(30) gave up on.
    from realtime.buffers import _ThreadEvent

    class Late:
        waited = 0.0

        def wait(self, timeout=None):
            self.waited += timeout
            return self.waited >= 40.0

    streams = ThreadStreams()
    streams.stream()  # a live stream thread: the wait goes on while one lives
    event = _ThreadEvent()
    event.latest = Late()
    streams.synchronize(event)
    assert event.latest.waited >= 40.0
    event.latest = Late()
    with pytest.raises(SlotError, match="did not finish"):
        streams.synchronize(event, timeout=0.0)  # an explicit limit still holds
    streams.close()

    # A compute error: pop raises it, and close() still stops the stream threads (it raised
    # again from pop and left them running).
    def boom(d_in, d_out):
        raise ValueError("compute failed")

    buf = DoubleBuffer(boom, (2,), (2,))
    buf.push(np.zeros(2))
    buf.push(np.zeros(2))
    with pytest.raises(ValueError, match="compute failed"):
        buf.close()
    assert not any(t.is_alive() for t in buf.streams._threads)
