"""The graph cache: a key for everything the graphs are a function of, one export per key,
and an export again when the cached folder does not verify."""
from __future__ import annotations

import json

import pytest

from export import cache


@pytest.fixture
def cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPORT3D_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "graphs"


def test_the_key_changes_with_weights_variant_precision_and_code(tmp_path, monkeypatch):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"weights A")
    b.write_bytes(b"weights B")
    keys = {cache.graphs_key(None, "tiny"), cache.graphs_key(None, "paper512"),
            cache.graphs_key(a, "tiny"), cache.graphs_key(b, "tiny"),
            cache.graphs_key(None, "tiny", variant="plugin"),
            cache.graphs_key(None, "tiny", precision="fp16"),
            cache.graphs_key(None, "tiny", opset=18)}
    assert len(keys) == 7
    assert cache.graphs_key(a, "tiny") == cache.graphs_key(a, "paper512")  # its own preset
    b.write_bytes(b"weights A")  # same bytes, other name: the same graphs
    assert cache.graphs_key(a, "tiny") == cache.graphs_key(b, "tiny")
    before = cache.graphs_key(None, "tiny")
    monkeypatch.setattr(cache, "code_digest", lambda: "edited")
    assert cache.graphs_key(None, "tiny") != before


def test_one_export_per_key_and_again_when_the_folder_does_not_verify(cache_root, monkeypatch):
    import export.onnx_export as onnx_export

    exports, said = [], []
    real = onnx_export.export_onnx

    def counting(*args, **kwargs):
        exports.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "export_onnx", counting)
    folder = cache.cached_graphs(preset="tiny", say=said.append, progress=False)
    assert folder.parent == cache_root and len(exports) == 1 and len(said) == 1
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["preset"], manifest["variant"], manifest["precision"]) == (
        "tiny", "portable", "fp32")
    assert cache.cached_graphs(preset="tiny", say=said.append) == folder
    assert len(exports) == 1  # reused
    graph = folder / manifest["graphs"]["frame_generator"]["file"]
    graph.write_bytes(graph.read_bytes()[:-10])  # a damaged (half-copied) graph
    assert cache.cached_graphs(preset="tiny", say=said.append, progress=False) == folder
    assert len(exports) == 2 and len(said) == 2
    from export import manifest as manifest_mod

    manifest_mod.verify(folder)  # whole again


def test_the_cache_command_lists_and_clears_what_was_built_not_the_assets(cache_root,
                                                                           monkeypatch, capsys):
    import export3d.cli

    monkeypatch.setitem(export3d.cli.BUILTIN, "cache", "export.cache:register")
    graphs = cache.cached_graphs(preset="tiny", say=lambda line: None, progress=False)
    (cache_root / "half-written").mkdir()
    engines = cache_root.parent / "engines" / "k1"
    engines.mkdir(parents=True)
    (engines / "frame_generator.engine").write_bytes(b"E" * 1000)
    (engines / "frame_generator.engine.json").write_text(json.dumps(
        {"preset": "tiny", "precision": "fp16", "gpu": "NVIDIA H100", "tensorrt": "10.7.0"}))
    asset = cache_root.parent / "face_landmarker.task"
    asset.write_bytes(b"model")
    assert export3d.cli.main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"{graphs}  (tiny portable fp32, random weights)" in out
    assert "(incomplete (an export or build that did not finish))" in out
    assert "(tiny fp16, NVIDIA H100, TensorRT 10.7.0)" in out and "3 built folder(s)" in out
    assert graphs.is_dir()  # listing deletes nothing
    from realtime.doctor import check_cache

    assert "3 built graph/engine folder(s)" in check_cache().detail  # doctor says so too
    assert export3d.cli.main(["cache", "--clear"]) == 0
    assert "deleted 3 built folder(s)" in capsys.readouterr().out
    assert not cache_root.exists() and not engines.exists() and asset.read_bytes() == b"model"
    assert export3d.cli.main(["cache"]) == 0
    assert "0 built folder(s)" in capsys.readouterr().out
