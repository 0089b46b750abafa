"""--device is checked before any work: one sentence for a device that is not there."""
from __future__ import annotations

import pytest
import torch

from export3d.cli import main
from export3d.devices import resolve_device
from export3d.errors import UserError


def test_names_that_are_devices_here_pass_and_others_say_why(monkeypatch):
    assert resolve_device("cpu") == "cpu" and resolve_device(None) == "cpu"
    assert resolve_device(" CPU ") == "cpu"
    with pytest.raises(UserError, match="unknown device 'gpu'; use cpu, cuda, cuda:N or auto"):
        resolve_device("gpu")
    with pytest.raises(UserError, match="device 'mps' is not supported"):
        resolve_device("mps")

    # No GPU: "auto" is the CPU; "cuda" says whether torch or the machine lacks it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(UserError, match="--device cuda: this PyTorch is a CPU build"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(UserError, match="PyTorch sees no CUDA GPU .*or use --device cpu$"):
        resolve_device("cuda:0")

    # One GPU: cuda and cuda:0 are it, cuda:1 is not there.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(UserError, match=r"this machine has 1 CUDA GPU \(cuda:0 to cuda:0\)"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("argv", [
    ["render", "--frames", "1", "--quiet", "--out", "{tmp}/x.mp4"],
    ["live", "--synthetic", "--frames", "1", "--sink", "null"],
])
def test_commands_refuse_a_missing_gpu_in_one_line(argv, tmp_path, capsys, monkeypatch):
    """Without the check, render and live stopped with PyTorch's traceback ("Torch not
    compiled with CUDA enabled") from the first transfer."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--device", "cuda"]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and not line.startswith("WARNING: no --checkpoint given")]
    assert len(err) == 1 and err[0].startswith("export3d: error: --device cuda: "), err


def test_tests_not_marked_gpu_run_auto_on_the_cpu_where_a_gpu_is(monkeypatch):
    # conftest's _auto_device_is_the_cpu: on a GPU machine the CPU tests stay on the CPU
    # where a model runs; export3d.devices itself stays real (doctor's GPU tests need it).
    import export3d.devices
    import export3d.render
    import realtime.generator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda"  # the real one, on this stand-in GPU machine
    assert export3d.devices.resolve_device("auto") == "cuda"
    for module in (export3d.render, realtime.generator):
        assert module.resolve_device("auto") == "cpu", module.__name__
        assert module.resolve_device(None, default="auto") == "cpu"
        assert module.resolve_device("cuda:0") == "cuda:0"
