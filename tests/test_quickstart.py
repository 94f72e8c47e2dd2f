"""The README's quick start, run twice and both blocks in order.  A rerun
failed: `mels/speech1.npy: output exists; pass --overwrite`, `written 0, skipped 0, failed 2`,
exit 1.  An existing output is now its own state: kept, counted as `exist`, one note for the
run, exit 0.

The commands are read from README.md's quick start code blocks, so the test follows the
README.  It runs them offline: `fetch` (the network) is left out and the checkpoint of a
`synth` without `-c` is the bundled `demo`, in place of the downloaded `universal`."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from waveglow_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^written \d+, exist \d+, skipped \d+, failed \d+")


def quick_start_commands() -> list[list[str]]:
    """The `waveglow mel`/`synth` lines of the quick start's blocks that make mels and audio
    from examples/, in order (as argument lists, without the leading `waveglow`)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = []
    for block in blocks:
        if "waveglow mel examples/" not in block:
            continue  # copy synthesis and the tests: not the two quick-start blocks
        for line in block.splitlines():
            words = shlex.split(line)
            if words[:1] == ["waveglow"] and words[1] in ("mel", "synth"):
                commands.append(words[1:])
    return commands


def offline(command: list[str]) -> list[str]:
    if command[0] == "synth" and "-c" not in command and "--checkpoint" not in command:
        return [*command, "-c", "demo"]
    return command


def documented() -> str:
    """The quick start's text, whitespace folded (a line in it may be wrapped)."""
    readme = (ROOT / "README.md").read_text()
    return " ".join(readme.split("## Quick start", 1)[1].split("\n## ", 1)[0].split())


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_quick_start_runs_twice_and_both_blocks_in_order(folder):
    commands = quick_start_commands()
    assert [c[0] for c in commands] == ["mel", "synth", "mel", "synth"], commands
    text = documented()
    first = "written 2, exist 0, skipped 0, failed 0"
    again = "written 0, exist 2, skipped 0, failed 0"
    assert first in text and again in text and "exit status is 0" in text
    env = {"WAVEGLOW_OFFLINE": "1", "WAVEGLOW_HOME": str(folder / "home"), "COLUMNS": "200"}
    made: set[str] = set()
    for run in (1, 2):
        for command in map(offline, commands):
            result = CliRunner().invoke(app, command, env=env, catch_exceptions=False)
            where = f"run {run}: waveglow {' '.join(command)}"
            assert result.exit_code == 0, f"{where}\n{result.stderr}"
            lines = result.stderr.splitlines()
            [summary] = [line for line in lines if SUMMARY.match(line)]
            output = command[command.index("-o") + 1]
            if output in made:  # its outputs exist: kept, said once, not a failure
                assert summary == again, where
                first_output = sorted((folder / output).iterdir())[0].relative_to(folder)
                hint = (f"note: 2 outputs exist already, kept ({first_output}, ...): "
                        "--overwrite replaces them, --skip-existing keeps them quietly")
                assert lines[-1] == hint, where
                assert "error" not in result.stderr and "failed 0" in summary
            else:
                assert summary.startswith(first), where
                made.add(output)
    assert sorted(p.name for p in (folder / "mels").iterdir()) == ["speech1.npy", "speech2.npy"]
    for name in ("wavs", "wavs-universal"):
        assert sorted(p.name for p in (folder / name).iterdir()) == ["speech1.wav", "speech2.wav"]
    # The note's wording is the README's, for the mels of the second block.
    assert ("note: 2 outputs exist already, kept (mels/speech1.npy, ...): --overwrite replaces "
            "them, --skip-existing keeps them quietly") in text
