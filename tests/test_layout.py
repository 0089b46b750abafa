"""The dependency rules of ARCHITECTURE.md ("Layout"), read from every module's imports (the
lazy ones inside functions included), so a new import across a boundary fails here rather than
in a review."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("export3d", "export", "engines", "realtime", "benchmarks")
# What each package may import of ours (benchmarks may import everything).
ALLOWED = {
    "engines": set(),
    "export3d": {"engines"},  # only through the renderer: see ENGINES_GATE
    "export": {"export3d", "engines"},
    "realtime": {"export3d", "export", "engines"},
}
ENGINES_GATE = "export3d/renderer.py"


def imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in the file of ``package``, relative ones
    resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else node.module.split(".")[0]))
    return found


def test_the_scan_sees_lazy_and_relative_imports(tmp_path):
    # The rules below pass vacuously if the scan misses imports; a file with each form.
    sample = tmp_path / "probe.py"
    sample.write_text("import os\nfrom . import camera\n"
                      "def f():\n    from engines.raymarch import op\n    import tensorrt\n")
    assert imports(sample, "export3d") == [
        (1, "os"), (2, "export3d"), (4, "engines"), (5, "tensorrt")]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependencies_point_one_way(package):
    ours = set(PACKAGES)
    crossings = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, module in imports(path, package):
            if module not in ours or module == package:
                if package == "export3d" and module == "tensorrt":
                    crossings.append(f"{rel}:{line} imports tensorrt")
                continue
            if module not in ALLOWED[package]:
                crossings.append(f"{rel}:{line} imports {module}")
            elif package == "export3d" and module == "engines" and rel != ENGINES_GATE:
                crossings.append(f"{rel}:{line} imports engines outside {ENGINES_GATE}")
    assert crossings == []
