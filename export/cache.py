"""Built artefacts in the user's cache: the ONNX graphs and TensorRT engines a run needs, made
once and found again by every later run, so ``export3d live --backend onnxruntime`` (or
``tensorrt``) needs no export or build step (:func:`cached_graphs`, :func:`cached_engines`).

:func:`cached_graphs` returns ``<cache>/graphs/<key>`` (``<cache>``: ``$EXPORT3D_CACHE``, else
``~/.cache/export3d``, as the assets). The key hashes everything the graphs are a function of:
the weights (the checkpoint's sha256, or the preset's name for its seed-0 random weights), the
variant, the precision, the opset, the exporter (torch's version) and this code (the source
of ``export3d`` and ``export``, so an edit never reuses graphs of the code before it). A
folder whose manifest verifies (every graph's sha256) is reused; anything else is exported
again, and :func:`export.onnx_export.export_onnx` moves files into place only once all are
written, so an interrupted export leaves nothing that verifies.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("export3d", "export")  # the packages the graphs are traced from


def code_digest() -> str:
    """sha256 over the ``.py`` files of :data:`CODE`, by relative path and content."""
    digest = hashlib.sha256()
    for package in CODE:
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def graphs_key(checkpoint: str | Path | None, preset: str, variant: str = "portable",
               precision: str = "fp32", opset: int | None = None) -> str:
    import torch

    from export3d import __version__
    from export3d.assets import sha256_of

    from .onnx_export import DEFAULT_OPSET

    weights = f"checkpoint {sha256_of(Path(checkpoint))}" if checkpoint else \
        f"random {preset} seed 0"
    parts = (weights, variant, precision, str(opset or DEFAULT_OPSET), f"torch {torch.__version__}",
             f"export3d {__version__}", code_digest())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def cached_graphs(checkpoint: str | Path | None = None, preset: str = "tiny",
                  variant: str = "portable", precision: str = "fp32", say=None,
                  progress: bool = True) -> Path:
    """The folder of graphs for these weights, exported into the cache on first use.
    ``checkpoint`` wins over ``preset`` (its own preset is used); ``say``: a callable taking
    one line (default: stderr)."""
    from export3d.assets import cache_dir

    from . import manifest
    from .onnx_export import export_onnx, load_model

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    folder = cache_dir() / "graphs" / graphs_key(checkpoint, preset, variant, precision)
    try:
        manifest.verify(folder)
        return folder
    except manifest.ManifestError:
        pass  # not there yet, half-written or modified: export (again)
    say(f"exporting the ONNX graphs once into {folder} (later runs reuse them)")
    model = load_model(None if checkpoint else preset, checkpoint)
    export_onnx(model, folder, variant=variant, precision=precision,
                preset=model.config.preset, checkpoint=checkpoint, progress=progress)
    return folder


def cached_engines(checkpoint: str | Path | None = None, preset: str = "tiny",
                   precision: str = "fp16", say=None, progress: bool = True) -> Path:
    """TensorRT engines for these weights on this GPU and TensorRT, built into the cache on
    first use: ``<cache>/engines/<key>``, the key hashing the plugin graphs' own key (which
    are :func:`cached_graphs` of variant "plugin", in ``precision``), the GPU's name and compute
    capability and TensorRT's version, so another card or TensorRT builds its own. A folder
    holding both engines and their metadata is reused (the runtime checks them again when it
    opens them). TensorRT missing or no GPU: :class:`export.backend.BackendError`, before any
    export."""
    from engines.trt import builder, import_tensorrt
    from engines.trt.errors import TensorRTError
    from export3d.assets import cache_dir

    from .backend import BackendError

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        trt = import_tensorrt()
        gpu, capability = builder.gpu_info()
    except TensorRTError as exc:
        raise BackendError(str(exc)) from None
    graphs = cached_graphs(checkpoint, preset, "plugin", precision, say=say, progress=progress)
    key = hashlib.sha256(f"{graphs.name}\n{gpu}\n{capability}\n{trt.__version__}".encode())
    folder = cache_dir() / "engines" / key.hexdigest()[:20]
    if all(builder.engine_path(folder, stage).is_file() and
           builder.meta_path(folder, stage).is_file() for stage in builder.STAGES):
        return folder
    say(f"building the TensorRT engines once into {folder} ({gpu}, TensorRT "
        f"{trt.__version__}; minutes; later runs reuse them)")
    try:
        builder.build_engines(graphs, folder, report=lambda line: say(f"  {line}"))
    except TensorRTError as exc:
        raise BackendError(str(exc)) from None
    return folder


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def entries() -> list[dict]:
    """What the cache holds of built artefacts: one dict per folder (kind, path, bytes, what)."""
    import json

    from export3d.assets import cache_dir

    out = []
    for kind, described in (("graphs", "manifest.json"),
                            ("engines", "frame_generator.engine.json")):
        root = cache_dir() / kind
        for folder in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else ():
            try:
                info = json.loads((folder / described).read_text())
            except (OSError, ValueError):
                what = "incomplete (an export or build that did not finish)"
            else:
                if kind == "graphs":
                    weights = (info.get("checkpoint") or {}).get("file") or "random weights"
                    what = (f"{info.get('preset')} {info.get('variant')} {info.get('precision')}"
                            f", {weights}")
                else:
                    what = (f"{info.get('preset')} {info.get('precision')}, {info.get('gpu')}, "
                            f"TensorRT {info.get('tensorrt')}")
            out.append({"kind": kind, "path": folder, "bytes": _size(folder), "what": what})
    return out


def register(subparsers) -> None:
    """``export3d cache``: list the built artefacts in the cache, or clear them."""
    p = subparsers.add_parser("cache", help="list (or --clear) the ONNX graphs and TensorRT "
                              "engines built into the cache")
    p.add_argument("--clear", action="store_true", help="delete them (the assets stay)")
    p.set_defaults(run=run)


def run(args) -> None:
    import shutil

    from export3d.assets import cache_dir

    found = entries()
    for entry in found:
        print(f"{entry['kind']:<8} {entry['bytes'] / 1e6:8.1f} MB  {entry['path']}  "
              f"({entry['what']})")
    total = sum(e["bytes"] for e in found)
    if not args.clear:
        print(f"{len(found)} built folder(s), {total / 1e6:.1f} MB in {cache_dir()} "
              "(export3d cache --clear deletes them; the assets stay)")
        return
    for kind in ("graphs", "engines"):
        shutil.rmtree(cache_dir() / kind, ignore_errors=True)
    print(f"deleted {len(found)} built folder(s), {total / 1e6:.1f} MB; the assets stay in "
          f"{cache_dir()}")
