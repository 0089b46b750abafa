"""Reports are strict JSON: a non-finite number is written as its name and read back."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from export3d import jsonfile


def strict(text: str):
    """JSON as RFC 8259 has it: a bare NaN or Infinity is an error, as in jq or JSON.parse."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_names_and_read_back_as_floats():
    report = {"max_abs_err": math.nan, "rows": [1.5, math.inf, (-math.inf, 2)],
              "p50": np.float64("nan"), "name": "kernel", "n": 3, "ok": None}
    text = jsonfile.dumps(report, indent=2)
    parsed = strict(text)
    assert parsed["max_abs_err"] == "NaN" and parsed["p50"] == "NaN"
    assert parsed["rows"] == [1.5, "Infinity", ["-Infinity", 2]]
    back = jsonfile.loads(text)
    assert math.isnan(back["max_abs_err"]) and math.isnan(back["p50"])
    assert back["rows"][1] == math.inf and back["rows"][2] == [-math.inf, 2]
    assert (back["name"], back["n"], back["ok"]) == ("kernel", 3, None)
    assert report["max_abs_err"] != report["max_abs_err"]  # the caller's object is untouched
    with pytest.raises(ValueError):
        strict(json.dumps(report, default=float))  # what plain json wrote before


def test_what_default_returns_is_made_finite_and_old_bare_tokens_still_read():
    f = io.StringIO()
    jsonfile.dump({"odd": object()}, f, default=lambda o: [math.nan, "x"])
    assert strict(f.getvalue()) == {"odd": ["NaN", "x"]}
    assert math.isinf(jsonfile.loads('{"t": Infinity}')["t"])  # a report from before
