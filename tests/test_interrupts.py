"""Stopping and refusing as a terminal user meets it: Ctrl-C/SIGTERM in a folder ``synth``,
binary output to a terminal, a reader that closes the pipe early.  Real subprocesses, a real
pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY, read_until_closed

N_MELS = TINY["n_mel_channels"]
ENV = {**os.environ, "WAVEGLOW_OFFLINE": "1"}


def cli(*args):
    return [sys.executable, "-m", "waveglow_cli", *map(str, args)]


def on_terminal(args, cwd):
    """Run with standard output on a pseudo-terminal; (exit status, stderr, bytes on the tty)."""
    leader, follower = pty.openpty()
    try:
        r = subprocess.run(cli(*args), stdout=follower, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, env=ENV, cwd=cwd, timeout=60)
        os.close(follower)
        os.set_blocking(leader, False)
        try:
            shown = os.read(leader, 1 << 16)
        except OSError:  # nothing written (EAGAIN), or the terminal is closed (EIO)
            shown = b""
    finally:
        os.close(leader)
    return r.returncode, r.stderr.decode(), shown


@pytest.fixture()
def wav(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(22050), 22050)
    return path


def test_binary_output_to_a_terminal_is_refused(tmp_path, wav, tiny_checkpoint):
    mel = tmp_path / "m.npy"
    np.save(mel, np.zeros((N_MELS, 8), np.float32))
    for args, what in ((("synth", mel, "-o", "-", "-c", tiny_checkpoint), "audio"),
                       (("mel", wav, "-o", "-"), ".npy")):
        code, err, shown = on_terminal(args, tmp_path)
        assert code == 2, err
        [line] = err.strip().splitlines()
        assert "terminal" in line and what in line and "-o FILE" in line and "redirect" in line
        assert shown == b""


def test_stdout_closed_early_exits_quietly(tmp_path, tiny_checkpoint):
    """`synth x.npy -o - | head -c 100`: no message, exit 141 (128 + SIGPIPE), no file."""
    mel = tmp_path / "long.npy"
    np.save(mel, np.random.default_rng(1).normal(size=(N_MELS, 300)).astype(np.float32))
    wav = tmp_path / "long.wav"
    sf.write(wav, 0.1 * np.random.default_rng(2).standard_normal(22050 * 5), 22050)
    for args in (("synth", mel, "-o", "-", "-c", tiny_checkpoint, "--sigma", "0"),
                 ("mel", wav, "-o", "-")):
        writer = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=ENV, cwd=tmp_path)
        head = writer.stdout.read(100)
        writer.stdout.close()  # as `head -c 100` exits
        err = writer.stderr.read().decode()
        assert writer.wait(timeout=60) == 141, err
        assert len(head) == 100 and err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.npy", "long.wav"]


@pytest.mark.parametrize("signum,code,name", [(signal.SIGINT, 130, "SIGINT"),
                                              (signal.SIGTERM, 143, "SIGTERM")])
def test_interrupted_folder_synth_says_how_to_resume(tmp_path, tiny_checkpoint, signum, code,
                                                     name):
    mels, out = tmp_path / "mels", tmp_path / "out"
    mels.mkdir()
    rng = np.random.default_rng(3)
    for i in range(12):
        np.save(mels / f"m{i:02d}.npy", rng.normal(size=(N_MELS, 300)).astype(np.float32))
    proc = subprocess.Popen(cli("synth", mels, "-o", out, "-c", tiny_checkpoint, "--batch-size",
                                "1"),
                            stderr=subprocess.PIPE, env=ENV, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (out.exists() and any(p.suffix == ".wav" for p in out.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signum)
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == code, err
    summary, hint = err.strip().splitlines()[-2:]
    written = sorted(out.iterdir())
    assert summary.startswith(f"written {len(written)}, exist 0, skipped 0, failed 0")
    assert name in hint and "--skip-existing" in hint
    assert 0 < len(written) < 12 and all(p.suffix == ".wav" for p in written)  # no temp files
    assert all(sf.info(p).frames == 300 * 256 for p in written)


def test_mistakes_are_reported_before_torch_is_imported(tmp_path):
    """`synth missing.npy` and an unknown checkpoint name answer before torch is imported."""
    mel = tmp_path / "m.npy"
    np.save(mel, np.zeros((N_MELS, 8), np.float32))
    for args, expected in ((("synth", "missing.npy"), "no such file"),
                           (("synth", mel, "-c", "no-such-name"), "unknown checkpoint"),
                           (("mel", "missing.wav"), "no such file")):
        r = subprocess.run([sys.executable, "-X", "importtime", *cli(*args)[1:]],
                           capture_output=True, env=ENV, cwd=tmp_path, timeout=60)
        err = r.stderr.decode()
        assert r.returncode == 2 and expected in err, err
        imported = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines()
                    if line.startswith("import time:")}
        assert "torch" not in imported


def test_copy_synthesis_default_output_and_progress_of_one_file(tmp_path, tiny_checkpoint):
    """`synth speech.wav` writes speech.synth.wav beside it; on a terminal the bar moves with
    the audio of that one file (pieces), in audio seconds."""
    sf.write(tmp_path / "speech.wav", 0.1 * np.random.default_rng(4).standard_normal(22050),
             22050)
    r = subprocess.run(cli("synth", "speech.wav", "-c", tiny_checkpoint), capture_output=True,
                       env=ENV, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert sf.info(tmp_path / "speech.synth.wav").frames > 0
    # A pipe: no bar, just notes (a random tiny model clips) and the summary.
    lines = [line for line in r.stderr.decode().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("written 1,"), r.stderr.decode()
    mel = tmp_path / "long.npy"
    # Long enough (30 pieces of --max-frames) that the bar redraws while the file is made.
    np.save(mel, np.random.default_rng(5).normal(size=(N_MELS, 2400)).astype(np.float32))
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cli("synth", mel, "-o", tmp_path / "long.wav", "-c", tiny_checkpoint,
                                "--max-frames", "100"),
                            stderr=follower, stdin=subprocess.DEVNULL, env=ENV, cwd=tmp_path)
    os.close(follower)
    shown = read_until_closed(leader)
    assert proc.wait(timeout=120) == 0
    text = shown.decode(errors="replace")
    assert "/27.9 s of audio" in text and "0/1 files" in text and "1/1 files" in text
    # moved within the file: some seconds produced before it ended
    produced = {float(s) for s in re.findall(r"([0-9.]+)/27\.9 s of audio", text)}
    assert any(0 < s < 27.9 for s in produced), text[-2000:]
