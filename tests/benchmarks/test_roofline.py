"""The static roofline counts what it says it counts: the model benchmark's FLOPs, no bytes for
views, attention as one flash kernel, and bounds in the order they must come."""
from __future__ import annotations

import json

import torch

from benchmarks import roofline
from benchmarks.model import count_flops


def test_stage_flops_are_the_model_benchmarks():
    # Same FLOPs as torch's counter on the decomposed graph (its attention is two bmm's of
    # 2 n m d each, the flash row here 2 n m (d + dv)).
    report = roofline.roofline("tiny", "h100", "float32")
    counted = count_flops("tiny")["flops"]
    for stage in ("generate", "superresolve"):
        assert report["stages"][stage]["gflops"] == round(counted[stage] / 1e9, 2)
        s = report["stages"][stage]
        assert s["eager_ms"] >= s["fused_ms"] >= s["compute_ms"] > 0
    assert report["eager_ms"] == round(sum(s["eager_ms"] for s in report["stages"].values()), 4)


def test_views_move_nothing_and_attention_is_one_flash_kernel():
    ledger = roofline.Ledger()
    x = torch.zeros(8, 16, device="meta")
    y = torch.zeros(8, 4, device="meta")
    with ledger:
        x.t() @ y  # the transpose is a view: only the matmul is recorded
    assert [r["op"] for r in ledger.rows] == ["mm"]
    assert ledger.rows[0]["flops"] == 2 * 16 * 8 * 4
    assert ledger.rows[0]["bytes"] == 4 * (8 * 16 + 8 * 4 + 16 * 4)
    q = torch.zeros(1, 2, 32, 8, device="meta")
    kv = torch.zeros(1, 2, 16, 8, device="meta")
    ledger = roofline.Ledger()
    original = torch.nn.functional.scaled_dot_product_attention
    with ledger, roofline.flash_attention(ledger):
        out = torch.nn.functional.scaled_dot_product_attention(q, kv, kv)
    assert out.shape == (1, 2, 32, 8)
    (row,) = ledger.rows
    assert row["op"] == "flash_attention"
    assert row["flops"] == 2 * 2 * 32 * 16 * (8 + 8)
    assert row["bytes"] == 4 * (2 * q.numel() + 2 * kv.numel())
    assert torch.nn.functional.scaled_dot_product_attention is original  # restored


def test_cli_writes_a_report(tmp_path, capsys):
    out = tmp_path / "roofline.json"
    assert roofline.main(["--preset", "tiny", "--gpu", "h200", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["gpu"]["name"] == "NVIDIA H200" and set(report["stages"]) == {
        "generate", "superresolve"}
    # A faster memory cannot make a stage slower.
    h100 = roofline.roofline("tiny", "h100")
    assert report["eager_ms"] <= h100["eager_ms"]
    assert "superresolve" in capsys.readouterr().out
