"""A section process for ``benchmarks.gpu_suite`` that fails the ways a broken GPU kernel
makes a process fail, for the suite's isolation test (the parent runs this module instead of
the suite's own when ``EXPORT3D_GPU_SUITE_CHILD`` names it).

``FAULTY_SUITE`` lists the faults, ``where=how`` separated by commas. ``where`` is a section
(``section kernel_check``) or an item of a resumable one (``launch_sweep 0``, ``variants
fp32-kernel``). ``how``: ``abort`` (the process dies by SIGABRT, as on a segfault), ``hang``
(it stops printing, as on a kernel that never ends) or ``context`` (a CUDA error that leaves
the context unusable, as an illegal address does). Each fault strikes when its item first runs.
"""
from __future__ import annotations

import os
import sys
import time

from benchmarks import gpu_suite

FAULTS = dict(item.split("=") for item in os.environ.get("FAULTY_SUITE", "").split(",") if item)
broken = {"context": False}


def strike(how: str):
    if how == "abort":
        os.abort()
    if how == "hang":
        time.sleep(3600)
    broken["context"] = True
    raise RuntimeError("CUDA error: an illegal memory access was encountered (simulated)")


original_run = gpu_suite.Resumable.run


def faulty_run(self, torch, field, name, fn, base=None):
    how = FAULTS.get(f"{field} {name}")
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
