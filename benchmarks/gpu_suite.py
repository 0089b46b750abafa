"""The one-shot GPU suite: check every GPU path against its reference and time every stage.

``python -m benchmarks.gpu_suite [--out REPORT.json] [--budget-s 420] [--no-compile]
[--sections kernel_check,model,...] [--in-process]``
``python -m benchmarks.gpu_suite --dry-run``  (CPU, ``tiny`` sizes, the kernel under Triton's
interpreter: proves the script runs end to end without a GPU; its timings mean nothing)

Needs only PyTorch (>= 2.11), Triton and this repository: no mediapipe or network; TensorRT
is used where it imports. The kernel check's face case also reads scikit-image's astronaut with
OpenCV (both on the GPU machines); without them that case reports its error, the rest stands.
Each section runs in a process of its own (``--in-process``: all in one) and is written to the
JSON report as soon as it finishes. A process that dies, stops printing for ``--silence-s``
(a hang) or is left with an unusable CUDA context (an illegal address is sticky) costs one
item: the launch sweep's rows and the model's variants are saved one by one, and a fresh
process resumes after the failed item, which the report records with what happened. The time
budget only stops new work from starting. ``--sections`` runs a subset; ``--resume REPORT``
goes on from a run cut short (same card and mode): finished sections kept, the others run, the
sweep and the model only their items that did not run.
Sections:
1. ``machine``: card, compute capability, SMs, memory, driver, CUDA, torch, Triton, Python.
2. ``kernel_check``: the fused ray-march kernel against the PyTorch reference on random
   tri-planes and cameras at paper512 sizes (128 x 128 rays x (48 + 48) samples, 3 x 32 x 256^2
   planes), fp32/fp16/bf16 tri-planes, batch 1 and 2, plus a dense, a nearly transparent
   (opacity ~1e-5, as a background pixel), an empty volume and a head-sized opaque ball
   (``surface_case``: fine samples gathered at a surface, as at a face) in fp32 and each half
   precision: max, 99th-percentile and mean abs error per output over every element (the
   count is written, and how many are over the tolerance), bit-identical reruns. The verdict
   is the tolerance at the worst element; a half-precision ball's is the tolerance at the
   99th percentile, and at the worst element twice what storing the ball in bf16 moves the
   reference (``output_error``; a silhouette ray of a steep surface moves as much with bf16
   storage as with fp16 operands). Last, a trained model on a real face: the demo checkpoint
   (assets/) on scikit-image's astronaut, in bf16 (``face_case``), held to the tolerance and
   to under a quarter of what running that model in bf16 moves its output.
3. ``raymarch_timing``: reference vs kernel latency at those sizes, and the speed-up; a launch
   sweep (rays per program, warps, MLP product precision, tri-plane dtype, serial and tiled
   variants), each row with its error against the reference and whether it is within the
   kernel tolerance; the summary names the fastest row within tolerance. Three rows are
   timing diagnostics of the half-precision default, not renderers
   (``engines.raymarch.kernel.ABLATIONS``: the gathers from one cached line, no decoder MLP,
   both); the summary's ``kernel_time_split`` subtracts their p50s from the default's, and
   gives the default's p50 on the ball (one more row) beside its p50 on random tri-planes.
   ``tensorrt_kernel``: the kernel a TensorRT engine embeds (the ray-march node's plugin),
   compiled as the plugin compiles it and its binary launched as TensorRT launches it (launch
   plan, arguments in TensorRT's order, NaN-filled workspace output), on the node's
   channels-last fp32 and fp16 tri-planes: error against the reference, p50 against the
   torch op's. TensorRT itself is not needed (nor present on the machines this runs on).
4. ``model``: paper512 with the PyTorch backend, source cached: per-stage latency (generate,
   render, super-resolve; encode_source once) and per-frame latency (p50/p95/p99), peak GPU
   memory over the timed frames (and, apart, over the first calls: cuDNN's algorithm search)
   and frames per second, for fp32 + reference renderer, fp32 + kernel, fp16 and bf16
   + kernel, bf16 + channels_last, bf16 and fp16 + CUDA graph; then bf16 + channels_last
   eager, CUDA graph and torch.compile with the sweep's fastest launch on half-precision
   tri-planes in force (``engines.raymarch.op.default_launch``); then, where the ``ops``
   section found faster forms of generate's operators, bf16 + channels_last eager and CUDA
   graph with those forms in the model's place (``benchmarks.ops.fastest_forms``; the
   variant records which); last, as the budget allows, bf16 + torch.compile with the default
   launch. The two bf16 channels_last eager variants
   are also profiled stage by stage (torch.profiler): kernel launches and kernel time per
   frame, and the kernels that take it.
5. ``ops`` (runs before ``model``): ``benchmarks.ops``, the candidate forms of generate's
   attention (each SDPA backend), Mix-FFN depthwise, Gaussian low-pass and EAdaLN operators
   and of super-resolution's up-sample + convolution (polyphase) against the model's own, on
   the inputs a bf16 channels-last frame gives them: error, p50, calls per frame, and the
   saving per frame of the fastest form within tolerance.
6. ``roofline``: the static per-stage floors of ``benchmarks.roofline`` for this card
   (generate and super-resolution, bf16); the summary divides the bf16 channels_last eager
   stages by them.
7. ``tensorrt``: only where ``tensorrt`` imports (elsewhere ``{"skipped": "tensorrt not
   importable"}``): the plugin graphs exported, engines built (build seconds) and per-frame
   latency through the ``tensorrt`` backend, fp32 and fp16, next to the PyTorch p50s.
8. ``live``: the live pipeline (``realtime``) end to end on the torch backend, a scripted
   head at 60 fps, random source, null sink: glass-to-glass p50/p95/p99 and per stage; on
   CUDA again with ``--cuda-graph`` and, as the budget allows, ``--compile``.
9. ``summary``: the targets (kernel >= 10x the reference; per-frame p50 <= 5 ms on an H100)
   against the numbers measured.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import types
from pathlib import Path

from benchmarks import check_output
from export3d import jsonfile
from export3d.cli import at_least

# Tolerances of the kernel against the reference (absolute), by output. Both compute in fp32
# from the same (possibly fp16/bf16) tri-plane values; differences come from the order of
# floating-point operations, transcendental implementations and, through the inverse CDF, tiny
# shifts of importance samples, so they are well above fp32 rounding but far below what a
# wrong index or a wrong formula produces (O(0.1) and more).
KERNEL_TOLERANCE = {"features": 2e-3, "depth": 5e-3, "opacity": 2e-3}
# The kernel check's half-precision ball (surface_case) at its worst element: within this many
# times what storing the ball in bf16 moves the reference (kernel_check: a silhouette ray).
STORAGE_FACTOR = 2.0

TARGET_SPEEDUP = 10.0
TARGET_FRAME_P50_MS = 5.0


class Budget:
    """The suite's time budget as a wall-clock deadline (``time.time()``), so that the
    processes the sections run in share it."""

    def __init__(self, seconds: float, deadline: float | None = None):
        self.deadline = deadline if deadline is not None else time.time() + seconds

    def left(self) -> float:
        return self.deadline - time.time()


class Report:
    """The JSON report, rewritten after every section (and after every item of a resumable
    section); the sections' processes share it through the file."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"suite": "export3d gpu_suite", "version": 1,
                           "started_utc": datetime.datetime.now(datetime.UTC).isoformat()}

    def reload(self) -> Report:
        """Take what the file holds (another process may have written it)."""
        if self.path.exists():
            self.data = jsonfile.loads(self.path.read_text())
        return self

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(jsonfile.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)


# ------------------------------------------------------------------ surviving a broken kernel
# A GPU loan is rare and short, and the suite runs code that has never run on hardware. One
# illegal address or launch failure is sticky: every later CUDA call of that process fails.
# So (unless --in-process) every section runs in a process of its own, and the two long ones,
# the launch sweep and the model variants, keep each finished item in the report: when an item
# leaves the CUDA context unusable, or its process dies or stops printing, a fresh process
# resumes the section after that item, which is recorded with what went wrong.

# Exit status of a section's process whose CUDA context an item left unusable.
CONTEXT_LOST_EXIT = 3
# Processes one section may take (the first and its resumptions).
MAX_SECTION_STARTS = 8
# A section's process printing nothing for this long is taken to hang, and killed. Every item
# prints when it starts; the slowest silent steps measured were a torch.compile of the frame
# (19 s on the H200) and the compile of a launch-sweep row (at most 4.4 s on a 2-core CPU for
# sm_90). A hang costs this much of a loan that lasts 15 minutes in all.
SILENCE_LIMIT_S = 120.0
# How long past the budget a section's process may go on before it is killed: the budget only
# stops new items from starting, and the summary still has to be written. With the default
# budget (420 s) the suite ends within ~8 minutes, under the GPU machine's 10 minutes a call.
OVERRUN_LIMIT_S = 60.0
OVERRAN = "ran past the time budget and was killed"
# How long the output of a section's process that has ended (or been killed) is still read.
EXITED_QUIET_S = 5.0
# Sections that run the ray-march kernel, and how each does without it when the kernel check's
# process died, hung or lost its CUDA context (each would only fail the same way, at the cost
# of a fresh process or a hang-watch wait per item): skipped, or the model section with the
# reference renderer (model_timing).
KERNEL_SKIPPED = ("raymarch_timing", "tensorrt_kernel", "live")
# The module a section's process runs (the tests point it at a faulty stand-in).
CHILD_MODULE_ENV = "EXPORT3D_GPU_SUITE_CHILD"
RESUMABLE = ("raymarch_timing", "model")


class ContextLost(Exception):
    """An item's CUDA error left this process's context unusable."""


def context_lost(torch) -> bool:
    """Whether this process's CUDA context still works (after an item's error): a sticky
    error (illegal address, launch failure, device-side assert) fails every later call,
    a recoverable one (out of memory, a bad argument) does not."""
    if not torch.cuda.is_available():
        return False
    try:
        torch.cuda.synchronize()
        torch.ones(1, device="cuda").add_(1).item()
        return False
    except Exception:  # noqa: BLE001 - any failure here means the context is gone
        return True


class Resumable:
    """A section whose items (sweep rows, model variants) are saved in the report as each
    finishes, the section marked ``incomplete`` until it returns. ``field`` names where the
    items go in the section's value: a list (items by index, in order) or a dict (by name).
    A process resuming the section takes the finished items from the report; the item the
    last process was running when it died or hung is recorded with ``failure`` (what the
    parent saw) instead of being run again."""

    def __init__(self, report: Report, key: str, initial: dict, failure: str | None = None):
        old = report.data.get(key)
        self.value = old if isinstance(old, dict) and old.get("incomplete") else initial
        self.value["incomplete"] = True
        dead = self.value.pop("running", None)
        self.dead = tuple(dead) if dead else None
        self.failure = failure or "its process ended during this item"
        self.report, self.key = report, key

    def finished(self, field: str | None, name):
        items = self.value if field is None else self.value.get(field)
        if isinstance(items, list):
            return items[name] if name < len(items) else None
        return (items or {}).get(name)

    def store(self, field: str | None, name, result: dict) -> None:
        items = self.value if field is None else self.value[field]
        if isinstance(items, list):
            items.append(result)
        else:
            items[name] = result
        self.report.put(self.key, self.value)

    def run(self, torch, field: str | None, name, fn, base: dict | None = None) -> dict:
        """``{**base, **fn()}``, an earlier process's result for this item, or ``{**base,
        "error": ...}``; raises ContextLost, the result saved, when the item's error left the
        CUDA context unusable."""
        done = self.finished(field, name)
        if done is not None:
            return done
        base = dict(base or {})
        if self.dead == (field, name):
            result = {**base, "error": self.failure}
            self.store(field, name, result)
            return result
        self.value["running"] = [field, name]
        self.report.put(self.key, self.value)
        try:
            result = {**base, **fn()}
        except Exception as exc:  # recorded as the item's result; the next item still runs
            result = {**base, "error": f"{type(exc).__name__}: {exc}"[:500],
                      "traceback": traceback.format_exc(limit=6)}
        del self.value["running"]
        self.store(field, name, result)
        if "error" in result and context_lost(torch):
            raise ContextLost(f"{self.key}: {field} {name}")
        return result

    def complete(self) -> dict:
        self.value.pop("incomplete", None)
        return self.value


