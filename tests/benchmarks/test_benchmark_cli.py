"""The benchmark scripts' command lines: a report path that cannot be written and numbers or
names that cannot work are argparse's one-line error (exit 2) before any measuring, not a
traceback after it."""
from __future__ import annotations

import importlib

import pytest

pytest.importorskip("triton")  # kernel_sass and the GPU suite import the kernel's modules

# (module, flag of its report path, arguments that would otherwise start work)
SCRIPTS = [
    ("benchmarks.model", "--json", []),
    ("benchmarks.onnx", "--json", []),
    ("benchmarks.roofline", "--json", []),
    ("benchmarks.ops", "--json", []),
    ("benchmarks.kernel_sass", "--out", []),
    ("benchmarks.tracking", "--json", []),
    ("benchmarks.live", "--json", []),
    ("benchmarks.gpu_suite", "--out", ["--dry-run"]),
]


def run_main(module: str, argv: list[str], capsys) -> str:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("module, flag, extra", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_an_unwritable_report_path_is_refused_before_the_work(module, flag, extra, tmp_path,
                                                              capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    err = run_main(module, [*extra, flag, str(a_file / "report.json")], capsys)
    assert f"{flag} {a_file / 'report.json'}: cannot create" in err
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "is a folder" in run_main(module, [*extra, flag, str(folder)], capsys)


@pytest.mark.parametrize("module, argv, message", [
    ("benchmarks.model", ["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    ("benchmarks.onnx", ["--frames", "0"], "argument --frames: must be at least 1"),
    ("benchmarks.onnx", ["--threads", "0"], "argument --threads: must be at least 1"),
    ("benchmarks.onnx", ["--presets", "foo"], "argument --presets: invalid choice: 'foo'"),
    ("benchmarks.roofline", ["--preset", "foo"], "argument --preset: invalid choice: 'foo'"),
    ("benchmarks.ops", ["--preset", "foo"], "argument --preset: invalid choice: 'foo'"),
    ("benchmarks.ops", ["--device", "cuda:7"], "cuda"),
    ("benchmarks.kernel_sass", ["--only", "nomatch"], "--only nomatch matches no configuration"),
    ("benchmarks.gpu_suite", ["--iters", "0"], "argument --iters: must be at least 1"),
])
def test_bad_numbers_and_names_are_refused(module, argv, message, capsys):
    assert message in run_main(module, argv, capsys)


@pytest.mark.parametrize("argv, message", [
    (["--block-rays", "0"], "--block-rays must be a power of two, got 0"),
    (["--block-rays", "48"], "--block-rays must be a power of two, got 48"),
    (["--num-warps", "3"], "--num-warps must be a power of two, got 3"),
    (["--sample-tile", "8"], "--sample-tile is for --variant tiled"),
    (["--variant", "tiled", "--block-rays", "8"], "at least 16 with --variant tiled"),
])
def test_aot_refuses_launches_it_would_ignore_or_fail_on(argv, message, tmp_path, capsys):
    # Before: 0 became the default silently, 48 and 3 were compiler tracebacks, a serial
    # build recorded a sample tile it does not have.
    err = run_main("engines.raymarch.aot", ["--arch", "90", "--preset", "tiny", "--out",
                                            str(tmp_path), *argv], capsys)
    assert message in err
    assert not list(tmp_path.iterdir())


def test_aot_never_overwrites_a_build_of_another_configuration(tmp_path, capsys):
    # File names hold the kernel and the arch only: an fp16 build into an fp32 build's folder
    # replaced it silently.
    from engines.raymarch import aot

    base = ["--arch", "80", "--preset", "tiny", "--out", str(tmp_path)]
    assert aot.main(base) == 0
    first = (tmp_path / "raymarch_kernel.sm_80.ptx").read_text()
    assert aot.main(base) == 0  # the same configuration again: fine
    # sm_75 first: the refusal comes before any arch is written (a mixed folder otherwise).
    err = run_main("engines.raymarch.aot", ["--arch", "75", *base, "--triplane-dtype",
                                            "float16"], capsys)
    assert "is a build of another configuration" in err
    assert (tmp_path / "raymarch_kernel.sm_80.ptx").read_text() == first
    assert not (tmp_path / "raymarch_kernel.sm_75.ptx").exists()
