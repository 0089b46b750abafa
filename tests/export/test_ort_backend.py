"""The backend protocol: torch and onnxruntime interchangeable; providers by name; I/O
binding reuses its buffers so frames allocate nothing."""
from __future__ import annotations

import numpy as np
import pytest

from export.backend import Backend, BackendError, TorchBackend, open_backend
from export.graphs import example_inputs
from export.onnx_export import export_onnx
from export.ort_backend import OrtBackend, resolve_providers
from export.parity import driving_frames
from export3d.config import get_config
from export3d.model import build_model


@pytest.fixture(scope="module")
def tiny_graphs(tmp_path_factory):
    model = build_model(get_config("tiny"), seed=0, render_impl="reference")
    out = tmp_path_factory.mktemp("tiny")
    export_onnx(model, out)
    return model, out


def test_providers_by_name():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider", "cpu"]) == ["CPUExecutionProvider"]
    with pytest.raises(BackendError, match="unknown execution provider 'quantum'"):
        resolve_providers(["quantum"])


def test_known_but_missing_provider_says_what_to_install():
    import onnxruntime as ort

    if "CoreMLExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CoreML")
    with pytest.raises(BackendError, match="not in this onnxruntime build"):
        resolve_providers("coreml")


def test_backends_are_interchangeable(tiny_graphs):
    model, graphs = tiny_graphs
    image = example_inputs(model.config)["source_image"].numpy()
    outputs = {}
    for backend in (open_backend("onnxruntime", graphs=graphs),
                    open_backend("torch", model=build_model(get_config("tiny")))):
        with backend:
            assert isinstance(backend, Backend)
            backend.encode_source(image)
            expr, camera = next(driving_frames(model.config, 1))
            outputs[backend.name] = {k: np.array(v) for k, v in
                                     backend.frame(expr[0], camera[0]).items()}  # 1-D accepted
    a, b = outputs["onnxruntime"], outputs["torch"]
    assert a.keys() == b.keys() == {"image", "image_raw", "depth"}
    for key in a:
        assert a[key].shape == b[key].shape
        np.testing.assert_allclose(a[key], b[key], atol=1e-4, rtol=0)


def test_frames_reuse_bound_buffers(tiny_graphs):
    model, graphs = tiny_graphs
    with OrtBackend(graphs) as backend:
        backend.encode_source(example_inputs(model.config)["source_image"].numpy())
        pointers, images = set(), []
        for expr, camera in driving_frames(model.config, 3):
            out = backend.frame(expr, camera)
            pointers.add(tuple(v.ctypes.data for v in out.values()))
            images.append(out["image"].copy())
        assert len(pointers) == 1  # the same output buffers, frame after frame
        assert not np.array_equal(images[0], images[1])  # ... holding each new frame
        # The encoder wrote the source features straight into the generator's input buffers.
        assert np.abs(backend.gen_in["source_high"]).max() > 0


def test_backend_errors(tiny_graphs, tmp_path):
    model, graphs = tiny_graphs
    with OrtBackend(graphs) as backend:
        with pytest.raises(BackendError, match="encode_source"):
            backend.frame(np.zeros(64), np.zeros(25))
        with pytest.raises(BackendError, match="source image must be"):
            backend.encode_source(np.zeros((1, 3, 8, 8), np.float32))
        backend.encode_source(example_inputs(model.config)["source_image"].numpy())
        with pytest.raises(BackendError, match="expr must have 64 values"):
            backend.frame(np.zeros(10), np.zeros(25))
    with pytest.raises(BackendError, match="unknown backend"):
        open_backend("vulkan")
    from export.manifest import ManifestError

    with pytest.raises(ManifestError, match="does not exist"):
        OrtBackend(tmp_path)
    with pytest.raises(BackendError, match="encode_source"):
        TorchBackend(build_model(get_config("tiny"))).frame(np.zeros(64), np.zeros(25))


def test_graphs_for_another_expression_code_are_refused(tiny_graphs, tmp_path):
    import json
    import shutil

    from export.manifest import ManifestError

    _, graphs = tiny_graphs
    copy = tmp_path / "graphs"
    shutil.copytree(graphs, copy)
    data = json.loads((copy / "manifest.json").read_text())
    assert data["expression_code"] == "mpx64-v1"
    data["expression_code"] = "mpx64-v0"
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="trained on expression code 'mpx64-v0', but this "
                       "extractor produces 'mpx64-v1'; export them again"):
        OrtBackend(copy)


@pytest.mark.parametrize("content,why", [
    (b"\xff\xfe", "is unreadable"),  # not UTF-8: was a UnicodeDecodeError traceback
    (b"[]", "is not an export3d ONNX manifest"),  # was an AttributeError
    (b'{"format": 1, "graphs": null}', "is not an export3d ONNX manifest"),
    (b'{"format": 1, "graphs": {"source_encoder": {"sha256": "0"}}}',  # was a KeyError
     "is not an export3d ONNX manifest"),
])
def test_manifest_that_is_not_ours_is_one_error(tiny_graphs, tmp_path, content, why):
    import shutil

    from export.manifest import ManifestError

    _, graphs = tiny_graphs
    copy = tmp_path / "graphs"
    shutil.copytree(graphs, copy)
    (copy / "manifest.json").write_bytes(content)
    with pytest.raises(ManifestError, match=why):
        OrtBackend(copy)
