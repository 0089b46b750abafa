"""The engine builder and ``export3d export engine`` against the recording ``tensorrt``
stand-in: which calls and flags it makes under TensorRT 10 and 11, what it writes, and the
one-sentence errors (no TensorRT, old TensorRT, no GPU, portable graph, graph without the
plugin node, modified graph, parser failure, failed build). Proves our logic, not TensorRT."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import trt_standin

import export3d.cli
from engines.trt import builder
from engines.trt.device import NO_GPU
from engines.trt.errors import GraphError, NoGPU, TensorRTError, TensorRTMissing

GPU = ("NVIDIA H100 80GB HBM3", "9.0")


@pytest.fixture
def standin(monkeypatch):
    trt, trtp, calls = trt_standin.make()
    trt_standin.install(monkeypatch, trt, trtp)
    monkeypatch.setattr(builder, "gpu_info", lambda: GPU)
    return trt, calls


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setitem(export3d.cli.BUILTIN, "export", "export.cli:register")
    return export3d.cli.main


def _named(calls, name):
    return [c for c in calls if c[0] == name]


def test_build_makes_the_documented_calls(standin, plugin_graphs, tmp_path):
    trt, calls = standin
    out = tmp_path / "engines"
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old-cache")
    lines = []
    options = builder.BuildOptions(timing_cache=cache, opt_level=5, workspace_gb=2)
    metas = builder.build_engines(plugin_graphs, out, options, report=lines.append)
    assert [m["stage"] for m in metas] == ["source_encoder", "frame_generator"]
    # strongly typed networks, no precision flag, ever
    assert [c[1] for c in _named(calls, "create_network")] == [1 << 1] * 2
    assert _named(calls, "set_flag") == []
    assert _named(calls, "set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE",
                                                       2 << 30)] * 2
    assert _named(calls, "builder_optimization_level") == [("builder_optimization_level",
                                                            5)] * 2
    # the timing cache is read, chained from stage to stage, and written back
    created = [c[1] for c in _named(calls, "create_timing_cache")]
    assert created == [b"old-cache", b"old-cache+timed"]
    assert cache.read_bytes() == b"old-cache+timed+timed"
    assert all(c[2] is False for c in _named(calls, "set_timing_cache"))
    assert len(_named(calls, "progress_monitor")) == 2
    assert any("Building engine (2 steps)" in line for line in lines)
    # the plugin is registered before anything is parsed, and the node carries its namespace
    order = [c[0] for c in calls]
    assert order.index("trtp.register") < order.index("parse")
    parsed = _named(calls, "parse")
    encoder = onnx.load_from_string(parsed[0][1])
    generator = onnx.load_from_string(parsed[1][1])
    assert parsed[1][2].endswith("frame_generator.onnx")
    node = next(n for n in generator.graph.node if n.op_type == "TriplaneRayMarch")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["plugin_namespace"] == b"export3d.engines"
    assert (plugin_graphs / "frame_generator.onnx").read_bytes() != parsed[1][1]  # in memory
    assert not any(n.domain for n in encoder.graph.node)
    # what lands on disk
    manifest = json.loads((plugin_graphs / "manifest.json").read_text())
    for stage in ("source_encoder", "frame_generator"):
        engine = out / f"{stage}.engine"
        meta = json.loads((out / f"{stage}.engine.json").read_text())
        assert engine.read_bytes().startswith(b"ENGINE-")
        assert meta["graph_sha256"] == manifest["graphs"][stage]["sha256"]
        assert (meta["gpu"], meta["compute_capability"]) == GPU
        assert meta["tensorrt"] == "10.7.0.23" and meta["precision"] == "fp32"
        assert meta["builder_optimization_level"] == 5 and meta["strongly_typed"]
        assert meta["expression_code"] == manifest["expression_code"] == "mpx64-v1"
        assert meta["build_seconds"] >= 0 and meta["inputs"] == manifest["graphs"][stage][
            "inputs"]
    assert json.loads((out / "frame_generator.engine.json").read_text())["plugin"]["id"] == \
        "export3d.engines::TriplaneRayMarch"


def test_tensorrt_11_api(monkeypatch, plugin_graphs, tmp_path):
    """TensorRT 11: no STRONGLY_TYPED / EXPLICIT_BATCH members, no FP16 builder flag."""
    trt, trtp, calls = trt_standin.make("11.4.0.106", tensorrt11=True)
    trt_standin.install(monkeypatch, trt, trtp)
    monkeypatch.setattr(builder, "gpu_info", lambda: GPU)
    builder.build_engines(plugin_graphs, tmp_path / "e", report=lambda _: None)
    assert [c[1] for c in _named(calls, "create_network")] == [0, 0]
    assert _named(calls, "set_flag") == []
    meta = json.loads((tmp_path / "e" / "source_encoder.engine.json").read_text())
    assert meta["tensorrt"] == "11.4.0.106"
    # default timing cache beside the engines
    assert (tmp_path / "e" / "timing.cache").read_bytes() == b"+timed+timed"


def test_foreign_timing_cache_starts_fresh(monkeypatch, plugin_graphs, tmp_path):
    trt, trtp, calls = trt_standin.make(outcome=trt_standin.Outcome(cache_accepted=False))
    trt_standin.install(monkeypatch, trt, trtp)
    monkeypatch.setattr(builder, "gpu_info", lambda: GPU)
    cache = tmp_path / "c.cache"
    cache.write_bytes(b"from-another-gpu")
    lines = []
    builder.build_engines(plugin_graphs, tmp_path / "e",
                          builder.BuildOptions(timing_cache=cache), report=lines.append)
    assert any("starting a new one" in line for line in lines)


def test_missing_tensorrt_is_one_sentence(monkeypatch, plugin_graphs, tmp_path):
    trt_standin.uninstall(monkeypatch)
    with pytest.raises(TensorRTMissing, match=r"pip install export3d\[trt\].*NVIDIA"):
        builder.build_engines(plugin_graphs, tmp_path / "e")


def test_old_tensorrt_is_refused(monkeypatch, plugin_graphs, tmp_path):
    trt, trtp, _ = trt_standin.make("10.6.0.26")
    trt_standin.install(monkeypatch, trt, trtp)
    with pytest.raises(TensorRTMissing, match="too old.*10.7 or newer"):
        builder.build_engines(plugin_graphs, tmp_path / "e")


def test_no_gpu_is_one_sentence(monkeypatch, plugin_graphs, tmp_path):
    trt, trtp, calls = trt_standin.make()
    trt_standin.install(monkeypatch, trt, trtp)

    def no_gpu():
        raise NoGPU(NO_GPU)

    monkeypatch.setattr(builder, "gpu_info", no_gpu)
    with pytest.raises(NoGPU, match="no CUDA GPU"):
        builder.build_engines(plugin_graphs, tmp_path / "e")
    assert _named(calls, "Builder") == []


def test_gpu_info_without_a_gpu(monkeypatch):
    """The real probe on a machine without a GPU (torch says no; cuda-python's runtime
    reports no device)."""
    import sys
    import types

    import torch

    from engines.trt import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runtime = types.SimpleNamespace(cudaGetDeviceCount=lambda: (35, 0))
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", runtime)
    with pytest.raises(NoGPU, match="no CUDA GPU is visible"):
        device.gpu_info()


def test_portable_graph_is_refused_before_tensorrt(monkeypatch, portable_graphs, tmp_path):
    trt_standin.uninstall(monkeypatch)  # the graph check comes first
    with pytest.raises(GraphError, match="'portable' variant.*--variant plugin"):
        builder.build_engines(portable_graphs, tmp_path / "e")


def test_graph_without_the_plugin_node(monkeypatch, portable_graphs, tmp_path):
    trt_standin.uninstall(monkeypatch)
    path = portable_graphs / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["variant"] = "plugin"  # a portable graph passed off as a plugin graph
    path.write_text(json.dumps(manifest))
    with pytest.raises(GraphError, match="0 export3d.engines::TriplaneRayMarch nodes"):
        builder.build_engines(portable_graphs, tmp_path / "e")


def test_modified_or_missing_graphs(monkeypatch, plugin_graphs, tmp_path):
    trt_standin.uninstall(monkeypatch)
    with pytest.raises(GraphError, match="does not exist; write the plugin graphs first"):
        builder.build_engines(tmp_path / "nothing", tmp_path / "e")
    with open(plugin_graphs / "frame_generator.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(GraphError, match="does not match the sha256"):
        builder.build_engines(plugin_graphs, tmp_path / "e")


def test_graph_with_an_older_ray_march_node_is_refused(monkeypatch, plugin_graphs, tmp_path):
    # A version-1 node took the tri-plane as [B, 3, C, P, P] and had no workspace output: the
    # plugin would read its tensors wrongly, so the builder names the export command instead.
    import hashlib

    from engines.raymarch import contract

    trt_standin.uninstall(monkeypatch)
    path = plugin_graphs / "frame_generator.onnx"
    graph = onnx.load(str(path))
    for opset in graph.opset_import:
        if opset.domain == contract.DOMAIN:
            opset.version = contract.VERSION - 1
    onnx.save(graph, str(path))
    manifest_path = plugin_graphs / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["graphs"]["frame_generator"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(GraphError, match=f"version {contract.VERSION - 1} of the ray-march node "
                       f"and this plugin runs version {contract.VERSION}; export again"):
        builder.build_engines(plugin_graphs, tmp_path / "e")


def test_parser_failure_on_the_plugin_node(monkeypatch, plugin_graphs, tmp_path):
    outcome = trt_standin.Outcome(parse_ok=False, parse_errors=(
        "No importer registered for op: TriplaneRayMarch. Attempting to import as plugin.",))
    trt, trtp, _ = trt_standin.make(outcome=outcome)
    trt_standin.install(monkeypatch, trt, trtp)
    monkeypatch.setattr(builder, "gpu_info", lambda: GPU)
    with pytest.raises(GraphError, match="found no usable export3d.engines::TriplaneRayMarch "
                       "plugin"):
        builder.build_engines(plugin_graphs, tmp_path / "e")
    outcome.parse_errors = ("Invalid Node - Conv_3",)
    with pytest.raises(GraphError, match="rejected source_encoder.onnx \\(Invalid Node"):
        builder.build_engines(plugin_graphs, tmp_path / "e")


def test_failed_build_and_bad_options(monkeypatch, plugin_graphs, tmp_path):
    trt, trtp, _ = trt_standin.make(outcome=trt_standin.Outcome(build_ok=False))
    trt_standin.install(monkeypatch, trt, trtp)
    monkeypatch.setattr(builder, "gpu_info", lambda: GPU)
    with pytest.raises(TensorRTError, match="could not build the source_encoder engine"):
        builder.build_engines(plugin_graphs, tmp_path / "e")
    assert not (tmp_path / "e" / "source_encoder.engine").exists()
    with pytest.raises(TensorRTError, match="--opt-level must be 0..5"):
        builder.build_engines(plugin_graphs, tmp_path / "e", builder.BuildOptions(opt_level=7))


def test_a_failed_rebuild_leaves_the_previous_pair_whole(standin, plugin_graphs, tmp_path):
    # The frame generator's build fails after the encoder's succeeded: nothing is written, so
    # the folder keeps the first build's two engines (it had a new encoder beside the old
    # generator, each valid alone). Both record the export they come from.
    trt, _ = standin
    out = tmp_path / "e"
    builder.build_engines(plugin_graphs, out, report=lambda line: None)
    before = {p.name: p.read_bytes() for p in out.iterdir() if "engine" in p.name}
    ids = {json.loads((out / f"{s}.engine.json").read_text())["export_id"]
           for s in builder.STAGES}
    assert len(ids) == 1 and ids == {builder.export_id(json.loads(
        (plugin_graphs / "manifest.json").read_text()))}
    build = trt.Builder.build_serialized_network
    count = []

    def second_fails(self, network, config):
        count.append(1)
        return build(self, network, config) if len(count) == 1 else None

    trt.Builder.build_serialized_network = second_fails
    with pytest.raises(TensorRTError, match="could not build the frame_generator engine"):
        builder.build_engines(plugin_graphs, out, report=lambda line: None)
    assert {p.name: p.read_bytes() for p in out.iterdir() if "engine" in p.name} == before


@pytest.mark.parametrize("content,why", [
    (b"\xff\xfe", "is unreadable"),  # was a UnicodeDecodeError traceback
    (b"[]", "is not an export3d ONNX manifest of format 1"),  # was an AttributeError
    (b'{"format": 1, "variant": "plugin", "graphs": []}', "of format 1"),
    (b'{"format": 1, "variant": "plugin", "graphs": {"source_encoder": {"sha256": "0"}}}',
     "of format 1"),  # an entry without its file: was a KeyError
    (b'{"format": 2, "variant": "plugin", "graphs": {}}', "of format 1"),  # was accepted
])
def test_manifest_that_is_not_ours_is_one_error(monkeypatch, plugin_graphs, tmp_path, content,
                                                 why):
    trt_standin.uninstall(monkeypatch)
    (plugin_graphs / "manifest.json").write_bytes(content)
    with pytest.raises(GraphError, match=why):
        builder.build_engines(plugin_graphs, tmp_path / "e")


def test_graph_that_is_not_onnx_but_matches_its_sha256(monkeypatch, plugin_graphs, tmp_path):
    import hashlib

    trt_standin.uninstall(monkeypatch)
    path = plugin_graphs / "frame_generator.onnx"
    path.write_bytes(b"\x0a\xff\xff not protobuf")
    manifest = json.loads((plugin_graphs / "manifest.json").read_text())
    manifest["graphs"]["frame_generator"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (plugin_graphs / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GraphError, match="frame_generator.onnx is not an ONNX graph"):
        builder.build_engines(plugin_graphs, tmp_path / "e")


def test_manifest_format_is_the_exporters():
    from export import manifest

    assert builder.MANIFEST_FORMAT == manifest.FORMAT


@pytest.mark.parametrize("gb", [float("inf"), float("nan"), 1e-12, 0.0, -1.0])
def test_workspace_must_be_a_finite_size(gb):
    # inf passed and then overflowed int(); 1e-12 passed as a 0-byte workspace.
    with pytest.raises(TensorRTError, match="--workspace-gb must be a finite size"):
        builder.BuildOptions(workspace_gb=gb).checked()
    assert builder.BuildOptions(workspace_gb=0.001).checked().workspace_bytes == 1073741


def test_cli_builds_with_the_standin(standin, cli, plugin_graphs, tmp_path, capsys):
    out = tmp_path / "engines"
    assert cli(["export", "engine", "--onnx", str(plugin_graphs), "--out", str(out),
                "--opt-level", "1", "--workspace-gb", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "source_encoder.engine" in text and "frame_generator.engine" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "frame_generator.engine", "frame_generator.engine.json", "source_encoder.engine",
        "source_encoder.engine.json", "timing.cache"]


def test_cli_goes_from_weights_to_engines_in_one_command(standin, cli, tmp_path, capsys):
    # A deployer ran 'export onnx' (whose default variant the builder refuses), then 'export
    # engine'; --checkpoint/--preset exports the plugin graphs into OUT/onnx and builds.
    out = tmp_path / "engines"
    assert cli(["export", "engine", "--preset", "tiny", "--fp16", "--out", str(out),
                "--opt-level", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err
    manifest = json.loads((out / "onnx" / "manifest.json").read_text())
    assert (manifest["variant"], manifest["precision"], manifest["preset"]) == (
        "plugin", "fp16", "tiny")
    for stage in ("source_encoder", "frame_generator"):
        meta = json.loads((out / f"{stage}.engine.json").read_text())
        assert meta["onnx_dir"] == str((out / "onnx").resolve())  # what a rebuild reads
        assert meta["graph_sha256"] == manifest["graphs"][stage]["sha256"]
        assert meta["precision"] == "fp16" and (out / f"{stage}.engine").is_file()


def test_live_without_engines_builds_them_once_per_gpu_into_the_cache(standin, monkeypatch,
                                                                      tmp_path):
    # 'live --backend tensorrt' without --engines: the plugin graphs exported and the engines
    # built into the cache on first use, reused after, built again for another GPU.
    from export import cache

    monkeypatch.setenv("EXPORT3D_CACHE", str(tmp_path / "cache"))
    builds, said = [], []
    real = builder.build_engines

    def counting(onnx_dir, out_dir, *args, **kwargs):
        builds.append(out_dir)
        return real(onnx_dir, out_dir, *args, **kwargs)

    monkeypatch.setattr(builder, "build_engines", counting)
    folder = cache.cached_engines(preset="tiny", say=said.append, progress=False)
    assert folder.parent == tmp_path / "cache" / "engines" and builds == [folder]
    meta = json.loads((folder / "frame_generator.engine.json").read_text())
    graphs = json.loads((tmp_path / "cache" / "graphs" / Path(meta["onnx_dir"]).name /
                         "manifest.json").read_text())
    assert (graphs["variant"], graphs["precision"]) == ("plugin", "fp16")
    assert meta["precision"] == "fp16" and meta["gpu"] == GPU[0]
    assert any("building the TensorRT engines once" in line for line in said)
    assert cache.cached_engines(preset="tiny", say=said.append) == folder and len(builds) == 1
    monkeypatch.setattr(builder, "gpu_info", lambda: ("NVIDIA GeForce RTX 4090", "8.9"))
    other = cache.cached_engines(preset="tiny", say=said.append, progress=False)
    assert other != folder and builds == [folder, other]


def test_live_without_engines_and_without_tensorrt_is_one_sentence_before_any_export(
        monkeypatch, tmp_path):
    from export import cache
    from export.backend import BackendError

    trt_standin.uninstall(monkeypatch)
    monkeypatch.setenv("EXPORT3D_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BackendError, match=r"pip install export3d\[trt\]"):
        cache.cached_engines(preset="tiny")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("case", ["no-tensorrt", "no-gpu", "bad-opt-level"])
def test_cli_one_command_fails_before_exporting(case, monkeypatch, cli, tmp_path, capsys):
    # A machine that cannot build learns it in a second, not after the export.
    expected = {"no-tensorrt": r"pip install export3d[trt]", "no-gpu": "no CUDA GPU is visible",
                "bad-opt-level": "--opt-level must be"}[case]
    if case == "no-tensorrt":
        trt_standin.uninstall(monkeypatch)
    else:
        trt, trtp, _ = trt_standin.make()
        trt_standin.install(monkeypatch, trt, trtp)
        monkeypatch.setattr(builder, "gpu_info", lambda: GPU)
    if case == "no-gpu":
        def no_gpu():
            raise NoGPU(NO_GPU)
        monkeypatch.setattr(builder, "gpu_info", no_gpu)
    argv = ["export", "engine", "--preset", "tiny", "--out", str(tmp_path / "e"), "--quiet"]
    assert cli(argv + (["--opt-level", "9"] if case == "bad-opt-level" else [])) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()


def test_cli_fp16_is_for_the_one_command_form(cli, plugin_graphs, tmp_path, capsys):
    assert cli(["export", "engine", "--onnx", str(plugin_graphs), "--fp16", "--out",
                str(tmp_path / "e")]) == 2
    assert "--fp16 is for --checkpoint/--preset" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["no-tensorrt", "portable", "no-plugin-node", "no-gpu",
                                  "bad-opt-level"])
def test_cli_bad_input_is_one_sentence_and_exit_2(case, monkeypatch, cli, plugin_graphs,
                                                  portable_graphs, tmp_path, capsys):
    graphs = plugin_graphs
    expected = {"no-tensorrt": r"pip install export3d[trt]",
                "portable": "'portable' variant", "no-plugin-node": "0 export3d.engines::",
                "no-gpu": "no CUDA GPU is visible", "bad-opt-level": "--opt-level must be"}[case]
    if case == "no-tensorrt":
        trt_standin.uninstall(monkeypatch)
    else:
        trt, trtp, _ = trt_standin.make()
        trt_standin.install(monkeypatch, trt, trtp)
    if case == "no-gpu":
        def no_gpu():
            raise NoGPU(NO_GPU)
        monkeypatch.setattr(builder, "gpu_info", no_gpu)
    if case in ("portable", "no-plugin-node"):
        graphs = portable_graphs
    if case == "no-plugin-node":
        path = graphs / "manifest.json"
        path.write_text(path.read_text().replace('"variant": "portable"',
                                                 '"variant": "plugin"'))
    argv = ["export", "engine", "--onnx", str(graphs), "--out", str(tmp_path / "e"), "--quiet"]
    if case == "bad-opt-level":
        argv += ["--opt-level", "9"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
