"""Plugin ONNX graphs -> TensorRT engines, one per stage, each with a metadata file.

In: the folder ``export3d export onnx --variant plugin`` wrote (``manifest.json``,
``source_encoder.onnx``, ``frame_generator.onnx``). Out, in ``out_dir``:
``source_encoder.engine`` / ``frame_generator.engine`` and beside each ``<stage>.engine.json``:
format, stage, graph file and sha256, the ONNX folder, variant, precision, GPU name and compute
capability, TensorRT version, plugin id, optimisation level, workspace, build seconds. The
runtime refuses an engine whose metadata does not match the GPU or TensorRT it runs on.

Build: strongly typed networks (the precision is the graph's: fp16 graphs compute in fp16, the
ray-march node reads and writes fp32, so no precision flag is ever set; TensorRT 11 has no
other mode, and TensorRT 10 forbids the FP16/INT8 flags on strongly typed networks), the ONNX
parser with the ray-march plugin registered first (``plugin.register_plugin``) and the node
tagged with its plugin namespace, a persistent timing cache file shared by both stages, the
builder optimisation level, a workspace memory-pool limit and a progress monitor printing
TensorRT's build phases. Checks that need no TensorRT run first: a missing or modified graph, a
portable graph and a graph without the plugin node are refused before TensorRT is imported.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from engines.raymarch import contract

from . import import_tensorrt
from .device import gpu_info
from .errors import GraphError, TensorRTError
from .plugin import PLUGIN_ID, PLUGIN_VERSION, register_plugin, tag_plugin_nodes

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1  # export.manifest.FORMAT: the ONNX folder's manifest (a test keeps them equal)
STAGES = ("source_encoder", "frame_generator")
ENGINE_SUFFIX = ".engine"
META_SUFFIX = ".engine.json"
FORMAT = 1
OPT_LEVELS = range(0, 6)  # TensorRT's builder_optimization_level: 0 (fastest build) .. 5


@dataclass(frozen=True)
class BuildOptions:
    timing_cache: Path | None = None  # default: <out_dir>/timing.cache
    opt_level: int = 3  # TensorRT's default
    workspace_gb: float = 4.0
    verbose: bool = False

    def checked(self) -> "BuildOptions":
        if int(self.opt_level) not in OPT_LEVELS:
            raise TensorRTError(f"--opt-level must be 0..5 (TensorRT's builder optimisation "
                                f"level), got {self.opt_level}")
        if not (math.isfinite(self.workspace_gb) and self.workspace_bytes >= 1 << 20):
            raise TensorRTError(f"--workspace-gb must be a finite size of at least 1 MiB "
                                f"(0.001), got {self.workspace_gb}")
        return self

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gb * (1 << 30)) if math.isfinite(self.workspace_gb) else 0


def rebuild_command(onnx_dir, out_dir) -> str:
    return f"export3d export engine --onnx {onnx_dir} --out {out_dir}"


def engine_path(out_dir, stage: str) -> Path:
    return Path(out_dir) / f"{stage}{ENGINE_SUFFIX}"


def meta_path(out_dir, stage: str) -> Path:
    return Path(out_dir) / f"{stage}{META_SUFFIX}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------- checks without TRT

def read_graphs(onnx_dir) -> tuple[dict, dict[str, bytes]]:
    """(manifest, {stage: ONNX bytes}) of a plugin-variant export, every graph's sha256
    checked and the frame generator checked to hold exactly one ray-march node."""
    import onnx

    onnx_dir = Path(onnx_dir)
    export_cmd = f"export3d export onnx --variant plugin --out {onnx_dir}"
    path = onnx_dir / MANIFEST
    if not path.is_file():
        raise GraphError(f"{path} does not exist; write the plugin graphs first with "
                         f"'{export_cmd}'")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise GraphError(f"{path} is unreadable ({exc}); export the graphs again with "
                         f"'{export_cmd}'") from None
    if not manifest_well_formed(manifest):
        raise GraphError(f"{path} is not an export3d ONNX manifest of format {MANIFEST_FORMAT}; "
                         f"export the graphs again with '{export_cmd}'")
    graphs = manifest["graphs"]
    if manifest.get("variant") != "plugin":
        raise GraphError(f"{onnx_dir} holds the {manifest.get('variant', 'unknown')!r} variant, "
                         "whose ray march is standard ONNX ops for ONNX Runtime; TensorRT "
                         f"engines are built from the plugin variant: '{export_cmd}'")
    data = {}
    for stage in STAGES:
        entry = graphs.get(stage)
        if entry is None:
            raise GraphError(f"{path} lists no {stage} graph; export again with '{export_cmd}'")
        file = onnx_dir / entry["file"]
        if not file.is_file():
            raise GraphError(f"{file} is missing; export again with '{export_cmd}'")
        blob = file.read_bytes()
        if _sha256(blob) != entry.get("sha256"):
            raise GraphError(f"{file} does not match the sha256 in its manifest (modified or "
                             f"half-copied); export again with '{export_cmd}'")
        data[stage] = blob
    try:
        frame = onnx.load_from_string(data["frame_generator"])
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise GraphError(f"{onnx_dir / graphs['frame_generator']['file']} is not an ONNX graph "
                         f"({type(exc).__name__}); export again with '{export_cmd}'") from None
    frame_file = onnx_dir / graphs["frame_generator"]["file"]
    nodes = [n for n in frame.graph.node
             if n.domain == contract.DOMAIN and n.op_type == contract.OP_TYPE]
    if len(nodes) != 1:
        raise GraphError(f"{frame_file} has {len(nodes)} {contract.DOMAIN}::{contract.OP_TYPE} "
                         f"nodes, not one, so it is not a plugin graph of this version; export "
                         f"again with '{export_cmd}'")
    # The node's version is the graph's opset for the contract's domain: version 1 took the
    # tri-plane as [B, 3, C, P, P] and had no workspace output, which this plugin would misread.
    version = {i.domain: i.version for i in frame.opset_import}.get(contract.DOMAIN)
    if version != contract.VERSION:
        raise GraphError(f"{frame_file} holds version {version} of the ray-march node and this "
                         f"plugin runs version {contract.VERSION}; export again with "
                         f"'{export_cmd}'")
    return manifest, data


def manifest_well_formed(manifest) -> bool:
    """An export manifest of :data:`MANIFEST_FORMAT`: a ``graphs`` table whose entries name a
    file and its sha256."""
    return (isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT
            and isinstance(manifest.get("graphs"), dict)
            and all(isinstance(e, dict) and isinstance(e.get("file"), str)
                    and isinstance(e.get("sha256"), str) for e in manifest["graphs"].values()))


def export_id(manifest: dict) -> str:
    """The export both engines come from: the sha256 of its graphs' sha256s, in stage order.
    Recorded in each engine's metadata; the runtime refuses a pair whose ids differ."""
    return _sha256("".join(manifest["graphs"][s]["sha256"] for s in STAGES).encode())


