"""Errors of the TensorRT path. Each message is one sentence that says what is wrong and what
to do; callers outside ``engines`` turn them into their own user-facing error type."""
from __future__ import annotations


class TensorRTError(ValueError):
    """A TensorRT build or run that cannot go ahead as asked."""


class TensorRTMissing(TensorRTError):
    """TensorRT (or torch-tensorrt) is not installed, or too old."""


class NoGPU(TensorRTError):
    """No CUDA GPU is visible."""


class GraphError(TensorRTError):
    """A graph folder that cannot be built into engines (portable variant, no plugin node,
    modified files, parser failure)."""


class EngineMismatch(TensorRTError):
    """An engine built for another GPU or another TensorRT, or a damaged engine file."""


class ShapeError(TensorRTError):
    """An input whose shape or dtype is not the engine's."""
