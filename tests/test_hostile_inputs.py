"""Hostile inputs to ``synth``: devices, pipes, lying headers, sparse and self-repeating tensors.

Every input is untrusted.  Each case must end in one line naming the file and the reason, the
other inputs of the batch still written and the summary line printed (exit 1), never a hang,
a traceback, "internal error" or an allocation of what a header merely claims.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY, run_cli

from waveglow_cli.audio.io import open_input, read_mel, spool
from waveglow_cli.errors import InputFileError, MelFileError

N_MELS = TINY["n_mel_channels"]


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """A valid version 1.0 .npy header for ``shape`` with no data after it."""
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def good_folder(tmp_path, names=("a", "c")):
    folder = tmp_path / "mels"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in names:
        np.save(folder / f"{name}.npy", rng.normal(size=(N_MELS, 5)).astype(np.float32))
    return folder


def error_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode().splitlines() if line.startswith("error:")]


def assert_batch_went_on(r, out, bad: dict[str, str], good=("a", "c")) -> None:
    """Each bad input is one line naming it and its reason; the good ones are written; the
    summary line comes last; exit 1."""
    assert r.returncode == 1, r.stderr.decode()
    assert b"Traceback" not in r.stderr and b"internal error" not in r.stderr, r.stderr.decode()
    lines = error_lines(r.stderr)
    assert len(lines) == len(bad), lines
    for name, reason in bad.items():
        [line] = [line for line in lines if name in line]
        assert reason in line, line
    assert sorted(p.stem for p in out.glob("*.wav")) == sorted(good)
    summary = r.stderr.decode().strip().splitlines()[-1]
    assert summary.startswith(f"written {len(good)}, exist 0, skipped 0, failed {len(bad)}"), \
        summary


def test_dev_zero_is_refused_at_once(tmp_path, tiny_checkpoint):
    """``synth /dev/zero`` read forever (23 GB before the kernel killed it).  A device is not a
    regular file: refused after fstat of what was opened, before a byte is read."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    folder = good_folder(tmp_path)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "waveglow_cli", "synth", "/dev/zero",
                        str(folder / "a.npy"), str(folder / "c.npy"), "-o", str(out),
                        "-c", str(tiny_checkpoint)],
                       capture_output=True, timeout=120, env={**os.environ, "WAVEGLOW_OFFLINE": "1"})
    assert_batch_went_on(r, out, {"/dev/zero": "is a character device, not a regular file"})


def test_hostile_mels_among_good_ones(tmp_path, tiny_checkpoint):
    """One folder, four hostile mels beside two good ones; each fails alone, by name:

    * b.npy, 80 bytes declaring shape (4, 10**12): raised MemoryError that aborted the whole
      folder with nothing written.  The header is now checked against the file's size first.
    * t.npy, truncated (a download cut short): its header claims more than the file holds.
    * s.pt, a sparse tensor: gave "internal error (TypeError)".
    * z.pt, a stride-0 view of one column declaring a million frames: a few KB that would
      expand into gigabytes when converted; refused before anything is materialised."""
    folder = good_folder(tmp_path)
    (folder / "b.npy").write_bytes(npy_header((N_MELS, 10**12)))
    assert (folder / "b.npy").stat().st_size <= 128
    data = io.BytesIO()
    np.save(data, np.zeros((N_MELS, 400), dtype=np.float32))
    (folder / "t.npy").write_bytes(data.getvalue()[:-100])
    torch.save(torch.randn(N_MELS, 6).to_sparse(), folder / "s.pt")
    torch.save(torch.zeros(N_MELS, 1).expand(N_MELS, 10**6), folder / "z.pt")
    assert (folder / "z.pt").stat().st_size < 10_000
    out = tmp_path / "out"
    r = run_cli("synth", folder, "-o", out, "-c", tiny_checkpoint)
    assert_batch_went_on(r, out, {
        "b.npy": "header declares shape (4, 1000000000000)",
        "t.npy": "truncated",
        "s.pt": "sparse_coo; only dense (strided) tensors",
        "z.pt": "repeats its storage"})


def test_npy_header_checks_in_the_library(tmp_path):
    """The reader itself: object arrays, integer mels and short data are named; a good
    file is memory-mapped, not copied, and equals np.load."""
    path = tmp_path / "m.npy"
    mel = np.random.default_rng(0).normal(size=(N_MELS, 50)).astype(np.float32)
    np.save(path, mel)
    lazy = read_mel(path, n_mels=N_MELS, lazy=True)
    assert lazy.mapping is not None  # memory-mapped
    assert np.array_equal(lazy[:, 10:20], mel[:, 10:20]) and np.array_equal(np.asarray(lazy), mel)
    np.save(path, np.zeros((N_MELS, 3), dtype=np.int16))
    with pytest.raises(MelFileError, match="dtype int16"):
        read_mel(path)
    path.write_bytes(npy_header((N_MELS, 3), "|O"))
    with pytest.raises(MelFileError, match="Python objects"):
        read_mel(path)
    path.write_bytes(npy_header((N_MELS, 3)) + b"\0" * (N_MELS * 3 * 4 - 1))
    with pytest.raises(MelFileError, match="truncated"):
        read_mel(path)
    # the same checks for bytes (standard input)
    with pytest.raises(MelFileError, match="header declares shape"):
        read_mel(npy_header((N_MELS, 10**12)), "<stdin>")


