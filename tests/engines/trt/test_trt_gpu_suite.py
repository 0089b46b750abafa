"""The GPU suite's TensorRT section: a skip record where ``tensorrt`` does not import, and the
section wired into the report (the other sections are stubbed: their own test runs them)."""
from __future__ import annotations

import json

import torch
import trt_standin

from benchmarks import gpu_suite


def test_section_skips_without_tensorrt(monkeypatch):
    trt_standin.uninstall(monkeypatch)
    out = gpu_suite.tensorrt_section(torch, None, torch.device("cpu"), 0, 1,
                                     gpu_suite.Budget(60), {})
    assert out == {"skipped": "tensorrt not importable"}


def test_section_skips_without_a_gpu(monkeypatch):
    trt, trtp, calls = trt_standin.make()
    trt_standin.install(monkeypatch, trt, trtp)
    out = gpu_suite.tensorrt_section(torch, None, torch.device("cpu"), 0, 1,
                                     gpu_suite.Budget(60), {})
    assert out == {"skipped": "no CUDA device"}
    assert calls == []


def test_dry_run_report_has_the_tensorrt_record(monkeypatch, tmp_path):
    trt_standin.uninstall(monkeypatch)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # main() sets it; monkeypatch restores it
    # Stubbed as well: in this process the interpreter setting would otherwise reach the
    # kernel modules the engine-kernel section imports, and stay for later tests.
    for name in ("kernel_check", "raymarch_timing", "tensorrt_kernel"):
        monkeypatch.setattr(gpu_suite, name, lambda *args: {"stub": True})
    monkeypatch.setattr(gpu_suite, "model_timing", lambda *args: {"variants": {}})
    monkeypatch.setattr(gpu_suite, "print_table", lambda data: None)
    out = tmp_path / "suite.json"
    assert gpu_suite.main(["--dry-run", "--in-process", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tensorrt"]["skipped"] == "tensorrt not importable"
    assert list(report).index("tensorrt") < list(report).index("summary")
