"""The real artifacts: ``python -m build`` makes an sdist and a wheel that pass
``twine check``; the wheel holds everything that runs from it (checkpoints.toml, the demo
weights, py.typed) and nothing else; installed into a fresh venv it runs from a folder outside
the repository.  Many packaging bugs (a package-data glob, a file read relative to the repo)
only show up there.

Offline throughout: the build uses the installed setuptools (``--no-isolation``), and the venv
reuses this interpreter's torch and dependencies (``--system-site-packages``) while pip installs
only the wheel, from a local folder, with no index.  Everything is written under tmp_path: the
repository is copied there first, because setuptools writes ``build/`` and ``*.egg-info`` into
the tree it builds.  About 15 s on 2 idle cores (35 s on busy ones), so it runs with the
suite; marked ``packaging`` (``-m packaging`` selects it, ``-m "not packaging"`` leaves it
out)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "waveglow_cli"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]
# What `.gitignore` keeps out of the tree, and the git folder itself.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", ".benchmarks", "*.pyc")


def _run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel, built by ``python -m build`` from a copy of the repository
    (the wheel is built from the sdist, so the sdist is checked too)."""
    root = tmp_path_factory.mktemp("packaging")
    tree, out = root / "tree", root / "dist"
    shutil.copytree(REPO, tree, ignore=NOT_SOURCE)
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, tree], cwd=root)
    [sdist] = out.glob("*.tar.gz")
    [wheel] = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_build_makes_an_sdist_and_a_wheel_that_pass_twine_check(artifacts):
    name = PROJECT["name"].replace("-", "_")
    assert artifacts["sdist"].name == f"{name}-{PROJECT['version']}.tar.gz"
    assert artifacts["wheel"].name == f"{name}-{PROJECT['version']}-py3-none-any.whl"
    result = _run([sys.executable, "-m", "twine", "check", "--strict", artifacts["sdist"],
                   artifacts["wheel"]], cwd=artifacts["wheel"].parent)
    assert result.stdout.count("PASSED") == 2


def test_the_wheel_holds_what_runs_from_it_and_nothing_else(artifacts):
    with zipfile.ZipFile(artifacts["wheel"]) as wheel:
        names = set(wheel.namelist())
        info = f"{PROJECT['name'].replace('-', '_')}-{PROJECT['version']}.dist-info"
        metadata = wheel.read(f"{info}/METADATA").decode()
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        record = wheel.read(f"{info}/RECORD").decode()
        demo_size = wheel.getinfo("waveglow_cli/models/demo.safetensors").file_size
    assert {name.split("/")[0] for name in names} == {"waveglow_cli", info}
    sources = {f"waveglow_cli/{p.relative_to(PACKAGE).as_posix()}" for p in PACKAGE.rglob("*.py")
               if "__pycache__" not in p.parts}
    assert {n for n in names if n.endswith(".py")} == sources  # every subpackage, nothing else
    assert {"waveglow_cli/checkpoints.toml", "waveglow_cli/py.typed",
            "waveglow_cli/models/demo.safetensors"} <= names
    assert demo_size == (PACKAGE / "models" / "demo.safetensors").stat().st_size
    assert not [n for n in names if n.startswith(("tests/", "scripts/", "benchmarks/"))
                or "/tests/" in n or n.endswith((".pyc", ".egg-info"))]
    assert f"\nName: {PROJECT['name']}\n" in metadata
    assert f"\nVersion: {PROJECT['version']}\n" in metadata
    assert "waveglow = waveglow_cli.cli:main" in entry_points
    assert {row[0] for row in csv.reader(io.StringIO(record))} == names


def _speech_like_wav(path: Path, seconds: float = 0.5, rate: int = 22050) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    soundfile.write(path, audio.astype(np.float32), rate)
    return path


def test_the_installed_wheel_runs_from_outside_the_repository(artifacts, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv],
         cwd=tmp_path)
    python, waveglow = venv / "bin" / "python", venv / "bin" / "waveglow"
    # This interpreter's pip installs into the venv: no index, only the wheel's folder; the
    # dependencies must already be there (the venv sees this interpreter's packages).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-index",
          "--find-links", artifacts["wheel"].parent, artifacts["wheel"]], cwd=tmp_path, env=env)
    work = tmp_path / "work"  # outside the repository, with a cache of its own
    work.mkdir()
    env.update(WAVEGLOW_HOME=str(tmp_path / "home"), WAVEGLOW_OFFLINE="1")
    where = _run([python, "-c", "import waveglow_cli; print(waveglow_cli.__file__)"], work, env)
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                work, env)
    assert Path(where.stdout.strip()).parent == Path(site.stdout.strip()) / "waveglow_cli"

    assert _run([waveglow, "--version"], work, env).stdout == f"waveglow {PROJECT['version']}\n"
    listing = _run([waveglow, "list"], work, env).stdout
    assert "demo" in listing and "universal" in listing
    _speech_like_wav(work / "short.wav")
    _run([waveglow, "mel", "short.wav", "-o", "mels"], work, env)
    [mel] = (work / "mels").iterdir()
    _run([waveglow, "synth", mel.relative_to(work), "-o", "wavs", "-c", "demo", "--seed", "0"],
         work, env)
    [wav] = (work / "wavs").iterdir()
    audio, rate = soundfile.read(wav)
    assert rate == 22050 and abs(len(audio) - 0.5 * rate) <= 256
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
