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
