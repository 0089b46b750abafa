"""Generator stage: the source portrait encoded once, then (expr, camera) -> RGB uint8 frame,
over any backend of :mod:`export.backend`."""
from __future__ import annotations

import sys

import numpy as np

from .config import GeneratorConfig


class Generator:
    def __init__(self, config: GeneratorConfig, backend=None, image_size: int | None = None):
        self.config = config
        if backend is None:
            backend, image_size = _open(config)
        self.backend = backend
        self.image_size = image_size
        self.encode_source()

    def encode_source(self) -> None:
        from export3d.media import default_portrait, load_image, to_model_input
        from export3d.render import source_crop

        path = self.config.source or default_portrait()
        rgb = load_image(path)
        image = to_model_input(source_crop(rgb, self.image_size, path)).numpy()
        self.backend.encode_source(image)

    def frame(self, expr: np.ndarray, camera: np.ndarray) -> np.ndarray:
        out = self.backend.frame(expr[None], camera[None])["image"][0]
        rgb = ((np.clip(out, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        return np.ascontiguousarray(rgb.transpose(1, 2, 0))

    def close(self) -> None:
        self.backend.close()


def _open(config: GeneratorConfig):
    from export.backend import open_backend
    from export3d.config import get_config

    if config.backend == "onnxruntime":
        providers = ("cuda", "cpu") if config.device.startswith("cuda") else ("cpu",)
        backend = open_backend("onnxruntime", graphs=config.graphs, providers=providers)
        encoder_input = next(iter(getattr(backend, "enc_in", {}).values()), None)
        size = encoder_input.shape[-1] if encoder_input is not None else \
            get_config(config.preset).image_size
        return backend, size
    if config.checkpoint:
        from export3d.checkpoint import load_checkpoint

        model = load_checkpoint(config.checkpoint)
    else:
        from export3d.model import build_model
        from export3d.render import RANDOM_WEIGHTS_WARNING

        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr)
        model = build_model(get_config(config.preset), seed=0)
    backend = open_backend(config.backend, model=model, device=config.device)
    return backend, model.config.image_size