def prepared_graph(stage: str, blob: bytes) -> bytes:
    """The bytes TensorRT parses: the frame generator's ray-march node tagged with the plugin
    namespace and version; the encoder unchanged."""
    if stage != "frame_generator":
        return blob
    import onnx

    model = onnx.load_from_string(blob)
    tag_plugin_nodes(model)
    return model.SerializeToString()


# ------------------------------------------------------------------------- TensorRT calls

def network_flags(trt) -> int:
    """Creation flags: STRONGLY_TYPED where the enum has it (TensorRT 10); TensorRT 11 networks
    are always strongly typed. EXPLICIT_BATCH is never set (deprecated in 10, gone in 11)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def progress_monitor(trt, report):
    """A ``trt.IProgressMonitor`` that reports each build phase (None where the class is
    missing)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self):
            base.__init__(self)
            self.depth = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.depth[phase_name] = self.depth.get(parent_phase, -1) + 1 if parent_phase \
                else 0
            report(f"{'  ' * self.depth[phase_name]}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            self.depth.pop(phase_name, None)

    return Monitor()


def parser_errors(parser) -> list[str]:
    out = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        desc = err.desc() if callable(getattr(err, "desc", None)) else str(err)
        node = err.node() if callable(getattr(err, "node", None)) else -1
        out.append(f"{desc} (node {node})" if node is not None and node >= 0 else desc)
    return out


def build_stage(trt, logger, stage: str, graph: bytes, graph_path: Path, options: BuildOptions,
                cache: bytes, report) -> tuple[bytes, bytes]:
    """One stage: parse, configure, build. Returns (serialized engine, timing cache)."""
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph, str(graph_path)):
        errors = parser_errors(parser) or ["no error reported"]
        if any(contract.OP_TYPE in e or "plugin" in e.lower() for e in errors):
            raise GraphError(f"TensorRT's ONNX parser found no usable {PLUGIN_ID} plugin for "
                             f"{graph_path.name} ({errors[0]}); this needs TensorRT 10.7+ with "
                             "tensorrt.plugin and the plugin registered by export3d")
        raise GraphError(f"TensorRT's ONNX parser rejected {graph_path.name} ({errors[0]}); "
                         "export the graph again or report it with this message")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = int(options.opt_level)
    timing = config.create_timing_cache(cache)
    if not config.set_timing_cache(timing, False):
        report(f"{stage}: the timing cache is from another GPU or TensorRT; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), False)
    monitor = progress_monitor(trt, report)
    if monitor is not None:
        config.progress_monitor = monitor
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise TensorRTError(f"TensorRT could not build the {stage} engine (its log above says "
                            "why); try a larger --workspace-gb or report it with that log")
    new_cache = config.get_timing_cache().serialize()
    return bytes(engine), bytes(new_cache)


def _write_atomic(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def build_engines(onnx_dir, out_dir, options: BuildOptions = BuildOptions(),
                  report=print) -> list[dict]:
    """Build both stages' engines; returns their metadata (also written beside each engine).
    ``report``: a callable taking one line of progress."""
    options = options.checked()
    onnx_dir, out_dir = Path(onnx_dir).resolve(), Path(out_dir)
    manifest, graphs = read_graphs(onnx_dir)
    trt = import_tensorrt()
    gpu, capability = gpu_info()
    register_plugin()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TensorRTError(f"cannot write to {out_dir} ({exc.strerror or exc}); choose a "
                            "writable folder with --out") from None
    cache_path = Path(options.timing_cache or out_dir / "timing.cache")
    cache = cache_path.read_bytes() if cache_path.is_file() else b""
    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    results, engines = [], {}
    for stage in STAGES:
        entry = manifest["graphs"][stage]
        report(f"{stage}: building a strongly typed {manifest.get('precision', 'fp32')} engine "
               f"on {gpu} (sm_{capability.replace('.', '')}), TensorRT {trt.__version__}, "
               f"optimisation level {options.opt_level}")
        start = time.perf_counter()
        engine, cache = build_stage(trt, logger, stage, prepared_graph(stage, graphs[stage]),
                                    onnx_dir / entry["file"], options, cache, report)
        seconds = time.perf_counter() - start
        _write_atomic(cache_path, cache)
        meta = {
            "format": FORMAT, "stage": stage, "engine": engine_path(out_dir, stage).name,
            "engine_sha256": _sha256(engine), "export_id": export_id(manifest),
            "onnx_dir": str(onnx_dir),
            "graph": entry["file"], "graph_sha256": entry["sha256"],
            "preset": manifest.get("preset"), "variant": manifest.get("variant"),
            "precision": manifest.get("precision"), "strongly_typed": True,
            "expression_code": manifest.get("expression_code"),
            "gpu": gpu, "compute_capability": capability, "tensorrt": str(trt.__version__),
            "plugin": {"id": PLUGIN_ID, "version": PLUGIN_VERSION} if stage ==
            "frame_generator" else None,
            "builder_optimization_level": int(options.opt_level),
            "workspace_bytes": options.workspace_bytes,
            "timing_cache": str(cache_path), "build_seconds": round(seconds, 2),
            "built_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "inputs": entry.get("inputs", {}), "outputs": entry.get("outputs", {}),
        }
        report(f"{stage}: built ({len(engine) / 1e6:.1f} MB, {seconds:.1f} s)")
        engines[stage] = engine
        results.append(meta)
    # Written only once both stages have built: a failed rebuild leaves the previous pair
    # whole, never a new encoder beside an old generator (and the runtime checks export_id).
    for meta in results:
        _write_atomic(engine_path(out_dir, meta["stage"]), engines[meta["stage"]])
        _write_atomic(meta_path(out_dir, meta["stage"]), json.dumps(meta, indent=2) + "\n")
        report(f"{meta['stage']}: wrote {engine_path(out_dir, meta['stage'])}")
    return results
