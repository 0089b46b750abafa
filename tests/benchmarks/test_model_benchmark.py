"""The model benchmark counts what it says it counts."""
from __future__ import annotations

import json

from benchmarks.model import count_flops, main

from export3d import get_config


def test_render_flops_match_the_decoder_and_lookup_arithmetic():
    c = get_config("tiny")
    rays = c.render_size ** 2
    samples = rays * (c.samples_coarse + c.samples_fine)
    mlp = 2 * samples * (c.triplane_channels * c.decoder_hidden
                         + c.decoder_hidden * (1 + c.triplane_channels))
    lookups = samples * 3 * 4 * c.triplane_channels * 2
    ray_directions = 2 * rays * 3 * 3  # [R, 3] x [3, 3] camera rotation
    assert count_flops("tiny")["flops"]["render"] == mlp + lookups + ray_directions


def test_report_splits_per_source_and_per_frame(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--json", str(out), "--repeats", "2"]) == 0
    report = json.loads(out.read_text())
    for preset in ("paper512", "tiny"):
        r = report["presets"][preset]
        flops = r["flops"]
        assert r["flops_per_source"] == flops["encode_source"] > 0
        assert r["flops_per_frame"] == sum(v for k, v in flops.items() if k != "encode_source")
        assert flops["generate"] > flops["render"] > 0
    paper = report["presets"]["paper512"]
    assert 50e6 < paper["parameters_total"] < 150e6
    assert paper["flops_per_frame"] > 100 * report["presets"]["tiny"]["flops_per_frame"]
    assert set(report["presets"]["tiny"]["cpu_latency"]) == {
        "encode_source", "expression_code", "generate", "render", "superresolve"}
    assert "per frame" in capsys.readouterr().out
