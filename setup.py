"""The one build step pyproject.toml cannot state: the demo checkpoint lives in the repository's
``assets/`` (where it was asked for, beside its README and evaluation), outside every package,
so a wheel left it out and a non-editable install (``pip install .``, ``pip install
git+URL``) had no ``export3d live --demo``. Building a wheel copies it into the package as
``export3d/demo64.safetensors``, where :func:`export3d.demo.checkpoint` looks first. Editable
installs read it from ``assets/`` in place."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo64.safetensors"


class BuildPy(build_py):
    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "export3d" / DEMO_CHECKPOINT.name
            self.copy_file(str(DEMO_CHECKPOINT), str(target))


setup(cmdclass={"build_py": BuildPy})
