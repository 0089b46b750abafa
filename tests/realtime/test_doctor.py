"""``export3d doctor``: each check reports this machine as the libraries themselves see it, a
missing piece turns into its fix and a non-zero exit, and the Linux device listing (read from
sysfs, nothing opened) tells a v4l2loopback device from a webcam."""
import importlib.metadata
import importlib.util
import json
import os

import pytest
import torch

from export3d import demo
from export3d.assets import FACE_MODEL, asset_path
from export3d.cli import main
from realtime import doctor


def by_name(checks):
    out = {c.name: c for c in checks}
    assert len(out) == len(checks), "two checks share a name"
    return out


@pytest.fixture
def demo_assets():
    """The demo's face model and media in the cache (the set-up step, as CI runs it)."""
    for name in (FACE_MODEL, demo.SOURCE_VIDEO, demo.DRIVER_VIDEO):
        asset_path(name, fetch=True)


def test_checks_report_what_the_libraries_report(demo_assets):
    import onnxruntime

    checks = by_name(doctor.run_checks())
    assert torch.__version__ in checks["torch"].detail
    assert ("CPU build" in checks["torch"].detail) == (torch.version.cuda is None)
    gpus = [c for name, c in checks.items() if name.startswith("gpu")]
    assert len(gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    providers = checks["onnxruntime"].detail.split("providers: ")[1].split(", ")
    assert providers == [p.removesuffix("ExecutionProvider")
                         for p in onnxruntime.get_available_providers()]
    trt_found = importlib.util.find_spec("tensorrt") is not None
    assert (checks["tensorrt"].status == "info") == (not trt_found)
    assert importlib.metadata.version("mediapipe") in checks["mediapipe"].detail
    assert importlib.metadata.version("triton") in checks["triton"].detail
    for name in ("face model", "demo media", "demo checkpoint", "cache"):
        assert checks[name].status == "ok", checks[name]
    assert doctor.demo_ready(list(checks.values()))
    live = checks["live"]
    if not torch.cuda.is_available():
        assert live.status == "info" and live.detail.startswith("cpu, fp32, the PyTorch reference")


@pytest.mark.parametrize("capability,kernel,status,detail", [
    ((9, 0), True, "ok", "cuda, bf16, channels-last, the fused Triton ray-march kernel"),
    ((7, 5), True, "ok", "cuda, fp16, channels-last, the fused Triton ray-march kernel"),
    ((8, 6), False, "warn", "cuda, bf16, channels-last, the PyTorch reference ray marcher"),
])
def test_live_device_follows_the_gpu(monkeypatch, capability, kernel, status, detail):
    # A CUDA machine as the live app would see it: bf16 from compute capability 8.0, fp16
    # below; the fused kernel when Triton can run it, else the reference and a fix.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr("export3d.renderer._kernel_available", lambda: kernel)
    check = doctor.check_live_device(torch)
    assert (check.status, check.detail.removesuffix(" (no Triton)")) == (status, detail)
    assert ("pip install triton" in check.fix) == (not kernel)


def test_missing_assets_make_the_demo_not_ready(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EXPORT3D_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("EXPORT3D_FACE_MODEL", raising=False)
    checks = by_name(doctor.run_checks())
    for name in ("face model", "demo media"):
        assert checks[name].status == "missing"
        assert "export3d assets" in checks[name].fix
    assert checks["cache"].status == "ok"  # a folder that does not exist yet can be made
    assert not doctor.demo_ready(list(checks.values()))
    report = tmp_path / "out" / "doctor.json"
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--json", str(report)])
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert "export3d live --demo: not ready (face model, demo media)" in out
    written = json.loads(report.read_text())
    assert written["demo_ready"] is False
    assert [c["name"] for c in written["checks"]] == list(checks)
    # A model of the user's that is not the tested one is named, with what to do.
    fake = tmp_path / "face_landmarker.task"
    fake.write_bytes(b"not a model")
    monkeypatch.setenv("EXPORT3D_FACE_MODEL", str(fake))
    face = by_name(doctor.check_assets())["face model"]
    assert face.status == "missing" and str(fake) in face.detail


def test_ready_machine_exits_zero_and_bad_flag_is_one_line(demo_assets, tmp_path, capsys):
    report = tmp_path / "doctor.json"
    assert main(["doctor", "--json", str(report)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("export3d live --demo: ready")
    assert json.loads(report.read_text())["demo_ready"] is True
    assert main(["doctor", "--cameras", "-1"]) == 2
    assert capsys.readouterr().err.startswith("export3d: error: --cameras -1")


def fake_sysfs(root, devices):
    """``/sys/class/video4linux/videoN`` -> the device's folder, as the kernel links them:
    under ``devices/virtual/`` for v4l2loopback, under a USB bus for a webcam."""
    cls = root / "class" / "video4linux"
    cls.mkdir(parents=True)
    for node, (bus, name) in devices.items():
        target = root / "devices" / bus / "video4linux" / node
        target.mkdir(parents=True)
        (target / "name").write_text(name + "\n")
        os.symlink(target, cls / node)
    return cls


def test_sysfs_tells_loopback_from_webcams(tmp_path):
    cls = fake_sysfs(tmp_path, {
        "video0": ("pci0000:00/0000:00:14.0/usb1/1-6/1-6:1.0", "Integrated Camera"),
        "video1": ("pci0000:00/0000:00:14.0/usb1/1-6/1-6:1.0", "Integrated Camera"),
        "video10": ("virtual", "export3d"),
        "video2": ("virtual", "Dummy video device (0x0000)")})
    virtual, physical = doctor.video_devices(cls)
    assert virtual == [("/dev/video2", "Dummy video device (0x0000)"),
                       ("/dev/video10", "export3d")]
    assert physical == [("/dev/video0", "Integrated Camera"), ("/dev/video1", "Integrated Camera")]
    module = tmp_path / "module" / "v4l2loopback"
    cam = doctor.check_virtualcam(cls, "linux", module)
    assert cam.status == "ok" and "/dev/video10 (export3d)" in cam.detail
    # exclusive_caps, one Y/N per device slot (the module's sysfs parameter): off for one of
    # the two devices means WebRTC apps miss it.
    (module / "parameters").mkdir(parents=True)
    (module / "parameters" / "exclusive_caps").write_text("Y,N,N,N\n")
    cam = doctor.check_virtualcam(cls, "linux", module)
    assert cam.status == "warn" and "exclusive_caps=1" in cam.fix
    (module / "parameters" / "exclusive_caps").write_text("Y,Y,N,N\n")
    assert doctor.check_virtualcam(cls, "linux", module).status == "ok"
    webcams = doctor.check_webcams(cls, "linux")
    assert [c.status for c in webcams] == ["ok"] and "/dev/video0" in webcams[0].detail


def test_no_loopback_device_names_the_module(tmp_path):
    cls = fake_sysfs(tmp_path, {"video0": ("pci0000:00/usb1/1-1", "USB Camera")})
    cam = doctor.check_virtualcam(cls, "linux")
    assert cam.status == "missing" and "modprobe v4l2loopback" in cam.fix
    assert doctor.check_virtualcam(tmp_path / "no-sysfs", "linux").status == "missing"
    other = doctor.check_virtualcam(cls, "darwin")
    assert other.status == "info" and "OBS" in other.fix
    assert doctor.check_webcams(tmp_path / "no-sysfs", "linux")[0].status == "info"


def engine_folder(root, stages):
    """Engines and their metadata as 'export3d export engine' writes them (blobs stand in)."""
    import hashlib

    root.mkdir()
    for stage in stages:
        blob = f"engine {stage}".encode()
        (root / f"{stage}.engine").write_bytes(blob)
        (root / f"{stage}.engine.json").write_text(json.dumps({
            "format": 1, "stage": stage, "engine_sha256": hashlib.sha256(blob).hexdigest(),
            "export_id": "export-1",
            "onnx_dir": "graphs", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
            "tensorrt": "10.7.0", "expression_code": "mpx64-v1"}))
    return root


def test_engines_are_matched_to_the_gpu_and_tensorrt_before_a_run(tmp_path):
    folder = engine_folder(tmp_path / "engines", ["source_encoder", "frame_generator"])
    h100 = ("NVIDIA H100 80GB HBM3", "9.0")
    checks = doctor.check_engines(folder, h100, "10.7.0")
    assert [(c.name, c.status) for c in checks] == [("engine source_encoder", "ok"),
                                                    ("engine frame_generator", "ok")]
    # Another card, another TensorRT: each engine says what it was built for and how to
    # rebuild it here.
    for gpu, tensorrt in ((("NVIDIA GeForce RTX 4090", "8.9"), "10.7.0"), (h100, "10.8.0")):
        check = doctor.check_engines(folder, gpu, tensorrt)[1]
        assert check.status == "missing" and "built for NVIDIA H100 80GB HBM3" in check.detail
        assert check.fix.startswith("rebuild it here with 'export3d export engine --onnx graphs")
    (folder / "frame_generator.engine").write_bytes(b"half a cop")
    (folder / "source_encoder.engine").unlink()
    enc, gen = doctor.check_engines(folder, h100, "10.7.0")
    assert enc.status == "missing" and "does not exist" in enc.detail
    assert gen.status == "missing" and "sha256" in gen.detail
    # Where the GPU or TensorRT is not there to compare with, it says so instead of passing.
    (folder / "frame_generator.engine").write_bytes(b"engine frame_generator")
    gen = doctor.check_engines(folder, None, "10.7.0")[1]
    assert gen.status == "warn" and "no CUDA GPU" in gen.detail
    if not torch.cuda.is_available():
        assert doctor.check_engines(folder)[1].status == "warn"
    # Two engines from different exports (a rebuild that stopped half-way, a copy) are one
    # finding of their own: the generator would read another model's source features.
    folder = engine_folder(tmp_path / "copied", ["source_encoder", "frame_generator"])
    assert [c.status for c in doctor.check_engines(folder, h100, "10.7.0")] == ["ok", "ok"]
    meta = json.loads((folder / "source_encoder.engine.json").read_text())
    (folder / "source_encoder.engine.json").write_text(json.dumps({**meta, "export_id": "x"}))
    pair = doctor.check_engines(folder, h100, "10.7.0")[-1]
    assert (pair.name, pair.status) == ("engine pair", "missing")
    assert "not built from the same export" in pair.detail and "rebuild both" in pair.fix
    # Engines exported from weights trained on another expression code: the backend refuses
    # them at start, so doctor says so before.
    meta = json.loads((folder / "frame_generator.engine.json").read_text())
    (folder / "frame_generator.engine.json").write_text(json.dumps(
        {**meta, "expression_code": "mpx64-v0"}))
    code = doctor.check_engines(folder, h100, "10.7.0")[-1]
    assert (code.name, code.status) == ("engine expression code", "missing")
    assert "trained on expression code 'mpx64-v0'" in code.detail
    assert code.fix.startswith("export them again")


def test_camera_probe_reads_a_frame_from_each_index(tmp_path):
    import numpy as np

    class Camera:
        def __init__(self, index):
            self.index, self.released = index, False

        def isOpened(self):
            return self.index == 0

        def read(self):
            return True, np.zeros((480, 640, 3), np.uint8)

        def release(self):
            self.released = True

    opened = []

    def opener(index):
        opened.append(Camera(index))
        return opened[-1]

    checks = doctor.check_webcams(tmp_path / "no-sysfs", "win32", probe=2, opener=opener)
    assert [(c.name, c.status) for c in checks] == [("camera 0", "ok"), ("camera 1", "info")]
    assert checks[0].detail == "read a 640x480 frame" and "may hold it" in checks[1].fix
    assert all(cam.released for cam in opened)
    # Not probed and not Linux: says how to probe rather than guessing.
    (unprobed,) = doctor.check_webcams(tmp_path / "no-sysfs", "win32")
    assert unprobed.status == "info" and "--cameras" in unprobed.fix
