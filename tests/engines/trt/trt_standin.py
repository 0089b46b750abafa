"""A small RECORDING stand-in of the ``tensorrt`` module and of ``tensorrt.plugin``.

It implements only what export3d's builder, runtime and plugin call, records every call
(``calls``: list of (name, args)) and lets a test choose the version, whether the enums have
the TensorRT 10 members, parse/build outcomes and the engines ``deserialize_cuda_engine``
returns (:class:`EngineSpec`: named I/O, shapes, dtypes, and a compute function that "runs" the
engine on the bound host addresses). It proves our calls, flags and error handling, never
TensorRT itself.
"""
from __future__ import annotations

import ctypes
import types
from dataclasses import dataclass, field

import numpy as np


class DataType:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"DataType.{self.name}"


_DTYPES = ("float32", "float16", "bfloat16", "int32", "int64", "int8", "uint8", "bool")
_NP = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64}


@dataclass
class EngineSpec:
    """tensors: [(name, shape, dtype name, "input" | "output")]; compute(arrays) fills the
    output arrays (numpy views of the bound addresses) from the input ones."""
    tensors: list
    compute: object = None


@dataclass
class Outcome:
    parse_ok: bool = True
    parse_errors: tuple = ()
    build_ok: bool = True
    cache_accepted: bool = True
    execute_ok: bool = True
    engines: dict = field(default_factory=dict)  # engine bytes -> EngineSpec
    deserialize_ok: bool = True


def _view(ptr, shape, dtype):
    n = int(np.prod(shape))
    ctype = {np.float32: ctypes.c_float, np.float16: ctypes.c_uint16, np.int32: ctypes.c_int32,
             np.int64: ctypes.c_int64}[dtype]
    raw = np.ctypeslib.as_array((ctype * n).from_address(ptr))
    return raw.view(dtype).reshape(shape)


def make(version: str = "10.7.0.23", *, tensorrt11: bool = False, outcome: Outcome | None = None):
    """(tensorrt module, tensorrt.plugin module, calls list)."""
    outcome = outcome or Outcome()
    calls: list = []
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls, trt.outcome = calls, outcome
    for name in _DTYPES:
        setattr(trt, name, DataType(name))

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = "VERBOSE", "INFO", "WARNING", "ERROR"

        def __init__(self, level=None):
            calls.append(("Logger", level))

    trt.Logger = Logger
    flags = {} if tensorrt11 else {"STRONGLY_TYPED": 1, "EXPLICIT_BATCH": 0}
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
    trt.BuilderFlag = types.SimpleNamespace(**({} if tensorrt11 else {"FP16": 0, "INT8": 1}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    class IProgressMonitor:
        def __init__(self):
            calls.append(("IProgressMonitor.__init__",))

    trt.IProgressMonitor = IProgressMonitor

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return memoryview(self.data + b"+timed")

    class Config:
        def __init__(self):
            self._opt = None
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        @property
        def builder_optimization_level(self):
            return self._opt

        @builder_optimization_level.setter
        def builder_optimization_level(self, value):
            calls.append(("builder_optimization_level", value))
            self._opt = value

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", cache.data, ignore_mismatch))
            ok = outcome.cache_accepted or cache.data == b""
            if ok:
                self.cache = cache
            return ok

        def get_timing_cache(self):
            return self.cache

        def __setattr__(self, name, value):
            if name == "progress_monitor":
                calls.append(("progress_monitor", value))
            object.__setattr__(self, name, value)

    class Network:
        def __init__(self, flags):
            self.flags = flags

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags=0):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network", network.flags))
            monitor = getattr(config, "progress_monitor", None)
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                monitor.step_complete("Building engine", 0)
                monitor.phase_finish("Building engine")
            return memoryview(b"ENGINE-%d" % len(calls)) if outcome.build_ok else None

    class ParserError:
        def __init__(self, text):
            self.text = text

        def desc(self):
            return self.text

        def node(self):
            return 3

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse(self, model_bytes, path=None):
            calls.append(("parse", bytes(model_bytes), path))
            if outcome.parse_ok:
                return True
            self.num_errors = len(outcome.parse_errors)
            return False

        def get_error(self, i):
            return ParserError(outcome.parse_errors[i])

    class Context:
        def __init__(self, spec):
            self.spec, self.addresses = spec, {}

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, tuple(shape)))
            return True

        def set_tensor_address(self, name, ptr):
            calls.append(("set_tensor_address", name, int(ptr)))
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream):
            calls.append(("execute_async_v3", stream))
            if not outcome.execute_ok:
                return False
            if self.spec.compute is not None:
                arrays = {name: _view(self.addresses[name], shape, _NP[dtype])
                          for name, shape, dtype, _ in self.spec.tensors}
                self.spec.compute(arrays)
            return True

    class Engine:
        def __init__(self, spec):
            self.spec = spec
            self.num_io_tensors = len(spec.tensors)

        def get_tensor_name(self, i):
            return self.spec.tensors[i][0]

        def _t(self, name):
            return next(t for t in self.spec.tensors if t[0] == name)

        def get_tensor_shape(self, name):
            return tuple(self._t(name)[1])

        def get_tensor_dtype(self, name):
            return getattr(trt, self._t(name)[2])

        def get_tensor_mode(self, name):
            return "INPUT" if self._t(name)[3] == "input" else "OUTPUT"

        def create_execution_context(self):
            calls.append(("create_execution_context",))
            return Context(self.spec)

    class Runtime:
        def __init__(self, logger):
            calls.append(("Runtime",))

        def deserialize_cuda_engine(self, blob):
            calls.append(("deserialize_cuda_engine", bytes(blob)))
            spec = outcome.engines.get(bytes(blob))
            return Engine(spec) if spec is not None and outcome.deserialize_ok else None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    trtp = make_plugin_module(calls)
    trt.plugin = trtp
    return trt, trtp, calls


