"""Static instruction profile of the ray-march kernel: what each configuration costs in machine
instructions, read off its SASS, with no GPU.

``python -m benchmarks.kernel_sass [--arch 90] [--out REPORT.json] [--source-lines 12]``

Why: the kernel's speed can only be timed on a GPU (``benchmarks.gpu_suite``), and most
sessions have none. What the CPU can measure exactly is the code the GPU would run: Triton
compiles each configuration to a cubin (as the JIT would for a paper512 launch: the same
integer specialisation, stride 1 as a constant, 16-divisible values and pointers marked
aligned), the ``cuobjdump`` / ``nvdisasm`` that ship inside the Triton wheel disassemble it
with source-line information, and this script counts the instructions of each loop, multiplies
them by the loop's trip count (read from the kernel source's ``range(...)`` with the
constexprs) and reports:
- registers per thread, spill stack bytes, shared memory;
- per loop: instructions per iteration, trips, instruction mix;
- dynamic instructions per ray (every thread of a program runs the whole stream; a program
  has ``32 * num_warps`` threads and ``block_rays`` rays);
- the most expensive source lines (dynamic instructions);
- ``occupancy_h100``: programs resident per H100 SM (registers, shared memory, warp and block
  limits), warps per SM, and the waves a frame takes;
- ``issue_bound_ms``: the time at which an ideal H100 SXM (132 SMs x 4 issue slots x 1.98 GHz)
  would merely *issue* the instructions of a 128 x 128-ray frame. A lower bound, not a
  prediction: memory latency, dependencies and occupancy add to it (on an H200 the serial
  kernel measured about 3x this bound);
- ``sfu_bound_ms``: the same frame's special-function instructions (MUFU: exp2, log2,
  reciprocal) on the H100's special-function units, which take a warp's instruction in 8
  clocks where the schedulers issue one a clock (16 results per clock per SM against 128
  for fp32 FMAs: the CUDA programming guide's throughput table, compute capability 9.0).
  The larger of the two bounds is ``bound_h100``: once the special-function bound nears the
  issue bound, fewer instructions alone no longer make the kernel faster.
Like callgrind for a CPU program, the counts are exactly repeatable, so a change's effect on
the instruction stream is measured here before a GPU times it.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engines.raymarch import aot  # noqa: E402

from benchmarks import check_output  # noqa: E402
from export3d import jsonfile  # noqa: E402

# An H100 SXM: 132 SMs, 4 warp schedulers each issuing one instruction per clock, 1.98 GHz;
# per SM 64 K registers, 228 KB of shared memory (227 KB per block), 64 warps, 32 blocks.
H100_SMS = 132
H100_WARP_ISSUE_PER_S = H100_SMS * 4 * 1.98e9
# Clocks a warp's special-function instruction (MUFU) holds its scheduler's special-function
# unit: 16 lanes an SM, 4 a scheduler, so 32 threads take 8 clocks.
SFU_CLOCKS_PER_WARP_INSTRUCTION = 8
SM_REGISTERS, SM_SHARED, SM_WARPS, SM_BLOCKS = 65536, 228 * 1024, 64, 32
RAYS_PER_FRAME = 128 * 128

# Runtime integer values of a paper512 launch (batch 1, channels-last fp32 tri-plane
# [1, 3, 32, 256, 256] as the op passes it, contiguous decoder weights 32x64 / 64x33).
PAPER512_VALUES = {
    "n_rays": RAYS_PER_FRAME, "rays_per_batch": RAYS_PER_FRAME, "P": 256,
    "stride_tb": 3 * 256 * 256 * 32, "stride_tk": 256 * 256 * 32, "stride_tc": 1,
    "stride_ty": 256 * 32, "stride_tx": 32, "stride_w1c": 64, "stride_w1h": 1, "stride_b1": 1,
    "stride_w2h": 33, "stride_w2o": 1, "stride_b2": 1,
}

# The version-1 node's tri-plane as TensorRT handed it over: linear NCHW fp32
# ([1, 3, 32, 256, 256]; the graph cast half precision up before the node), so a tap's 32
# channels were 32 scattered values, not one line. Kept to show what version 2 saves.
NCHW_VALUES = {**PAPER512_VALUES, "stride_tc": 256 * 256, "stride_ty": 256, "stride_tx": 1}

# The configurations profiled by default: (name, KernelConfig overrides[, runtime values]).
CONFIGS = (
    ("serial 32x4 ieee", dict()),
    ("serial 32x4 tf32x3", dict(dot_precision="tf32x3")),
    ("serial 64x4 tf32x3", dict(dot_precision="tf32x3", block_rays=64)),  # fp32 default
    ("serial 64x4 tl-tf32x3", dict(dot_precision="tl-tf32x3", block_rays=64)),  # tl.dot's own
    ("serial 32x4 tf32", dict(dot_precision="tf32")),
    ("serial 64x4 tf32", dict(dot_precision="tf32", block_rays=64)),
    ("serial 32x4 fp16", dict(dot_precision="fp16")),
    ("serial 64x4 fp16", dict(dot_precision="fp16", block_rays=64)),
    # Half-precision tri-planes (the model in fp16 or bf16; the op hands bf16 over in fp16):
    # with fp16 products the taps are summed in packed fp16.
    ("serial htp 32x4 fp16", dict(dot_precision="fp16", triplane_dtype="float16")),
    ("serial htp 64x4 fp16", dict(dot_precision="fp16", block_rays=64,
                                  triplane_dtype="float16")),
    ("serial htp 32x2 fp16", dict(dot_precision="fp16", num_warps=2,
                                  triplane_dtype="float16")),
    # One merged sample decoded a step instead of two.
    ("serial sps1 64x4 fp16", dict(dot_precision="fp16", block_rays=64, samples_per_step=1)),
    ("serial htp sps1 64x4 fp16", dict(dot_precision="fp16", block_rays=64,
                                       triplane_dtype="float16", samples_per_step=1)),
    # What a TensorRT engine ran with the version-1 node: an NCHW fp32 tri-plane, fp32-accurate
    # products, no workspace (the version-2 node's engines are the TRT_CONFIGS rows).
    ("v1 trt 64x4 tf32x3 nchw", dict(dot_precision="tf32x3", block_rays=64,
                                     cdf_in_memory=False, samples_per_step=1), NCHW_VALUES),
    # The CDF in registers, not in the op's workspace: the TensorRT plugin's build.
    ("serial cdfreg 64x4 fp16", dict(dot_precision="fp16", block_rays=64,
                                     cdf_in_memory=False)),
    ("serial 32x2 fp16", dict(dot_precision="fp16", num_warps=2)),
    ("serial 16x1 fp16", dict(dot_precision="fp16", block_rays=16, num_warps=1)),
    # L1 prefetch of the next sample's taps: coarse pass (pf1), both passes (pf2).
    ("serial pf1 64x4 fp16", dict(dot_precision="fp16", block_rays=64, prefetch=1)),
    ("serial pf2 64x4 fp16", dict(dot_precision="fp16", block_rays=64, prefetch=2)),
    # Timing diagnostics (kernel.ABLATIONS) of the half-precision default, which the GPU
    # suite's sweep times beside it: the gathers from one cached line (the same instruction
    # stream: what the difference in time measures is the memory system), no decoder MLP,
    # both.
    ("ablate gathers htp 64x4 fp16", dict(dot_precision="fp16", block_rays=64,
                                          triplane_dtype="float16", ablate="gathers")),
    ("ablate mlp htp 64x4 fp16", dict(dot_precision="fp16", block_rays=64,
                                      triplane_dtype="float16", ablate="mlp")),
    ("ablate gathers+mlp htp 64x4 fp16", dict(dot_precision="fp16", block_rays=64,
                                              triplane_dtype="float16", ablate="gathers+mlp")),
    # The half-precision default with the fp16 tri-plane's taps summed in fp32 (tap_sum).
    ("serial htp fp32sum 64x4 fp16", dict(dot_precision="fp16", block_rays=64,
                                          triplane_dtype="float16", tap_sum="fp32")),
    # Capped registers: more programs per SM to hide the gathers' latency, paid in spills.
    ("serial r168 32x4 fp16", dict(dot_precision="fp16", max_registers=168)),
    ("serial r128 32x4 fp16", dict(dot_precision="fp16", max_registers=128)),
    ("tiled 16x8 w8 ieee", dict(variant="tiled", block_rays=16, num_warps=8)),
    ("tiled 16x8 w8 tf32x3", dict(variant="tiled", block_rays=16, num_warps=8,
                                  dot_precision="tf32x3")),
    ("tiled 16x8 w8 fp16", dict(variant="tiled", block_rays=16, num_warps=8,
                                dot_precision="fp16")),
)

# The kernels TensorRT engines embed (profile_trt): the plugin's own build for an fp32 graph
# and for an fp16 graph (whose node reads the tri-plane in fp16).
TRT_CONFIGS = (("trt fp32 graph", "float32"), ("trt fp16 graph", "float16"))

_INSTRUCTION = re.compile(r"\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)(\.[A-Z0-9_.]+)?"
                          r"\s*([^;]*);")
_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_RANGE = re.compile(r"for\s+\w+\s+in\s+range\((.*)\)\s*:")


def tool(name: str) -> str:
    """A CUDA binary utility shipped inside the Triton wheel (no CUDA toolkit needed)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: this Triton wheel has no {name}.")
    return str(path)


