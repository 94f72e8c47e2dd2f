"""``scripts/device_check.sh``, the GPU check, dry-run on the CPU (``--device cpu
--short``: a tiny model, tiny sizes) so that it cannot rot between the rare times a GPU is at
hand: it must finish and write its JSON with every section present and its log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("environment", "install", "tests", "bench", "folder", "long_utterance",
            "snr_trained", "targets")


def test_device_check_dry_run_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), str(out),
                           "--device", "cpu", "--short"], capture_output=True, text=True,
                          env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "device_check.json").read_text())
    assert set(SECTIONS) <= set(result)
    for name in SECTIONS[:-1]:
        assert result[name]["status"] == "ok", (name, result[name])
    assert result["tests"]["counts"]["passed"] >= 1
    runs = result["bench"]["runs"]
    assert {r["precision"] for r in runs} == {"fp32", "fp16", "bf16"}
    assert {r["engine"] for r in runs} >= {"eager", "gpu"}
    for run in runs:
        assert run["samples_per_second"] > 0 and run["speedup_vs_baseline"] > 0
    baselines = [r["baseline"] for r in runs if "baseline" in r]
    assert len(baselines) == 3  # one per precision, in the same run as our engine
    fp32 = next(b for r, b in zip(runs, baselines) if r["precision"] == "fp32")
    assert fp32["snr_db_ours_vs_baseline"] > 80  # fp32: the same function
    folder = result["folder"]
    for name in ("cold", "warm", "synth_cli_eager"):
        assert folder[name]["failed"] == 0 if "failed" in folder[name] else True
        assert folder[name]["samples_per_second_end_to_end"] > 0
    assert folder["cold"]["items"] == folder["items"]
    assert set(result["long_utterance"]["runs"]) >= {"eager", "gpu"}
    snr = result["snr_trained"]["snr_db"]
    assert set(snr) >= {"fp16/gpu", "bf16/gpu"} and snr["fp16/gpu"]["min"] > 30
    assert "steady_state" in result["targets"]
    log = (out / "device_check.log").read_text()
    assert "== bench" in log and "device_check: done" in log
