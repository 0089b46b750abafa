"""Reports as strict JSON (RFC 8259), which has no NaN or infinity.

Python's ``json`` writes a non-finite float as the bare tokens ``NaN``, ``Infinity`` and
``-Infinity``: Python reads them back, but ``jq``, JavaScript's ``JSON.parse`` and most other
readers refuse the whole file. A kernel that produces NaNs is exactly when a report matters
most, so :func:`dumps` writes those values as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` (the spelling of protobuf's JSON mapping) and :func:`loads` turns those strings
back into floats, so arithmetic on a reloaded report works as on the one in memory. It also
reads older reports written with the bare tokens. Standard library only: the GPU suite
imports this on machines with nothing but PyTorch and Triton.
"""
from __future__ import annotations

import json
import math

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _name(x: float) -> str:
    return "NaN" if math.isnan(x) else "Infinity" if x > 0 else "-Infinity"


def finite(obj):
    """``obj`` with every non-finite float (numpy's ``float64`` included, a float subclass)
    replaced by its name; containers are copied, nothing else is touched."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else _name(obj)
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """``json.dumps`` that never writes a bare NaN or infinity (``default=`` still applies
    to objects JSON has no form for)."""
    default = kwargs.pop("default", None)
    if default is not None:
        inner = default

        def default(o):  # what default returns is made finite too
            return finite(inner(o))
    return json.dumps(finite(obj), allow_nan=False, default=default, **kwargs)


def dump(obj, f, **kwargs) -> None:
    f.write(dumps(obj, **kwargs))


def _restored(obj):
    if isinstance(obj, str):
        return NON_FINITE.get(obj, obj)
    if isinstance(obj, dict):
        return {k: _restored(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restored(v) for v in obj]
    return obj


def loads(text: str):
    """A report :func:`dumps` wrote (or an older one with bare tokens), with ``"NaN"``,
    ``"Infinity"`` and ``"-Infinity"`` read back as floats."""
    return _restored(json.loads(text))
