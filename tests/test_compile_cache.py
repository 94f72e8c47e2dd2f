"""The compile cache (the second hardening round): what is in it runs, so it is ours alone.

``--engine compiled`` keeps inductor's code in ``$WAVEGLOW_HOME/compile-cache``: a line
appended to a cached ``.py`` or a pickle in place of an FX graph entry runs on the next compile.
The cache is made 0700 and refused (one line) when another user owns it or could write to it
or to the home holding it; everything inductor writes (its precompiled header included, 150 MB)
lands inside it, nothing in ``$TMPDIR/torchinductor_$USER``."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import engine_of

from waveglow_cli.analysis.bench import random_model
from waveglow_cli.checkpoints.reader import save_checkpoint
from waveglow_cli.engines.gpu import check_compile_cache, prepare_compile_cache
from waveglow_cli.errors import UsageError
from waveglow_cli.model.waveglow import WaveGlowConfig
from waveglow_cli.settings import Settings, compile_cache_environment

# The smallest model test_gpu_engine compiles: the compile is the cost, not the model.
SMALL = WaveGlowConfig(n_mel_channels=4, n_flows=4, n_group=8, n_early_every=2,
                       n_early_size=2, n_layers=2, n_channels=8)
HAS_COMPILER = shutil.which("g++") is not None or shutil.which("c++") is not None


@pytest.fixture(scope="module")
def small_model():
    return random_model(SMALL, seed=5, end_scale=0.3)


def synth_compiled(tmp_path: Path, home: Path, tmpdir: Path) -> subprocess.CompletedProcess:
    """`waveglow synth --engine compiled` as a user with no torch variables set runs it: the
    environment is this one without TORCHINDUCTOR_CACHE_DIR/TRITON_CACHE_DIR (which conftest
    sets), with the home, $HOME and $TMPDIR given."""
    checkpoint = tmp_path / "small.safetensors"
    if not checkpoint.exists():
        save_checkpoint(checkpoint, random_model(SMALL, seed=5, end_scale=0.3))
        np.save(tmp_path / "m.npy", np.full((SMALL.n_mel_channels, 12), -4.0, np.float32))
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env.update(WAVEGLOW_HOME=str(home), WAVEGLOW_OFFLINE="1", TMPDIR=str(tmpdir),
               HOME=str(tmp_path / "user"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "waveglow_cli", "synth", tmp_path / "m.npy",
                           "-c", checkpoint, "-o", tmp_path / "out.wav", "--engine", "compiled",
                           "--device", "cpu", "--seed", "1", "--overwrite"],
                          capture_output=True, env=env, timeout=600)


@pytest.mark.skipif(not HAS_COMPILER, reason="inductor's CPU backend needs a C++ compiler")
def test_a_compiled_run_writes_only_inside_its_cache_made_0700(tmp_path):
    """One cold compile of the smallest model: the cache is 0700 and holds inductor's FX
    graphs and its precompiled header; $TMPDIR and $HOME get nothing (before: a 149 MB
    header in $TMPDIR/torchinductor_$USER, and the cache 0755)."""
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    tmpdir.mkdir()
    (tmp_path / "user").mkdir()
    r = synth_compiled(tmp_path, home, tmpdir)
    assert r.returncode == 0, r.stderr.decode()
    cache = home / "compile-cache"
    assert stat.S_IMODE(os.lstat(cache).st_mode) == 0o700
    assert any((cache / "fxgraph").rglob("*"))
    headers = cache / "precompiled_headers"
    assert not headers.exists() or any(headers.glob("*.h"))  # when torch precompiles, here
    assert list(tmpdir.iterdir()) == [], list(tmpdir.rglob("*"))
    assert list((tmp_path / "user").iterdir()) == []  # no ~/.triton, no ~/.cache


def test_a_group_writable_cache_is_refused_in_one_line_before_any_work(tmp_path):
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    cache = home / "compile-cache"
    cache.mkdir(parents=True)
    tmpdir.mkdir()
    (tmp_path / "user").mkdir()
    cache.chmod(0o775)
    planted = cache / "planted.py"
    planted.write_text("raise SystemExit('planted code ran')\n")
    r = synth_compiled(tmp_path, home, tmpdir)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr.decode()
    assert lines[0].startswith("error: ") and str(cache) in lines[0]
    assert "writable by its group or others (mode 775)" in lines[0]
    assert "Traceback" not in lines[0] and not (tmp_path / "out.wav").exists()
    assert sorted(p.name for p in cache.iterdir()) == ["planted.py"]  # nothing compiled
    assert list(tmpdir.iterdir()) == []


def test_unsafe_caches_and_homes_are_refused_and_safe_ones_made_0700(tmp_path, small_model,
                                                                     monkeypatch):
    """The library's check, case by case: it refuses before an engine exists."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    cache = home / "compile-cache"
    cache.mkdir()
    cache.chmod(0o757)  # writable by others
    with pytest.raises(UsageError, match="writable by its group or others"):
        engine_of(small_model, "cpu", torch.float32, "compiled", cache)
    cache.chmod(0o755)  # what earlier versions made: readable, taken back to 0700
    prepare_compile_cache(cache)
    assert stat.S_IMODE(os.lstat(cache).st_mode) == 0o700
    home.chmod(0o777)  # a home anyone can write to: they could swap the cache
    with pytest.raises(UsageError, match="folder holding the compile cache .* writable"):
        check_compile_cache(cache)
    home.chmod(0o1777)  # sticky, as /tmp: others cannot rename what is ours
    check_compile_cache(cache)
    home.chmod(0o700)
    shutil.rmtree(cache)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    cache.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="not a folder"):
        prepare_compile_cache(cache)
    cache.unlink()
    monkeypatch.setattr(os, "getuid", lambda: os.lstat(home).st_uid + 1)  # we become another
    home_owner = tmp_path / "theirs"
    home_owner.mkdir(mode=0o700)
    with pytest.raises(UsageError, match="belongs to another user"):
        check_compile_cache(home_owner)


def test_a_new_cache_is_0700_whatever_the_umask(tmp_path):
    cache = tmp_path / "home" / "compile-cache"
    old = os.umask(0)
    try:
        prepare_compile_cache(cache)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(cache).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(cache.parent).st_mode) == 0o700
    assert Settings.from_env({"WAVEGLOW_HOME": str(tmp_path / "home")}).compile_cache == cache


def test_the_cache_environment_is_set_while_compiling_and_restored_after(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    with compile_cache_environment(tmp_path):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)
        assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/else"
    assert "TRITON_CACHE_DIR" not in os.environ
