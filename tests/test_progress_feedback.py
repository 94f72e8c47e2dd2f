"""Long commands say what they are doing: ``bench`` and ``export`` show a status line on a
terminal (stderr) and nothing on a pipe; ``export`` without the onnx extra says so in one line
before it loads anything.  Real subprocesses, a real pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import read_until_closed, run_cli
from rich.console import Console

from waveglow_cli.cli.common import StepStatus

ENV = {**os.environ, "WAVEGLOW_OFFLINE": "1"}
BASELINE = Path(__file__).resolve().parents[1] / "benchmarks" / "baseline.py"


def on_terminal(args: list[object], cwd: Path, env: dict[str, str] = ENV
                ) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal, stdout on a pipe: (exit status, stdout,
    what the terminal showed)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "waveglow_cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd)
    os.close(follower)
    shown = read_until_closed(leader)
    stdout, _ = proc.communicate(timeout=300)
    return proc.returncode, stdout.decode(), shown.decode(errors="replace")


def test_bench_shows_its_steps_on_a_terminal_and_only_its_result_on_a_pipe(tiny_checkpoint,
                                                                          tmp_path):
    args = ["bench", "-c", tiny_checkpoint, "--device", "cpu", "--precision", "fp32",
            "--seconds", "0.2", "--repeats", "2", "--baseline", BASELINE]
    code, stdout, shown = on_terminal(args, tmp_path)
    assert code == 0, shown[-2000:]
    for step in ("reading tiny_waveglow.pt", "loading the reference", "warm-up (1 x 0.2 s",
                 "run 1 of 2", "run 2 of 2", "measuring the fp32 matmul peak",
                 "timing the reference (baseline): run 2 of 2"):
        assert step in shown, (step, shown[-2000:])
    assert "\x1b" not in stdout and "samples/s" in stdout and "baseline:" in stdout
    piped = run_cli(*args, cwd=tmp_path)
    assert piped.returncode == 0 and piped.stderr == b""  # no status, no escape codes
    text = piped.stdout.decode()
    assert "\x1b" not in text and len(text.splitlines()) == len(stdout.splitlines())


def test_the_status_line_redraws_within_a_step_and_is_silent_off_a_terminal():
    """It moves (spinner, elapsed time) several times a second even while one step runs, so a
    step of minutes is never a still screen; off a terminal, or quiet, it draws nothing."""
    status = StepStatus()
    assert not status.shown  # pytest's stderr is no terminal
    status("nothing to see")
    assert status._progress is None
    assert not StepStatus(quiet=True).shown
    screen = io.StringIO()
    status.console = Console(file=screen, force_terminal=True, width=80)
    status.shown = True
    with status:
        status("a long step")
        time.sleep(0.8)
        status("the next step")
        time.sleep(0.3)
    drawn = screen.getvalue()
    assert drawn.count("a long step") >= 3 and "the next step" in drawn


def test_export_shows_its_steps_on_a_terminal(tiny_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    code, stdout, shown = on_terminal(["export", tiny_checkpoint, "-o", "tiny.onnx"], tmp_path)
    assert code == 0, shown[-2000:]
    for step in ("reading tiny_waveglow.pt", "tracing the fp32 graph",
                 "verifying with onnxruntime", "writing tiny.onnx"):
        assert step in shown, (step, shown[-2000:])
    assert "wrote tiny.onnx" in shown and stdout == ""
    assert (tmp_path / "tiny.onnx").stat().st_size > 0


def test_export_without_the_onnx_extra_is_one_line_at_once(tmp_path):
    """With onnx, onnxscript and onnxruntime unimportable (a finder that refuses them), export
    names the extra in one line, exit 2, nothing written, as serve does for its extra.  torch
    is refused too: the check comes before torch and the model are loaded."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class RefuseImports:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('onnx', 'onnxscript', 'onnxruntime', 'torch'):\n"
        "            raise ImportError(f'No module named {name!r} (refused by the test)')\n"
        "sys.meta_path.insert(0, RefuseImports())\n")
    env = {"PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    check = subprocess.run([sys.executable, "-c", "import onnx"], capture_output=True,
                           env={**ENV, **env})
    assert check.returncode != 0  # the blocker works
    r = run_cli("export", "demo", "-o", "m.onnx", env=env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr.decode()
    [line] = r.stderr.decode().strip().splitlines()
    assert line == ("error: waveglow export needs the onnx extra (onnx is missing): "
                    "pip install 'waveglow-exact[onnx]'")
    assert not (tmp_path / "m.onnx").exists()
