"""``export3d doctor``: what this machine can run, and what to do about each gap, in seconds.

Each check is one line: a status (``ok``, ``missing``, ``warn`` or ``info``), what was found
and, where something is missing, the one thing to do about it. Nothing is downloaded, built or
installed; cameras are opened only when asked (``--cameras N``). The checks:
- Python, PyTorch (CPU or CUDA build), each CUDA GPU (name, compute capability, memory);
- what ``export3d live`` (its default ``--device auto``) would run here: device, precision,
  ray marcher (the fused Triton kernel on a CUDA GPU, else the PyTorch reference);
- ONNX Runtime and its execution providers; TensorRT and torch-tensorrt (optional); with
  ``--engines DIR``, each engine against this GPU and TensorRT, as the tensorrt backend will
  check it at start (so "built for another GPU" shows before a live run);
- mediapipe, the face model and the demo's media (``export3d assets``), the demo checkpoint;
- the virtual-camera driver and the webcams: on Linux read from sysfs without opening a
  device (v4l2loopback's devices are virtual, webcams hang off a USB or PCI bus; the module's
  ``exclusive_caps``, without which WebRTC apps do not list its device); elsewhere
  pyvirtualcam's OBS driver cannot be checked without starting it, and says so;
- the asset cache folder, and a display for ``--sink window``.
The exit status is 0 when everything ``export3d live --demo`` needs is there, 1 otherwise.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

STATUSES = ("ok", "missing", "warn", "info")
SYSFS_VIDEO = Path("/sys/class/video4linux")
SYSFS_LOOPBACK = Path("/sys/module/v4l2loopback")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # one of STATUSES
    detail: str
    fix: str = ""  # what to do, one sentence; empty when nothing is to be done
    required: bool = False  # needed by `export3d live --demo`


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if (3, 11) <= sys.version_info[:2] <= (3, 12):
        return Check("python", "ok", f"Python {version}", required=True)
    return Check("python", "warn", f"Python {version}; export3d is tested on 3.11 and 3.12",
                 "use Python 3.11 or 3.12", required=True)


def check_torch(torch) -> Check:
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    return Check("torch", "ok", f"PyTorch {torch.__version__} ({build})", required=True)


def check_gpus(torch) -> list[Check]:
    if torch.version.cuda is None:
        return [Check("gpu", "info", "none used: this PyTorch is a CPU build",
                      "for a GPU, install a CUDA build of torch (>= 2.11) before export3d")]
    if not torch.cuda.is_available():
        return [Check("gpu", "warn", "PyTorch sees no CUDA GPU",
                      "check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES")]
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(Check(f"gpu cuda:{i}", "ok", f"{p.name}, compute capability "
                         f"{p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB"))
    return out


def check_live_device(torch) -> Check:
    """What ``export3d live`` (torch backend, its default ``--device auto``) would run, by the
    live app's own rules (``realtime.generator.torch_precision``, ``export3d.renderer``'s
    ``impl="auto"``)."""
    from export3d.devices import resolve_device
    from export3d.renderer import _kernel_available

    from .generator import torch_precision

    device = resolve_device("auto")
    dtype, channels_last = torch_precision("auto", device)
    precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    detail = f"{device}, {precision}{', channels-last' if channels_last else ''}"
    if not device.startswith("cuda"):
        return Check("live", "info", f"{detail}, the PyTorch reference ray "
                     "marcher", "fine for the demo's 64 x 64 model; paper512 in real time "
                     "needs a CUDA GPU")
    if not _kernel_available():
        return Check("live", "warn", f"{detail}, the PyTorch reference ray "
                     "marcher (no Triton)", f"pip install triton for the fused kernel "
                     f"({_triton_hint()})")
    return Check("live", "ok", f"{detail}, the fused Triton ray-march kernel")


def _triton_hint() -> str:
    return "Linux wheels on PyPI; CUDA builds of torch on Linux bring it"


def check_triton() -> Check:
    version = _version("triton")
    if version is None:
        return Check("triton", "info", "not installed (only the CUDA path uses it)",
                     f"pip install triton for the fused kernel on a CUDA GPU ({_triton_hint()})")
    return Check("triton", "ok", f"Triton {version}")


def check_onnxruntime() -> Check:
    try:
        import onnxruntime
    except ImportError as exc:
        return Check("onnxruntime", "missing", f"cannot be imported ({exc})",
                     "pip install onnxruntime")
    providers = ", ".join(p.removesuffix("ExecutionProvider")
                          for p in onnxruntime.get_available_providers())
    return Check("onnxruntime", "ok", f"ONNX Runtime {onnxruntime.__version__}; providers: "
                 f"{providers}")


def check_tensorrt() -> list[Check]:
    from engines import trt

    if not trt.available():
        out = [Check("tensorrt", "info", "not installed (optional: the tensorrt backend and "
                     "'export3d export engine')", trt.INSTALL_HINT)]
    else:
        try:
            module = trt.import_tensorrt()
        except trt.TensorRTError as exc:
            out = [Check("tensorrt", "warn", str(exc).split(";")[0], trt.INSTALL_HINT)]
        else:
            out = [Check("tensorrt", "ok", f"TensorRT {module.__version__}")]
    version = _version("torch-tensorrt") or _version("torch_tensorrt")
    out.append(Check("torch-tensorrt", "ok", f"torch-tensorrt {version}") if version else
               Check("torch-tensorrt", "info", "not installed (optional: the torch-tensorrt "
                     "route; comes with export3d[trt])"))
    return out


def check_engines(folder, gpu: tuple[str, str] | None = None, tensorrt: str | None = None
                  ) -> list[Check]:
    """Each engine of ``folder`` (from 'export3d export engine') against this machine, by its
    metadata, as the tensorrt backend will check it at start: compute capability, TensorRT
    version and GPU model, and the engine file against its recorded sha256. ``gpu`` (name,
    "major.minor") and ``tensorrt`` (version) default to this machine's."""
    from engines import trt
    from engines.trt.builder import STAGES, engine_path
    from engines.trt.device import gpu_info
    from engines.trt.runtime import check_engine_bytes, check_metadata, check_pair, read_metadata

    if tensorrt is None and trt.available():
        try:
            tensorrt = str(trt.import_tensorrt().__version__)
        except trt.TensorRTError:
            tensorrt = None
    if gpu is None:
        try:
            gpu = gpu_info()
        except trt.TensorRTError:
            gpu = None
    out, metas = [], {}
    for stage in STAGES:
        path = engine_path(folder, stage)
        name = f"engine {stage}"
        try:
            meta = metas[stage] = read_metadata(path)
            built = (f"built for {meta.get('gpu', '?')} (compute capability "
                     f"{meta.get('compute_capability', '?')}), TensorRT "
                     f"{meta.get('tensorrt', '?')}")
            check_engine_bytes(meta, path, path.read_bytes())
            if gpu is None or tensorrt is None:
                missing = "no CUDA GPU" if gpu is None else "no TensorRT"
                out.append(Check(name, "warn", f"{built}; cannot be matched here ({missing})",
                                 "run this on the machine that will run the engines"))
                continue
            check_metadata(meta, path, gpu[0], gpu[1], tensorrt)
        except trt.TensorRTError as exc:
            what, _, fix = str(exc).partition("; ")
            out.append(Check(name, "missing", what, fix))
        else:
            out.append(Check(name, "ok", f"{built}: matches this machine"))
    if len(metas) == len(STAGES):
        try:
            check_pair(*(metas[stage] for stage in STAGES), folder)
        except trt.TensorRTError as exc:
            what, _, fix = str(exc).partition("; ")
            out.append(Check("engine pair", "missing", what, fix))
    if "frame_generator" in metas:
        from export.manifest import ManifestError, check_expression_code

        try:
            check_expression_code(metas["frame_generator"].get("expression_code"), folder,
                                  "engines")
        except ManifestError as exc:
            what, _, fix = str(exc).partition("; ")
            out.append(Check("engine expression code", "missing", what, fix))
    return out


