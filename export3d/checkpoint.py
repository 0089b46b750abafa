"""Checkpoints: one safetensors file whose metadata carries the JSON config.

Metadata keys: ``export3d_config`` (the :class:`ModelConfig` as JSON), ``export3d_version``,
``expression_code`` (the expression-code version the weights were trained on), ``torch``.
Loading checks keys and shapes and names the first mismatch in one sentence; nothing is ever
unpickled (a pickle / ``torch.save`` file is refused by its first bytes).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from . import __version__
from .config import EXPRESSION_CODE_VERSION, ModelConfig
from .errors import UserError
from .model import Export3D


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_checkpoint(model: Export3D, path: str | Path, extra: dict[str, str] | None = None,
                    expression_code: str = EXPRESSION_CODE_VERSION) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "export3d_config": json.dumps(model.config.to_dict()),
        "export3d_version": __version__,
        "expression_code": expression_code,
        "torch": torch.__version__,
        **(extra or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)  # never leave a half-written checkpoint under the real name
    except Exception as exc:  # safetensors' SafetensorError wraps the OSError
        if tmp.is_file():
            tmp.unlink()
        if isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError":
            raise CheckpointError(f"cannot write checkpoint {path}: {exc}") from None
        raise
    return path


def read_header(path: str | Path) -> dict:
    """The safetensors header (tensor table + ``__metadata__``), checked to be safetensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(9)
        size = struct.unpack("<Q", head[:8])[0] if len(head) == 9 else 0
        # A safetensors file is its header's length (8 bytes, little-endian) and the header's
        # JSON object. That length's first byte may be 0x80, or its first two "PK", like a
        # pickle's or a torch.save zip's start, so those are recognised only in a file that is
        # not laid out as safetensors (header lengths are multiples of 8, so one checkpoint in 32
        # was refused as a pickle).
        laid_out = len(head) == 9 and head[8:9] == b"{" and 8 + size <= path.stat().st_size
        if not laid_out and (head[:2] == b"PK" or head[:1] == b"\x80"):
            raise CheckpointError(
                f"{path} is a pickle/torch.save file, which is never loaded (it can run code); "
                "convert it to safetensors with export3d's save_checkpoint")
        if len(head) < 9:
            raise CheckpointError(f"{path} is not a safetensors checkpoint (file too short)")
        f.seek(8)
        if size > 100_000_000:
            raise CheckpointError(f"{path} is not a safetensors checkpoint (bad header size)")
        raw = f.read(size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a safetensors checkpoint (unreadable "
                              "header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a safetensors checkpoint (unreadable header)")
    return header


def read_config(path: str | Path) -> tuple[ModelConfig, dict]:
    meta = read_header(path).get("__metadata__") or {}
    if "export3d_config" not in meta:
        raise CheckpointError(f"{path} has no export3d config in its metadata; "
                              "it was not written by export3d")
    try:
        config = ModelConfig.from_dict(json.loads(meta["export3d_config"]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} has an invalid export3d config: {exc}") from None
    return config, meta


def load_checkpoint(path: str | Path, render_impl: str = "auto",
                    expression_code: str = EXPRESSION_CODE_VERSION,
                    map_location: str = "cpu") -> Export3D:
    """Build the model the checkpoint describes and load its weights, strictly."""
    config, meta = read_config(path)
    code = meta.get("expression_code")
    if code != expression_code:
        raise CheckpointError(
            f"{path} was trained on expression code {code!r} but this extractor produces "
            f"{expression_code!r}; retrain or use a matching checkpoint")
    model = Export3D(config, render_impl)
    try:
        from safetensors.torch import load_file
    except ImportError:  # a machine with torch but not this package's dependencies
        tensors = read_tensors(path, map_location)
    else:
        try:
            tensors = load_file(str(path), device=map_location)
        except Exception as exc:  # noqa: BLE001 - safetensors' own error type (Rust)
            if isinstance(exc, OSError):
                raise
            raise CheckpointError(f"{path} is truncated or damaged ({exc}); copy or download "
                                  "it again") from None
    load_weights(model, tensors, source=str(path))
    return model.eval()


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16,
           "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
           "F8_E5M2": torch.float8_e5m2}


def read_tensors(path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors without the safetensors package, which the GPU machines the
    GPU suite runs on are not documented to have: the header's table of dtype, shape and byte
    range per tensor over the data that follows it, little-endian."""
    header = read_header(path)
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + size)
        data = f.read()
    tensors, ranges = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            kind = entry["dtype"]
            start, end = (int(v) for v in entry["data_offsets"])
            shape = [int(v) for v in entry["shape"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path} has an unreadable entry for {name!r}") from None
        if kind not in _DTYPES:
            raise CheckpointError(f"{path} holds {name!r} as {kind}, which this reader does not "
                                  "know; pip install safetensors")
        dtype = _DTYPES[kind]
        if not 0 <= start <= end <= len(data):
            raise CheckpointError(f"{path} is truncated or damaged ({name!r} lies past its "
                                  "end); copy or download it again")
        count = 1
        for n in shape:
            count *= n
        if end - start != count * torch.empty(0, dtype=dtype).element_size():
            raise CheckpointError(f"{path} has an entry {name!r} whose size is not its shape's")
        flat = (torch.frombuffer(bytearray(memoryview(data)[start:end]), dtype=dtype) if count
                else torch.empty(0, dtype=dtype))
        tensors[name] = flat.reshape(shape).to(device)
        ranges.append((start, end))
    # As the format requires: the tensors cover the data exactly, no gap, no overlap, nothing
    # after them.
    covered = 0
    for start, end in sorted(ranges):
        if start != covered:
            break
        covered = end
    if covered != len(data):
        raise CheckpointError(f"{path} is damaged (its tensors do not cover its data exactly); "
                              "copy or download it again")
    return tensors


def load_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    for name in expected:
        if name not in tensors:
            raise CheckpointError(f"{source} lacks weight {name!r}: it is for another model")
    for name, tensor in tensors.items():
        if name not in expected:
            raise CheckpointError(f"{source} has unexpected weight {name!r}: it is for another "
                                  "model")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{source}: weight {name!r} has shape {tuple(tensor.shape)} but the model "
                f"expects {tuple(expected[name].shape)}")
    model.load_state_dict(tensors, strict=True)
