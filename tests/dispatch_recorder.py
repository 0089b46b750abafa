"""A dispatch mode that records the aten operators a predicate picks: how tests see what a
piece of code runs (tensors built from Python data, gain buffers built per call)."""
from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class OpsSeen(TorchDispatchMode):
    """Records, by name, the aten operators that ``match(func)`` picks while active."""

    def __init__(self, match):
        super().__init__()
        self.match = match
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.match(func):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def from_python() -> OpsSeen:
    """Tensors built from Python data (``aten.lift_fresh`` on a CPU): a host-to-device copy
    on a GPU, which a CUDA graph capture refuses."""
    return OpsSeen(lambda func: "lift_fresh" in str(func))
