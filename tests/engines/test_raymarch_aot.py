"""Ahead-of-time build of the ray-march kernel, no GPU: PTX and cubin for every supported arch,
for fp32 / fp16 / bf16 tri-planes, for the serial and the tiled variant, and the CLI's files."""
from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("triton")

from engines.raymarch import aot  # noqa: E402

ELF_MAGIC = b"\x7fELF"
SHARED_LIMIT = {75: 64 * 1024, 80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024,
                100: 227 * 1024, 120: 99 * 1024}


def check_build(build: aot.Build, arch: int) -> None:
    assert build.arch == arch
    # Triton targets the arch-specific sm_90a, sm_100a and sm_120a from Hopper on.
    suffix = "a?" if arch >= 90 else ""
    assert re.search(rf"^\.target sm_{arch}{suffix}$", build.ptx, re.M), build.ptx[:300]
    assert re.search(rf"\.entry {re.escape(build.name)}\(", build.ptx)
    assert build.cubin[:4] == ELF_MAGIC and len(build.cubin) > 1024
    assert 0 < build.shared <= SHARED_LIMIT[arch]
    assert build.num_warps == build.config.num_warps


@pytest.fixture(scope="module")
def paper512_fp32():
    return aot.compile_all(aot.KernelConfig())


@pytest.mark.parametrize("arch", aot.ARCHS)
def test_paper512_fp32_every_arch(paper512_fp32, arch):
    build = paper512_fp32[arch]
    check_build(build, arch)
    assert build.name == "raymarch_kernel"
    params = build.launch_params()
    names = [p["name"] for p in params["params"]]
    assert names[:3] == ["triplane_ptr", "w1_ptr", "b1_ptr"]
    assert names[-2:] == ["global_scratch", "profile_scratch"]
    # One PTX .param per runtime argument plus Triton's two scratch pointers.
    entry = re.search(r"\.entry \w+\((.*?)\)", build.ptx, re.S).group(1)
    assert entry.count(".param") == len(names)
    # The workspace: one fp32 row per ray slot of SC_PAD = 64 CDF columns and the 48 + 48
    # merged depths (10 MB for 128 x 128 rays).
    row = 64 + 48 + 48
    assert "cdf_ptr" in names and params["workspace_bytes_per_ray"] == row * 4
    assert aot.workspace_bytes(128 * 128, build.config) == 128 * 128 * row * 4
    assert aot.workspace_bytes(33, build.config) == 64 * row * 4  # 2 programs of 32 rays


def test_cdf_in_registers_build_has_no_workspace_parameter():
    # The TensorRT plugin's placement: the parameter is gone from the PTX and the launch rule.
    config = aot.KernelConfig.tiny(cdf_in_memory=False)
    build = aot.compile_arch(config, 80)
    params = build.launch_params()
    names = [p["name"] for p in params["params"]]
    assert "cdf_ptr" not in names and params["workspace_bytes_per_ray"] == 0
    entry = re.search(r"\.entry \w+\((.*?)\)", build.ptx, re.S).group(1)
    assert entry.count(".param") == len(names)
    assert aot.workspace_bytes(100, config) == 0


@pytest.fixture(scope="module")
def paper512_tiled():
    # The sample-parallel variant at its defaults: 16 rays x 8 samples per tile, 8 warps.
    return aot.compile_all(aot.KernelConfig(variant="tiled", block_rays=16, num_warps=8))


@pytest.mark.parametrize("arch", aot.ARCHS)
def test_paper512_tiled_every_arch(paper512_tiled, arch):
    build = paper512_tiled[arch]
    check_build(build, arch)  # shared memory within the arch's limit (sm_75: 64 KB)
    assert build.name == "raymarch_tiled_kernel"
    params = build.launch_params()
    assert params["block_rays"] == 16 and params["config"]["sample_tile"] == 8
    # The same runtime arguments as the serial kernel: one plugin launch rule for both.
    entry = re.search(r"\.entry \w+\((.*?)\)", build.ptx, re.S).group(1)
    assert entry.count(".param") == len(params["params"])


def test_tiled_cli(tmp_path):
    assert aot.main(["--arch", "80", "--preset", "tiny", "--variant", "tiled",
                     "--triplane-dtype", "float16", "--out", str(tmp_path)]) == 0
    params = json.loads((tmp_path / "raymarch_tiled_kernel.sm_80.json").read_text())
    assert params["block_rays"] == 16 and params["config"]["variant"] == "tiled"
    assert params["num_warps"] == 8


