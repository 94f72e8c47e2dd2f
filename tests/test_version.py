"""One version and a distribution name of our own: ``pyproject.toml`` holds the
version, the installed metadata carries it to ``waveglow --version``, ``bench --json`` and the
server's ``/v1/models``, and CHANGELOG.md has its section.  At start-up, another distribution
that installed files into our ``waveglow_cli`` package (``waveglow-cli`` on the index ships
one) is named in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import run_cli

import waveglow_cli

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]


def test_the_distribution_is_ours_and_the_version_is_pyprojects():
    name, declared = PYPROJECT["name"], PYPROJECT["version"]
    assert re.sub(r"[-_.]+", "-", name).lower() != "waveglow-cli"  # another project's
    # A stale install (pyproject changed since `pip install -e .`) fails here, not later.
    assert version(name) == declared, "reinstall: pip install -e ."
    assert waveglow_cli.__version__ == declared
    result = run_cli("--version")
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout.decode() == f"waveglow {declared}\n"


def test_the_changelog_has_a_section_for_the_version():
    text = (REPO / "CHANGELOG.md").read_text("utf-8")
    sections = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert sections[0] == "Unreleased"
    assert PYPROJECT["version"] in sections
    assert re.search(rf"^## \[{re.escape(PYPROJECT['version'])}\] - \d{{4}}-\d\d-\d\d$",
                     text, flags=re.M)


def test_bench_json_carries_the_version(tiny_checkpoint):
    result = run_cli("bench", "-c", tiny_checkpoint, "--device", "cpu", "--seconds", "0.05",
                     "--repeats", "1", "--json")
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["version"] == PYPROJECT["version"]


def test_serve_models_carries_the_version(tiny_checkpoint):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    server = subprocess.Popen(
        [sys.executable, "-m", "waveglow_cli", "serve", "-c", str(tiny_checkpoint), "--port",
         "0", "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "WAVEGLOW_OFFLINE": "1"})
    try:
        lines = []
        for line in server.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("serving ") and " on http://127.0.0.1:" in line:
                break
        else:
            raise AssertionError(f"server did not start: {lines}")
        url = line.split(" on ", 1)[1].strip()
        with urllib.request.urlopen(f"{url}/v1/models", timeout=60) as response:
            answer = json.loads(response.read())
        assert answer["version"] == PYPROJECT["version"]
        assert answer["models"][0]["name"] == str(tiny_checkpoint)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


# ---------------------------------------------------------------------------------------------
# Another distribution in our package's folder


def _site_with_our_package(site: Path) -> Path:
    """A folder like site-packages holding a copy of the package (without the demo weights,
    which no test here reads); returns the package's folder."""
    package = site / "waveglow_cli"
    shutil.copytree(Path(waveglow_cli.__file__).parent, package,
                    ignore=shutil.ignore_patterns("*.safetensors", "__pycache__"))
    return package


def _fake_distribution(site: Path, name: str, version_: str, files: list[str],
                       top_level: str | None = "waveglow_cli\nwaveglow\n") -> None:
    """The metadata pip leaves for an installed wheel: METADATA, RECORD, top_level.txt."""
    info = site / f"{re.sub(r'[-_.]+', '_', name)}-{version_}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version_}\n")
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files) + f"{info.name}/RECORD,,\n")
    if top_level is not None:
        (info / "top_level.txt").write_text(top_level)


def _run_from(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "WAVEGLOW_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "waveglow_cli", *args], capture_output=True,
                          text=True, env=env, cwd=site, timeout=120)


@pytest.mark.parametrize("top_level", ["waveglow_cli\nwaveglow\n", None],
                         ids=["top_level.txt", "RECORD only"])
def test_another_distribution_in_our_package_is_named_in_one_line(tmp_path, top_level):
    package = _site_with_our_package(tmp_path)
    _fake_distribution(tmp_path, "waveglow-cli", "0.0.2",
                       ["waveglow/__init__.py", "waveglow_cli/__init__.py", "waveglow_cli/cli.py"],
                       top_level)
    for args in (["--version"], ["list"]):
        result = _run_from(tmp_path, *args)
        assert result.returncode == 1 and result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("error: waveglow-cli 0.0.2, another distribution, also installed "
                               f"files into {package.resolve()};")
        assert "cannot share one environment" in line and "pip uninstall waveglow-cli" in line


def test_neighbours_that_own_nothing_in_our_package_are_not_a_clash(tmp_path):
    _site_with_our_package(tmp_path)
    # An editable install lists only its .pth; a same-named project elsewhere owns its files.
    _fake_distribution(tmp_path, "waveglow-cli", "0.1.0", ["__editable__.waveglow_cli-0.1.0.pth"])
    _fake_distribution(tmp_path, "waveglow-exact", "9.9", ["waveglow_cli/__init__.py"])
    _fake_distribution(tmp_path, "other", "1.0", ["other/__init__.py"], "other\n")
    result = _run_from(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    # ... and the version is the metadata's that sits beside the running package
    assert result.stdout == "waveglow 9.9\n" and result.stderr == ""