class ShapeExpr:
    """A constant dimension as ``tensorrt.plugin`` hands it to registered functions."""

    def __init__(self, value):
        self.value = value

    @property
    def is_constant(self):
        return True

    def constant_value(self):
        return self.value


def make_plugin_module(calls):
    trtp = types.ModuleType("tensorrt.plugin")
    trtp.registry = {}

    class TensorDesc:
        def __init__(self, shape_expr=None, dtype=None):
            self.shape_expr, self.dtype = shape_expr, dtype

    def register(plugin_id):
        def wrap(fn):
            calls.append(("trtp.register", plugin_id))
            trtp.registry.setdefault(plugin_id, {})["desc"] = fn
            return fn
        return wrap

    def aot_impl(plugin_id):
        def wrap(fn):
            calls.append(("trtp.aot_impl", plugin_id))
            trtp.registry.setdefault(plugin_id, {})["aot"] = fn
            return fn
        return wrap

    class ShapeExprs(list):
        @classmethod
        def from_tuple(cls, values):
            return cls(v if isinstance(v, ShapeExpr) else ShapeExpr(v) for v in values)

    class KernelLaunchParams:
        def __init__(self):
            self.grid_x = self.grid_y = self.grid_z = 1
            self.block_x = self.block_y = self.block_z = 1
            self.shared_mem = 0

    class SymInt32:
        def __init__(self, value):
            self.value = value

    class SymIntExprs(list):
        def __init__(self, n):
            super().__init__([None] * n)

    trtp.TensorDesc, trtp.ShapeExprs, trtp.ShapeExpr = TensorDesc, ShapeExprs, ShapeExpr
    trtp.KernelLaunchParams, trtp.SymInt32, trtp.SymIntExprs = (KernelLaunchParams, SymInt32,
                                                                SymIntExprs)
    trtp.register, trtp.aot_impl = register, aot_impl
    trtp.from_shape_expr = lambda shape, dtype=None: TensorDesc(shape, dtype)
    trtp.cdiv = lambda a, b: -(-a // b)
    return trtp


def install(monkeypatch, trt, trtp) -> None:
    """Put the stand-in where ``import tensorrt`` / ``import tensorrt.plugin`` find it, and
    forget any earlier plugin registration."""
    import sys

    from engines.trt import plugin

    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(plugin, "_REGISTERED", False)


def uninstall(monkeypatch) -> None:
    """Make ``import tensorrt`` fail as it does where TensorRT is not installed."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", None)


def desc(trtp, shape, dtype):
    return trtp.TensorDesc([ShapeExpr(d) for d in shape], dtype)