def test_tiled_block_rays_below_16_is_refused():
    with pytest.raises(ValueError, match="block_rays"):
        aot.signature(aot.KernelConfig(variant="tiled", block_rays=8))
    with pytest.raises(ValueError, match="variant"):
        aot.signature(aot.KernelConfig(variant="warp"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("arch", [75, 90])
def test_half_triplanes(dtype, arch):
    config = aot.KernelConfig.tiny(triplane_dtype=dtype, plane_axes=(0, 1, 0, 2, 2, 0))
    build = aot.compile_arch(config, arch)
    check_build(build, arch)
    width = "b16"
    assert f"ld.global.{width}" in build.ptx or "ld.global.v" in build.ptx


def test_cli_writes_ptx_cubin_and_launch_json(tmp_path):
    assert aot.main(["--arch", "86", "--preset", "tiny", "--out", str(tmp_path)]) == 0
    stem = tmp_path / "raymarch_kernel.sm_86"
    ptx = (tmp_path / (stem.name + ".ptx")).read_text()
    cubin = (tmp_path / (stem.name + ".cubin")).read_bytes()
    params = json.loads((tmp_path / (stem.name + ".json")).read_text())
    assert ".target sm_86" in ptx and cubin[:4] == ELF_MAGIC
    assert params["kernel_name"] == "raymarch_kernel" and params["arch"] == "sm_86"
    assert params["threads_per_block"] == 32 * params["num_warps"]
    assert params["config"]["samples_coarse"] == 8
    # The two runtime arguments that are not node attributes say how they are made.
    values = {p["name"]: p.get("value") for p in params["params"]}
    assert values["step"] == "(far - near) / samples_coarse"
    assert values["scale"] == "2 / box_warp" and values["near"] is None


def test_cli_builds_each_arch_with_the_ops_launch_unless_told(tmp_path):
    # The torch op's choice per arch (engines.raymarch.op.dot_precision_for at PyTorch's
    # default fp32 precision, and kernel.default_block_rays): fp32 FMAs and 32 rays on sm_75,
    # fp32-accurate TF32x3 and 64 rays on sm_80+ for an fp32 tri-plane, fp16 products for a
    # half-precision one; an explicit --dot-precision is taken on every arch.
    import torch

    from engines.raymarch.op import dot_precision_for

    def config(folder, arch):
        return json.loads((folder / f"raymarch_kernel.sm_{arch}.json").read_text())["config"]

    assert aot.main(["--arch", "75", "--arch", "90", "--preset", "tiny", "--out",
                     str(tmp_path / "a")]) == 0
    assert (config(tmp_path / "a", 75)["dot_precision"], config(tmp_path / "a", 75)[
        "block_rays"]) == (dot_precision_for(7, torch.float32), 32) == ("ieee", 32)
    assert (config(tmp_path / "a", 90)["dot_precision"], config(tmp_path / "a", 90)[
        "block_rays"]) == (dot_precision_for(9, torch.float32), 64) == ("tf32x3", 64)
    assert aot.main(["--arch", "86", "--preset", "tiny", "--triplane-dtype", "bfloat16",
                     "--out", str(tmp_path / "b")]) == 0
    assert config(tmp_path / "b", 86)["dot_precision"] == "fp16"
    assert aot.main(["--arch", "90", "--preset", "tiny", "--dot-precision", "ieee",
                     "--block-rays", "16", "--out", str(tmp_path / "c")]) == 0
    assert (config(tmp_path / "c", 90)["dot_precision"], config(tmp_path / "c", 90)[
        "block_rays"]) == ("ieee", 16)
    # Another configuration into the same folder is refused, not written over.
    with pytest.raises(SystemExit):
        aot.main(["--arch", "90", "--preset", "tiny", "--out", str(tmp_path / "c")])
    assert config(tmp_path / "c", 90)["dot_precision"] == "ieee"


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="triplane_dtype"):
        aot.signature(aot.KernelConfig(triplane_dtype="float64"))


@pytest.mark.parametrize("arch", aot.ARCHS)
def test_fp16_products_every_arch(arch):
    # dot_precision="fp16" at paper512 sizes: Triton emits fp16 tensor-core MMAs from sm_80 on
    # (on sm_75 it falls back to FMAs, which still compile), and the fast softplus/sigmoid are
    # the PTX special-function instructions on every arch.
    build = aot.compile_arch(aot.KernelConfig(dot_precision="fp16",
                                              triplane_dtype="float16"), arch)
    check_build(build, arch)
    mma = re.search(r"\bmma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.f16\.f16\.f32", build.ptx)
    assert bool(mma) == (arch >= 80), "fp16 tensor-core MMA expected exactly from sm_80 on"
    assert "lg2.approx.f32" in build.ptx and "rcp.approx.ftz.f32" in build.ptx
    assert build.launch_params()["config"]["dot_precision"] == "fp16"


def test_unknown_dot_precision_is_refused():
    with pytest.raises(ValueError, match="dot_precision"):
        aot.signature(aot.KernelConfig(dot_precision="int8"))


def test_prefetch_levels_emit_l1_prefetches():
    # prefetch 1: the coarse pass's loop asks L1 for the next sample's 12 tap lines; 2: the
    # merged pass's too (its depth from the walk one step ahead). The prefetch is PTX's
    # prefetch.global.L1 (SASS CCTL): none without the option, more at 2 than at 1.
    counts = []
    for level in (0, 1, 2):
        build = aot.compile_arch(aot.KernelConfig.tiny(prefetch=level), 90)
        check_build(build, 90)
        assert build.launch_params()["config"]["prefetch"] == level
        counts.append(build.ptx.count("prefetch.global.L1"))
    assert counts[0] == 0 and 12 <= counts[1] < counts[2]
    with pytest.raises(ValueError, match="serial kernel variant only"):
        aot.signature(aot.KernelConfig.tiny(prefetch=1, variant="tiled"))


def test_default_launch_puts_one_ray_on_each_mma_row():
    # Tensor-core products: 16 rays per warp, the m16n8 tile's 16 rows (fewer rays per warp
    # run the per-ray work twice, as benchmarks.kernel_sass counts); fp32 FMA products keep
    # the launch measured best for them on the H200.
    from engines.raymarch import kernel

    for precision in ("tf32", "tf32x3", "fp16"):
        assert kernel.default_block_rays(precision) == 16 * kernel.DEFAULT_NUM_WARPS
    assert kernel.default_block_rays("ieee") == kernel.DEFAULT_BLOCK_RAYS == 32
    with pytest.raises(ValueError, match="dot_precision"):
        kernel.default_block_rays("int8")


def test_the_contracts_workspace_row_is_the_kernels():
    # The torch op and the TensorRT node size each ray's workspace row from the contract
    # (pure Python); the kernel indexes it with its own constexprs. A row one column short
    # would let a ray write into the next ray's row.
    from engines.raymarch import contract, kernel

    for sc in (2, 3, 8, 16, 17, 33, 48, 64, 65, 130):
        for sf in (0, 1, 48):
            consts = kernel.constexprs(8, 16, 8, sc, sf, (0, 1, 0, 2, 1, 2), 32)
            assert contract.workspace_columns(sc, sf) == consts["SC_PAD"] + sc + sf, (sc, sf)
    assert contract.workspace_shape(1, 16384, 48, 48) == (16384, 160)
    assert contract.workspace_shape(2, 100, 48, 48) == (256, 160)  # ceil(200 / 64) * 64


def test_sm_89_ptx_is_the_one_a_newer_gpu_can_compile(tmp_path):
    # What a driver does with PTX for a GPU newer than the list: ptxas (Triton's own, as a
    # driver's JIT would) assembles sm_89's plain PTX for both Blackwell archs, and refuses the
    # arch-specific sm_90a PTX ("cannot be compiled to future architecture").
    import subprocess

    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(120).path
    config = aot.KernelConfig.tiny(triplane_dtype="float16", dot_precision="fp16")
    for arch, portable in ((89, True), (90, False)):
        ptx = tmp_path / f"sm_{arch}.ptx"
        ptx.write_text(aot.compile_arch(config, arch).ptx)
        for target in ("sm_100", "sm_120"):
            run = subprocess.run([ptxas, f"-arch={target}", str(ptx), "-o",
                                  str(tmp_path / "out.cubin")], capture_output=True, text=True)
            assert (run.returncode == 0) == portable, (arch, target, run.stderr)
            if not portable:
                assert "future architecture" in run.stderr
