"""What a non-editable install gets: the wheel and source distribution built from this tree (by
setuptools' own PEP 517 hooks, in a copy of the tree, no network) carry the packages, the
commands and the demo checkpoint, and the installed demo finds its checkpoint."""
import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREE = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "assets", "export3d", "export",
        "engines", "realtime", "benchmarks")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in TREE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    built = []
    for hook in ("build_sdist", "build_wheel"):  # one process each: setuptools keeps state
        code = (f"import sys; from setuptools import build_meta as b; "
                f"print('BUILT', b.{hook}(sys.argv[1]))")
        proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        built.append(proc.stdout.rpartition("BUILT ")[2].strip())  # setuptools logs above
    sdist, wheel = built
    return out / wheel, out / sdist


def test_the_wheel_carries_the_demo_checkpoint_and_the_commands(built):
    wheel, _ = built
    want = sha256((ROOT / "assets" / "demo64.safetensors").read_bytes())
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert sha256(z.read("export3d/demo64.safetensors")) == want
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        commands = z.read(entry_points).decode()
    for package in ("export3d", "export", "engines", "realtime", "benchmarks"):
        assert f"{package}/__init__.py" in names
    assert "engines/raymarch/kernel.py" in names and "export3d/tracking/__init__.py" in names
    assert not any(n.startswith(("tests/", "assets/")) for n in names)
    assert "export3d = export3d.cli:main" in commands and "live = realtime.cli:register" in commands


def test_the_source_distribution_carries_it_too(built):
    _, sdist = built
    want = sha256((ROOT / "assets" / "demo64.safetensors").read_bytes())
    with tarfile.open(sdist) as t:
        member = next(m for m in t.getmembers() if m.name.endswith("assets/demo64.safetensors"))
        assert sha256(t.extractfile(member).read()) == want
        assert any(m.name.endswith("/setup.py") for m in t.getmembers())


def test_an_installed_wheel_finds_its_demo_checkpoint(built, tmp_path):
    # The wheel unpacked as pip would lay it out in site-packages, run from elsewhere: the
    # checkpoint found is the package's own, not this clone's assets/.
    wheel, _ = built
    site = tmp_path / "site-packages"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = "from export3d import demo; print(demo.checkpoint())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(site), "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()) == site / "export3d" / "demo64.safetensors"
