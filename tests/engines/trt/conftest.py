"""Fixtures of the TensorRT tests: the tiny preset's plugin and portable graph folders,
exported once per session (a few seconds each)."""
from __future__ import annotations

import shutil

import pytest


def _export(tmp_path_factory, variant):
    from export.onnx_export import export_onnx
    from export3d.config import get_config
    from export3d.model import build_model

    out = tmp_path_factory.mktemp(f"graphs-{variant}")
    model = build_model(get_config("tiny"), seed=0, render_impl="reference")
    export_onnx(model, out, variant=variant)
    return out


@pytest.fixture(scope="session")
def plugin_graphs_once(tmp_path_factory):
    return _export(tmp_path_factory, "plugin")


@pytest.fixture(scope="session")
def portable_graphs_once(tmp_path_factory):
    return _export(tmp_path_factory, "portable")


@pytest.fixture
def plugin_graphs(plugin_graphs_once, tmp_path):
    """A private copy (tests may damage it)."""
    return shutil.copytree(plugin_graphs_once, tmp_path / "graphs")


@pytest.fixture
def portable_graphs(portable_graphs_once, tmp_path):
    return shutil.copytree(portable_graphs_once, tmp_path / "portable")