def compile_like_jit(config: aot.KernelConfig, arch: int, values: dict = PAPER512_VALUES):
    """Compile ``config`` for ``arch`` with the specialisation Triton's JIT gives a launch with
    these integer ``values`` (an int equal to 1 becomes a constant, a multiple of 16 and every
    pointer are marked 16-divisible), so the SASS is the code a GPU launch runs."""
    import triton
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.runtime.jit import native_specialize_impl

    signature, constants = aot.signature(config)
    fn = aot.kernel_fn(config)
    attrs = {}
    for index, name in enumerate(fn.arg_names):
        if name in values:
            kind, spec = native_specialize_impl(BaseBackend, values[name], False, True, True)
            if kind == "constexpr":
                signature[name] = "constexpr"
                constants[name] = values[name]
            elif spec == "D":
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif signature.get(name, "").startswith("*"):
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constants,
                                       attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", int(arch), 32),
                          options=aot.compile_options(config)), constants


def resource_usage(cubin: bytes) -> dict:
    """Registers per thread and spill stack bytes per thread, from ``cuobjdump -res-usage``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([tool("cuobjdump"), "-res-usage", str(path)], capture_output=True,
                              text=True, check=True).stdout
    found = dict(re.findall(r"(REG|STACK):(\d+)", text))
    return {"registers": int(found["REG"]), "stack_bytes": int(found["STACK"])}


def nvdisasm_text(cubin: bytes) -> str:
    """nvdisasm's listing of a cubin's code, with source-line comments."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([tool("nvdisasm"), "-g", "-c", str(path)], capture_output=True,
                              text=True, check=True).stdout


