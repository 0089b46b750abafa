"""The ONNX Runtime backend: the exported graphs behind the backend protocol.

Construction reads ``manifest.json``, checks the graphs' sha256, resolves execution providers
by name (``cpu``, ``cuda``, ``tensorrt``, ``directml``/``dml``, ``coreml``, ``openvino``,
``rocm`` or ONNX Runtime's full names) and opens one session per graph. Buffers: every input
and output of both graphs is allocated once, in host memory, and bound with I/O binding; the
encoder writes the source features straight into the frame generator's input buffers, and
``frame`` copies ``expr`` and ``camera`` into their buffers, runs, and returns the output
buffers themselves (valid until the next call). So no frame allocates on the host; on a GPU
provider ONNX Runtime copies to and from its device arena.
The ``plugin`` variant's custom node needs its implementation: TensorRT in deployment, or here
the onnxruntime-extensions Python op of :mod:`export.plugin` (``custom_ops=True``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import manifest as manifest_mod
from .backend import FRAME_KEYS, BackendError, _ContextMixin

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "rocm": "ROCMExecutionProvider",
}


def resolve_providers(names) -> list[str]:
    """Provider names (short or full) -> ONNX Runtime's names, each checked to be known and
    available in the installed onnxruntime."""
    import onnxruntime as ort

    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    names = list(names) or ["cpu"]
    known = set(ort.get_all_providers())
    available = ort.get_available_providers()
    resolved = []
    for raw in names:
        name = ALIASES.get(raw.strip().lower(), raw.strip())
        if name not in known:
            raise BackendError(
                f"unknown execution provider {raw!r}; choose from: "
                f"{', '.join(sorted(ALIASES))} (or a full ONNX Runtime provider name)")
        if name not in available:
            raise BackendError(
                f"execution provider {raw!r} ({name}) is not in this onnxruntime build, which "
                f"has {', '.join(available)}; install the matching onnxruntime package "
                "(onnxruntime-gpu, onnxruntime-directml, ...) or pick one of those")
        if name not in resolved:
            resolved.append(name)
    return resolved


class OrtBackend(_ContextMixin):
    name = "onnxruntime"

    def __init__(self, graphs: str | Path, providers=("cpu",), custom_ops: bool | None = None,
                 threads: int | None = None, verify: bool = True):
        import onnxruntime as ort

        self.directory = Path(graphs)
        self.manifest = manifest_mod.read(self.directory)
        if verify:
            manifest_mod.verify(self.directory, self.manifest)
        manifest_mod.check_expression_code(self.manifest.get("expression_code"), self.directory)
        self.providers = resolve_providers(providers)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # fp16 graphs make ORT warn about every Cast it inserts
        variant = self.manifest.get("variant", "portable")
        serve_plugin = custom_ops or (custom_ops is None and variant == "plugin")
        if serve_plugin:
            from .plugin_ort import session_options_with_plugin

            session_options_with_plugin(options)

        def path(stage):
            file = str(self.directory / self.manifest["graphs"][stage]["file"])
            if not serve_plugin:
                return file
            import onnx

            from .plugin_ort import servable

            return servable(onnx.load(file)).SerializeToString()
        try:
            self.encoder = ort.InferenceSession(path("source_encoder"), options,
                                                providers=self.providers)
            self.generator = ort.InferenceSession(path("frame_generator"), options,
                                                  providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise BackendError(f"ONNX Runtime cannot load the graphs in {self.directory} "
                               f"({str(exc).splitlines()[0][:300]}); export them again with "
                               "this version of export3d") from None
        self._alloc()
        self._encoded = False

    # Buffers ------------------------------------------------------------------------------
    def _buffers(self, values) -> dict[str, np.ndarray]:
        out = {}
        for v in values:
            if any(not isinstance(d, int) for d in v.shape):
                raise BackendError(f"graph input/output {v.name} has a dynamic shape {v.shape}; "
                                   "export with export3d, which writes static shapes")
            out[v.name] = np.zeros(v.shape, dtype=_np_dtype(v.type))
        return out

    def _alloc(self) -> None:
        self.gen_in = self._buffers(self.generator.get_inputs())
        self.gen_out = self._buffers(self.generator.get_outputs())
        self.enc_in = self._buffers(self.encoder.get_inputs())
        self.enc_binding = self.encoder.io_binding()
        self.gen_binding = self.generator.io_binding()
        for name, arr in self.enc_in.items():
            _bind(self.enc_binding.bind_input, name, arr)
        for v in self.encoder.get_outputs():  # straight into the generator's inputs
            _bind(self.enc_binding.bind_output, v.name, self.gen_in[v.name])
        for name, arr in self.gen_in.items():
            _bind(self.gen_binding.bind_input, name, arr)
        for name, arr in self.gen_out.items():
            _bind(self.gen_binding.bind_output, name, arr)
        self.input_image = next(iter(self.enc_in.values()))

    # Protocol -----------------------------------------------------------------------------
    def encode_source(self, image) -> None:
        image = np.asarray(image)
        if image.shape != self.input_image.shape:
            raise BackendError(f"source image must be {list(self.input_image.shape)}, got "
                               f"{list(image.shape)}")
        np.copyto(self.input_image, image, casting="unsafe")
        self.encoder.run_with_iobinding(self.enc_binding)
        self._encoded = True

    def frame(self, expr, camera) -> dict[str, np.ndarray]:
        if not self._encoded:
            raise BackendError("call encode_source(image) before frame()")
        for name, value in (("expr", expr), ("camera", camera)):
            buf = self.gen_in[name]
            value = np.asarray(value)
            if value.size != buf.size:
                raise BackendError(f"{name} must have {buf.size} values ({list(buf.shape)}), "
                                   f"got shape {list(value.shape)}")
            np.copyto(buf, value.reshape(buf.shape), casting="unsafe")
        self.generator.run_with_iobinding(self.gen_binding)
        return {k: self.gen_out[k] for k in FRAME_KEYS}

    def close(self) -> None:
        for attr in ("enc_binding", "gen_binding", "encoder", "generator"):
            if hasattr(self, attr):
                delattr(self, attr)
        self._encoded = False


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _np_dtype(ort_type: str):
    try:
        return _ORT_TYPES[ort_type]
    except KeyError:
        raise BackendError(f"unsupported graph I/O type {ort_type}") from None


def _bind(bind, name: str, arr: np.ndarray) -> None:
    """Bind a host numpy buffer by pointer: ONNX Runtime reads/writes it in place."""
    bind(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
