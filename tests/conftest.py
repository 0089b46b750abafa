"""Shared test settings. GPU- and TensorRT-only tests skip by *called* predicates."""
from __future__ import annotations

import importlib.util

import pytest
import torch


def cuda_available() -> bool:
    return torch.cuda.is_available()


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    skip_trt = pytest.mark.skip(reason="needs TensorRT, which cannot be installed here")
    has_gpu = cuda_available()
    has_trt = tensorrt_available()
    for item in items:
        # Markers, not keywords: keywords also hold folder names (a folder named trt is no marker).
        if item.get_closest_marker("gpu") and not has_gpu:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("trt") and not has_trt:
            item.add_marker(skip_trt)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _auto_device_is_the_cpu(request, monkeypatch):
    """``--device auto``, live's and render's default, is the CPU in every test not marked
    ``gpu``, on a GPU machine too: those tests' stand-ins and tolerances are the CPU path's
    (a stubbed ``backend.frame`` is never called by the CUDA double buffer, so a pipeline
    test waiting for its error would wait forever). Named devices are resolved as ever. Only
    the two modules that run a model on the device they resolve: ``export3d.devices`` itself
    stays real, so what doctor reports for a stand-in GPU is still tested."""
    if request.node.get_closest_marker("gpu"):
        return
    import export3d.devices
    import export3d.render
    import realtime.generator

    resolve = export3d.devices.resolve_device

    def auto_is_the_cpu(name=None, default="cpu"):
        return "cpu" if (name or default).strip().lower() == "auto" else resolve(name, default)

    for module in (export3d.render, realtime.generator):
        monkeypatch.setattr(module, "resolve_device", auto_is_the_cpu)