def check_mediapipe() -> Check:
    try:
        import mediapipe
    except Exception as exc:  # noqa: BLE001 - a broken install (protobuf, numpy) is a finding
        return Check("mediapipe", "missing", f"cannot be imported ({type(exc).__name__}: "
                     f"{exc})", "pip install 'mediapipe>=1.2,<2'", required=True)
    return Check("mediapipe", "ok", f"mediapipe {getattr(mediapipe, '__version__', '?')}",
                 required=True)


def check_assets() -> list[Check]:
    from export3d import demo
    from export3d.assets import asset_path, cache_dir, find_face_model
    from export3d.errors import UserError

    out = []
    try:
        out.append(Check("face model", "ok", f"{find_face_model()} (sha256 verified)",
                         required=True))
    except UserError as exc:
        out.append(Check("face model", "missing", str(exc).split(";")[0],
                         "run 'export3d assets' (or set EXPORT3D_FACE_MODEL to your copy)",
                         required=True))
    media = [demo.SOURCE_VIDEO, demo.DRIVER_VIDEO]
    bad = []
    for name in media:
        try:
            asset_path(name)
        except UserError:
            bad.append(name)
    out.append(Check("demo media", "missing", f"{', '.join(bad)} not in {cache_dir()}",
                     "run 'export3d assets'", required=True) if bad else
               Check("demo media", "ok", f"{', '.join(media)} in {cache_dir()} (sha256 "
                     "verified)", required=True))
    try:
        out.append(Check("demo checkpoint", "ok", str(demo.checkpoint()), required=True))
    except UserError as exc:
        out.append(Check("demo checkpoint", "missing", str(exc).split(";")[0],
                         "install with pip install -e . from a clone of the repository",
                         required=True))
    return out


