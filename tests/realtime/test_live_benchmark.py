"""The live benchmark runs the real clip through every stage (ONNX Runtime, tiny) and reports
what it measured: end-to-end stats, the pipeline's own overhead, the targets."""
import json

from benchmarks.live import main, run


def test_live_benchmark_unpaced_json(tmp_path, capsys):
    out = tmp_path / "live.json"
    assert main(["--frames", "12", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "glass-to-glass" in text and "pipeline overhead" in text and "fps" in text
    result = json.loads(out.read_text())
    e, o = result["end_to_end"], result["overhead"]
    assert result["backend"] == "onnxruntime" and result["mode"] == "unpaced"
    assert e["frames"] == o["frames"] == 12 and sum(e["drops"].values()) == 0
    for stage in ("capture", "tracking", "generator", "sink"):
        p = e["stages"][stage]
        assert p["n"] == 12 and 0 <= p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]
    assert o["ms_per_frame"] > 0 and o["cpu_ms_per_frame"] > 0
    assert set(result["targets"]) == {"fps", "fps_met", "overhead_ms", "overhead_met"}


def test_live_benchmark_paced():
    result = run(15, paced=True)
    e = result["end_to_end"]
    assert e["captured"] == 15 and result["mode"] == "paced"
    assert e["frames"] + sum(e["drops"].values()) == 15
    assert e["glass_to_glass"]["n"] == e["frames"] > 0
