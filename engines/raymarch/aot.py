"""Ahead-of-time build of the ray-march kernel: PTX and cubin per GPU architecture, no GPU
needed (Triton's compiler and the ptxas it ships).

In: a :class:`KernelConfig` (the constexprs: C, Hd, F, Sc, Sf, tri-plane dtype, plane axes,
rays per program, warps; the kernel variant, "serial" or "tiled", and the tiled kernel's
samples per tile) and a list of compute capabilities. Out: per arch a :class:`Build`
with the entry name, PTX text, cubin bytes, dynamic shared memory, warps, and the launch
rule, which a TensorRT plugin embeds and launches with ``cuLaunchKernel``:
    grid  = (ceil(B * R / block_rays), 1, 1), block = (32 * num_warps, 1, 1),
    dynamic shared memory = ``shared`` bytes (opt in above 48 KB),
    parameters = the runtime arguments in ``kernel.RUNTIME_ARGS`` order (pointers as u64,
    ints as i32, floats as f32), then two trailing u64 pointers Triton appends (global and
    profile scratch; both sizes are 0 here, pass null). ``cdf_ptr`` is a workspace of
    :func:`workspace_bytes` (``cdf_in_memory``, the default; without it the parameter is
    absent and the CDF stays in registers).
near / far / box_warp are runtime arguments, not baked in, passed as ``near``,
``step = (far - near) / samples_coarse`` and ``scale = 2 / box_warp`` (each param's ``value`` in
the launch JSON).
Architectures: Turing to Hopper and Blackwell (sm_100: B200; sm_120: RTX 50). From sm_90 on
Triton targets the arch-specific ``sm_90a`` / ``sm_100a`` / ``sm_120a``: that PTX is not
forward-compatible, so for a GPU newer than the list ``sm_89``'s plain PTX is the one a driver
can JIT-compile.

CLI: ``python -m engines.raymarch.aot --arch 90 --out DIR`` writes ``<name>.sm_90.ptx``,
``<name>.sm_90.cubin`` and ``<name>.sm_90.json`` (launch parameters) for each arch; by default
each arch gets the launch the torch op would take there for that tri-plane dtype (MLP products
and rays per program), so sm_75 and sm_90 builds of one run can differ in both.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

ARCHS = (75, 80, 86, 89, 90, 100, 120)
VARIANTS = ("serial", "tiled")  # as engines.raymarch.op.VARIANTS
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


# Runtime arguments that are not the node's attributes as they stand (as the torch op computes
# them, engines.raymarch.op.launch).
DERIVED = {"step": "(far - near) / samples_coarse", "scale": "2 / box_warp"}


@dataclass(frozen=True)
class KernelConfig:
    """Everything fixed at compile time. Defaults: the paper512 preset."""
    channels: int = 32
    hidden: int = 64
    features: int = 32
    samples_coarse: int = 48
    samples_fine: int = 48
    triplane_dtype: str = "float32"
    plane_axes: tuple = (0, 1, 0, 2, 1, 2)
    block_rays: int = 32
    num_warps: int = 4
    num_stages: int = 1
    variant: str = "serial"  # or "tiled" (engines.raymarch.tiled; same runtime arguments)
    sample_tile: int = 8  # samples per decode tile, "tiled" only (16 overflows sm_75's smem)
    dot_precision: str = "ieee"  # the MLP products: "ieee", "tf32x3", "tf32" (sm_80+), "fp16"
    max_registers: int | None = None  # ptxas .maxnreg (None: the compiler's choice, <= 255)
    prefetch: int = 0  # "serial" only: kernel.PREFETCH_LEVELS (next sample's taps into L1)
    # "serial" only: each ray's CDF in a workspace (the cdf_ptr parameter; the torch op's
    # launch, and the TensorRT plugin's through the node's workspace output) or, False, in
    # registers (no cdf_ptr parameter).
    cdf_in_memory: bool = True
    # "serial" with the workspace only: merged samples decoded per step (kernel.SAMPLES_PER_STEP).
    samples_per_step: int = 2
    # "serial" only: a timing diagnostic (kernel.ABLATIONS; "" is the kernel), for
    # benchmarks.kernel_sass; never a plugin's build.
    ablate: str = ""
    # "serial" only: how an fp16 tri-plane's taps are summed under fp16 products
    # (kernel.TAP_SUMS).
    tap_sum: str = "fp16"

    @classmethod
    def tiny(cls, **overrides) -> "KernelConfig":
        return cls(**{**dict(channels=8, hidden=16, features=8, samples_coarse=8,
                             samples_fine=8), **overrides})


@dataclass
class Build:
    arch: int
    name: str
    ptx: str = field(repr=False)
    cubin: bytes = field(repr=False)
    shared: int
    num_warps: int
    block_rays: int
    config: KernelConfig

    def launch_params(self) -> dict:
        from . import kernel

        return {
            "kernel_name": self.name, "arch": f"sm_{self.arch}", "num_warps": self.num_warps,
            "threads_per_block": 32 * self.num_warps, "shared_bytes": self.shared,
            "block_rays": self.block_rays,
            "grid": "(ceil(B * R / block_rays), 1, 1)",
            "params": [{"name": n, "type": t.replace("*triplane",
                                                      "*" + DTYPES[self.config.triplane_dtype]),
                        **({"value": DERIVED[n]} if n in DERIVED else {})}
                       for n, t in kernel.RUNTIME_ARGS
                       if n != "cdf_ptr" or uses_cdf_workspace(self.config)]
            + [{"name": "global_scratch", "type": "*i8", "value": "null"},
               {"name": "profile_scratch", "type": "*i8", "value": "null"}],
            # cdf_ptr's workspace: grid_x * block_rays rows of this many bytes (0: none).
            "workspace_bytes_per_ray": workspace_bytes(1, self.config) // self.block_rays,
            "config": asdict(self.config),
        }


def default_dot_precision(arch: int, triplane_dtype: str = "float32") -> str:
    """The MLP products the torch op takes on this arch for this tri-plane dtype at PyTorch's
    default fp32 matmul precision (engines.raymarch.op.dot_precision_for): on sm_80 and newer,
    fp16 tensor-core products for half-precision tri-planes and fp32-accurate TF32x3 for fp32
    ones; plain fp32 before."""
    if int(arch) < 80:
        return "ieee"
    return "fp16" if triplane_dtype in ("float16", "bfloat16") else "tf32x3"


def uses_cdf_workspace(config: KernelConfig) -> bool:
    """Whether ``config``'s kernel takes the ``cdf_ptr`` workspace."""
    return config.variant == "serial" and config.cdf_in_memory and config.samples_fine > 0


