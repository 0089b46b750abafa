"""A section process for ``benchmarks.gpu_suite`` that fails the ways a broken GPU kernel
makes a process fail, for the suite's isolation test (the parent runs this module instead of
the suite's own when ``EXPORT3D_GPU_SUITE_CHILD`` names it).

``FAULTY_SUITE`` lists the faults, ``where=how`` separated by commas. ``where`` is a section
(``section kernel_check``) or an item of a resumable one (``launch_sweep 0``, ``variants
fp32-kernel``). ``how``: ``abort`` (the process dies by SIGABRT, as on a segfault), ``hang``
(it stops printing, as on a kernel that never ends), ``context`` (a CUDA error that leaves
the context unusable, as an illegal address does) or ``orphan`` (the item starts a process of
its own that keeps the output pipe open long after, as a compile worker might, then runs as
usual; its pid goes to the file ``FAULTY_SUITE_ORPHANS`` names). Each fault strikes when its
item first runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks import gpu_suite

FAULTS = dict(item.split("=") for item in os.environ.get("FAULTY_SUITE", "").split(",") if item)
# A misspelt fault would otherwise strike as "context", and a test could pass for that reason.
assert set(FAULTS.values()) <= {"abort", "hang", "context", "orphan"}, FAULTS
broken = {"context": False}


def strike(how: str):
    if how == "abort":
        os.abort()
    if how == "hang":
        time.sleep(3600)
    broken["context"] = True
    raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")


original_run = gpu_suite.Resumable.run


def orphan_then(fn):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)"],
                             start_new_session=True)  # stdout and stderr: the suite's pipe
    with open(os.environ["FAULTY_SUITE_ORPHANS"], "a") as f:
        f.write(f"{child.pid}\n")
    return fn()


def faulty_run(self, torch, field, name, fn, base=None):
    how = FAULTS.get(f"{field} {name}")
    if how == "orphan":
        return original_run(self, torch, field, name, lambda: orphan_then(fn), base)
    if how:
        return original_run(self, torch, field, name, lambda: strike(how), base)
    return original_run(self, torch, field, name, fn, base)


gpu_suite.Resumable.run = faulty_run
gpu_suite.context_lost = lambda torch: broken["context"]
for key in gpu_suite.SECTIONS:
    how = FAULTS.get(f"section {key}")
    if how and hasattr(gpu_suite, key):
        setattr(gpu_suite, key, lambda *args, how=how: strike(how))

if __name__ == "__main__":
    sys.exit(gpu_suite.main())
