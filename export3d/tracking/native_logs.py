"""mediapipe's start-up log, kept off the terminal.

Creating a ``FaceLandmarker`` makes mediapipe's native code print five lines to the process's
stderr: absl's "Logging before InitGoogle()" notice, absl warnings about how it set its graph up
("Sets FaceBlendshapesGraph acceleration to xnnpack by default", "Feedback manager requires a
model with a single signature inference", twice) and TensorFlow Lite's "Created TensorFlow Lite
XNNPACK delegate for CPU". They land above whatever the command says next ("no face found in
...") and on every run. ``GLOG_minloglevel`` and ``TF_CPP_MIN_LOG_LEVEL`` do not reach them
(google-ai-edge/mediapipe#5737); only the file descriptor does.

:func:`quiet_startup` points file descriptor 2 at a temporary file for the block (the creation
of a landmarker, ~50 ms), then restores it and writes the file back to stderr less the start-up
information: absl/glog INFO and WARNING lines, TensorFlow Lite "INFO:" lines and the two
pre-initialisation notices. Everything else comes through, in order: absl ERROR and FATAL lines,
other libraries' output and Python's own writes from other threads during the block. If the
block raises, every line comes through. ``EXPORT3D_NATIVE_LOGS=1`` turns the filter off; use it
when a landmarker kills the process while it starts, since a process that dies inside the block
cannot write the file back.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager

ENV = "EXPORT3D_NATIVE_LOGS"

_START_UP = re.compile(
    rb"[IW]\d{4} \d+:\d+:[\d.]+ +\d+ [^\s:]+:\d+\] "  # absl/glog INFO and WARNING lines
    rb"|INFO: "  # TensorFlow Lite's information lines
    rb"|WARNING: Logging before InitGoogle\(\) is written to STDERR"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR")

# One redirection at a time in the process: the tracking thread and the helper that checks a
# new source photo for a face may each create a landmarker, and two interleaved redirections
# would restore each other's descriptors (stderr left pointing at a deleted file).
_lock = threading.RLock()
_depth = 0


def is_start_up_line(line: bytes) -> bool:
    """Whether ``line`` (one line of stderr, bytes) is start-up information to drop."""
    return _START_UP.match(line.lstrip(b"\r")) is not None


def _flush_python_stderr() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextmanager
def quiet_startup():
    """File descriptor 2 goes to a temporary file for the block; afterwards the file is written
    back to stderr without the start-up information (all of it when the block raised)."""
    global _depth
    if os.environ.get(ENV, "") not in ("", "0"):
        yield
        return
    with _lock:
        if _depth:  # already redirected by this thread: the outer block filters
            _depth += 1
            try:
                yield
            finally:
                _depth -= 1
            return
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all (a windowed process): nothing to keep clean
            yield
            return
        raised = True
        with tempfile.TemporaryFile() as log:
            _flush_python_stderr()
            os.dup2(log.fileno(), 2)
            _depth = 1
            try:
                yield
                raised = False
            finally:
                _depth = 0
                _flush_python_stderr()
                os.dup2(saved, 2)
                os.close(saved)
                log.seek(0)
                kept = [line for line in log.read().splitlines(keepends=True)
                        if raised or not is_start_up_line(line)]
                if kept:
                    _write_all(2, b"".join(kept))
