"""A bounded latest-frame-wins queue: a full queue drops its oldest item and counts the drop."""
from __future__ import annotations

import collections
import threading

CLOSED = object()


class LatestQueue:
    def __init__(self, maxsize: int = 1, lossless: bool = False):
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self.lossless = lossless  # True: put() waits for room instead of dropping (offline runs)
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.drops = 0
        self.puts = 0

    def put(self, item) -> None:
        with self._cond:
            if self.lossless:
                self._cond.wait_for(lambda: len(self._items) < self.maxsize or self._closed)
            if self._closed:
                return
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.drops += 1
            self._items.append(item)
            self.puts += 1
            self._cond.notify()

    def get(self, timeout: float | None = None):
        """The oldest kept item; ``CLOSED`` once closed and empty; ``None`` on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            return CLOSED

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
