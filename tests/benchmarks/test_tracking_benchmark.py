"""The tracking benchmark times every frame it says it times, on a clip with a face throughout."""
from __future__ import annotations

from benchmarks.tracking import run


def test_tracking_benchmark_on_the_first_frames():
    result = run(30)
    assert result["face_found"] == 30
    for stage in ("landmarker", "post", "post_isolated"):
        s = result[stage]
        assert s["frames"] == 30
        assert 0 < s["p50_ms"] <= s["p95_ms"]
    # The landmarker (a neural network per frame) costs far more than the geometry after it.
    assert result["landmarker"]["p50_ms"] > 3 * result["post_isolated"]["p50_ms"]
