"""A training state (weights, EMA, optimisers, step: nested dicts and lists of tensors and
JSON values) as one ``.safetensors`` file, so resuming a run never unpickles: a ``torch.save``
file, even loaded with ``weights_only=True``, is a pickle that a restricted unpickler reads.

Layout: every tensor under its path in the nesting (``opt_g/state/3/exp_avg``), and the nesting
itself as JSON in the file's metadata (key ``export3d_state``), where a tensor stands as
``{"tensor": PATH}`` and a dict as ``{"dict": [[key, value], ...]}`` so integer keys (an
optimiser's parameter ids) come back as integers. Tensors are written from CPU copies and read
onto ``map_location``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

META_KEY = "export3d_state"
FORMAT = 1


class StateError(ValueError):
    """The file is not a training state this module wrote (cut, damaged, or another kind)."""


def _flatten(value, path: str, tensors: dict):
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().to("cpu", copy=True).contiguous()
        return {"tensor": path}
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"state key {key!r} at {path!r} is neither str nor int")
        return {"dict": [[k, _flatten(v, f"{path}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"list": [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"state value at {path!r} is a {type(value).__name__}")


def _unflatten(node, tensors: dict):
    if not isinstance(node, dict) or len(node) != 1:
        raise StateError("malformed state layout")
    (kind, body), = node.items()
    if kind == "tensor":
        return tensors[body]
    if kind == "dict":
        return {k: _unflatten(v, tensors) for k, v in body}
    if kind == "list":
        return [_unflatten(v, tensors) for v in body]
    if kind == "value":
        return body
    raise StateError(f"unknown state node {kind!r}")


def save_state(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    layout = _flatten(state, "", tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps({"format": FORMAT,
                                                                 "layout": layout})})
    os.replace(tmp, path)


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The state :func:`save_state` wrote; :class:`StateError` for anything else."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except StateError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors' own error types (Rust), JSON, keys
        raise StateError(f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise StateError(f"not a training state of format {FORMAT}")
    try:
        return _unflatten(meta["layout"], tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"malformed state layout ({type(exc).__name__})") from None
