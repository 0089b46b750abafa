"""The ``export3d`` command: one subcommand per job.

Subcommands register themselves: each is a ``register(subparsers)`` function that adds its
parser and sets ``run``. export3d's own (``render``; ``prepare``, ``train`` and ``eval``
from :mod:`.training.cli`) are listed here; other packages of the project (``export``,
``realtime``) add theirs through the ``export3d.commands`` entry-point group in
pyproject.toml, so this package never imports them. Bad input, and a path that cannot be
read or written, end with one sentence on stderr and exit status 2, never a stack trace.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
from importlib.metadata import entry_points

from .errors import UserError

BUILTIN = {"render": "export3d.render:register",
           "training": "export3d.training.cli:register"}  # prepare, train, eval


def at_least(low: int):
    """argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def minutes(text: str) -> float:
    """argparse type: a finite, positive number of minutes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of minutes, got {text}")
    return value


def non_negative(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _load(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="export3d", description="Export3D portrait "
                                     "reenactment: render, track, export, live.")
    parser.add_argument("--version", action="version",
                        version=f"export3d {__version__} (Python {sys.version.split()[0]})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    targets = dict(BUILTIN)
    for ep in entry_points(group="export3d.commands"):
        targets.setdefault(ep.name, ep.value)
    for name in sorted(targets):
        try:
            _load(targets[name])(sub)
        except ImportError as exc:  # a command whose package is missing stays listed, clearly
            broken = sub.add_parser(name, help=f"(unavailable: {exc})")
            broken.set_defaults(run=_unavailable(name, exc))
    return parser


def _unavailable(name, exc):
    def run(args):
        raise UserError(f"'export3d {name}' is unavailable here ({exc}); reinstall with "
                        "pip install -e . from the repository")
    return run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except UserError as exc:
        print(f"export3d: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.filename is None:  # not about a path the user gave: a bug, keep the trace
            raise
        # A file or folder that cannot be read or written (a typo, a read-only or full disk):
        # what the system said, about which path.
        print(f"export3d: error: {exc.filename}: {exc.strerror or exc}; check the path and its "
              "permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("export3d: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