def test_pipes_are_read_with_a_cap(tmp_path):
    """Standard input and FIFOs have no size: an endless one must stop at the cap with a
    named error instead of filling memory or disk; within the cap the bytes are kept whole."""
    with spool(io.BytesIO(b"x" * 1000), "<stdin>", limit=4096) as f:
        assert f.read() == b"x" * 1000
    with pytest.raises(InputFileError, match="<stdin>: more than 4 KiB arrived through a pipe"):
        spool(io.BytesIO(b"x" * 5000), "<stdin>", limit=4096)
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    # O_RDWR never blocks on a FIFO and counts as a writer; 20 KB fit in the pipe's buffer.
    writer = os.open(fifo, os.O_RDWR)
    try:
        os.write(writer, b"y" * 20_000)
        with pytest.raises(InputFileError, match="pipe.npy: more than"):
            open_input(fifo, str(fifo), pipe_limit=10_000)
    finally:
        os.close(writer)


def test_a_fifo_mel_is_synthesised(tmp_path, tiny_checkpoint):
    """``synth <(cat mel.npy)`` style: a FIFO within the cap is read once and works."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    mel = np.random.default_rng(4).normal(size=(N_MELS, 6)).astype(np.float32)
    data = io.BytesIO()
    np.save(data, mel)
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "waveglow_cli", "synth", str(fifo), "-o",
                             str(tmp_path / "out.wav"), "-c", str(tiny_checkpoint)],
                            stderr=subprocess.PIPE, env={**os.environ, "WAVEGLOW_OFFLINE": "1"})
    with open(fifo, "wb") as w:  # blocks until the CLI opens it
        w.write(data.getvalue())
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    audio, _ = sf.read(tmp_path / "out.wav")
    assert audio.shape == (6 * 256,)


def test_stdin_mel_is_read_through_the_cap(tmp_path, tiny_checkpoint):
    """Standard input goes through the same capped copy: a mel on stdin still works, and a
    bomb header on stdin is one named line."""
    mel = np.random.default_rng(5).normal(size=(N_MELS, 4)).astype(np.float32)
    data = io.BytesIO()
    np.save(data, mel)
    r = run_cli("synth", "-", "-o", tmp_path / "s.wav", "-c", tiny_checkpoint,
                input=data.getvalue())
    assert r.returncode == 0, r.stderr.decode()
    r = run_cli("synth", "-", "-o", tmp_path / "t.wav", "-c", tiny_checkpoint,
                input=npy_header((N_MELS, 10**12)))
    assert r.returncode == 1
    [line] = error_lines(r.stderr)
    assert line.startswith("error: <stdin>: ") and "header declares shape" in line
    assert not (tmp_path / "t.wav").exists()


def test_unreadable_audio_is_named_never_by_an_object_repr(tmp_path):
    """soundfile's messages name the file object it read from ("Error opening <_io.BytesIO
    object at 0x7f..>"); the error names the file and gives libsndfile's reason only."""
    from waveglow_cli.audio.io import read_audio
    from waveglow_cli.errors import AudioFileError
    from waveglow_cli.features.inputs import load_synthesis_input
    from waveglow_cli.features.mel import MelConfig

    broken = b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(40)   # a WAV header without data
    path = tmp_path / "broken.wav"
    path.write_bytes(broken)
    cases = [(lambda: read_audio(broken, "<stdin>"), "<stdin>"),
             (lambda: read_audio(io.BytesIO(broken), "clip.wav"), "clip.wav"),
             (lambda: read_audio(path), str(path)),
             (lambda: read_audio(b"OggS" + bytes(60), "x.ogg"), "x.ogg"),
             (lambda: load_synthesis_input(path, "speech/broken.wav", MelConfig()),
              "speech/broken.wav")]
    for call, name in cases:
        with pytest.raises(AudioFileError) as info:
            call()
        text = str(info.value)
        assert text.startswith(f"{name}: not a readable audio file ("), text
        assert "<_io" not in text and "object at" not in text and "Error opening" not in text
    assert "No 'data' chunk" in str(pytest.raises(AudioFileError, read_audio, path).value)