def disassemble(cubin: bytes) -> list[tuple[str, str, tuple[str, int] | None, str | None]]:
    """SASS of a cubin as (opcode, operands, (file, line) or None, label-or-None) rows; the
    label is the branch target name when the instruction is a branch."""
    text = nvdisasm_text(cubin)
    rows, labels, pending, where = [], {}, [], None
    for line in text.splitlines():
        label = _LABEL.match(line)
        if label:
            pending.append(label.group(1))
            continue
        loc = _LINE.search(line)
        if loc:
            where = (loc.group(1), int(loc.group(2)))
            continue
        ins = _INSTRUCTION.match(line)
        if ins:
            for name in pending:
                labels[name] = len(rows)
            pending = []
            target = re.search(r"(\.L_x_\d+)", ins.group(4)) if ins.group(2) == "BRA" else None
            rows.append((ins.group(2), ins.group(4), where, target.group(1) if target else None))
    return [(op, args, loc, labels.get(t) if t else None) for op, args, loc, t in rows]


def loops(rows) -> list[tuple[int, int]]:
    """(first, last) row of each loop: a branch back to an earlier row closes one."""
    return [(target, i) for i, (op, _, _, target) in enumerate(rows)
            if op == "BRA" and target is not None and target <= i]


def source_line(path: str, line: int) -> str:
    """The text of a line that SASS line information names. A kernel file is read from the
    imported package, not the recorded path: Triton's cache can hand back a build made from
    identical source in another checkout, whose line info names that checkout."""
    local = Path(aot.__file__).parent / Path(path).name
    try:
        return (local if local.exists() else Path(path)).read_text().splitlines()[line - 1].strip()
    except (OSError, IndexError):
        return ""


def trip_count(path: str, line: int, constants: dict) -> int | None:
    """Evaluate the ``range(...)`` of the ``for`` statement at that source line with the
    kernel's constexprs; None when the line is not such a loop."""
    match = _RANGE.search(source_line(path, line))
    if not match:
        return None
    bounds = eval(f"({match.group(1)},)", {"__builtins__": {}}, dict(constants))
    return len(range(*bounds))


