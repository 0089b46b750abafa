"""``export3d render`` end to end on real portraits, and its one-sentence errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from matplotlib import cbook

from export3d.camera import orbit_path
from export3d.checkpoint import save_checkpoint
from export3d.cli import main
from export3d.config import get_config
from export3d.media import MediaError, default_portrait, load_image, to_model_input, to_uint8_rgb
from export3d.render import source_crop
from export3d.model import build_model


def read_frames(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def trained_looking_checkpoint(path):
    """A tiny model with perturbed weights, so frames depend on expression and camera."""
    model = build_model(get_config("tiny"), seed=7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    save_checkpoint(model, path)
    return model


def test_render_orbit_writes_frames_equal_to_the_model(tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    model = trained_looking_checkpoint(ckpt)
    out = tmp_path / "orbit.mkv"  # FFV1: lossless, so frames compare exactly
    assert main(["render", "--checkpoint", str(ckpt), "--orbit", "yaw", "--frames", "4",
                 "--out", str(out), "--quiet"]) == 0
    frames = read_frames(out)
    assert len(frames) == 4 and frames[0].shape == (64, 128, 3)
    image = to_model_input(source_crop(load_image(default_portrait()), 64, "astronaut"))
    with torch.no_grad():
        expected = model(image, torch.zeros(1, 64), orbit_path("yaw", 4)[1:2])["image"][0]
    np.testing.assert_array_equal(frames[1][:, :64], to_uint8_rgb(expected))
    assert not np.array_equal(frames[0][:, :64], frames[1][:, :64])  # the camera moves
    assert "RANDOM" not in capsys.readouterr().err


def test_render_driving_file_on_grace_hopper(tmp_path, capsys):
    ckpt = tmp_path / "m.safetensors"
    trained_looking_checkpoint(ckpt)
    expr = np.random.default_rng(0).normal(size=(3, 64)).astype(np.float32)
    camera = orbit_path("circle", 3).numpy()
    driving = tmp_path / "drive.json"
    driving.write_text(json.dumps({"expr": expr.tolist(), "camera": camera.tolist(), "fps": 10}))
    npz = tmp_path / "drive.npz"
    np.savez(npz, expr=expr, camera=camera, timestamps=np.arange(3) / 10)
    hopper = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    outs = []
    for drive in (driving, npz):
        out = tmp_path / f"{drive.suffix[1:]}.mkv"
        assert main(["render", "--source", str(hopper), "--driving", str(drive), "--checkpoint",
                     str(ckpt), "--out", str(out), "--quiet"]) == 0
        outs.append(read_frames(out))
    assert len(outs[0]) == 3
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(outs[0][0], outs[0][1])


def test_without_checkpoint_it_warns_about_random_weights(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["render", "--frames", "2", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "RANDOM" in err
    assert len(read_frames(out)) == 2
    # ... and names the trained model that ships, wherever this install keeps it
    from export3d import demo

    assert f"--checkpoint {demo.checkpoint()})." in err


def test_the_warning_leaves_the_demo_out_where_it_is_not_installed(monkeypatch, tmp_path):
    from export3d import demo
    from export3d.render import random_weights_warning

    monkeypatch.setattr(demo, "PACKAGED_CHECKPOINT", tmp_path / "none.safetensors")
    monkeypatch.setattr(demo, "CHECKPOINT", tmp_path / "none.safetensors")
    warning = random_weights_warning()
    assert warning.endswith("for real output.") and "the one trained" not in warning


@pytest.mark.parametrize("content,message", [
    (b"", "not a readable image"),
    (b"\xff\xd8\xff\xe0 this is not really a jpeg", "not a readable image"),
    (b"just some text", "not a readable image"),
])
def test_bad_source_images_give_one_sentence(tmp_path, capsys, content, message):
    bad = tmp_path / "face.jpg"
    bad.write_bytes(content)
    assert main(["render", "--source", str(bad), "--frames", "1", "--out",
                 str(tmp_path / "x.mp4"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("export3d: error:") and message in err


def test_missing_source_and_bad_driving(tmp_path, capsys):
    assert main(["render", "--source", str(tmp_path / "none.png"), "--out",
                 str(tmp_path / "x.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err
    drive = tmp_path / "d.json"
    drive.write_text(json.dumps({"expr": [[0.0] * 10], "camera": [[0.0] * 25]}))
    assert main(["render", "--driving", str(drive), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "expected expr [T, 64]" in capsys.readouterr().err


def test_console_script_runs_as_module(tmp_path):
    out = tmp_path / "m.avi"
    proc = subprocess.run([sys.executable, "-m", "export3d", "render", "--frames", "1", "--out",
                           str(out), "--quiet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and "wrote" in proc.stdout


def test_a_half_body_photo_is_a_source(tmp_path, capsys):
    """The astronaut in a quadrant (its face 9% of the photo's width): mediapipe alone finds
    none in it, so this photo was refused ("no face found") before the window search."""
    from tracking_fixtures import model_path

    model_path()
    photo = np.full((1024, 1024, 3), 110, np.uint8)
    photo[512:, 512:] = load_image(default_portrait())
    path = tmp_path / "half_body.png"
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    assert main(["render", "--source", str(path), "--frames", "1", "--out",
                 str(tmp_path / "x.mp4"), "--quiet"]) == 0, capsys.readouterr().err
    crop = source_crop(photo, 128, path)
    alone = source_crop(load_image(default_portrait()), 128, "astronaut")
    assert np.abs(crop.astype(int) - alone.astype(int)).mean() < 3  # the same aligned crop


def test_version(capsys):
    import export3d

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"export3d {export3d.__version__} (Python 3.")


def test_source_is_face_aligned_and_a_photo_without_a_face_is_refused(tmp_path, capsys):
    from tracking_fixtures import media, model_path

    model_path()  # the face model from 'export3d assets'
    astronaut = load_image(default_portrait())
    crop = source_crop(astronaut, 128, "astronaut")
    assert crop.shape == (128, 128, 3)
    assert "centred crop" not in capsys.readouterr().err
    # The aligned crop centres the face: it is not the plain centred square.
    plain = cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(crop.astype(int) - plain.astype(int)).mean() > 10
    landscape = media("free-mountain-vector-01.jpg")
    assert main(["render", "--source", landscape, "--frames", "1", "--out",
                 str(tmp_path / "x.mp4"), "--quiet"]) == 2
    assert "no face found" in capsys.readouterr().err


def test_numbers_out_of_range_and_unwritable_outputs_give_one_sentence(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for argv, message in [(["--batch", "0"], "--batch must be at least 1"),
                          (["--fps", "0"], "--fps must be more than 0"),
                          (["--out", str(blocker / "x.mp4")],
                           f"cannot write {blocker / 'x.mp4'}: cannot create {blocker}")]:
        argv = ["render", "--frames", "1", "--quiet", "--out", str(tmp_path / "x.mp4"), *argv]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"export3d: error: {message}"), err
    assert not (tmp_path / "x.mp4").exists()


def test_an_os_error_about_a_path_is_one_sentence_and_any_other_a_traceback(monkeypatch,
                                                                            capsys):
    """What the system says about a path the user gave (a read-only disk, a full one) is
    theirs to fix: one line. An OSError about no path is a bug: its traceback stays."""
    import export3d.render as render

    def denied(args):
        raise PermissionError(13, "Permission denied", "/media/card/out.mp4")
    monkeypatch.setattr(render, "_run", denied)
    assert main(["render"]) == 2
    assert capsys.readouterr().err == ("export3d: error: /media/card/out.mp4: Permission "
                                       "denied; check the path and its permissions\n")

    def broken(args):
        raise OSError("a pipe broke")
    monkeypatch.setattr(render, "_run", broken)
    with pytest.raises(OSError, match="a pipe broke"):
        main(["render"])


def huge_png(path, side=32769):
    """A ~130 KB 1-bit PNG that decodes to side x side pixels (over OpenCV's 2**30 limit)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    packer = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side,
                                                                        1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_damaged_inputs_give_one_sentence(tmp_path, capsys):
    """Each of these was a traceback, or a finished video of black frames: a truncated
    checkpoint (an interrupted download), a PNG that decodes past OpenCV's pixel limit, and
    driving files that are broken, not objects, hold strings, NaN or infinities, or have a
    frame rate no writer takes."""
    out = str(tmp_path / "x.mp4")
    whole = tmp_path / "whole.safetensors"
    trained_looking_checkpoint(whole)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    bomb = tmp_path / "bomb.png"
    huge_png(bomb)
    frames = orbit_path("yaw", 3).numpy()
    good = {"expr": [[0.0] * 64] * 3, "camera": frames.tolist()}
    cases = {"cut": (["--checkpoint", str(cut)], "is truncated or damaged"),
             "bomb": (["--source", str(bomb)], "is too large to decode"),
             "frames": (["--frames", "2000000000"], "--frames must be 1 to")}
    drivers = {"trunc.npz": (None, "is not a driving file"),
               "array.npz": ("npy", "a single .npy array"),
               "list.json": ([1, 2], "not a JSON object"),
               "fpsnull.json": ({**good, "fps": None}, "is not a driving file"),
               "strings.json": ({**good, "expr": [["a"] * 64] * 3}, "is not a driving file"),
               "nan.json": ({**good, "expr": [[0.0] * 64, [float("nan")] * 64, [0.0] * 64]},
                            "frame 1 holds NaN or infinite values"),
               "inf.npz": ("inf", "frame 1 holds NaN or infinite values"),
               "fps0.json": ({**good, "fps": 0}, "frame rate 0 is not in"),
               "fpsbig.json": ({**good, "fps": 1e9}, "frame rate 1e+09 is not in")}
    for name, (content, message) in drivers.items():
        path = tmp_path / name
        if name == "trunc.npz":
            np.savez(path, expr=np.zeros((3, 64)), camera=frames)
            path.write_bytes(path.read_bytes()[:300])
        elif content == "npy":
            with open(path, "wb") as f:
                np.save(f, np.zeros((3, 64)))
        elif content == "inf":
            bad = frames.copy()
            bad[1, 3] = np.inf
            np.savez(path, expr=np.zeros((3, 64)), camera=bad)
        else:
            path.write_text(json.dumps(content))
        cases[name] = (["--driving", str(path)], message)
    for name, (argv, message) in cases.items():
        assert main(["render", *argv, "--out", out, "--quiet"]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("export3d: error:") and message in err[-1], (name, err)


def test_a_stopped_render_leaves_no_video_under_the_asked_name(tmp_path, capsys, monkeypatch):
    # The writer finished the container on any exit, so Ctrl-C after 2 frames left a playable
    # 2-frame out.mp4 that looked complete. Now the frames so far are kept as
    # out.partial.mp4, said so, and out.mp4 appears only when the render finishes.
    from export3d.media import VideoWriter
    from export3d.model import Export3D

    calls = []
    synthesize = Export3D.synthesize

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return synthesize(self, *args, **kwargs)

    monkeypatch.setattr(Export3D, "synthesize", interrupted)
    out = tmp_path / "out.mp4"
    assert main(["render", "--frames", "5", "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    partial = tmp_path / "out.partial.mp4"
    assert f"render stopped after 2 frames; they are in {partial}" in err
    assert not out.exists() and len(read_frames(partial)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.partial.mp4"]
    # Finished: the name appears only at close; a failed block with no frames leaves nothing.
    frame = np.zeros((32, 64, 3), np.uint8)
    writer = VideoWriter(out, 25, (64, 32))
    writer.write(frame)
    assert not out.exists()
    writer.close()
    assert len(read_frames(out)) == 1
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "none.avi", 25, (64, 32)):
            raise RuntimeError("before the first frame")
    # The writer itself refuses a rate OpenCV cannot take (an infinite one never returned), so
    # no caller's check is the only guard; nothing is left behind.
    for fps in (0.0, -1.0, 2000.0, float("nan")):
        with pytest.raises(MediaError, match="frames per second; use a rate above 0 and at most"):
            VideoWriter(tmp_path / "rate.avi", fps, (64, 32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "out.partial.mp4"]


def test_driving_file_takes_fps_and_refuses_frames(tmp_path, capsys):
    # --fps and --frames were silently ignored with --driving.
    drive = tmp_path / "d.npz"
    np.savez(drive, expr=np.zeros((3, 64)), camera=orbit_path("yaw", 3).numpy())
    out = tmp_path / "x.avi"
    assert main(["render", "--driving", str(drive), "--frames", "100", "--out", str(out),
                 "--quiet"]) == 2
    assert "--frames is for --orbit" in capsys.readouterr().err
    assert main(["render", "--driving", str(drive), "--fps", "10", "--out", str(out),
                 "--quiet"]) == 0
    video = cv2.VideoCapture(str(out))
    assert video.get(cv2.CAP_PROP_FPS) == 10 and int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_render_runs_on_a_gpu_by_default_when_there_is_one(monkeypatch, tmp_path):
    """``--device`` defaults to ``auto``: the device render_video gets is resolve_device's
    answer for ``auto`` (a stand-in machine with one GPU), and a named device is kept."""
    import export3d.render as render

    asked, used = [], []
    monkeypatch.setattr(render, "resolve_device",
                        lambda d: asked.append(d) or ("cuda" if d == "auto" else d))
    monkeypatch.setattr(render, "render_video",
                        lambda *a, device, **k: used.append(device) or Path(a[1]))
    out = str(tmp_path / "x.mp4")
    assert main(["render", "--frames", "1", "--out", out]) == 0
    assert main(["render", "--frames", "1", "--out", out, "--device", "cpu"]) == 0
    assert (asked, used) == (["auto", "cpu"], ["cuda", "cpu"])
