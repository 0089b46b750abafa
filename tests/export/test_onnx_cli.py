"""``export3d export onnx`` end to end and its bad inputs: each one sentence, exit status 2,
no graph left behind."""
from __future__ import annotations

import pytest

import export3d.cli
from export import onnx_export
from export3d.checkpoint import save_checkpoint
from export3d.config import get_config
from export3d.model import build_model


@pytest.fixture
def cli(monkeypatch):
    # The entry point (export = "export.cli:register") is declared in pyproject.toml; register
    # it here too so the test does not depend on how the package was installed.
    monkeypatch.setitem(export3d.cli.BUILTIN, "export", "export.cli:register")
    return export3d.cli.main


def test_export_writes_graphs_and_verifies(cli, tmp_path, capsys):
    out = tmp_path / "graphs"
    assert cli(["export", "onnx", "--preset", "tiny", "--out", str(out), "--verify",
                "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "frame_generator.onnx" in text and "verify (max abs error vs PyTorch)" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "frame_generator.onnx", "manifest.json", "source_encoder.onnx"]


def test_checkpoint_for_another_preset_is_refused(cli, tmp_path, capsys):
    ckpt = save_checkpoint(build_model(get_config("tiny")), tmp_path / "tiny.safetensors")
    out = tmp_path / "graphs"
    assert cli(["export", "onnx", "--preset", "paper512", "--checkpoint", str(ckpt),
                "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is for preset 'tiny'" in err and "--preset tiny" in err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_checkpoint_alone_sets_the_preset(cli, tmp_path, capsys):
    ckpt = save_checkpoint(build_model(get_config("tiny")), tmp_path / "tiny.safetensors")
    assert cli(["export", "onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "g"),
                "--quiet"]) == 0
    import json

    data = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert data["preset"] == "tiny" and data["checkpoint"]["file"] == "tiny.safetensors"


def test_unwritable_output_folder(cli, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli(["export", "onnx", "--preset", "tiny", "--out", str(blocker / "graphs"),
                "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot write to" in err and "--out" in err


def test_unknown_provider(cli, tmp_path, capsys):
    out = tmp_path / "graphs"
    assert cli(["export", "onnx", "--preset", "tiny", "--out", str(out), "--verify",
                "--provider", "warp-drive", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown execution provider 'warp-drive'" in err
    assert not out.exists()  # refused before anything was written


def test_failed_export_leaves_no_half_written_graphs(tmp_path, monkeypatch):
    out = tmp_path / "graphs"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    real_save = onnx_export.onnx.save
    calls = []

    def failing_save(graph, path):
        calls.append(path)
        if len(calls) == 2:  # the encoder is written, then the disk "fills up"
            raise OSError(28, "No space left on device")
        real_save(graph, path)

    monkeypatch.setattr(onnx_export.onnx, "save", failing_save)
    model = build_model(get_config("tiny"))
    with pytest.raises(onnx_export.ExportError, match="No space left"):
        onnx_export.export_onnx(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_bad_variant_and_opset_are_user_errors():
    model = build_model(get_config("tiny"))
    with pytest.raises(onnx_export.ExportError, match="unknown variant"):
        onnx_export.build_graphs(model, variant="fast")
    with pytest.raises(onnx_export.ExportError, match="opset 13 is too old"):
        onnx_export.build_graphs(model, opset=13)
    # Above what torch exports: was torch's RuntimeError traceback after the model was built.
    with pytest.raises(onnx_export.ExportError, match="opset 30 is newer than this torch "
                       "exports"):
        onnx_export.build_graphs(model, opset=30)


def test_a_bad_opset_leaves_no_output_folder(tmp_path):
    # The check ran after the output folder was made, leaving an empty one behind.
    out = tmp_path / "graphs"
    with pytest.raises(onnx_export.ExportError, match="opset 12 is too old"):
        onnx_export.export_onnx(build_model(get_config("tiny")), out, opset=12)
    assert not out.exists()