def workspace_bytes(n_rays: int, config: KernelConfig) -> int:
    """Bytes of the ``cdf_ptr`` workspace for ``n_rays`` rays (0 where none is taken): one
    fp32 row of SC_PAD + Sc + Sf (the CDF, then the merged depths) per ray of every program,
    masked-off rays included."""
    from . import contract

    if not uses_cdf_workspace(config):
        return 0
    rows = -(-int(n_rays) // config.block_rays) * config.block_rays
    return rows * contract.workspace_columns(config.samples_coarse, config.samples_fine) * 4


def kernel_fn(config: KernelConfig):
    """The jit function a config compiles: the serial or the tiled kernel."""
    from . import kernel, tiled

    if config.variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got "
                         f"{config.variant!r}.")
    return tiled.raymarch_tiled_kernel if config.variant == "tiled" else kernel.raymarch_kernel


def signature(config: KernelConfig) -> tuple[dict, dict]:
    """(signature, constexprs) for ``triton.compiler.ASTSource``."""
    from . import kernel, tiled

    if config.triplane_dtype not in DTYPES:
        raise ValueError(f"triplane_dtype must be one of {', '.join(DTYPES)}, got "
                         f"{config.triplane_dtype!r}.")
    kernel_fn(config)  # validates the variant
    ptr = "*" + DTYPES[config.triplane_dtype]
    if config.prefetch and config.variant != "serial":
        raise ValueError("prefetch is an option of the serial kernel variant only.")
    if config.ablate and config.variant != "serial":
        raise ValueError("ablate is an option of the serial kernel variant only.")
    if config.tap_sum != "fp16" and config.variant != "serial":
        raise ValueError("tap_sum is an option of the serial kernel variant only.")
    if config.variant == "tiled":
        consts = tiled.constexprs(config.channels, config.hidden, config.features,
                                  config.samples_coarse, config.samples_fine,
                                  config.plane_axes, config.block_rays,
                                  dot_precision=config.dot_precision,
                                  sample_tile=config.sample_tile)
    else:
        consts = kernel.constexprs(config.channels, config.hidden, config.features,
                                   config.samples_coarse, config.samples_fine,
                                   config.plane_axes, config.block_rays,
                                   dot_precision=config.dot_precision,
                                   prefetch=config.prefetch,
                                   samples_per_step=(config.samples_per_step
                                                     if uses_cdf_workspace(config) else 1),
                                   ablate=config.ablate, tap_sum=config.tap_sum)
    sig = {name: (ptr if kind == "*triplane" else kind) for name, kind in kernel.RUNTIME_ARGS}
    if not uses_cdf_workspace(config):
        consts["cdf_ptr"] = None
    sig.update({name: "constexpr" for name in consts})
    return sig, consts


def compile_options(config: KernelConfig) -> dict:
    """Triton's compile options for ``config`` (as a JIT launch with the same settings)."""
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    if config.max_registers:
        options["maxnreg"] = int(config.max_registers)
    return options