def video_devices(root: Path = SYSFS_VIDEO) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Linux: ``(virtual, physical)`` video4linux devices as ``(/dev/videoN, name)``, read from
    sysfs without opening them. v4l2loopback's devices (a virtual camera) live under
    ``/sys/devices/virtual``; a webcam's under its USB or PCI bus."""
    virtual, physical = [], []
    if not root.is_dir():
        return virtual, physical
    for entry in sorted(root.iterdir(), key=lambda p: (len(p.name), p.name)):
        try:
            name = (entry / "name").read_text().strip()
        except OSError:
            name = "?"
        target = os.path.realpath(entry)
        (virtual if "/virtual/" in target else physical).append((f"/dev/{entry.name}", name))
    return virtual, physical


def check_virtualcam(root: Path = SYSFS_VIDEO, platform: str = sys.platform,
                     module: Path = SYSFS_LOOPBACK) -> Check:
    """The virtual-camera driver. On Linux also v4l2loopback's ``exclusive_caps`` (module
    parameters are readable in sysfs): browsers (Meet), Zoom and other WebRTC apps list a
    loopback device as a camera only when it is on."""
    from .sinks import OBS_FIX, V4L2LOOPBACK_FIX

    if importlib.util.find_spec("pyvirtualcam") is None:
        return Check("virtual camera", "missing", "pyvirtualcam is not installed",
                     "pip install pyvirtualcam")
    if not platform.startswith("linux"):
        return Check("virtual camera", "info", "pyvirtualcam uses OBS Studio's Virtual Camera "
                     "here, which cannot be checked without starting it", OBS_FIX)
    virtual, _ = video_devices(root)
    if not virtual:
        return Check("virtual camera", "missing", "no v4l2loopback device",
                     f"{V4L2LOOPBACK_FIX}; '--sink preview' works without it")
    detail = "v4l2loopback: " + ", ".join(f"{dev} ({name})" for dev, name in virtual)
    try:  # one Y/N per device slot, in the order the module made them
        caps = (module / "parameters" / "exclusive_caps").read_text().strip().split(",")
    except OSError:
        caps = []
    if "N" in caps[: len(virtual)]:
        return Check("virtual camera", "warn", f"{detail}; exclusive_caps is off, so browsers, "
                     "Zoom and other WebRTC apps do not list it", "reload the module with it "
                     "on: 'sudo modprobe -r v4l2loopback && sudo modprobe v4l2loopback "
                     "devices=1 exclusive_caps=1'")
    return Check("virtual camera", "ok", detail)


