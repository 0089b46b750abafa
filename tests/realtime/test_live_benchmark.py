"""The live benchmark runs the real clip through every stage and reports what it measured."""
from benchmarks.live import main, run


def test_live_benchmark_fast_on_the_first_frames(tmp_path, capsys):
    out = tmp_path / "live.json"
    assert main(["--frames", "10", "--fast", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "glass-to-glass" in text and "tracking" in text and out.stat().st_size > 0


def test_live_benchmark_paced():
    result = run(15)
    assert result["captured"] == 15 and result["mode"] == "paced"
    assert result["frames"] + sum(result["drops"].values()) == 15
    assert result["glass_to_glass"]["n"] == result["frames"] > 0