def profile(config: aot.KernelConfig, arch: int = 90, top: int = 12,
            values: dict = PAPER512_VALUES) -> dict:
    compiled, constants = compile_like_jit(config, arch, values)
    return analyse(config, arch, bytes(compiled.asm["cubin"]), constants,
                   compiled.metadata.num_warps, int(compiled.metadata.shared), top)


# The TensorRT engine's ray-march node at paper512 (batch 1): its input shapes, the tri-plane
# channels last as the version-2 node takes it, and its attributes.
TRT_NODE_SHAPES = [(1, 3, 256, 256, 32), (32, 64), (64,), (64, 33), (33,),
                   (1, RAYS_PER_FRAME, 3), (1, RAYS_PER_FRAME, 3)]
TRT_NODE_ATTRS = {"near": 2.25, "far": 3.3, "samples_coarse": 48, "samples_fine": 48,
                  "box_warp": 1.0, "eg3d_plane_axes": 0}


def profile_trt(triplane_dtype: str, arch: int = 90, top: int = 12) -> dict:
    """The kernel a TensorRT engine embeds for a graph of this tri-plane dtype, compiled as
    the plugin's ahead-of-time implementation compiles it (``engines.trt.plugin``: its launch
    configuration, ``kernel_abi.compile_for_tensorrt`` with the build-time values' hints)."""
    from engines.trt import kernel_abi, plugin

    dtypes = [triplane_dtype] + ["float32"] * 6
    config = plugin.kernel_config(TRT_NODE_SHAPES, dtypes, TRT_NODE_ATTRS,
                                  block_rays=plugin.launch_block_rays(arch, triplane_dtype))
    values = {n: v for n, v in plugin.launch_values(TRT_NODE_SHAPES, TRT_NODE_ATTRS).items()
              if isinstance(v, int)}
    build = kernel_abi.compile_for_tensorrt(config, arch, values=values)
    constants = kernel_abi.signature(config, arch)[1]
    out = analyse(config, arch, build.cubin, constants, build.num_warps, build.shared, top)
    out["config"]["dot_precision"] = constants["DOT_PRECISION"]
    return out


def analyse(config: aot.KernelConfig, arch: int, cubin: bytes, constants: dict,
            num_warps: int, shared: int, top: int = 12) -> dict:
    """The profile of one compiled kernel (``cubin``; ``constants``: its constexprs, for the
    loops' trip counts)."""
    resources = resource_usage(cubin)
    rows = disassemble(cubin)
    in_loop = [1] * len(rows)  # dynamic multiplicity of each row
    loop_out = []
    unresolved = []  # loops counted once: no range(...) on their source line
    for first, last in loops(rows):
        if first == last:  # the branch-to-self after EXIT that pads every kernel: never runs
            continue
        where = rows[last][2]
        trips = trip_count(*where, constants) if where else None
        if trips is None:
            unresolved.append(f"{Path(where[0]).name}:{where[1]}" if where else "?")
            continue
        body = rows[first:last + 1]
        for i in range(first, last + 1):
            in_loop[i] *= trips
        mix = collections.Counter(op for op, *_ in body)
        loop_out.append({"source": f"{Path(where[0]).name}:{where[1]}", "trips": trips,
                         "instructions_per_trip": len(body),
                         "mix": dict(mix.most_common(12))})
    threads = 32 * num_warps
    dynamic = sum(in_loop)
    by_line = collections.Counter()
    for (op, _, where, _), count in zip(rows, in_loop):
        by_line[where] += count
    per_ray = dynamic * threads / config.block_rays
    warp_instructions = dynamic * num_warps * RAYS_PER_FRAME / config.block_rays
    special = sum(count for (op, *_), count in zip(rows, in_loop) if op == "MUFU")
    issue_ms = warp_instructions / H100_WARP_ISSUE_PER_S * 1e3
    sfu_ms = (special * num_warps * RAYS_PER_FRAME / config.block_rays
              * SFU_CLOCKS_PER_WARP_INSTRUCTION / H100_WARP_ISSUE_PER_S * 1e3)
    return {
        "config": asdict(config), "arch": f"sm_{arch}",
        **resources,
        "shared_bytes": int(shared),
        "static_instructions": len(rows), "loops": loop_out, "unresolved_loops": unresolved,
        "dynamic_instructions_per_thread": dynamic,
        "thread_instructions_per_ray": round(per_ray),
        "special_function_per_ray": round(special * threads / config.block_rays),
        "issue_bound_ms_h100": round(issue_ms, 3),
        "sfu_bound_ms_h100": round(sfu_ms, 3),
        "bound_h100": "special-function units" if sfu_ms > issue_ms else "issue",
        "occupancy_h100": occupancy(resources["registers"], int(shared), num_warps,
                                    config.block_rays),
        "hot_lines": [{"source": f"{Path(w[0]).name}:{w[1]}" if w else "?",
                       "per_ray": round(n * threads / config.block_rays),
                       "text": source_line(*w)[:100] if w else ""}
                      for w, n in by_line.most_common(top)],
    }


