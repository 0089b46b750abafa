import random
import threading
import time

import numpy as np
import pytest

from realtime.buffers import SlotError, SlotRing, ThreadedDoubleBuffer


def test_frames_stay_in_order_and_busy_slots_are_never_reused():
    rng = random.Random(0)
    n_slots = 2
    host_in = [None] * n_slots
    dev_out = [None] * n_slots
    busy = {"in": [None] * n_slots, "out": [None] * n_slots}
    lock = threading.Lock()
    overlap = {"max": 0, "now": 0}

    def enter(kind, slot, tag):
        with lock:
            assert busy[kind][slot] is None, f"{kind} slot {slot} reused while in use"
            busy[kind][slot] = tag
            overlap["now"] += 1
            overlap["max"] = max(overlap["max"], overlap["now"])

    def leave(kind, slot):
        with lock:
            busy[kind][slot] = None
            overlap["now"] -= 1

    def upload(slot, item):
        enter("in", slot, item)
        time.sleep(rng.uniform(0, 0.004))
        host_in[slot] = item
        leave("in", slot)

    def compute(in_slot, out_slot):
        enter("in", in_slot, "c")
        enter("out", out_slot, "c")
        time.sleep(rng.uniform(0, 0.004))
        dev_out[out_slot] = host_in[in_slot] * 10
        leave("in", in_slot)
        leave("out", out_slot)

    def download(slot):
        enter("out", slot, "d")
        time.sleep(rng.uniform(0, 0.004))
        value = dev_out[slot]
        leave("out", slot)
        return value

    runner = ThreadedDoubleBuffer(upload, compute, download, slots=n_slots, timeout=5.0)
    results = runner.run(range(60))
    assert results == [10 * i for i in range(60)]
    assert overlap["max"] >= 2  # stages really overlapped
    # per slot, ownership alternates acquire/release with frames n, n+2, n+4 ...
    for ring in (runner.inputs, runner.outputs):
        for slot in range(n_slots):
            events = [(e, f) for e, f, s in ring.log if s == slot]
            assert [e for e, _ in events] == ["acquire", "release"] * 30
            frames = [f for e, f in events if e == "acquire"]
            assert frames == list(range(slot, 60, n_slots))


def test_slot_ring_refuses_wrong_release_and_times_out_on_busy_slot():
    ring = SlotRing(2)
    assert ring.acquire(0) == 0 and ring.acquire(1) == 1
    with pytest.raises(SlotError, match="held by frame 0"):
        ring.release(2)
    with pytest.raises(SlotError, match="not free in time"):
        ring.acquire(2, timeout=0.05)  # frame 0 still holds slot 0
    ring.release(0)
    assert ring.acquire(2, timeout=0.05) == 0


def test_a_failing_stage_is_reported():
    def boom(slot):
        raise ValueError("download failed")

    runner = ThreadedDoubleBuffer(lambda s, x: None, lambda i, o: None, boom, timeout=1.0)
    with pytest.raises(ValueError, match="download failed"):
        runner.run(range(5))


@pytest.mark.gpu
def test_cuda_double_buffer_matches_the_function():
    import torch

    from realtime.buffers import CudaDoubleBuffer

    runner = CudaDoubleBuffer(lambda x: x * 2 + 1, (4, 8), (4, 8))
    items = [np.full((4, 8), i, np.float32) for i in range(9)]
    out = runner.run(items)
    assert [float(o[0, 0]) for o in out] == [2 * i + 1 for i in range(9)]
    assert all(isinstance(o, torch.Tensor) for o in out)
