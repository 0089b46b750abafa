"""``manifest.json``: what was exported, from what, with which tools, and each graph's sha256.

Written beside the graphs by :func:`export.onnx_export.export_onnx`; read by the ONNX Runtime
backend (and the engine builder) to find the graphs, their I/O and precision, and to refuse a
graph whose bytes no longer match (:func:`verify`).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path

import onnx

from engines.trt.builder import manifest_well_formed  # the engine builder reads it too
from export3d.config import EXPRESSION_CODE_VERSION
from export3d.errors import UserError

MANIFEST = "manifest.json"
FORMAT = 1
GRAPHS = {"source_encoder": "source_encoder.onnx", "frame_generator": "frame_generator.onnx"}


class ManifestError(UserError):
    """A missing, unreadable or mismatching manifest."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dtype(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def _values(values) -> dict[str, dict]:
    out = {}
    for v in values:
        t = v.type.tensor_type
        out[v.name] = {"shape": [d.dim_value if d.HasField("dim_value") else d.dim_param
                                 for d in t.shape.dim], "dtype": _dtype(t.elem_type)}
    return out


def graph_entry(path: Path, model: onnx.ModelProto) -> dict:
    return {
        "file": path.name,
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
        "nodes": len(model.graph.node),
        "inputs": _values(model.graph.input),
        "outputs": _values(model.graph.output),
    }


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("export3d", "torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "onnxslim",
                 "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if "export3d" not in versions:
        from export3d import __version__

        versions["export3d"] = __version__
    return versions


def write(directory: Path, manifest: dict) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read(directory: str | Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path} does not exist; run 'export3d export onnx --out "
                            f"{Path(directory)}' first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise ManifestError(f"{path} is unreadable ({exc}); export the graphs again") from None
    if not manifest_well_formed(manifest):
        raise ManifestError(f"{path} is not an export3d ONNX manifest of format {FORMAT}; "
                            "export the graphs again")
    return manifest


def verify(directory: str | Path, manifest: dict | None = None) -> dict:
    """Check every graph's sha256 against the manifest; return the manifest."""
    directory = Path(directory)
    manifest = manifest or read(directory)
    for stage, entry in manifest["graphs"].items():
        path = directory / entry["file"]
        if not path.is_file():
            raise ManifestError(f"{path} is missing; export the graphs again")
        if sha256(path) != entry["sha256"]:
            raise ManifestError(f"{path} does not match the sha256 in its manifest (modified or "
                                "half-copied); export the graphs again")
    return manifest


def check_expression_code(recorded, where: str, what: str = "graphs") -> None:
    """Refuse ``what`` (graphs, engines) exported from weights trained on another expression
    code than this extractor produces, as loading a checkpoint does: the codes would be fed
    to a generator that reads them differently, and every frame would be quietly wrong.
    ``recorded``: the manifest's (or engine metadata's) ``expression_code``; an export that
    does not record it predates the field and is refused too."""
    if recorded != EXPRESSION_CODE_VERSION:
        told = f"expression code {recorded!r}" if recorded else "an unrecorded expression code"
        raise ManifestError(
            f"the {what} in {where} were exported from weights trained on {told}, but this "
            f"extractor produces {EXPRESSION_CODE_VERSION!r}; export them again from a "
            "checkpoint trained on it")
