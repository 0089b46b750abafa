"""Running a script under Triton's interpreter, in a child process (the interpreter must be
chosen before triton is imported, and this test process has imported it already)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def run_interpreted(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -c code`` with TRITON_INTERPRET=1 and the repository on PYTHONPATH; asserts
    that it exits 0 (its stderr tail otherwise) and returns it."""
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
