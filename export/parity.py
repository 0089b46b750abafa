"""Parity of exported graphs against the PyTorch reference, with tolerances stated once.

The reference is always the float32 PyTorch model (``TorchBackend``); an fp16 graph is judged
against it too, with its own, looser tolerances. Outputs: ``image`` and ``image_raw`` in
[-1, 1], ``depth`` in world units ([near, far] = [2.25, 3.3] by default).
"""
from __future__ import annotations

import numpy as np
import torch

from export3d.errors import UserError

# Max absolute error allowed, by graph precision and output.
# fp32: ONNX Runtime and PyTorch run the same float32 arithmetic in a different order (the
#   measured errors are 1e-7..1e-6); 1e-4 leaves room for other CPUs and kernels.
# fp16: float16 weights and activations in the generator and SR (ulp ~1e-3 near 1), the ray march
#   in float32; measured ~5e-4 (image), ~3e-4 (image_raw), ~3e-6 (depth) on tiny and on the
#   reduced paper512 shape with random weights; 10x headroom for trained weights.
TOLERANCE = {
    "fp32": {"image": 1e-4, "image_raw": 1e-4, "depth": 1e-4},
    "fp16": {"image": 5e-3, "image_raw": 5e-3, "depth": 1e-3},
}


class ParityError(UserError):
    """Exported graphs whose output differs from PyTorch beyond the stated tolerance."""


def driving_frames(config, frames: int = 3, seed: int = 1):
    """Deterministic (expr [1, 64], camera [1, 25]) pairs along a camera orbit."""
    from export3d.camera import orbit_path

    gen = torch.Generator().manual_seed(seed)
    cameras = orbit_path("circle", max(frames, 2))
    for i in range(frames):
        expr = 0.5 * torch.randn(1, config.expr_dim, generator=gen)
        yield expr.numpy(), cameras[i: i + 1].float().numpy()


def max_errors(backend, reference, config, frames: int = 3) -> dict[str, float]:
    """Encode the same source on both backends, run ``frames`` frames, max |a - b| per output."""
    from .graphs import example_inputs

    image = example_inputs(config)["source_image"].numpy()
    backend.encode_source(image)
    reference.encode_source(image)
    worst: dict[str, float] = {}
    for expr, camera in driving_frames(config, frames):
        a = {k: np.array(v, dtype=np.float32) for k, v in backend.frame(expr, camera).items()}
        b = reference.frame(expr, camera)
        for key in b:
            worst[key] = max(worst.get(key, 0.0), float(np.abs(a[key] - b[key]).max()))
    return worst


def compare_backends(model, graphs, providers=("cpu",), frames: int = 3,
                     check: bool = True) -> dict[str, float]:
    """ONNX Runtime on ``graphs`` vs the float32 PyTorch ``model``; raises :class:`ParityError`
    beyond :data:`TOLERANCE` when ``check``."""
    import copy

    from .backend import TorchBackend
    from .ort_backend import OrtBackend

    with OrtBackend(graphs, providers=providers) as ort_backend, \
            TorchBackend(copy.deepcopy(model), impl="reference") as reference:
        errors = max_errors(ort_backend, reference, model.config, frames)
        precision = ort_backend.manifest["precision"]
    if check:
        bad = {k: v for k, v in errors.items() if v > TOLERANCE[precision][k]}
        if bad:
            raise ParityError("the exported graphs differ from PyTorch beyond tolerance (" +
                              ", ".join(f"{k}: {v:.2e} > {TOLERANCE[precision][k]:.0e}"
                                        for k, v in bad.items()) +
                              "); report this with the manifest.json")
    return errors