def section(report: Report, key: str, fn, isolated: bool = False):
    """Run ``fn()`` as section ``key``; its value (or its error) goes into the report.
    ContextLost ends an isolated section's process (the parent resumes it); in-process it is
    recorded like any other error, and later sections may fail the same way."""
    start = time.monotonic()
    try:
        value = fn()
    except ContextLost as exc:
        if isolated:
            raise
        value = {**report.data.get(key, {}), "error": f"CUDA context lost in {exc}"}
    except Exception as exc:  # a failing section is recorded, the others still run
        value = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        torch = sys.modules.get("torch")
        if torch is not None and context_lost(torch):
            value["cuda_context_lost"] = True
    value["seconds"] = round(time.monotonic() - start, 2)
    report.put(key, value)
    print(f"[{key}] done in {value['seconds']} s" + (f": {value['error']}" if "error" in value
                                                      else ""), flush=True)
    return value


# ----------------------------------------------------------------------------- timing helpers

def time_cuda(fn, warmup: int, iters: int, torch) -> list[float]:
    """Per-call milliseconds with CUDA events (on the CPU: perf_counter)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        out = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            out.append((time.perf_counter() - start) * 1e3)
        return out
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


def stats(ms: list[float]) -> dict:
    ordered = sorted(ms)

    def pct(p):
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    return {"p50_ms": round(statistics.median(ordered), 4), "p95_ms": round(pct(95), 4),
            "p99_ms": round(pct(99), 4), "min_ms": round(ordered[0], 4), "n": len(ordered)}


# ----------------------------------------------------------------------------------- sections

def machine_info(torch, device) -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "device": str(device)}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                    sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
        with contextlib.suppress(Exception):
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,"
                                  "power.limit", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=20)
            info["nvidia_smi"] = out.stdout.strip()
    return info


def random_case(torch, config, batch: int, dtype, seed: int, density_bias: float = 0.0,
                device="cpu"):
    """Random tri-plane (features ~ N(0, 1), the scale a trained generator produces), the
    decoder at its initialisation with an optional density bias, rays of orbit cameras."""
    from export3d.camera import orbit_path, rays
    from export3d.renderer import OSGDecoder

    gen = torch.Generator().manual_seed(seed)
    p, c = config.triplane_size, config.triplane_channels
    triplane = torch.randn(batch, 3, c, p, p, generator=gen).to(device=device, dtype=dtype)
    torch.manual_seed(seed)
    decoder = OSGDecoder(c, config.decoder_hidden)
    with torch.no_grad():
        decoder.fc2.bias[0] += density_bias
    decoder = decoder.to(device).weights()
    cams = orbit_path("circle", 7)[torch.randint(0, 7, (batch,), generator=gen)]
    origins, directions = rays(cams.to(device), config.render_size)
    return triplane, decoder, origins, directions


# The surface volume (surface_case): a ball of radius SURFACE_RADIUS in grid units ([-1, 1]
# across the box: 0.3 of EG3D's unit box, a head's size), opaque inside and nearly transparent
# (~1e-5 a sample) outside.
SURFACE_RADIUS = 0.6


def surface_case(torch, config, dtype, seed: int, device="cpu"):
    """random_case's tri-plane, decoder and cameras with a head-sized opaque ball in the box:
    channel 0 of each plane holds r^2 - a^2 - b^2 over its two axes (texel centres in grid
    units), so the planes' mean is r^2 - 2/3 |p|^2 with r^2 = 2/3 SURFACE_RADIUS^2, positive
    inside the ball; hidden unit 0 reads channel 0 alone (x 50) and the raw density is 5 x that
    unit - 10 (+ the other units' random share). The fine samples then gather at the ball's
    surface on the rays that meet it, as at a face, where a random tri-plane spreads them: the
    gathers have a scene's locality, and the fine depths of a block's rays differ as at a
    face's silhouette. The other channels, hidden units and features stay random."""
    from export3d.renderer import Decoder

    tp, dec, o, d = random_case(torch, config, 1, torch.float32, seed, 0.0, "cpu")
    p = tp.shape[-1]
    g = (torch.arange(p, dtype=torch.float32) * 2 + 1) / p - 1
    tp[:, :, 0] = (2.0 / 3.0) * SURFACE_RADIUS ** 2 - g[:, None] ** 2 - g[None, :] ** 2
    w1, b1, w2, b2 = (t.detach().cpu().clone() for t in (dec.w1, dec.b1, dec.w2, dec.b2))
    w1[:, 0] = 0.0
    w1[0, 0] = 50.0
    b1[0] = 0.0
    w2[0, :] = 0.0
    w2[0, 0] = 5.0
    b2[0] = -10.0
    dec = Decoder(*(t.to(device) for t in (w1, b1, w2, b2)))
    return tp.to(device=device, dtype=dtype), dec, o.to(device), d.to(device)


# The trained demo64 model (assets/) on a real face: scikit-image's astronaut (in its wheel, on
# the GPU machines too) cut around her face (rows, then columns, of the 512 x 512 photo; close to
# the aligned crop, whose face model the GPU machines lack), neutral expression, one orbit camera.
FACE_BOX = (15, 205, 135, 325)
# The face in bf16: the kernel's error against the reference on the same inputs must stay under
# this fraction of what running the model in bf16 moves the reference from the fp32 model's.
# Under the interpreter, fp16 products, at paper512's 128 x 128 rays and 48 + 48 samples, it
# was 8-18x under it for this face (depth 1.2e-4 against 1.0e-3, features 3.4e-4 against
# 5.5e-3, no element over the tolerance); 18-45x for the demo's own photo at smaller sizes
# (tests/engines/test_raymarch_kernel.py holds that to a fifth).
FACE_FRACTION = 0.25


def face_case(torch, config, device):
    """demo64's tri-plane and decoder for FACE_BOX of the astronaut, the model run in fp32 and in
    bf16: ({dtype: (tri-plane, Decoder)}, origins, directions, settings); the rays and sample
    counts are ``config``'s (the run's preset), the box and depth range the model's."""
    import torch.nn.functional as F

    from export3d import demo
    from export3d.camera import orbit_path, rays
    from export3d.checkpoint import load_checkpoint
    from export3d.media import default_portrait, load_image
    from export3d.renderer import RayMarchSettings

    top, bottom, left, right = FACE_BOX
    crop = torch.from_numpy(load_image(default_portrait())[top:bottom, left:right].copy())
    models = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_checkpoint(demo.checkpoint(), render_impl="reference").to(device=device,
                                                                             dtype=dtype)
        cfg = model.config
        image = F.interpolate(crop.permute(2, 0, 1)[None].float(), size=cfg.image_size,
                              mode="area") / 127.5 - 1.0
        with torch.no_grad():
            source = model.encode_source(image.to(device=device, dtype=dtype))
            triplane = model.generate(source, torch.zeros(1, cfg.expr_dim, device=device,
                                                          dtype=dtype))
        models[dtype] = (triplane, model.renderer.decoder.weights())
    origins, directions = rays(orbit_path("circle", 7)[1:2].float().to(device),
                               config.render_size)
    settings = RayMarchSettings(cfg.ray_near, cfg.ray_far, config.samples_coarse,
                                config.samples_fine, cfg.box_warp, cfg.eg3d_plane_axes)
    return models, origins, directions, settings


def output_error(torch, got, ref, name: str, worst_bound: float | None = None) -> dict:
    """One output of a kernel-check case against the reference: max, 99th-percentile and mean
    absolute error over every element, how many elements are over KERNEL_TOLERANCE[name], and
    the verdict: the worst element within the tolerance; or, given ``worst_bound`` (a
    half-precision ball, kernel_check), the 99th percentile within the tolerance and the worst
    element within max(tolerance, worst_bound)."""
    err = (got.float() - ref.float()).abs().flatten()
    tol = KERNEL_TOLERANCE[name]
    out = {"max_abs_err": float(err.max()),
           "p99_abs_err": float(torch.quantile(err.double(), 0.99)),
           "mean_abs_err": float(err.mean()), "elements_checked": int(err.numel()),
           "elements_over_tolerance": int((err > tol).sum()),
           "finite": bool(torch.isfinite(got).all())}
    if worst_bound is None:
        out["within_tolerance"] = out["max_abs_err"] <= tol
    else:
        out["worst_bound"] = max(tol, float(worst_bound))
        out["within_tolerance"] = (out["p99_abs_err"] <= tol
                                   and out["max_abs_err"] <= out["worst_bound"])
    return out


def case_failure(torch, label: str, **base) -> tuple[dict, bool]:
    """The case being handled raised: its record (``base`` with the ``error``), printed under
    ``label``, and whether the error lost the CUDA context (then nothing more can run)."""
    exc = sys.exc_info()[1]
    print(f"  {label}: {type(exc).__name__}: {exc}"[:300], flush=True)
    return ({**base, "error": f"{type(exc).__name__}: {exc}"[:500],
             "traceback": traceback.format_exc(limit=6)}, context_lost(torch))


def kernel_check(torch, config, device, dtypes, kinds=None) -> dict:
    """The kernel against the reference on every output element (cases: the plan below), its
    determinism, and, where it runs fp16 products, its distance from the reference's
    counterpart of them (``vs_reference_counterpart``: what the kernel adds beyond the
    rounding it names)."""
    from engines import raymarch as kernel
    from engines.raymarch.op import launch_precision
    from export3d.renderer import RayMarchSettings, raymarch_reference

    settings = RayMarchSettings(config.ray_near, config.ray_far, config.samples_coarse,
                                config.samples_fine, config.box_warp, config.eg3d_plane_axes)
    cases = []
    plan = [(b, dt, 0.0, "random") for dt in dtypes for b in (1, 2)
            if b == 1 or dt == dtypes[0]]
    # "transparent": opacity ~1e-5, a background pixel, where fp32's 1 - exp(-x) and
    # log(1 + e^x) cancel and the compiled fast exp2/log2 meet alphas of ~1e-7.
    plan += [(1, torch.float32, 8.0, "dense"), (1, torch.float32, -10.0, "transparent"),
             (1, torch.float32, -40.0, "empty")]
    # "surface": a head-sized opaque ball (surface_case), fp32 and in each half precision as
    # the model runs. Its density is steep at the surface (d sigma / d channel 0 = 250): a
    # small change of density moves the importance samples of a ray at the surface, so its
    # output moves with any rounding. Under the interpreter on all 128 x 128 of paper512's
    # rays (one draw of the ball, seed 107), storing the fp32 ball in bf16 moved the reference
    # by up to 2.2e-2 in features, 1.3e-2 in depth and 1.5e-2 in opacity; the kernel's fp16
    # products were up to 9.2e-3 / 1.2e-2 / 6.2e-3 off the reference on that ball in bf16 and
    # 1.7e-2 / 1.3e-2 / 1.1e-2 in fp16, with ~0.1% of the elements over the tolerance and the
    # 99th percentiles at 5.6e-4 / 2.9e-4 / 5.0e-4; the taps summed in fp32 (kernel.TAP_SUMS)
    # were within 0.7-2.2x of that at the worst element. So a half-precision ball is held to
    # the tolerance at the 99th percentile and, at its worst element, to STORAGE_FACTOR x what
    # storing the same fp32 ball in bf16 moves the reference (one or two more reference
    # renders); every other case to the tolerance at the worst element.
    plan += [(1, torch.float32, 0.0, "surface")]
    plan += [(1, dt, 0.0, "surface") for dt in dtypes if dt != torch.float32]
    # "face": the trained demo64 model on a real face in bf16 (face_case), held to the
    # tolerance and to under FACE_FRACTION of the bf16 model's own error.
    plan += [(1, torch.bfloat16, 0.0, "face")]
    if kinds is not None:  # a subset (tests)
        plan = [p for p in plan if p[3] in kinds]

    def run(tp, dec, o, d, settings):
        with torch.no_grad():
            return kernel.raymarch(tp, dec.w1, dec.b1, dec.w2, dec.b2, o, d, near=settings.near,
                                   far=settings.far, samples_coarse=settings.samples_coarse,
                                   samples_fine=settings.samples_fine,
                                   box_warp=settings.box_warp, plane_axes=settings.plane_axes)

    def check(i, batch, dtype, bias, kind) -> dict:
        case_settings = settings
        if kind == "face":  # its own packages (scikit-image, OpenCV) and the demo checkpoint
            models, o, d, case_settings = face_case(torch, config, device)
            tp, dec = models[dtype]
        elif kind == "surface":
            tp, dec, o, d = surface_case(torch, config, dtype, 100 + i, device)
        else:
            tp, dec, o, d = random_case(torch, config, batch, dtype, 100 + i, bias, device)
        with torch.no_grad():
            ref = raymarch_reference(tp, dec, o, d, case_settings)
        out = run(tp, dec, o, d, case_settings)
        again = run(tp, dec, o, d, case_settings)
        case = {"kind": kind, "batch": batch, "triplane_dtype": str(dtype).replace("torch.", ""),
                "rays": int(o.shape[0] * o.shape[1]),
                "deterministic": all(torch.equal(a, b) for a, b in zip(out, again))}
        bounds, model_error = {}, {}
        if kind == "face":
            with torch.no_grad():
                fp32 = raymarch_reference(*models[torch.float32], o, d, case_settings)
            model_error = {n: float((a - b).abs().max()) for n, a, b in
                           zip(("features", "depth", "opacity"), ref, fp32)}
            case["bf16_model_error"] = model_error
            case["held_to"] = (f"the tolerance, and under {FACE_FRACTION:g} x bf16_model_error "
                               "(what running the model in bf16 moves the reference)")
        if kind == "surface" and dtype != torch.float32:
            full = surface_case(torch, config, torch.float32, 100 + i, device)[0]
            with torch.no_grad():
                in_bf16 = (ref if dtype == torch.bfloat16 else
                           raymarch_reference(full.to(torch.bfloat16), dec, o, d, settings))
                stored = zip(in_bf16, raymarch_reference(full, dec, o, d, settings))
            case["bf16_storage_error"] = {n: float((a - b).abs().max()) for n, (a, b) in
                                          zip(("features", "depth", "opacity"), stored)}
            bounds = {n: STORAGE_FACTOR * e for n, e in case["bf16_storage_error"].items()}
            case["held_to"] = ("the tolerance at the 99th percentile; at the worst element, "
                               f"{STORAGE_FACTOR:g} x bf16_storage_error where that is larger")
        passed = case["deterministic"]
        for name, a, r in zip(("features", "depth", "opacity"), out, ref):
            case[name] = output_error(torch, a, r, name, bounds.get(name))
            if name in model_error:
                case[name]["within_tolerance"] &= (case[name]["max_abs_err"]
                                                   < FACE_FRACTION * model_error[name])
            passed &= case[name]["within_tolerance"] and case[name]["finite"]
        case["mean_opacity_reference"] = float(ref[2].mean())
        dot, tap_sum = launch_precision(o.device, tp.dtype)
        if dot == "fp16":  # the reference that rounds as the kernel does: what is left is
            with torch.no_grad():  # the kernel's own (informational, not part of the verdict)
                twin = raymarch_reference(tp, dec, o, d, case_settings, dot_precision=dot,
                                          tap_sum=tap_sum)
            case["vs_reference_counterpart"] = {
                "dot_precision": dot, "tap_sum": tap_sum,
                **{n: float((a - b).abs().max()) for n, a, b in
                   zip(("features", "depth", "opacity"), out, twin)}}
        case["passed"] = bool(passed)
        return case

    # A case that raises (out of memory, a launch the card refuses, the face case's packages)
    # is recorded as that case's failure and the others still run: the cases already measured
    # are kept. After an error that left the CUDA context unusable nothing more can run: the
    # section ends there, marked cuda_context_lost (the parent then runs the later sections
    # without the kernel).
    ok = True
    for i, (batch, dtype, bias, kind) in enumerate(plan):
        name = str(dtype).replace("torch.", "")
        try:
            case = check(i, batch, dtype, bias, kind)
        except Exception:  # noqa: BLE001 - reported in the case, the rest stands
            case, lost = case_failure(torch, f"kernel vs reference {kind} b={batch} {name}",
                                      kind=kind, batch=batch, triplane_dtype=name)
            cases.append(case)
            ok = False
            if lost:
                return {"tolerance_abs": KERNEL_TOLERANCE, "all_passed": False, "cases": cases,
                        "cuda_context_lost": True}
            continue
        ok &= case["passed"]
        cases.append(case)
        print(f"  kernel vs reference {kind} b={batch} {name}: "
              + ", ".join(f"{n} {case[n]['max_abs_err']:.2e}" for n in ("features", "depth",
                                                                        "opacity")), flush=True)
    return {"tolerance_abs": KERNEL_TOLERANCE, "all_passed": ok, "cases": cases}


def tensorrt_kernel(torch, config, device, warmup, iters) -> dict:
    """The kernel a TensorRT engine embeds, run as TensorRT runs it, where TensorRT is missing:
    compiled as the plugin's ahead-of-time implementation compiles it (``engines.trt``:
    ``kernel_config``, ``launch_values``' alignment hints, ``kernel_abi.compile_entry``), then
    its binary launched with the plugin's launch plan (grid, block) and the arguments in
    TensorRT's order: the node's inputs (the tri-plane channels last, fp32 or fp16 as an fp32
    or fp16 graph hands it over), the plan's int32 extra arguments, the four outputs (the
    workspace NaN-filled, as activation memory may hold anything). Checked against the
    reference and timed against the torch op's launch. On a CPU (dry run) the same entry point
    runs under Triton's interpreter through its JIT, ``ieee`` products."""
    from engines.raymarch import op
    from engines.trt import kernel_abi, plugin
    from export3d.renderer import RayMarchSettings, raymarch_reference

    settings = RayMarchSettings(config.ray_near, config.ray_far, config.samples_coarse,
                                config.samples_fine, config.box_warp, config.eg3d_plane_axes)
    attrs = {"near": settings.near, "far": settings.far,
             "samples_coarse": settings.samples_coarse, "samples_fine": settings.samples_fine,
             "box_warp": settings.box_warp, "eg3d_plane_axes": int(config.eg3d_plane_axes)}
    cuda = device.type == "cuda"
    arch = (10 * torch.cuda.get_device_capability(device)[0]
            + torch.cuda.get_device_capability(device)[1]) if cuda else 75

    def check(i, dtype) -> dict:
        name = str(dtype).replace("torch.", "")
        tp, dec, o, d = random_case(torch, config, 1, dtype, 300 + i, 0.0, device)
        node_tp = tp.permute(0, 1, 3, 4, 2).contiguous()
        weights = [t.float().contiguous() for t in (dec.w1, dec.b1, dec.w2, dec.b2)]
        inputs = [node_tp, *weights, o.contiguous(), d.contiguous()]
        shapes = [tuple(t.shape) for t in inputs]
        dtypes = [name] + ["float32"] * 6
        block_rays = plugin.launch_block_rays(arch, name) if cuda else 16
        kconfig = plugin.kernel_config(shapes, dtypes, attrs, block_rays=block_rays)
        values = plugin.launch_values(shapes, attrs)
        outs = [torch.empty(shape, device=device, dtype=torch.float32)
                for shape, _ in plugin.output_rule(shapes, dtypes, attrs)]
        outs[3].fill_(float("nan"))
        if cuda:
            compiled = kernel_abi.compile_entry(kconfig, arch, values=values)
            plan = plugin.launch_plan(shapes, attrs, block_rays=block_rays,
                                      num_warps=compiled.metadata.num_warps,
                                      shared=compiled.metadata.shared)
            grid_launch = compiled[plan["grid"]]

            def launcher(*args):
                grid_launch(*kernel_abi.compiled_arguments(kconfig, arch, args[:7], args[7:-4],
                                                           args[-4:]))
        else:
            from engines.raymarch import kernel

            plan = plugin.launch_plan(shapes, attrs, block_rays=block_rays, num_warps=4,
                                      shared=0)
            consts = kernel.constexprs(kconfig.channels, kconfig.hidden, kconfig.features,
                                       kconfig.samples_coarse, kconfig.samples_fine,
                                       kconfig.plane_axes, block_rays, "ieee",
                                       samples_per_step=kconfig.samples_per_step)
            launcher = lambda *args: kernel_abi.raymarch_trt_kernel[plan["grid"]](  # noqa: E731
                *args, **consts, WORKSPACE=1)
        extra = [value for _, value in plan["extra_args"]]

        def run():
            launcher(*inputs, *extra, *outs)

        with torch.no_grad():
            run()
            ref = raymarch_reference(tp, dec, o, d, settings)
            case = {"triplane_dtype": name, "rays": int(o.shape[1]), "arch": arch,
                    "block_rays": block_rays, "dot_precision":
                    kernel_abi.dot_precision(arch, name) if cuda else "ieee",
                    "workspace_rows_written": int((~outs[3].isnan()).any(1).sum())}
            passed = True
            for key, got, want in zip(("features", "depth", "opacity"), outs, ref):
                err = (got - want.float()).abs()
                case[key] = {"max_abs_err": float(err.max()),
                             "finite": bool(torch.isfinite(got).all()),
                             "within_tolerance": float(err.max()) <= KERNEL_TOLERANCE[key]}
                passed &= case[key]["within_tolerance"] and case[key]["finite"]
            args = (tp, dec.w1, dec.b1, dec.w2, dec.b2, o, d, settings.near, settings.far,
                    settings.samples_coarse, settings.samples_fine, settings.box_warp,
                    settings.plane_axes)
            case["engine_kernel"] = stats(time_cuda(run, warmup, iters, torch))
            case["torch_op"] = stats(time_cuda(lambda: op.launch(*args), warmup, iters, torch))
        case["passed"] = bool(passed)
        return case

    cases, ok, lost = [], True, False
    for i, dtype in enumerate((torch.float32, torch.float16)):
        name = str(dtype).replace("torch.", "")
        try:
            case = check(i, dtype)
        except Exception:  # noqa: BLE001 - reported in the case, the rest stands
            case, lost = case_failure(torch, f"engine kernel {name}", triplane_dtype=name)
            cases.append(case)
            ok = False
            if lost:  # nothing more can run in this process
                break
            continue
        ok &= case["passed"]
        cases.append(case)
        print(f"  engine kernel {name}: features {case['features']['max_abs_err']:.2e}, "
              f"{case['engine_kernel']['p50_ms']:.3f} ms (torch op "
              f"{case['torch_op']['p50_ms']:.3f} ms)", flush=True)
    return {"what": "the TensorRT engine's ray-march kernel, compiled and launched as TensorRT "
            "would, without TensorRT", "tolerance_abs": KERNEL_TOLERANCE, "all_passed": ok,
            "cases": cases, **({"cuda_context_lost": True} if lost else {})}


# Seconds of the budget the launch sweep leaves to the model, TensorRT and live sections.
SWEEP_RESERVE_S = 240.0
# Seconds of the budget a torch.compile variant needs left to start: the H200 compiled the
# frame in 19 s, then ~50 timed frames. At 150 s the first report's compile variant was
# skipped with 120 s left, and the frame target's likeliest best setting went unmeasured.
COMPILE_RESERVE_S = 60.0


def raymarch_timing(torch, config, device, warmup, iters, budget=None, report=None,
                    failure=None) -> dict:
    from engines import raymarch as kernel
    from export3d.renderer import RayMarchSettings, raymarch_reference

    settings = RayMarchSettings(config.ray_near, config.ray_far, config.samples_coarse,
                                config.samples_fine, config.box_warp, config.eg3d_plane_axes)
    job = Resumable(report, "raymarch_timing", {"launch_sweep": []}, failure)
    for dtype in (torch.float32, torch.float16):
        name = str(dtype).replace("torch.", "")

        def timed():
            print(f"  raymarch {name} ...", flush=True)
            tp, dec, o, d = random_case(torch, config, 1, dtype, 7, 0.0, device)
            kw = dict(near=settings.near, far=settings.far,
                      samples_coarse=settings.samples_coarse,
                      samples_fine=settings.samples_fine, box_warp=settings.box_warp,
                      plane_axes=settings.plane_axes)
            with torch.no_grad():
                ref = stats(time_cuda(lambda: raymarch_reference(tp, dec, o, d, settings),
                                      warmup, iters, torch))
                ker = stats(time_cuda(lambda: kernel.raymarch(tp, dec.w1, dec.b1, dec.w2,
                                                              dec.b2, o, d, **kw),
                                      warmup, iters, torch))
            return {"reference": ref, "kernel": ker,
                    "speedup_p50": round(ref["p50_ms"] / ker["p50_ms"], 2)}

        if job.finished(None, name) is not None:
            continue  # done by an earlier process of this section
        got = job.run(torch, None, name, timed)
        if "speedup_p50" in got:
            print(f"  raymarch {name}: reference {got['reference']['p50_ms']:.3f} ms, kernel "
                  f"{got['kernel']['p50_ms']:.3f} ms, x{got['speedup_p50']}", flush=True)
    # On a CPU (dry run) two rows, one per variant, so the sweep's code runs there too.
    launch_sweep(torch, config, device, settings, warmup, iters, job,
                 short=device.type != "cuda", budget=budget)
    job.value["shape"] = {"rays": config.render_size ** 2,
                          "samples": [config.samples_coarse, config.samples_fine],
                          "triplane": [3, config.triplane_channels, config.triplane_size,
                                       config.triplane_size]}
    return job.complete()


def _serial(block_rays, num_warps, dot_precision, triplane_dtype="float32", **extra):
    return {"variant": "serial", "block_rays": block_rays, "num_warps": num_warps,
            "dot_precision": dot_precision, "triplane_dtype": triplane_dtype, **extra}


def _tiled(block_rays, sample_tile, num_warps, dot_precision, triplane_dtype="float32"):
    return {"variant": "tiled", "block_rays": block_rays, "sample_tile": sample_tile,
            "num_warps": num_warps, "dot_precision": dot_precision,
            "triplane_dtype": triplane_dtype}


# The launch sweep, one op.launch configuration per row, plus the tri-plane dtype it runs on.
# The launch shape (rays per program x warps) decides how many programs keep each SM busy and
# whether a warp's 16 MMA rows hold 16 different rays; the precision what the MLP products
# cost ("fp16": tensor cores, fp32 accumulation; the op's default for half-precision
# tri-planes); prefetch asks L1 for the next sample's taps (1: coarse pass, 2: both passes),
# on the default launch; samples_per_step=1 decodes one merged sample a step instead of two;
# cdf_in_memory=False keeps each ray's CDF in registers (what the
# TensorRT plugin ran with the version-1 node); max_registers trades spills for programs per
# SM, on launches with 4 threads a ray (a paper512 frame has 16384 rays: at 64 x 4 its 1024
# warps already all fit at 255 registers, 8 per SM, so a cap there buys nothing).
# benchmarks.kernel_sass counts each row's instructions on a CPU; this measures them. Most
# informative first (the budget may stop the sweep early; the H200's second run took ~10 s a
# row; --resume goes on): the fp16-product launches kernel_sass ranks best on fp16
# tri-planes, then the two fp32 defaults (TF32x3, TF32 when allowed), so each tri-plane dtype
# has a best launch, and TF32x3 as tl.dot computes it ("tl-tf32x3": the kernel's own, written
# out, is 12% fewer instructions in kernel_sass; this says whether it is faster), then the
# latency options, the other fp32 rows and the baselines last measured on the H200. Tiled rows
# (engines/raymarch/tiled.py: rays x samples = rows per MLP product) come last: each compiles
# for tens of seconds.
# The three ablations after them (engines.raymarch.kernel.ABLATIONS: timing diagnostics whose
# outputs are not the renderer's, never a best launch) split the half-precision default's time
# into what the gathers' memory traffic, the MLP and the rest cost (summary
# "kernel_time_split"), which says where the next saving has to come from. Then the default
# once more on the surface volume (surface_case, "volume": a head-sized ball, where the other
# rows run on random tri-planes): how a scene's locality changes the gathers' cost. Then the
# default with its fp16 tri-plane's taps summed in fp32 (tap_sum, engines.raymarch.kernel
# TAP_SUMS), on both volumes: on the ball the fp32 sums' worst errors were 0.7-2.2x the fp16
# sums' under the interpreter (neither keeps every element within the tolerance: kernel_check),
# so only a near-zero cost would make them the half-precision default.
SWEEP = (_serial(32, 4, "fp16", "float16"), _serial(64, 4, "fp16", "float16"),
         _serial(64, 4, "tf32x3"), _serial(64, 4, "tf32"), _serial(64, 4, "tl-tf32x3"),
         _serial(64, 4, "fp16", "float16", ablate="gathers"),
         _serial(64, 4, "fp16", "float16", ablate="mlp"),
         _serial(64, 4, "fp16", "float16", ablate="gathers+mlp"),
         _serial(64, 4, "fp16", "float16", volume="surface"),
         _serial(64, 4, "fp16", "float16", tap_sum="fp32"),
         _serial(64, 4, "fp16", "float16", tap_sum="fp32", volume="surface"),
         _serial(64, 4, "fp16", "float16", samples_per_step=1),
         _serial(64, 4, "fp16", "float16", cdf_in_memory=False),
         _serial(32, 2, "fp16", "float16"), _serial(16, 1, "fp16", "float16"),
         _serial(64, 4, "fp16", "float16", prefetch=1),
         _serial(64, 4, "fp16", "float16", prefetch=2),
         _serial(32, 4, "fp16", "float16", max_registers=168),
         _serial(32, 4, "fp16", "float16", max_registers=128),
         _serial(32, 2, "fp16", "float16", max_registers=168),
         _serial(32, 4, "fp16"), _serial(64, 4, "fp16"), _serial(32, 2, "fp16"),
         _serial(32, 4, "tf32x3"), _serial(128, 4, "fp16"),
         _serial(64, 8, "fp16"), _serial(128, 8, "fp16"), _serial(16, 2, "fp16"),
         _serial(32, 4, "tf32"), _serial(32, 4, "ieee"),
         _tiled(16, 8, 8, "fp16", "float16"), _tiled(16, 8, 8, "tf32x3"),
         _tiled(16, 8, 8, "fp16"), _tiled(16, 16, 8, "fp16"), _tiled(32, 8, 8, "fp16"))
# What op.launch takes of a row (the rest describes the data it runs on).
LAUNCH_FIELDS = ("variant", "block_rays", "num_warps", "dot_precision", "sample_tile",
                 "max_registers", "prefetch", "cdf_in_memory", "samples_per_step", "tap_sum",
                 "ablate")
ABLATION_NOTE = "timing diagnostic: part of the work left out, outputs not the renderer's"
# What a sweep row is, beyond its launch: the data it runs on (no "volume": random_case).
ROW_KEYS = (*LAUNCH_FIELDS, "triplane_dtype", "volume")


def launch_sweep(torch, config, device, settings, warmup, iters, job: Resumable,
                 short=False, budget=None) -> list:
    """Rows in SWEEP order, into ``job``'s ``launch_sweep`` list as each finishes; a row is
    skipped (and says so) once less than SWEEP_RESERVE_S of the budget is left, so the later
    sections still run."""
    from engines.raymarch import op
    from export3d.renderer import raymarch_reference

    rows = job.value["launch_sweep"]
    plan = list(SWEEP)
    if short:  # fp16 products on fp16 tri-planes, one row of each variant, one ablation,
        # the default on the ball
        plan = [next(r for r in plan if r["variant"] == v and r["dot_precision"] == "fp16"
                     and r["triplane_dtype"] == "float16" and not r.get("ablate")
                     and not r.get("volume")) for v in ("serial", "tiled")]
        plan.append(next(r for r in SWEEP if r.get("ablate") == "gathers+mlp"))
        plan.append(next(r for r in SWEEP if r.get("volume") == "surface"))
    cases = {}
    with torch.no_grad():
        for index, launch in enumerate(plan):
            done = job.finished("launch_sweep", index)
            if done is not None and any(done.get(k) != launch.get(k) for k in ROW_KEYS):
                # A report (--resume) of a sweep with other rows: from here on its rows are
                # other launches' places; they run again.
                del rows[index:]
                if job.dead and job.dead[0] == "launch_sweep":
                    job.dead = None
                done = None
            if done is not None:
                continue  # done by an earlier process of this section
            if budget is not None and budget.left() < SWEEP_RESERVE_S:
                job.store("launch_sweep", index, {**launch, "skipped": "time budget"})
                continue
            dtype, volume = launch["triplane_dtype"], launch.get("volume")
            if (dtype, volume) not in cases:
                if volume == "surface":
                    tp, dec, o, d = surface_case(torch, config, getattr(torch, dtype), 7, device)
                else:
                    tp, dec, o, d = random_case(torch, config, 1, getattr(torch, dtype), 7, 0.0,
                                                device)
                args = (tp, dec.w1, dec.b1, dec.w2, dec.b2, o, d, settings.near,
                        settings.far, settings.samples_coarse, settings.samples_fine,
                        settings.box_warp, settings.plane_axes)
                cases[dtype, volume] = (args, raymarch_reference(tp, dec, o, d, settings))
            args, ref = cases[dtype, volume]
            options = {k: v for k, v in launch.items() if k in LAUNCH_FIELDS}

            def measured():
                print(f"  sweep {index}: {launch} ...", flush=True)

                def call():
                    return op.launch(*args, **options)
                got, row = call(), {}
                for i, name in enumerate(("features", "depth", "opacity")):
                    error = output_error(torch, got[i], ref[i], name)
                    row[f"max_abs_err_{name}"] = error["max_abs_err"]
                    row[f"p99_abs_err_{name}"] = error["p99_abs_err"]
                    row[f"over_tolerance_{name}"] = error["elements_over_tolerance"]
                row["within_tolerance"] = all(row[f"max_abs_err_{n}"] <= tol
                                              for n, tol in KERNEL_TOLERANCE.items())
                if volume:
                    # Never a best launch; a half-precision ball's verdict is kernel_check's
                    # (its silhouette rays: see there). The errors above compare its tap sums.
                    row["within_tolerance"] = None
                if launch.get("ablate"):
                    row["within_tolerance"] = None  # not a renderer: never a best launch
                    row["ablation"] = ABLATION_NOTE
                row.update(stats(time_cuda(call, warmup, iters, torch)))
                return row

            row = job.run(torch, "launch_sweep", index, measured, base=launch)
            print(f"  sweep {({k: v for k, v in row.items() if k != 'traceback'})}",
                  flush=True)
    return rows


def model_variants(torch, device, dry_run: bool, compile_ok: bool, best=None,
                   forms: bool = False):
    """(name, dtype, renderer impl, channels_last, mode, kernel launch or None) in the order
    they run; ``best``: the launch the sweep found fastest for half-precision tri-planes;
    ``forms``: the ops section found faster forms of generate's operators, so the best-launch
    variant runs once more with them in place (``benchmarks.ops.fastest_forms``)."""
    kernel_impl = "kernel"
    out = [("fp32-reference", torch.float32, "reference", False, "eager"),
           ("fp32-kernel", torch.float32, kernel_impl, False, "eager"),
           ("fp16-kernel", torch.float16, kernel_impl, False, "eager"),
           ("bf16-kernel", torch.bfloat16, kernel_impl, False, "eager"),
           ("bf16-kernel-channels_last", torch.bfloat16, kernel_impl, True, "eager")]
    if dry_run:  # the interpreter takes seconds per kernel call: one variant of each kind
        out = out[:2]
    if device.type == "cuda":
        out.append(("bf16-kernel-cudagraph", torch.bfloat16, kernel_impl, False, "cudagraph"))
        out.append(("fp16-kernel-cudagraph", torch.float16, kernel_impl, False, "cudagraph"))
    out = [(*v, None) for v in out]
    if best:
        out.append(("bf16-kernel-best-launch", torch.bfloat16, kernel_impl, True, "eager", best))
        if device.type == "cuda":
            out.append(("bf16-kernel-best-launch-cudagraph", torch.bfloat16, kernel_impl, True,
                        "cudagraph", best))
            if compile_ok:
                out.append(("bf16-kernel-best-launch-compile", torch.bfloat16, kernel_impl,
                            True, "compile", best))
    if forms:
        # The frame with generate's fastest operator forms: measured in the same run as the
        # forms themselves (GPU loans are rare), eager with its stage times and as a CUDA graph.
        out.append(("bf16-kernel-best-forms", torch.bfloat16, kernel_impl, True, "eager", best))
        if device.type == "cuda":
            out.append(("bf16-kernel-best-forms-cudagraph", torch.bfloat16, kernel_impl, True,
                        "cudagraph", best))
    # Last: each compile takes tens of seconds of the budget, and with a best launch the
    # variant above is the likelier winner (this one repeats the first H200 report's best).
    if device.type == "cuda" and compile_ok:
        out.append(("bf16-kernel-compile", torch.bfloat16, kernel_impl, False, "compile", None))
    return out


def half_precision_launch(timing: dict) -> dict | None:
    """The fastest launch-sweep row on a half-precision tri-plane within tolerance, as
    engines.raymarch.op.default_launch options (None when the sweep has none)."""
    rows = [r for r in timing.get("launch_sweep", []) if r.get("triplane_dtype") == "float16"
            and r.get("within_tolerance") and "p50_ms" in r and not r.get("volume")]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["p50_ms"])
    return {k: best[k] for k in LAUNCH_FIELDS if k in best}