def occupancy(registers: int, shared: int, num_warps: int, block_rays: int) -> dict:
    """Blocks (programs) resident per H100 SM, by registers (allocated per warp in units of
    256), shared memory, warps and blocks; and how many waves a 128 x 128-ray frame takes.
    Few resident warps leave the gathers' latency exposed; a last partial wave idles SMs."""
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = SM_REGISTERS // (per_warp * num_warps)
    by_shared = SM_SHARED // max(shared + 1024, 1)  # + the 1 KB the driver reserves per block
    blocks = max(0, min(by_registers, by_shared, SM_WARPS // num_warps, SM_BLOCKS))
    programs = -(-RAYS_PER_FRAME // block_rays)
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * num_warps, "programs": programs,
            "waves": round(programs / (H100_SMS * blocks), 2) if blocks else None}


def print_table(results: list[dict]) -> None:
    print(f"{'configuration':24} {'regs':>4} {'stack':>6} {'smem':>6} "
          f"{'instr/ray':>10} {'issue-bound ms':>14} {'sfu-bound ms':>12} {'warps/SM':>8} "
          f"{'waves':>5}")
    for r in results:
        occ = r["occupancy_h100"]
        print(f"{r['name']:24} {r['registers']:>4} {r['stack_bytes']:>6} {r['shared_bytes']:>6} "
              f"{r['thread_instructions_per_ray']:>10} {r['issue_bound_ms_h100']:>14.3f} "
              f"{r['sfu_bound_ms_h100']:>12.3f} {occ['warps_per_sm']:>8} "
              f"{occ['waves'] or '-':>5}")
        if r.get("unresolved_loops"):
            print(f"  ! loops counted once, so the count is low (their back edge is on a line "
                  f"with no range(...): this arch's compiler shaped the loop otherwise, or the "
                  f"source changed since import): {', '.join(r['unresolved_loops'])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel_sass",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, choices=aot.ARCHS)
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--source-lines", type=int, default=12,
                        help="hot source lines kept per configuration")
    parser.add_argument("--only", action="append",
                        help="profile only configurations whose name contains this")
    args = parser.parse_args(argv)
    check_output(parser, args.out, "--out")
    if args.only and not any(part in c[0] for c in CONFIGS for part in args.only):
        parser.error(f"--only {' / '.join(args.only)} matches no configuration; they are: "
                     f"{', '.join(c[0] for c in CONFIGS)}")
    results = []
    for name, overrides, *values in CONFIGS:
        if args.only and not any(part in name for part in args.only):
            continue
        config = replace(aot.KernelConfig(), **overrides)
        values = values[0] if values else PAPER512_VALUES
        row = {"name": name, **profile(config, args.arch, args.source_lines, values)}
        if values is not PAPER512_VALUES:
            row["values"] = values
        results.append(row)
    for name, triplane_dtype in TRT_CONFIGS:
        if args.only and not any(part in name for part in args.only):
            continue
        results.append({"name": name, "entry": "engines.trt.kernel_abi.raymarch_trt_kernel",
                        **profile_trt(triplane_dtype, args.arch, args.source_lines)})
    print_table(results)
    if args.out:
        import triton

        report = {"suite": "export3d kernel_sass", "version": 1,
                  "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  "triton": triton.__version__, "python": sys.version.split()[0],
                  "shape": {"rays": RAYS_PER_FRAME, "values": PAPER512_VALUES},
                  "issue_model": "H100 SXM: 132 SMs x 4 issue/clock x 1.98 GHz",
                  "sfu_model": "H100 SXM: 16 special-function results/clock/SM (8 clocks a "
                               "warp instruction per scheduler)",
                  "configs": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(jsonfile.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    raise SystemExit(main())