def check_webcams(root: Path = SYSFS_VIDEO, platform: str = sys.platform, probe: int = 0,
                  opener=None) -> list[Check]:
    """Linux: the webcams sysfs lists (each usually shows two nodes, capture and metadata).
    ``probe`` > 0: open indices 0..probe-1 with OpenCV (``opener``, default
    ``cv2.VideoCapture``), its own log silenced, and read one frame from each."""
    out = []
    if platform.startswith("linux"):
        _, physical = video_devices(root)
        out.append(Check("webcams", "ok", ", ".join(f"{dev} ({name})" for dev, name in physical))
                   if physical else
                   Check("webcams", "info", "no camera device found (a webcam is only needed "
                         "for --camera)", "plug in a webcam, or drive with --video or --images"))
    elif not probe:
        out.append(Check("webcams", "info", "not listed on this system without opening them",
                         "run 'export3d doctor --cameras 2' to open and read cameras 0 and 1"))
    if probe:
        import cv2

        from .capture import quiet_opencv

        for index in range(probe):
            with quiet_opencv(cv2):
                cap = (opener or cv2.VideoCapture)(index)
                try:
                    ok, frame = cap.read() if cap.isOpened() else (False, None)
                finally:
                    cap.release()
            out.append(Check(f"camera {index}", "ok", f"read a {frame.shape[1]}x{frame.shape[0]} "
                             "frame") if ok else
                       Check(f"camera {index}", "info", "cannot be opened or read",
                             "another app may hold it, or there is no camera at this index"))
    return out


def check_cache() -> Check:
    from export3d.assets import cache_dir

    path = cache_dir()
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if os.access(parent, os.W_OK):
        from export.cache import entries

        built = entries()
        held = (f"; {len(built)} built graph/engine folder(s), "
                f"{sum(e['bytes'] for e in built) / 1e6:.0f} MB: 'export3d cache'" if built
                else "")
        return Check("cache", "ok", f"{path} (writable{held})", required=True)
    return Check("cache", "missing", f"{path} cannot be written",
                 "set EXPORT3D_CACHE to a writable folder", required=True)


def check_display(platform: str = sys.platform) -> Check:
    from .sinks import lacks_display

    if lacks_display(platform):
        return Check("display", "info", "none (DISPLAY is not set): '--sink window' cannot open",
                     "use '--sink preview' and open the printed address in a browser")
    return Check("display", "ok", "'--sink window' can open a window")


def run_checks(cameras: int = 0, engines=None) -> list[Check]:
    import torch

    checks = [check_python(), check_torch(torch), *check_gpus(torch), check_triton(),
              check_live_device(torch), check_onnxruntime(), *check_tensorrt(),
              *(check_engines(engines) if engines else []),
              check_mediapipe(), *check_assets(), check_virtualcam(),
              *check_webcams(probe=cameras), check_cache(), check_display()]
    unknown = [c for c in checks if c.status not in STATUSES]
    assert not unknown, unknown
    return checks


def demo_ready(checks: list[Check]) -> bool:
    return all(c.status == "ok" for c in checks if c.required)


def format_table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.name:<{width}}  {c.status:<7}  {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"{'':<{width}}  {'':<7}  -> {c.fix}")
    return "\n".join(lines)


def run(args) -> None:
    from export3d.errors import UserError

    if args.cameras < 0:
        raise UserError(f"--cameras {args.cameras}: give how many camera indices to open (0-16)")
    if args.json:
        from export3d.media import output_path

        json_path = output_path(args.json)  # checked before the cameras are opened
    checks = run_checks(cameras=min(args.cameras, 16), engines=args.engines)
    print(format_table(checks))
    ready = demo_ready(checks)
    missing = [c.name for c in checks if c.required and c.status != "ok"]
    print("\nexport3d live --demo: " + ("ready" if ready else
                                         "not ready (" + ", ".join(missing) + ")"))
    if args.json:
        json_path.write_text(json.dumps({"demo_ready": ready,
                                    "checks": [asdict(c) for c in checks]}, indent=1) + "\n")
    if not ready:
        raise SystemExit(1)


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="check what this machine can run (GPU, kernel, "
                              "backends, face model, virtual camera, webcams) and what to do "
                              "about each gap")
    p.add_argument("--cameras", type=int, default=0, help="also open camera indices 0..N-1 and "
                   "read a frame from each (default: do not open any)")
    p.add_argument("--engines", help="also check the engines in this folder (from 'export3d "
                   "export engine') against this GPU and TensorRT")
    p.add_argument("--json", help="also write the checks to this JSON file")
    p.set_defaults(run=run)
