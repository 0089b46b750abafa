"""Tolerances, stated once, and small builders shared by the model tests."""
from __future__ import annotations

import torch

# (atol, rtol) by dtype for comparisons of computed values against references.
TOLERANCE = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def assert_close(actual, expected, dtype=torch.float32, **kw):
    atol, rtol = TOLERANCE[dtype]
    torch.testing.assert_close(actual, expected, atol=kw.pop("atol", atol),
                               rtol=kw.pop("rtol", rtol), **kw)
