"""The version, and the distribution this package is installed as.

The version lives in ``pyproject.toml`` only: installing writes it into the distribution's
metadata, which :func:`package_version` reads (``waveglow --version``, ``bench --json``, the
server's ``/v1/models``, ONNX exports).  :mod:`importlib.metadata` is imported on first use,
not with the package, so ``waveglow --help`` does not pay for it (about 20 ms).

The distribution is ``waveglow-exact``: ``waveglow-cli`` on the package index is another
project (a WaveGlow training CLI) whose wheel ships top-level ``waveglow_cli`` and ``waveglow``
packages.  pip lets whichever is installed second overwrite the first one's files, so
:func:`foreign_distribution` finds such a neighbour for the command line to name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.metadata import Distribution

DISTRIBUTION = "waveglow-exact"
UNKNOWN_VERSION = "0+unknown"  # a source tree run without being installed has no metadata


def package_version() -> str:
    """The installed distribution's version (``pyproject.toml``'s, as of the install)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return UNKNOWN_VERSION


def __getattr__(name: str) -> str:
    # `from ._version import __version__` still works; the metadata is read only then.
    if name == "__version__":
        return package_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def foreign_distribution(package_dir: Path) -> str | None:
    """"NAME VERSION" of an installed distribution other than ours that put files into
    ``package_dir`` (the folder of the ``waveglow_cli`` package that is running), else None.

    Cheap enough for every start (about 2 ms): one listing of the folder that holds the package
    and one small read per distribution there; only a distribution whose ``top_level.txt``
    names the package, or whose metadata folder is named like it, has its metadata parsed and
    its file list checked.  An editable install lists no package files, so it is never taken
    for an owner."""
    package_dir = package_dir.resolve()
    try:
        with os.scandir(package_dir.parent) as entries:
            infos = [Path(e.path) for e in entries if e.name.endswith(_INFO_SUFFIXES)]
    except OSError:
        return None
    for info in sorted(infos):
        # Ours is named so by its folder ("waveglow_exact-0.2.0.dist-info"): not parsed
        if _folder_name(info) == _normalized(DISTRIBUTION) or \
                not _may_hold(info, package_dir.name):
            continue
        from importlib.metadata import Distribution

        distribution = Distribution.at(info)
        try:
            name = distribution.metadata["Name"] or info.name
            if _normalized(name) != _normalized(DISTRIBUTION) and \
                    _has_files_in(distribution, package_dir):
                return f"{name} {distribution.version}"
        except Exception:  # noqa: BLE001 - a neighbour's broken metadata must not stop the tool
            continue
    return None


_INFO_SUFFIXES = (".dist-info", ".egg-info")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _folder_name(info: Path) -> str:
    """The distribution name a metadata folder is named after ("NAME-VERSION.dist-info",
    "NAME.egg-info"), normalised."""
    return _normalized(re.split(r"-|\.egg-info$", info.name)[0])


def _may_hold(info: Path, package: str) -> bool:
    """Whether the distribution whose metadata folder is ``info`` may own ``package``: its
    top_level.txt names it, or it has none and its folder is named like the package."""
    try:
        top_level = (info / "top_level.txt").read_text("utf-8", errors="replace")
    except OSError:
        return _folder_name(info) == _normalized(package)
    return package in top_level.split()


def _has_files_in(distribution: Distribution, package_dir: Path) -> bool:
    """Whether the distribution's file list (RECORD) has a file inside ``package_dir``."""
    for file in distribution.files or ():
        if file.parts[:1] == (package_dir.name,):
            located = Path(str(distribution.locate_file(file))).resolve()
            if located.parent == package_dir or package_dir in located.parents:
                return True
    return False
