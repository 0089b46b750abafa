"""Live pipeline configuration: one frozen dataclass per stage, composed into PipelineConfig.

Precedence: defaults < YAML file (``load_config(path)``) < flags (``with_overrides``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from export3d.errors import UserError
from export3d.media import MAX_FPS


# Frame rates asked of a camera or written into a video: a frame a minute (below it the
# pacing overflows: 1e-300) to the writer's limit, export3d.media.MAX_FPS.
MIN_FPS = 1 / 60


@dataclass(frozen=True)
class CaptureConfig:
    source: str = "synthetic"  # synthetic | file:PATH | images:DIR | webcam:N
    width: int = 640
    height: int = 480
    fps: float = 30.0
    realtime: bool = True  # file/images: play at their own pace (False: as fast as possible)
    mjpg: bool = True
    retries: int = 5  # webcam open / empty-frame retries, with back-off
    backoff_s: float = 0.2
    frames: int = 0  # stop after this many frames (0: until the source ends)
    # webcam: a read that has not returned for this long ends the run with the camera's
    # message (some drivers block for ever on an unplugged camera instead of failing)
    stall_s: float = 10.0

    def __post_init__(self):
        _at_least(self.fps, MIN_FPS, "capture.fps", "--fps", high=MAX_FPS)
        _at_least(self.width, 1, "capture.width")
        _at_least(self.height, 1, "capture.height")
        _at_least(self.frames, 0, "capture.frames", "--frames")
        _at_least(self.retries, 1, "capture.retries")
        _at_least(self.backoff_s, 0, "capture.backoff_s")
        _at_least(self.stall_s, 0, "capture.stall_s", strict=True)


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    relative_camera: bool = True  # use camera_relative (cross-identity) instead of camera


PRECISIONS = ("auto", "fp32", "fp16", "bf16")  # GeneratorConfig.precision (torch backend)


@dataclass(frozen=True)
class GeneratorConfig:
    backend: str = "torch"
    # auto: the first CUDA GPU when PyTorch sees one, else the CPU; cpu, cuda, cuda:N
    device: str = "auto"
    preset: str = "tiny"
    checkpoint: str | None = None
    graphs: str | None = None  # onnxruntime: folder written by 'export3d export onnx'
    # onnxruntime: execution providers in order of preference, e.g. "coreml,cpu" (a Mac),
    # "dml,cpu" (DirectML: Windows, any GPU); default "cuda,cpu" with a CUDA device, else "cpu"
    providers: str | None = None
    engines: str | None = None  # tensorrt: folder written by 'export3d export engine'
    # tensorrt: engines built for another GPU or TensorRT are rebuilt here from the graphs
    # their metadata names (a build takes minutes); False: refused, with the command
    rebuild: bool = True
    # tensorrt: run engines built on another GPU model of the same compute capability and
    # TensorRT (TensorRT supports it but warns: it may run slower)
    allow_other_gpu: bool = False
    # torch backend: auto | fp32 | fp16 | bf16. auto: bf16 on a CUDA GPU that has it (sm_80+),
    # fp16 on older ones, fp32 on the CPU. On CUDA the convolutions also run channels-last.
    precision: str = "auto"
    # torch backend: torch.compile the per-frame path (CUDA graphs on CUDA); the first frame
    # waits for the compile
    compile: bool = False
    # torch (CUDA) and tensorrt backends: capture the per-frame work in a CUDA graph at the
    # first frame and replay it (no launch overhead; torch: the eager kernels, no compile)
    cuda_graph: bool = False
    # source portrait(s): a photo, a folder or a list of either ('s' cycles through them);
    # default export3d.media.default_portrait()
    source: str | tuple[str, ...] | None = None


@dataclass(frozen=True)
class SinkConfig:
    # auto | null | file:OUT | window | virtualcam | preview[:PORT]; auto: with a webcam the
    # virtual camera (the preview page where no driver is found), else null
    sink: str = "auto"
    # the file's / virtual camera's rate; None: the capture's (a video's own, else capture.fps)
    fps: float | None = None
    hud: bool = True
    size: int = 0  # output height in pixels (the model's frame scaled up); 0: the model's size
    side_by_side: bool = False  # the driving frame beside the output

    def __post_init__(self):
        if self.fps is not None:
            _at_least(self.fps, MIN_FPS, "sink.fps", high=MAX_FPS)
        _at_least(self.size, 0, "sink.size", "--size")


@dataclass(frozen=True)
class PipelineConfig:
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    queue_size: int = 1  # latest frame wins between stages
    join_timeout_s: float = 5.0

    def __post_init__(self):
        _at_least(self.queue_size, 1, "queue_size")
        _at_least(self.join_timeout_s, 0, "join_timeout_s", strict=True)


def _at_least(value, low, setting: str, flag: str | None = None, strict: bool = False,
              high: float | None = None) -> None:
    """A number setting's range, checked when a config is made (defaults, YAML and flags all
    pass here): one sentence naming the flag and the setting, not a failure frames later.
    Infinity and NaN are never in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < low or (strict and value == low) \
            or (high is not None and value > high):
        where = f"{flag} (setting {setting})" if flag else f"setting {setting}"
        want = (f"from {low:.3g} to {high:.3g}" if high is not None else
                f"more than {low}" if strict else f"{low} or more")
        raise UserError(f"{where} must be a number, {want}; got {value!r}")


def _type_matches(value, annotation: str) -> bool:
    """``value`` against a field's annotation as written (``int``, ``float``, ``bool``,
    ``str``, ``None``, ``tuple[str, ...]`` and unions of them)."""
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None" and value is None:
            return True
        if part == "bool" and isinstance(value, bool):
            return True
        if part == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if part == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if part == "str" and isinstance(value, str):
            return True
        if part.startswith("tuple[str") and isinstance(value, tuple) \
                and all(isinstance(v, str) for v in value):
            return True
    return False


def _replace(obj, values: dict, where: str):
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown setting {where}{key}; known: {', '.join(fields)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"setting {where}{key} must be a mapping")
            value = _replace(current, value, f"{where}{key}.")
        else:
            if isinstance(value, list):
                value = tuple(value)  # YAML lists; configs stay hashable
            # A setting of the wrong type (a YAML number for a path, 64.5 pixels, "no" for a
            # switch) is refused here, not a traceback from the stage that uses it.
            if not _type_matches(value, str(fields[key].type)):
                raise UserError(f"setting {where}{key} must be {fields[key].type}; got "
                                f"{value!r}")
        changes[key] = value
    return dataclasses.replace(obj, **changes)


def with_overrides(config: PipelineConfig, overrides: dict) -> PipelineConfig:
    """Nested dict ``{"capture": {"fps": 25}}``; ``None`` values are ignored (unset flags)."""
    def prune(d):
        return {k: prune(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}
    return _replace(config, prune(overrides), "")


def load_config(path: str | Path | None = None) -> PipelineConfig:
    config = PipelineConfig()
    if path is None:
        return config
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path} is not UTF-8 text (byte {exc.start}); save it as "
                        "UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"config file {path} is not valid YAML{where}: "
                        f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of stage -> settings")
    return with_overrides(config, data)


def to_dict(config: PipelineConfig) -> dict:
    return dataclasses.asdict(config)
