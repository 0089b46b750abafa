"""Benchmarks: each writes JSON and prints a per-stage table.

The helpers here check a benchmark's command line before it runs (standard library only: the
GPU suite imports this package on machines with nothing but PyTorch and Triton)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def check_output(parser: argparse.ArgumentParser, path, flag: str = "--json") -> None:
    """A report path checked before the work that fills it: its folder is created, and a
    folder that cannot be, one that is not writable, or a path that is a folder is argparse's
    one-line error (exit 2), not a traceback after minutes of measuring."""
    if path is None:
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"{flag} {path}: cannot create {exc.filename} ({exc.strerror or exc})")
    if path.is_dir():
        parser.error(f"{flag} {path} is a folder; give a file name")
    if not os.access(path.parent, os.W_OK):
        parser.error(f"{flag} {path}: {path.parent} is not writable")
