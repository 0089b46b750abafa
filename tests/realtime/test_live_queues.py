import threading
import time

from realtime.queues import CLOSED, LatestQueue


def test_latest_frame_wins_counts_drops():
    q = LatestQueue(maxsize=1)
    for i in range(5):
        q.put(i)
    assert q.drops == 4 and q.puts == 5
    assert q.get(timeout=0.1) == 4
    assert q.get(timeout=0.01) is None
    q.close()
    assert q.get(timeout=0.1) is CLOSED


def test_lossless_queue_waits_instead_of_dropping():
    q = LatestQueue(maxsize=2, lossless=True)
    got = []

    def consume():
        while (item := q.get(timeout=1.0)) is not CLOSED:
            got.append(item)
            time.sleep(0.001)

    t = threading.Thread(target=consume)
    t.start()
    for i in range(50):
        q.put(i)
    q.close()
    t.join(timeout=5)
    assert not t.is_alive()
    assert got == list(range(50)) and q.drops == 0


def test_close_wakes_a_blocked_put():
    q = LatestQueue(maxsize=1, lossless=True)
    q.put(0)
    t = threading.Thread(target=q.put, args=(1,))
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(timeout=2)
    assert not t.is_alive()