def model_timing(torch, config, device, warmup, iters, budget: Budget, dry_run, compile_ok,
                 report: Report, failure=None, kernel_unusable=None) -> dict:
    """The model variants (model_variants), one item each. The "-kernel" variants run with the
    reference renderer once the kernel is known not to run here: the kernel check's process
    died, hung or lost its context (``kernel_unusable``), or an eager variant with the kernel
    failed before any had run (the plainest use of it; each later one would fail the same
    way, at worst one fresh process or one hang-watch wait each; after one has run, a failure
    is taken to be that variant's own). The generator and super-resolution timings,
    the frame target's larger part, are still measured; ``kernel_unusable`` says why."""
    from export3d.model import build_model

    job = Resumable(report, "model", {"preset": config.preset, "batch": 1, "variants": {}},
                    failure)
    if kernel_unusable:
        job.value.update(kernel_unusable=kernel_unusable, kernel_unusable_by="kernel_check")
    elif job.value.get("kernel_unusable_by") == "kernel_check":
        # Resumed (--resume) after a kernel check that ran again and passed: the earlier
        # verdict no longer stands (one from a model variant's own failure does).
        del job.value["kernel_unusable"], job.value["kernel_unusable_by"]
    base = build_model(config, seed=0)
    base.clebs.freeze_basis()
    best = half_precision_launch(report.data.get("raymarch_timing", {}))
    # The ops section's sites whose fastest form is not the model's own (in a dry run the
    # variant runs even with none, so that its code runs too).
    sites = [s for s in report.data.get("ops", {}).get("sites", [])
             if s.get("fastest_within") not in (None, "model")]
    kernel_ran = False
    for name, dtype, impl, channels_last, mode, launch in model_variants(
            torch, device, dry_run, compile_ok, best, forms=bool(sites) or dry_run):
        kernel_eager = impl == "kernel" and mode == "eager"
        if impl == "kernel" and "kernel_unusable" in job.value:
            impl = "reference"
        v = job.finished("variants", name)  # done by an earlier process of this section
        if v is None and budget.left() < (COMPILE_RESERVE_S if mode == "compile" else 20):
            job.store("variants", name, {"skipped": f"time budget ({budget.left():.0f} s left)"})
            continue
        if v is None:
            def measured():
                print(f"  model {name} ...", flush=True)
                return run_variant(torch, base, config, device, dtype, impl, channels_last,
                                   mode, warmup, iters, launch,
                                   profile_stages=name in PROFILED_VARIANTS,
                                   forms=sites if "best-forms" in name else None)

            v = job.run(torch, "variants", name, measured, base={"renderer": impl})
            if "frame" in v:
                print(f"    per frame p50 {v['frame']['p50_ms']:.3f} ms ({v['fps']:.1f} fps), "
                      f"peak {v.get('peak_memory_mib', 0):.0f} MiB (first calls "
                      f"{v.get('peak_memory_first_calls_mib', 0):.0f})", flush=True)
            elif "error" in v:
                print(f"    {v['error']}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        kernel_ran |= kernel_eager and impl == "kernel" and "frame" in v
        if kernel_eager and impl == "kernel" and "error" in v and not kernel_ran:
            job.value["kernel_unusable"] = f"the kernel failed in {name}: {v['error'][:300]}"
            job.value["kernel_unusable_by"] = name
            print(f"  {job.value['kernel_unusable']}; the later -kernel variants run with the "
                  "reference renderer", flush=True)
            job.report.put(job.key, job.value)
    return job.complete()


def run_variant(torch, base, config, device, dtype, impl, channels_last, mode, warmup, iters,
                launch=None, profile_stages=False, forms=None, prepared=False):
    """One model variant timed (see model_timing); ``forms``: ops sites whose fastest forms
    run in the model's place; ``prepared``: ``base`` is already this variant's model."""
    if launch:
        from engines.raymarch.op import default_launch

        with default_launch(**launch):
            out = run_variant(torch, base, config, device, dtype, impl, channels_last, mode,
                              warmup, iters, profile_stages=profile_stages, forms=forms)
        return {**out, "kernel_launch": launch}
    import copy

    from export3d.camera import orbit_path

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = base
    if not prepared:
        model = copy.deepcopy(base).to(device=device, dtype=dtype)
        model.renderer.impl = impl
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
    if forms is not None:
        from benchmarks.ops import fastest_forms

        with fastest_forms(model, forms) as chosen:
            out = run_variant(torch, model, config, device, dtype, impl, channels_last, mode,
                              warmup, iters, profile_stages=profile_stages, prepared=True)
        return {**out, "forms": chosen}
    image = (torch.rand(1, 3, config.image_size, config.image_size, device=device) * 2 - 1)
    image = image.to(dtype).contiguous(memory_format=memory_format)
    expr = torch.randn(1, config.expr_dim, device=device, dtype=dtype)
    camera = orbit_path("circle", 5)[2:3].to(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    out: dict = {"dtype": str(dtype).replace("torch.", ""), "renderer": impl,
                 "channels_last": channels_last, "mode": mode}
    with torch.inference_mode():
        encode = stats(time_cuda(lambda: model.encode_source(image), 1, max(2, iters // 10),
                                 torch))
        source = model.encode_source(image)
        out["encode_source_once"] = encode

        def frame():
            return model.synthesize(source, expr, camera)["image"]

        if mode == "eager":
            out["stages"] = stage_timing(torch, model, source, expr, camera, warmup, iters)
            if profile_stages:
                try:  # a profiler failure (no CUPTI, say) must not cost the timings above
                    out["profile"] = stage_profile(torch, model, source, expr, camera,
                                                   max(1, min(10, iters)))
                except Exception as exc:
                    out["profile"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            step = frame
        elif mode == "cudagraph":
            step = cuda_graph(torch, frame, warmup)
        else:
            start = time.monotonic()
            compiled = torch.compile(frame)
            compiled()
            torch.cuda.synchronize()
            out["compile_seconds"] = round(time.monotonic() - start, 1)
            step = cuda_graph(torch, compiled, warmup)
        frame_ms, peaks = with_memory_peaks(torch, device,
                                            lambda: time_cuda(step, warmup, iters, torch))
        out.update(peaks)
        result = step()
        out["finite"] = bool(torch.isfinite(result.float()).all())
    out["frame"] = stats(frame_ms)
    out["fps"] = round(1e3 / out["frame"]["p50_ms"], 1)
    return out


def with_memory_peaks(torch, device, timed):
    """``timed()``'s result and the GPU memory peaks around it ({} off CUDA):
    ``peak_memory_mib``, the most allocated while ``timed`` ran (the timed frames: what running
    the variant needs), and ``peak_memory_first_calls_mib``, the most before it since the
    caller's reset (source encoding, warm-up, capture or compilation). The first calls of a
    shape are where cuDNN's benchmark mode tries its algorithms, with workspaces that fp32's
    FFT algorithms make gigabytes. With one peak over everything, the H200's reports have the
    suite's first variant (fp32, reference renderer) at 17 GB and the next (the same
    convolutions, already searched, with the kernel) at 1.25 GB: the search, or the reference
    renderer; these two peaks tell them apart."""
    if device.type != "cuda":
        return timed(), {}
    torch.cuda.synchronize(device)
    first = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = timed()
    torch.cuda.synchronize(device)
    return result, {"peak_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                    "peak_memory_first_calls_mib": round(first / 2**20, 1)}


def stage_timing(torch, model, source, expr, camera, warmup, iters) -> dict:
    """Per-stage milliseconds from events recorded between stages in one stream (no host
    synchronisation between stages, so the sum is the frame)."""
    def run():
        triplane = model.generate(source, expr)
        features = model.render(triplane, camera)[0]
        return model.superresolve(features)

    names = ("generate", "render", "superresolve")
    for _ in range(warmup):
        run()
    if not torch.cuda.is_available():
        times = {n: [] for n in names}
        for _ in range(iters):
            t0 = time.perf_counter()
            triplane = model.generate(source, expr)
            t1 = time.perf_counter()
            features = model.render(triplane, camera)[0]
            t2 = time.perf_counter()
            model.superresolve(features)
            t3 = time.perf_counter()
            for n, a, b in zip(names, (t0, t1, t2), (t1, t2, t3)):
                times[n].append((b - a) * 1e3)
        return {n: stats(v) for n, v in times.items()}
    records = []
    for _ in range(iters):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        ev[0].record()
        triplane = model.generate(source, expr)
        ev[1].record()
        features = model.render(triplane, camera)[0]
        ev[2].record()
        model.superresolve(features)
        ev[3].record()
        records.append(ev)
    torch.cuda.synchronize()
    return {n: stats([r[i].elapsed_time(r[i + 1]) for r in records]) for i, n in enumerate(names)}


# Eager variants whose stages are also profiled kernel by kernel (stage_profile).
PROFILED_VARIANTS = ("bf16-kernel-channels_last", "bf16-kernel-best-launch",
                     "bf16-kernel-best-forms")
PROFILE_TOP = 12


def stage_profile(torch, model, source, expr, camera, frames: int) -> dict:
    """Where each stage's time goes, kernel by kernel (torch.profiler over ``frames`` runs of
    the stage): launches per frame, summed kernel time per frame, and the PROFILE_TOP kernels
    by time with their calls and microseconds per frame. A stage whose kernel time is far
    below its measured latency is launch-bound (CUDA graphs, torch.compile); one that is not
    is bound by the kernels listed. On a CPU the rows are aten operators and CPU time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    state = {"triplane": model.generate(source, expr)}
    state["features"] = model.render(state["triplane"], camera)[0]
    calls = {"generate": lambda: model.generate(source, expr),
             "render": lambda: model.render(state["triplane"], camera),
             "superresolve": lambda: model.superresolve(state["features"])}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    out = {"frames": frames, "unit": "us per frame",
           "rows": "CUDA kernels" if cuda else "aten operators (CPU)"}
    for name, call in calls.items():
        call()
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(frames):
                call()
            if cuda:
                torch.cuda.synchronize()
        rows = []
        for e in prof.key_averages():
            if cuda:
                if e.device_type != DeviceType.CUDA:
                    continue
                us = getattr(e, "self_device_time_total", None)
                us = us if us is not None else e.self_cuda_time_total
            else:
                if not e.key.startswith("aten::"):
                    continue
                us = e.self_cpu_time_total
            rows.append({"name": e.key[:160], "calls": e.count / frames,
                         "us": round(us / frames, 2)})
        rows.sort(key=lambda r: -r["us"])
        total = sum(r["us"] for r in rows)
        for r in rows:
            r["share"] = round(r["us"] / total, 4) if total else 0.0
        out[name] = {"launches" if cuda else "operators": sum(r["calls"] for r in rows),
                     "kernel_us" if cuda else "self_us": round(total, 2),
                     "top": rows[:PROFILE_TOP]}
    return out


def cuda_graph(torch, fn, warmup):
    """Capture ``fn`` (static inputs) into a CUDA graph; returns a replay thunk."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(max(3, warmup)):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn()

    def replay():
        graph.replay()
        return static_out

    return replay


# ----------------------------------------------------------------------------- TensorRT

def tensorrt_section(torch, config, device, warmup, iters, budget: Budget, data: dict) -> dict:
    """Plugin graphs -> engines (timed) -> frames through the tensorrt backend (timed, host
    copies included, as a user gets them), per precision; a skip record where TensorRT does
    not import (every machine this project has had)."""
    import importlib
    import tempfile

    import numpy as np

    try:
        trt = importlib.import_module("tensorrt")
    except Exception:  # noqa: BLE001 - missing, or its libraries are
        return {"skipped": "tensorrt not importable"}
    if device.type != "cuda":
        return {"skipped": "no CUDA device"}
    from engines.trt.builder import BuildOptions, build_engines
    from export.onnx_export import export_onnx
    from export.trt_backend import open_tensorrt
    from export3d.camera import orbit_path
    from export3d.model import build_model

    out = {"tensorrt": trt.__version__, "precisions": {}}
    model = build_model(config, seed=0, render_impl="reference")
    gen = np.random.default_rng(0)
    image = gen.uniform(-1, 1, (1, 3, config.image_size, config.image_size)).astype(np.float32)
    expr = gen.standard_normal((1, config.expr_dim)).astype(np.float32)
    camera = orbit_path("circle", 5)[2:3].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "fp16"):
            if budget.left() < 120:
                out["precisions"][precision] = {"skipped": f"time budget ({budget.left():.0f} s "
                                                           "left)"}
                continue
            row = out["precisions"][precision] = {}
            try:
                graphs, engines = Path(tmp) / f"graphs-{precision}", Path(tmp) / precision
                start = time.monotonic()
                export_onnx(model, graphs, variant="plugin", precision=precision)
                row["export_seconds"] = round(time.monotonic() - start, 1)
                # The builder's progress lines also tell the suite's hang watch it is alive.
                metas = build_engines(graphs, engines, BuildOptions(
                    timing_cache=Path(tmp) / "timing.cache"),
                    report=lambda line: print(f"    {line}", flush=True))
                row["build_seconds"] = {m["stage"]: m["build_seconds"] for m in metas}
                with open_tensorrt(engines) as backend:
                    backend.encode_source(image)
                    row["frame"] = stats(time_cuda(lambda: backend.frame(expr, camera), warmup,
                                                   iters, torch))
                row["fps"] = round(1e3 / row["frame"]["p50_ms"], 1)
                print(f"  tensorrt {precision}: build {sum(row['build_seconds'].values()):.0f} s,"
                      f" per frame p50 {row['frame']['p50_ms']:.3f} ms", flush=True)
            except Exception as exc:  # noqa: BLE001 - recorded; the other precision still runs
                row["error"] = f"{type(exc).__name__}: {exc}"[:500]
    out["pytorch_frame_p50_ms"] = {k: v["frame"]["p50_ms"] for k, v in
                                   data.get("model", {}).get("variants", {}).items()
                                   if "frame" in v}
    return out


def live_section(preset: str, device, frames: int, fps: float, budget: Budget,
                 report: Report | None = None, compile_ok: bool = True) -> dict:
    """The live pipeline end to end (``realtime.Pipeline``: capture -> generator double buffer
    -> sink) on the torch backend, with a scripted head at webcam pace instead of a webcam and
    tracking (no camera and no mediapipe on a GPU machine), a random source image and a null
    sink: glass-to-glass latency and per-stage percentiles. Random weights: timing only.
    Each finished run goes into ``report`` at once (the section marked ``incomplete``), so a
    later run that hangs or is killed past the budget loses only itself."""
    if budget.left() < 30:
        return {"skipped": "time budget spent"}
    import numpy as np
    import torch

    import realtime.generator as live_generator
    from realtime.config import CaptureConfig, GeneratorConfig, PipelineConfig, SinkConfig
    from realtime.pipeline import Pipeline

    def random_source(path, image_size, with_pose=False):
        rng = np.random.default_rng(0)
        image = rng.uniform(-1, 1, (1, 3, image_size, image_size)).astype(np.float32)
        return (image, None) if with_pose else image

    def run(cuda_graph: bool = False, compile: bool = False):
        config = PipelineConfig(
            capture=CaptureConfig(source="synthetic", fps=fps, frames=frames, width=640,
                                  height=480),
            generator=GeneratorConfig(backend="torch", device=str(device), preset=preset,
                                      source="random-source.png", cuda_graph=cuda_graph,
                                      compile=compile),
            sink=SinkConfig(sink="null", hud=False))
        original = live_generator.prepare_source
        live_generator.prepare_source = random_source  # no photo, no face model needed
        try:
            pipeline = Pipeline(config)
            return pipeline, pipeline.run()
        finally:
            live_generator.prepare_source = original

    pipeline, summary = run()
    backend = pipeline.generator.backend  # what ran (--precision auto's choice)
    out = {"preset": preset, "capture_fps": fps, "backend": "torch",
           "dtype": str(backend.dtype).replace("torch.", ""),
           "channels_last": backend.memory_format == torch.channels_last,
           "summary": summary}
    if report is not None:
        report.put("live", {**out, "incomplete": True})
    if str(device).startswith("cuda"):
        # export3d live --cuda-graph: the eager frame captured once, replayed on the double
        # buffer's compute stream; then --compile: the compiled frame captured the same way
        # (compiled on this thread, replayed on the generator thread). Neither pytest GPU test
        # has run: this is their first GPU.
        for key, needs_s, flags in (("cuda_graph", 30, {"cuda_graph": True}),
                                    ("compile", COMPILE_RESERVE_S, {"compile": True})):
            if key == "compile" and not compile_ok:
                out[key] = {"skipped": "--no-compile"}
                continue
            if budget.left() < needs_s:
                out[key] = {"skipped": f"time budget ({budget.left():.0f} s left)"}
                continue
            try:
                out[key] = {"summary": run(**flags)[1]}
            except Exception as exc:  # noqa: BLE001 - recorded; the eager run above stands
                out[key] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            if report is not None:
                report.put("live", {**out, "incomplete": True})
    return out


def ops_section(torch, device, dry_run: bool, warmup, iters, budget: Budget) -> dict:
    """``benchmarks.ops``: the candidate forms of generate's attention, depthwise and low-pass
    operators against the model's, at their real inputs (bf16 + channels-last on a GPU, as
    the frame's best eager variant runs; fp32 at tiny size in a dry run). The frame that
    captures them renders with the reference renderer: no site is in the ray march, the
    features super-resolution gets are cast to the model's dtype and laid out alike by both
    renderers, and so this section does not depend on the kernel running on this machine."""
    from benchmarks import ops

    if budget.left() < 60:
        return {"skipped": f"time budget ({budget.left():.0f} s left)"}
    preset, dtype = ("tiny", torch.float32) if dry_run else ("paper512", torch.bfloat16)
    model, source, expr = ops.prepared_model(preset, dtype, device, channels_last=True,
                                             render_impl="reference")
    out = {"preset": preset, "dtype": str(dtype).replace("torch.", ""), "channels_last": True,
           **ops.op_candidates(model, source, expr, warmup, min(iters, 30),
                               progress=lambda line: print(f"  ops {line}", flush=True),
                               time_left=budget.left)}
    del model, source
    if device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - a lost context (recorded in a site): keep the sites
            pass
    return out


def roofline_card(gpu_name: str | None) -> tuple[str, str | None]:
    """The ``benchmarks.roofline.GPUS`` entry for a card torch names (an H100 SXM is "NVIDIA
    H100 80GB HBM3"), and a note when the card is not one of them: H100 SXM figures then,
    which overstate an H100 PCIe's or NVL's compute and bandwidth (its floors come out low)
    and are not a GH200's."""
    name = (gpu_name or "").upper()
    if "H200" in name and "GH200" not in name:
        return "h200", None
    if "H100" in name and not any(part in name for part in ("PCIE", "NVL")):
        return "h100", None
    return "h100", (f"{gpu_name or 'no GPU'} is not in benchmarks.roofline.GPUS: H100 SXM "
                    "figures, so its floors are only indicative")


def roofline_section(preset: str, gpu_name: str | None) -> dict:
    """The static floors of ``benchmarks.roofline`` for this card (H100 SXM figures, with a
    note, for a card it does not list), so the summary can say how far each measured stage
    is from its floor."""
    from benchmarks import roofline

    key, note = roofline_card(gpu_name)
    out = roofline.roofline(preset, key, "bfloat16")
    if note:
        out["note"] = note
    return out


def floor_ratios(data: dict) -> dict:
    """Measured eager p50 / static eager floor, per stage, for the bf16 channels_last variant
    (the roofline's dtype and an eager run): how far from its floor each stage ran."""
    floors = data.get("roofline", {}).get("stages", {})
    stages = data.get("model", {}).get("variants", {}).get("bf16-kernel-channels_last",
                                                          {}).get("stages", {})
    return {name: round(stages[name]["p50_ms"] / floor["eager_ms"], 2)
            for name, floor in floors.items() if name in stages and floor["eager_ms"] > 0}


def best_launch(timing: dict) -> dict:
    """The fastest swept launch whose outputs are within KERNEL_TOLERANCE of the reference at
    its tri-plane dtype, and its speed-up over the fp32 reference's p50 ({} if none)."""
    good = [r for r in timing.get("launch_sweep", []) if r.get("within_tolerance")
            and "p50_ms" in r and not r.get("volume")]  # on random_case, as the reference
    if not good or "reference" not in timing.get("float32", {}):
        return {}
    best = min(good, key=lambda r: r["p50_ms"])
    speedup = round(timing["float32"]["reference"]["p50_ms"] / best["p50_ms"], 2)
    keys = (*LAUNCH_FIELDS, "triplane_dtype", "p50_ms")
    # Per tri-plane dtype, against the reference at that dtype: the defaults to set for each
    # (engines/raymarch: fp32 tri-planes, and half precision, the model's bf16/fp16 frames).
    by_dtype = {}
    for dtype in sorted({r["triplane_dtype"] for r in good}):
        row = min((r for r in good if r["triplane_dtype"] == dtype), key=lambda r: r["p50_ms"])
        entry = {"launch": {k: row[k] for k in LAUNCH_FIELDS if k in row},
                 "p50_ms": row["p50_ms"]}
        reference = timing.get(dtype, {}).get("reference", {}).get("p50_ms")
        if reference:
            entry["speedup_over_reference"] = round(reference / row["p50_ms"], 2)
            entry["speedup_met"] = entry["speedup_over_reference"] >= TARGET_SPEEDUP
        by_dtype[dtype] = entry
    return {"kernel_best_launch": {k: best[k] for k in keys if k in best},
            "kernel_best_speedup": speedup,
            "kernel_best_speedup_met": speedup >= TARGET_SPEEDUP,
            "kernel_best_by_triplane_dtype": by_dtype}


def kernel_time_split(timing: dict) -> dict:
    """The ablated launches' p50 against the launch they ablate (the sweep row with the same
    options and no ablation): what leaving the gathers' memory traffic out saves, what
    leaving the MLP out saves, and what is left with both out ({} until all four ran)."""
    rows = timing.get("launch_sweep", [])

    def same_launch(row, base):
        return all(row.get(k) == base.get(k) for k in ROW_KEYS if k != "ablate")

    ablated = {r["ablate"]: r for r in rows if r.get("ablate") and "p50_ms" in r}
    if set(ablated) != {"gathers", "mlp", "gathers+mlp"}:
        return {}
    probe = ablated["gathers"]
    base = next((r for r in rows if not r.get("ablate") and "p50_ms" in r
                 and same_launch(r, probe)), None)
    if base is None or not all(same_launch(r, probe) for r in ablated.values()):
        return {}
    kernel_ms = base["p50_ms"]
    out = {"launch": {k: base[k] for k in (*LAUNCH_FIELDS, "triplane_dtype") if k in base},
           "kernel_ms": kernel_ms,
           "gathers_memory_ms": round(kernel_ms - ablated["gathers"]["p50_ms"], 4),
           "mlp_ms": round(kernel_ms - ablated["mlp"]["p50_ms"], 4),
           "rest_ms": ablated["gathers+mlp"]["p50_ms"],
           "note": "kernel minus each ablation's p50 (engines.raymarch.kernel.ABLATIONS), on "
                   "random tri-planes; the parts overlap on a GPU, so they need not add up to "
                   "the kernel's time. surface_ms: the same launch on surface_case's ball"}
    surface = next((r for r in rows if r.get("volume") == "surface" and "p50_ms" in r
                    and not r.get("ablate") and all(r.get(k) == base.get(k)
                                                    for k in (*LAUNCH_FIELDS, "triplane_dtype"))),
                   None)
    if surface is not None:
        out["surface_ms"] = surface["p50_ms"]
    return out


def summary(data: dict, device) -> dict:
    out = {}
    if device.type != "cuda":
        return {"targets": "not applicable: no GPU (dry run)",
                "kernel_check_passed": data.get("kernel_check", {}).get("all_passed"),
                **({"kernel_unusable": data["kernel_unusable"]} if "kernel_unusable" in data
                   else {})}
    timing = data.get("raymarch_timing", {})
    if "speedup_p50" in timing.get("float32", {}):
        out["kernel_speedup_fp32"] = timing["float32"]["speedup_p50"]
        out["kernel_speedup_target"] = TARGET_SPEEDUP
        out["kernel_speedup_met"] = timing["float32"]["speedup_p50"] >= TARGET_SPEEDUP
        out.update(best_launch(timing))
    split = kernel_time_split(timing)
    if split:
        out["kernel_time_split"] = split
    variants = data.get("model", {}).get("variants", {})
    timed = {k: v for k, v in variants.items() if "frame" in v and v.get("finite", False)}
    if timed:
        best = min(timed, key=lambda k: timed[k]["frame"]["p50_ms"])
        out["best_variant"] = best
        out["best_frame_p50_ms"] = timed[best]["frame"]["p50_ms"]
        out["best_fps"] = timed[best]["fps"]
        out["frame_target_p50_ms"] = TARGET_FRAME_P50_MS
        out["frame_target_met"] = timed[best]["frame"]["p50_ms"] <= TARGET_FRAME_P50_MS
        out["frame_target_note"] = "the target is stated for one H100; compare on that card"
    ops = data.get("ops", {})
    if "sites" in ops:
        out["ops_saving_ms_per_frame"] = ops["saving_ms_per_frame"]
        # What the fastest forms saved on the whole frame: the best-forms variants against
        # the same launch without them (eager, then CUDA graph).
        saved = {}
        for forms, plain in (("bf16-kernel-best-forms", "bf16-kernel-best-launch"),
                             ("bf16-kernel-best-forms-cudagraph",
                              "bf16-kernel-best-launch-cudagraph")):
            a, b = variants.get(forms, {}), variants.get(plain, {})
            if "frame" in a and "frame" in b:
                saved[forms] = round(b["frame"]["p50_ms"] - a["frame"]["p50_ms"], 4)
        if saved:
            out["forms_frame_saving_ms"] = saved
        out["ops_fastest_forms"] = {
            f"{s['kind']} {'x'.join(map(str, s['shapes'][0]))}": s["fastest_within"]
            for s in ops["sites"] if "fastest_within" in s}
    ratios = floor_ratios(data)
    if ratios:
        out["bf16_channels_last_over_eager_floor"] = ratios
    out["kernel_check_passed"] = data.get("kernel_check", {}).get("all_passed")
    if "kernel_unusable" in data:
        out["kernel_unusable"] = data["kernel_unusable"]
    engine = data.get("tensorrt_kernel", {})
    if "cases" in engine:
        out["tensorrt_kernel_passed"] = engine["all_passed"]
        out["tensorrt_kernel_p50_ms"] = {c["triplane_dtype"]: c["engine_kernel"]["p50_ms"]
                                         for c in engine["cases"] if "engine_kernel" in c}
    return out


def print_table(data: dict) -> None:
    print("\nvariant                        frame p50   p95      fps   generate  render  SR   "
          "peak MiB")
    for name, v in data.get("model", {}).get("variants", {}).items():
        if "frame" not in v:
            print(f"{name:<30} {v.get('skipped') or v.get('error', '')[:60]}")
            continue
        st = v.get("stages", {})
        cells = [f"{st[n]['p50_ms']:8.3f}" if n in st else "       -" for n in
                 ("generate", "render", "superresolve")]
        print(f"{name:<30} {v['frame']['p50_ms']:9.3f} {v['frame']['p95_ms']:8.3f} "
              f"{v['fps']:7.1f} {' '.join(cells)} {v.get('peak_memory_mib', 0):9.0f}")
    for name, v in data.get("model", {}).get("variants", {}).items():
        prof = v.get("profile")
        if not prof or "error" in prof:
            continue
        print(f"\n{name}, per frame ({prof['rows']}):")
        for stage in ("generate", "render", "superresolve"):
            p = prof[stage]
            count = p.get("launches", p.get("operators"))
            busy = p.get("kernel_us", p.get("self_us")) / 1e3
            top = ", ".join(f"{r['name'][:40]} {r['us']:.0f} us" for r in p["top"][:3])
            print(f"  {stage:<13} {count:6.0f} {'launches' if 'launches' in p else 'ops'}, "
                  f"{busy:7.3f} ms busy; top: {top}")
    if "sites" in data.get("ops", {}):
        print("\ngenerate's operators, candidate forms (benchmarks.ops):")
        from benchmarks import ops

        ops.print_table(data["ops"])
    live = data.get("live", {}).get("summary")
    if live:
        g = live["glass_to_glass"]
        print(f"\nlive pipeline ({data['live']['preset']}, torch): {live['frames']} frames, "
              f"{live['fps']:.1f} fps, glass-to-glass p50 {g['p50_ms']:.1f} / p95 "
              f"{g['p95_ms']:.1f} / p99 {g['p99_ms']:.1f} ms")
        for key, flag in (("cuda_graph", "--cuda-graph"), ("compile", "--compile")):
            other = data["live"].get(key, {})
            if "summary" in other:
                g = other["summary"]["glass_to_glass"]
                print(f"  with {flag}: {other['summary']['fps']:.1f} fps, glass-to-glass p50 "
                      f"{g['p50_ms']:.1f} / p95 {g['p95_ms']:.1f} / p99 {g['p99_ms']:.1f} ms")
            elif other:
                print(f"  with {flag}: {other.get('error') or other.get('skipped')}")
        if data["live"].get("error"):  # its process killed or dead after the runs above
            print(f"  then: {data['live']['error']}")
    s = data.get("summary", {})
    print(f"\nsummary: {jsonfile.dumps({k: v for k, v in s.items() if k != 'seconds'})}")


SECTIONS = ("kernel_check", "raymarch_timing", "tensorrt_kernel", "ops", "model", "roofline",
            "tensorrt", "live")
KERNEL_ONLY_SECTIONS = ("raymarch_timing", "tensorrt_kernel")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="report path (default: benchmarks/results/"
                        "gpu_suite-<card>-<date>.json, or a temporary file in --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton's "
                        "interpreter: checks that the suite runs, measures nothing useful")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="stop starting new work after this many seconds (default 420)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--iters", type=at_least(1), default=50)
    parser.add_argument("--kernel-only", action="store_true",
                        help="only the kernel timing and launch sweep, and the TensorRT "
                        "engine's kernel (each sweep row still records its error against the "
                        "reference)")
    parser.add_argument("--sections", default=None,
                        help="comma-separated sections to run, in the suite's order (default: "
                        f"all: {','.join(SECTIONS)})")
    parser.add_argument("--resume", default=None, metavar="REPORT",
                        help="go on from an earlier report of this card (a run cut short): "
                        "its finished sections are kept, the others run, resumable ones "
                        "from their saved items")
    parser.add_argument("--in-process", action="store_true",
                        help="run every section in this process (by default each runs in a "
                        "process of its own, so that a kernel that breaks the CUDA context "
                        "costs one item, not the rest of the run)")
    parser.add_argument("--silence-s", type=float, default=SILENCE_LIMIT_S,
                        help="kill a section's process that prints nothing for this long "
                        f"(default {SILENCE_LIMIT_S:.0f})")
    # Set by the parent for a section's process.
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--failure", help=argparse.SUPPRESS)
    parser.add_argument("--kernel-unusable", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chosen = args.sections.split(",") if args.sections else (
        KERNEL_ONLY_SECTIONS if args.kernel_only else SECTIONS)
    unknown = [k for k in chosen if k not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(SECTIONS)}")
    args.chosen = [k for k in SECTIONS if k in chosen]
    check_output(parser, args.out, "--out")
    return args


def setup(args) -> types.SimpleNamespace | None:
    """torch, the preset, device, iterations and dtypes a run uses (None: no CUDA device)."""
    if args.dry_run:
        # The interpreter must be chosen before Triton compiles anything.
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from export3d import get_config

    run = types.SimpleNamespace(torch=torch, dry_run=args.dry_run,
                                budget=Budget(args.budget_s, args.deadline),
                                compile_ok=not args.no_compile and not args.dry_run,
                                kernel_only=args.kernel_only,
                                kernel_unusable=args.kernel_unusable)
    if args.dry_run:
        run.device = torch.device("cpu")
        # tiny, shrunk to 8 x 8 rays: Triton's interpreter runs a kernel call in seconds.
        run.config = get_config("tiny", image_size=32, render_size=8)
        run.warmup, run.iters = 0, 2
        run.dtypes = (torch.float32, torch.float16)
        return run
    if not torch.cuda.is_available():
        print("gpu_suite: error: no CUDA device; run with --dry-run to check the script on a "
              "CPU", file=sys.stderr)
        return None
    run.device = torch.device("cuda")
    run.config = get_config("paper512")
    run.warmup, run.iters = 10, args.iters
    run.dtypes = (torch.float32, torch.float16, torch.bfloat16)
    torch.backends.cudnn.benchmark = True
    return run


def run_section(key: str, run, report: Report, isolated: bool = False, failure=None):
    torch, config, device = run.torch, run.config, run.device
    unusable = run.kernel_unusable
    if unusable and key in KERNEL_SKIPPED:
        return section(report, key, lambda: {"skipped": f"{unusable} (kernel_check)"})
    if key in ("kernel_check", "raymarch_timing", "tensorrt_kernel"):
        # The kernel is checked fp32 math against fp32 math: TF32 kept out of the reference
        # (and out of the fp32 model of kernel_check's face case, convolutions included).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    else:
        # The model runs as a user would run it: TF32 allowed for fp32 matmuls and convolutions.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    calls = {
        "kernel_check": lambda: kernel_check(torch, config, device, run.dtypes),
        "raymarch_timing": lambda: raymarch_timing(
            torch, config, device, run.warmup, run.iters,
            None if run.kernel_only else run.budget, report, failure),
        "tensorrt_kernel": lambda: tensorrt_kernel(torch, config, device, run.warmup,
                                                   run.iters),
        # Before the model section: seconds, and it says which forms would cut generate.
        "ops": lambda: ops_section(torch, device, run.dry_run, run.warmup, run.iters,
                                   run.budget),
        "model": lambda: model_timing(torch, config, device, run.warmup, run.iters, run.budget,
                                      run.dry_run, run.compile_ok, report, failure, unusable),
        "roofline": lambda: roofline_section(config.preset,
                                             report.data.get("machine", {}).get("gpu")),
        "tensorrt": lambda: tensorrt_section(torch, config, device, run.warmup, run.iters,
                                             run.budget, report.data),
        "live": lambda: live_section("tiny" if run.dry_run else "paper512", device,
                                     8 if run.dry_run else 300,
                                     30.0 if run.dry_run else 60.0, run.budget, report,
                                     run.compile_ok),
    }
    return section(report, key, calls[key], isolated=isolated)


def child_command(args, path: Path, deadline: float, key: str, failure: str | None,
                  kernel_unusable: str | None = None) -> list:
    module = os.environ.get(CHILD_MODULE_ENV) or "benchmarks.gpu_suite"
    cmd = [sys.executable, "-m", module, "--out", str(path), "--iters", str(args.iters),
           "--budget-s", str(args.budget_s), "--deadline", repr(deadline), "--section", key]
    cmd += [flag for flag, on in (("--dry-run", args.dry_run), ("--no-compile", args.no_compile),
                                  ("--kernel-only", args.kernel_only)) if on]
    cmd += ["--kernel-unusable", kernel_unusable] if kernel_unusable else []
    return cmd + (["--failure", failure] if failure else [])


def watch(cmd: list, silence_s: float, kill_at: float) -> tuple[int, str | None, list]:
    """Run ``cmd`` (its own process group, unbuffered), passing its output through; kill it
    when it writes nothing for ``silence_s`` (a progress bar's carriage returns count) or runs
    past ``kill_at`` (wall clock). Returns its exit status, why it was killed (None if it was
    not) and its last lines."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    chunks: queue.Queue = queue.Queue()

    def read():
        while chunk := os.read(proc.stdout.fileno(), 65536):
            chunks.put(chunk)
        chunks.put(None)

    threading.Thread(target=read, daemon=True).start()
    tail: collections.deque = collections.deque(maxlen=30)
    partial, last, killed, killed_at, eof = "", time.time(), None, 0.0, False
    while True:
        try:
            chunk = chunks.get(timeout=0.5)
        except queue.Empty:
            chunk = b""
        if chunk is None:
            eof = True
            break
        if chunk:
            text = chunk.decode(errors="replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            *done, partial = (partial + text).split("\n")
            tail.extend(line.rstrip("\r") for line in done)
            last = time.time()
            continue
        now = time.time()
        # A process of its own (a compile worker) may outlive the section's process and keep
        # the pipe open: once the section's process has ended, a short quiet is enough.
        if proc.poll() is not None and now - last > EXITED_QUIET_S:
            break
        if killed:
            if now - killed_at > EXITED_QUIET_S:
                break
            continue
        if now - last > silence_s:
            killed = f"printed nothing for {silence_s:.0f} s (a hang?) and was killed"
        elif now > kill_at:
            killed = OVERRAN
        if killed:
            killed_at = now
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    if partial:
        tail.append(partial)
    if eof:  # else the reader thread may still be reading the pipe: leave it open
        proc.stdout.close()
    return proc.wait(), killed, list(tail)


def exit_reason(status: int) -> str:
    if status == CONTEXT_LOST_EXIT:
        return "stopped after a CUDA error left its context unusable"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def isolated_section(args, report: Report, key: str, deadline: float,
                     kernel_unusable: str | None = None) -> str | None:
    """Section ``key`` in a process of its own, resumed in fresh ones (up to
    MAX_SECTION_STARTS) while its value is ``incomplete``; what no process finished is
    recorded in the report with why, and the process's last lines. Returns how its last
    process failed (died, hung, lost its CUDA context), None if it did not."""
    failure, began = None, time.monotonic()
    for start in range(MAX_SECTION_STARTS):
        status, killed, tail = watch(
            child_command(args, report.path, deadline, key, failure, kernel_unusable),
            args.silence_s, deadline + OVERRUN_LIMIT_S)
        value = report.reload().data.get(key)
        value = value if isinstance(value, dict) else {}
        if start:  # the section's time over all its processes
            value.update(processes=start + 1, seconds=round(time.monotonic() - began, 2))
        if status == 0 and not killed and value and not value.get("incomplete"):
            if start:
                report.put(key, value)
            return "its process lost its CUDA context" if value.get("cuda_context_lost") \
                else None
        how = killed or exit_reason(status)
        if (value.get("incomplete") and key in RESUMABLE and killed != OVERRAN
                and start + 1 < MAX_SECTION_STARTS):
            last = next((line for line in reversed(tail) if line.strip()), "")
            failure = f"its process {how}" + (f"; its last line: {last[:300]}" if last else "")
            print(f"[{key}] the process {how}; resuming in a fresh process", flush=True)
            continue
        value.update(error=f"the section's process {how}", output_tail=tail[-15:],
                     seconds=round(time.monotonic() - began, 2))
        report.put(key, value)
        print(f"[{key}] {value['error']}", flush=True)
        return f"its process {how}"


def resume_from(data: dict) -> dict:
    """An earlier report made ready to go on from: finished sections kept; a section that
    failed, was skipped or did not finish runs again, the sweep and the model from their saved
    items (those skipped for time run this time; an item that failed stays failed); the
    summary is made anew."""
    out = {k: v for k, v in data.items() if k not in ("summary", "finished_utc")}
    for key in SECTIONS:
        value = out.get(key)
        if not isinstance(value, dict):
            continue
        resumable = key in RESUMABLE and value.get("incomplete")
        # ops skips its last sites when the budget runs low: the section runs again whole
        # (seconds), so that they are measured this time.
        cut_short = key == "ops" and any("time budget" in str(s.get("skipped", ""))
                                         for s in value.get("sites", []))
        if "skipped" in value or cut_short or ("error" in value and not resumable):
            del out[key]  # runs again from the start
            continue
        if key not in RESUMABLE:
            continue
        value = {k: v for k, v in value.items()
                 if k not in ("error", "output_tail", "traceback", "seconds", "processes")}
        rows = value.get("launch_sweep")
        while rows and "time budget" in str(rows[-1].get("skipped", "")):
            rows.pop()  # the rows skipped for time are the sweep's last ones
            value["incomplete"] = True
        variants = value.get("variants") or {}
        for name in [n for n, v in variants.items() if "time budget" in str(v.get("skipped"))]:
            del variants[name]
            value["incomplete"] = True
        out[key] = value
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    run = setup(args)
    if run is None:
        return 2
    torch, device = run.torch, run.device
    if args.out:
        path = Path(args.out)
    elif args.dry_run:
        path = Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_suite_dry_run.json"
    else:
        card = torch.cuda.get_device_name().replace(" ", "_").replace("/", "_")
        path = Path("benchmarks/results") / f"gpu_suite-{card}-{datetime.date.today()}.json"
    report = Report(path)
    if args.section:  # one section, in the process the parent started for it
        report.reload()
        try:
            run_section(args.section, run, report, isolated=True, failure=args.failure)
        except ContextLost as exc:
            print(f"[{args.section}] a CUDA error in {exc} left this process's context "
                  "unusable; a fresh process goes on", flush=True)
            return CONTEXT_LOST_EXIT
        return 0
    mode = "dry-run (CPU, tiny, Triton interpreter)" if args.dry_run else "gpu"
    machine = machine_info(torch, device)
    if args.resume:
        try:
            earlier = jsonfile.loads(Path(args.resume).read_text())
        except (OSError, ValueError) as exc:
            print(f"gpu_suite: error: cannot read the report {args.resume} ({exc})",
                  file=sys.stderr)
            return 2
        was = (earlier.get("mode"), earlier.get("machine", {}).get("gpu"))
        if was != (mode, machine.get("gpu")):
            print(f"gpu_suite: error: {args.resume} is a {was[0]} report of {was[1]}, this is a "
                  f"{mode} run on {machine.get('gpu')}; resume on the same card and mode, or "
                  "start a new report", file=sys.stderr)
            return 2
        report.data = resume_from(earlier)
        report.data["resumed_utc"] = [*earlier.get("resumed_utc", []),
                                      datetime.datetime.now(datetime.UTC).isoformat()]
    report.put("mode", mode)
    report.put("machine", machine)
    print(json.dumps(report.data["machine"]), flush=True)
    report.put("isolation", "in-process" if args.in_process else "a process per section")
    unusable = report.data.get("kernel_unusable")
    for key in args.chosen:
        value = report.data.get(key)
        if isinstance(value, dict) and not value.get("incomplete"):
            print(f"[{key}] kept from {args.resume}", flush=True)
            continue
        if key == "kernel_check":  # checked again: an earlier verdict no longer stands
            unusable = None
            report.data.pop("kernel_unusable", None)
        if args.in_process:
            run_section(key, run, report)
            continue
        failed = isolated_section(args, report, key, run.budget.deadline, unusable)
        if key == "kernel_check" and failed:
            unusable = f"the kernel is unusable here: {failed}"
            report.put("kernel_unusable", unusable)
            print(f"[{key}] {unusable}; later sections run without it", flush=True)
    report.put("summary", summary(report.data, device))
    report.put("finished_utc", datetime.datetime.now(datetime.UTC).isoformat())
    print_table(report.data)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
