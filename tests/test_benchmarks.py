"""``benchmarks/paths.py`` runs through (a smoke test of the regression benchmark; its timings
are the benchmark's business, never asserted here)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paths.py"
PATHS = ("file", "folder", "stdout", "serve x4", "mel")


def test_paths_quick_runs_every_path_against_the_baseline(tmp_path):
    """--quick (demo, 1 s mels): every path has a row with positive seconds and ratios, `-o -`
    gives the bytes of `--first-piece 32`, the table is printed, and the temporary folder (in
    tmp_path, as TMPDIR) is removed afterwards."""
    temp, out = tmp_path / "tmp", tmp_path / "paths.json"
    temp.mkdir()
    env = {**os.environ, "WAVEGLOW_OFFLINE": "1", "WAVEGLOW_HOME": str(tmp_path / "home"),
           "TMPDIR": str(temp)}
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["models"]) == ["demo"] and result["quick"] is True
    rows = result["models"]["demo"]["paths"]
    assert tuple(rows) == PATHS
    for name, row in rows.items():
        for key in ("median_s", "audio_s", "x_real_time", "baseline_s", "vs_baseline"):
            value = row[key]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, key)
        assert f"| demo | {name} |" in r.stdout
    stream = rows["stdout"]
    assert 0 < stream["first_byte_s"] <= stream["first_audio_s"] <= stream["median_s"]
    assert stream["bytes_equal_first_piece_32"] is True
    assert 0 < rows["serve x4"]["first_audio_s"] <= rows["serve x4"]["median_s"]
    assert rows["serve x4"]["audio_s"] == 4 * rows["file"]["audio_s"]
    assert result["machine"] and result["torch"] and result["date"]
    assert list(temp.iterdir()) == []
