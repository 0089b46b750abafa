"""PyTorch -> ONNX: two static-shape graphs and a manifest in one folder.

``export_onnx(model, out_dir, variant=, precision=)`` writes
- ``source_encoder.onnx``: ``source_image [1, 3, H, W]`` -> ``source_high``, ``source_tokens``;
- ``frame_generator.onnx``: ``source_high``, ``source_tokens``, ``expr [1, 64]``, ``camera [1, 25]``
  -> ``image [1, 3, H, W]``, ``image_raw [1, 3, r, r]``, ``depth [1, 1, r, r]``;
- ``manifest.json`` (:mod:`export.manifest`).
Exporter: torch.onnx's TorchScript exporter (``dynamo=False``) at opset 17: it exports in well
under a second per graph, keeps the plugin's custom node through ``autograd.Function.symbolic``,
and emits only opset-17 ops that TensorRT's parser lists. The reference renderer's stable
``torch.sort`` has no symbolic in that exporter; :func:`_stable_sort_symbolic` maps it to ONNX
``TopK(largest=0, sorted=1)``, whose tie rule (lower index first) is exactly a stable sort.
Every graph is simplified (:mod:`export.simplify`) and linted (:mod:`export.lint`); files are
written to a temporary folder inside ``out_dir`` and moved into place only when all succeeded.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from export3d.config import EXPRESSION_CODE_VERSION, get_config
from export3d.errors import UserError

from . import lint, manifest
from .graphs import (FRAME_INPUTS, FRAME_OUTPUTS, PRECISIONS, SOURCE_INPUTS, SOURCE_OUTPUTS,
                     VARIANTS, FrameGenerator, SourceEncoder, example_inputs, export_ready)
from .simplify import simplify as simplify_graph

DEFAULT_OPSET = 17
MIN_OPSET = 17
EXPORTER = "torch.onnx TorchScript exporter (dynamo=False)"


class ExportError(UserError):
    """The export cannot proceed; the message says why and what to do."""


@dataclass
class ExportResult:
    out_dir: Path
    manifest: dict
    seconds: dict[str, float] = field(default_factory=dict)

    def path(self, stage: str) -> Path:
        return self.out_dir / self.manifest["graphs"][stage]["file"]


_SORT_REGISTERED: set[int] = set()


def _stable_sort_symbolic(g, self, stable, dim, descending):
    from torch.onnx import symbolic_helper as sh

    dim = sh._get_const(dim, "i", "dim")
    descending = bool(sh._get_const(descending, "b", "descending"))
    sizes = self.type().sizes()
    if sizes is None or sizes[dim] is None:
        raise ExportError("torch.sort needs a static size along its dimension to export as TopK")
    k = g.op("Constant", value_t=torch.tensor([sizes[dim]], dtype=torch.int64))
    values, indices = g.op("TopK", self, k, axis_i=dim, largest_i=int(descending), sorted_i=1,
                           outputs=2)
    # The tracer cannot infer TopK's shapes from a Constant K; state them.
    values.setType(self.type())
    indices.setType(self.type().with_dtype(torch.int64))
    return values, indices


def _register_symbolics(opset: int) -> None:
    if opset in _SORT_REGISTERED:
        return
    torch.onnx.register_custom_op_symbolic("aten::sort", _stable_sort_symbolic, opset)
    _SORT_REGISTERED.add(opset)


def max_opset() -> int:
    """The newest opset torch's exporter accepts (23 in torch 2.11 and 2.13; above it,
    ``torch.onnx.export`` fails with "Unsupported onnx_opset_version")."""
    from torch.onnx import _constants  # private, hence the fallback

    return int(getattr(_constants, "ONNX_MAX_OPSET", 23))


def trace(module: torch.nn.Module, args: tuple, input_names, output_names,
          opset: int = DEFAULT_OPSET, custom_opsets: dict[str, int] | None = None
          ) -> onnx.ModelProto:
    """One module -> an ONNX model with static shapes and the given I/O names."""
    _register_symbolics(opset)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(module, args, buffer, input_names=list(input_names),
                          output_names=list(output_names), opset_version=opset, dynamo=False,
                          do_constant_folding=True, custom_opsets=custom_opsets or {})
    return onnx.load_from_string(buffer.getvalue())


def check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: LayerNormalization and GridSample need "
                          f"opset {MIN_OPSET} or newer")
    if opset > max_opset():
        raise ExportError(f"opset {opset} is newer than this torch exports (up to "
                          f"{max_opset()}); use --opset {MIN_OPSET}..{max_opset()}")


def build_graphs(model, variant: str = "portable", precision: str = "fp32",
                 opset: int = DEFAULT_OPSET, simplify: bool = True, progress=None):
    """Trace (and simplify) both stages. Returns ({stage: ModelProto}, {stage: simplifier},
    {step: seconds}). ``progress``: a callable taking a step description, or None."""
    if variant not in VARIANTS:
        raise ExportError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}; choose one of: "
                          f"{', '.join(PRECISIONS)}")
    check_opset(opset)
    step = progress or (lambda _: None)
    config = model.config
    custom_opsets = {}
    if variant == "plugin":
        from .plugin import contract_summary

        summary = contract_summary()  # fails early, and clearly, without the engines contract
        custom_opsets = {summary["domain"]: summary["version"]}
    graphs, tools, seconds = {}, {}, {}
    with export_ready(model, precision) as ready:
        example = example_inputs(config, precision)
        encoder = SourceEncoder(ready)
        generator = FrameGenerator(ready, variant)
        with torch.no_grad():
            high, tokens = encoder(example["source_image"])
        jobs = {
            "source_encoder": (encoder, (example["source_image"],), SOURCE_INPUTS,
                               SOURCE_OUTPUTS),
            "frame_generator": (generator, (high, tokens, example["expr"], example["camera"]),
                                FRAME_INPUTS, FRAME_OUTPUTS),
        }
        for stage, (module, args, names_in, names_out) in jobs.items():
            step(f"{stage}: trace")
            t = time.perf_counter()
            graph = trace(module, args, names_in, names_out, opset,
                          custom_opsets if stage == "frame_generator" else None)
            seconds[f"{stage}.trace"] = time.perf_counter() - t
            tools[stage] = "none"
            if simplify:
                step(f"{stage}: simplify")
                t = time.perf_counter()
                graph, tools[stage] = simplify_graph(graph, stage)
                seconds[f"{stage}.simplify"] = time.perf_counter() - t
            graphs[stage] = graph
    return graphs, tools, seconds


def custom_ops(variant: str) -> tuple[tuple[str, str], ...]:
    if variant != "plugin":
        return ()
    from .plugin import custom_op_id

    return (custom_op_id(),)


def _open_output(out_dir: Path) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"--out {out_dir} is a file; give a folder to write the graphs into")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".export3d-onnx-", dir=out_dir))
    except OSError as exc:
        raise ExportError(f"cannot write to {out_dir} ({exc.strerror or exc}); choose a writable "
                          "folder with --out") from None


def export_onnx(model, out_dir: str | Path, variant: str = "portable", precision: str = "fp32",
                opset: int = DEFAULT_OPSET, simplify: bool = True, preset: str | None = None,
                checkpoint: str | Path | None = None, progress: bool = False) -> ExportResult:
    """Export ``model`` (an :class:`export3d.model.Export3D`) into ``out_dir``; see the module
    docstring. Existing graphs there are replaced only once the new ones are complete."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    check_opset(opset)  # before the output folder is made
    tmp = _open_output(out_dir)
    total = 5 + (2 if simplify else 0)
    bar = tqdm(total=total, desc="export onnx", unit="step", disable=not progress, leave=True)

    def step(text):
        bar.set_postfix_str(text)
        bar.update(1)

    try:
        t0 = time.perf_counter()
        graphs, tools, seconds = build_graphs(model, variant, precision, opset, simplify, step)
        step("TensorRT lint")
        allowed = custom_ops(variant)
        lint_results = {}
        for stage, graph in graphs.items():
            found = lint.lint_tensorrt(graph, allowed)
            if variant == "plugin" and found:
                lint.check_tensorrt(graph, allowed, what=f"plugin {stage} graph")
            lint_results[stage] = [str(f) for f in found] or "pass"
        step("write")
        entries = {}
        for stage, graph in graphs.items():
            path = tmp / manifest.GRAPHS[stage]
            try:
                onnx.save(graph, str(path))
            except OSError as exc:
                raise ExportError(f"cannot write {out_dir / path.name} ({exc.strerror or exc}); "
                                  "free some space or choose another --out") from None
            entries[stage] = manifest.graph_entry(path, graph)
            entries[stage]["simplifier"] = tools[stage]
            entries[stage]["tensorrt_lint"] = lint_results[stage]
            entries[stage]["ops"] = lint.op_counts(graph)
        seconds["total"] = time.perf_counter() - t0
        info = {
            "format": manifest.FORMAT,
            "preset": preset or model.config.preset,
            "variant": variant,
            "precision": precision,
            "opset": opset,
            "expression_code": EXPRESSION_CODE_VERSION,
            "checkpoint": _checkpoint_info(checkpoint),
            "config": model.config.to_dict(),
            "exporter": EXPORTER,
            "custom_ops": [{"domain": d, "op_type": op} for d, op in allowed],
            "graphs": entries,
            "export_seconds": {k: round(v, 3) for k, v in seconds.items()},
            "versions": manifest.library_versions(),
        }
        if variant == "plugin":
            from .plugin import contract_summary

            info["custom_op_contract"] = contract_summary()
        manifest.write(tmp, info)
        step("move into place")
        (out_dir / manifest.MANIFEST).unlink(missing_ok=True)  # stale until the new one lands
        for stage in graphs:
            os.replace(tmp / manifest.GRAPHS[stage], out_dir / manifest.GRAPHS[stage])
        os.replace(tmp / manifest.MANIFEST, out_dir / manifest.MANIFEST)
        bar.close()
        return ExportResult(out_dir, info, seconds)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _checkpoint_info(checkpoint) -> dict | None:
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    return {"file": path.name, "sha256": manifest.sha256(path)}


def load_model(preset: str | None, checkpoint: str | Path | None = None, seed: int = 0):
    """The model to export: the checkpoint's (which must match ``preset`` when both are given),
    or the preset with deterministic random weights."""
    from export3d.checkpoint import load_checkpoint, read_config
    from export3d.model import build_model

    if checkpoint is None:
        if preset is None:
            raise ExportError("give --preset (tiny or paper512) or --checkpoint")
        try:
            config = get_config(preset)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        return build_model(config, seed=seed, render_impl="reference")
    config, _ = read_config(checkpoint)  # CheckpointError (a UserError) for a bad file
    if preset is not None:
        try:
            expected = get_config(preset)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        if config.preset != preset or config != expected:
            differing = [k for k, v in expected.to_dict().items()
                         if config.to_dict().get(k) != v and k != "preset"]
            detail = f" (differs in {', '.join(differing[:4])})" if differing else ""
            raise ExportError(f"checkpoint {checkpoint} is for preset {config.preset!r}"
                              f"{detail}, not {preset!r}; pass --preset {config.preset} or a "
                              f"{preset} checkpoint")
    return load_checkpoint(checkpoint, render_impl="reference")