def compile_arch(config: KernelConfig, arch: int) -> Build:
    """Compile for one compute capability (e.g. 90 for sm_90)."""
    import triton
    from triton.backends.compiler import GPUTarget

    sig, consts = signature(config)
    source = triton.compiler.ASTSource(fn=kernel_fn(config), signature=sig,
                                       constexprs=consts)
    compiled = triton.compile(source, target=GPUTarget("cuda", int(arch), 32),
                              options=compile_options(config))
    meta = compiled.metadata
    if meta.global_scratch_size or meta.profile_scratch_size:
        raise RuntimeError("the kernel now needs Triton scratch memory; the plugin's launch "
                           "rule (null scratch pointers) no longer holds.")
    return Build(arch=int(arch), name=meta.name, ptx=compiled.asm["ptx"],
                 cubin=bytes(compiled.asm["cubin"]), shared=int(meta.shared),
                 num_warps=int(meta.num_warps), block_rays=config.block_rays, config=config)


def compile_all(config: KernelConfig = KernelConfig(), archs=ARCHS) -> dict[int, Build]:
    return {int(a): compile_arch(config, a) for a in archs}


def write(build: Build, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{build.name}.sm_{build.arch}"
    paths = [out / (stem + ".ptx"), out / (stem + ".cubin"), out / (stem + ".json")]
    paths[0].write_text(build.ptx)
    paths[1].write_bytes(build.cubin)
    paths[2].write_text(json.dumps(build.launch_params(), indent=2) + "\n")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines.raymarch.aot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS,
                        help="compute capability, e.g. 90 (repeatable; default: all)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--preset", choices=("paper512", "tiny"), default="paper512")
    parser.add_argument("--triplane-dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--eg3d-plane-axes", action="store_true",
                        help="EG3D's (z, x) third plane instead of (y, z)")
    parser.add_argument("--dot-precision", default="auto",
                        choices=("auto", "ieee", "tf32", "tf32x3", "fp16"),
                        help="the MLP products (default auto: what the torch op takes on each "
                        "arch for this tri-plane dtype: fp16 or TF32x3 from sm_80, fp32 "
                        "before)")
    parser.add_argument("--block-rays", type=int,
                        help="rays per program (default: the op's, 64 with tensor-core "
                        "products and 32 without; 16 tiled)")
    parser.add_argument("--num-warps", type=int, help="default: 4 serial, 8 tiled")
    parser.add_argument("--variant", choices=VARIANTS, default="serial",
                        help="the serial kernel or the sample-parallel tiled one")
    parser.add_argument("--sample-tile", type=int,
                        help="samples per decode tile (--variant tiled; default 8)")
    args = parser.parse_args(argv)
    for flag, value in (("--block-rays", args.block_rays), ("--num-warps", args.num_warps),
                        ("--sample-tile", args.sample_tile)):
        if value is not None and (value < 1 or value & (value - 1)):
            parser.error(f"{flag} must be a power of two, got {value}")
    if args.variant == "tiled" and args.block_rays is not None and args.block_rays < 16:
        parser.error("--block-rays must be at least 16 with --variant tiled")
    if args.sample_tile is not None and args.variant != "tiled":
        parser.error("--sample-tile is for --variant tiled")
    if args.num_warps is not None and args.num_warps > 32:
        parser.error("--num-warps must be at most 32 (1024 threads a block)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a folder")
    axes = (0, 1, 0, 2, 2, 0) if args.eg3d_plane_axes else (0, 1, 0, 2, 1, 2)
    archs = args.arch or ARCHS

    def config_for(arch: int) -> KernelConfig:
        from . import kernel

        precision = args.dot_precision
        if precision == "auto":
            precision = default_dot_precision(arch, args.triplane_dtype)
        block_rays = args.block_rays or (16 if args.variant == "tiled"
                                         else kernel.default_block_rays(precision))
        kwargs = dict(triplane_dtype=args.triplane_dtype, plane_axes=axes,
                      block_rays=block_rays, dot_precision=precision,
                      num_warps=args.num_warps or (8 if args.variant == "tiled" else 4),
                      variant=args.variant, sample_tile=args.sample_tile or 8)
        return KernelConfig.tiny(**kwargs) if args.preset == "tiny" else KernelConfig(**kwargs)

    configs = {arch: config_for(arch) for arch in archs}
    # The names hold no dtype or launch: never overwrite another configuration's build, and
    # find that out for every arch before anything is compiled or written.
    name = "raymarch_tiled_kernel" if args.variant == "tiled" else "raymarch_kernel"
    for arch in archs:
        previous = args.out / f"{name}.sm_{arch}.json"
        if previous.is_file():
            try:
                old = json.loads(previous.read_text()).get("config")
            except (ValueError, AttributeError):
                old = None
            if old != json.loads(json.dumps(asdict(configs[arch]))):
                parser.error(f"{previous} is a build of another configuration; give each "
                             "configuration its own --out folder")
    for arch in archs:
        build = compile_arch(configs[arch], arch)
        assert build.name == name, build.name  # the check above looked for these files
        for path in write(build, args.out):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
