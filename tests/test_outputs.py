"""Output files are ordinary files: the umask's mode, an atomic no-clobber claim, no leftovers
of killed runs, in-place resume, escaped names in messages, and named reasons for write errors.

Every situation is built in tmp_path; the CLI runs as a user runs it (a subprocess)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY

from waveglow_cli import fileio
from waveglow_cli.errors import OutputExistsError, OutputWriteError

N_MELS = TINY["n_mel_channels"]
ESC = b"\x1b"


@pytest.fixture(scope="session")
def tiny_safetensors(tmp_path_factory):
    """A tiny random model saved in our own format (no pickle involved)."""
    from waveglow_cli.analysis.bench import random_model
    from waveglow_cli.checkpoints.reader import save_checkpoint
    from waveglow_cli.model.waveglow import WaveGlowConfig

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(path, random_model(WaveGlowConfig(**TINY)))


def cli(*args, umask=None, cwd=None):
    """The real console entry point in a subprocess, under ``umask`` if given."""
    env = {**os.environ, "WAVEGLOW_OFFLINE": "1"}
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, "-m", "waveglow_cli", *map(str, args)],
                          capture_output=True, env=env, cwd=cwd, timeout=300,
                          preexec_fn=preexec)


def write_mel(path: Path, frames: int = 8, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(seed).normal(size=(N_MELS, frames)).astype(np.float32))
    return path


def write_wav(path: Path, seconds: float = 0.2, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = 0.1 * np.random.default_rng(seed).normal(size=int(22050 * seconds))
    sf.write(path, audio.astype(np.float32), 22050)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def fingerprint(path: Path) -> tuple[int, int, bytes]:
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.part"))


def dead_pid() -> int:
    """A pid that surely belongs to no process: a child we started and reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---------------------------------------------------------------------------------------------
# 1. modes


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_honour_the_umask_also_when_overwriting(tmp_path, tiny_safetensors, umask):
    """mkstemp made every output 0600 whatever the umask, and --overwrite turned a shared 0644
    file private: other users and services (a web server, a group) could not read results."""
    expected = 0o666 & ~umask
    mel = write_mel(tmp_path / "in" / "a.npy")
    out = tmp_path / "out"
    r = cli("synth", mel, "-o", out / "a.wav", "-c", tiny_safetensors, "--device", "cpu",
            "--plot", umask=umask)
    assert r.returncode == 0, r.stderr.decode()
    assert mode_of(out / "a.wav") == expected
    assert mode_of(out / "a.png") == expected
    # --overwrite of a file that had another mode: the new file gets the umask's mode
    os.chmod(out / "a.wav", 0o600)
    r = cli("synth", mel, "-o", out / "a.wav", "-c", tiny_safetensors, "--device", "cpu",
            "--overwrite", umask=umask)
    assert r.returncode == 0, r.stderr.decode()
    assert mode_of(out / "a.wav") == expected
    wav = write_wav(tmp_path / "rec" / "r.wav")
    r = cli("mel", wav, "-o", out / "r.npy", "-c", tiny_safetensors, umask=umask)
    assert r.returncode == 0, r.stderr.decode()
    assert mode_of(out / "r.npy") == expected
    assert leftovers(tmp_path) == []


def test_atomic_write_mode_follows_the_current_umask(tmp_path, tiny_safetensors):
    """Checkpoints (convert, training), run files (run.json, training states) and cache files
    go through the same writer; the mode is read when the file is written, not fixed at 0600,
    and replacing a file gives it the umask's mode too."""
    from waveglow_cli.checkpoints.reader import read_checkpoint, save_checkpoint

    old = os.umask(0o077)
    try:
        fileio.atomic_write(tmp_path / "private.json", lambda tmp: tmp.write_text("{}"))
        os.umask(0o022)
        save_checkpoint(tmp_path / "c.safetensors", read_checkpoint(tiny_safetensors))
        fileio.atomic_write(tmp_path / "private.json", lambda tmp: tmp.write_text("[]"),
                            overwrite=True)
        os.umask(0o002)
        fileio.atomic_write(tmp_path / "group.json", lambda tmp: tmp.write_text("{}"))
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "c.safetensors") == 0o644
    assert mode_of(tmp_path / "private.json") == 0o644
    assert mode_of(tmp_path / "group.json") == 0o664


# ---------------------------------------------------------------------------------------------
# 2. the claim is taken when the file is published


def test_a_file_written_meanwhile_by_another_run_is_never_replaced(tmp_path):
    """The exists-check happens before the (long) work; a second run writing into the same
    folder in between must not have its file silently replaced."""
    target = tmp_path / "a.wav"

    def slow_write(tmp: Path) -> None:
        tmp.write_bytes(b"ours")
        target.write_bytes(b"theirs")  # the other run publishes first

    with pytest.raises(OutputExistsError, match="written by another run meanwhile") as info:
        fileio.atomic_write(target, slow_write)
    assert info.value.meanwhile
    assert target.read_bytes() == b"theirs"
    assert leftovers(tmp_path) == []
    # asked for, the replacement happens (atomically)
    fileio.atomic_write(target, lambda tmp: tmp.write_bytes(b"ours"), overwrite=True)
    assert target.read_bytes() == b"ours"


@pytest.mark.parametrize("fallback", ["renameat2", "exclusive-create"])
def test_no_clobber_also_without_hard_links(tmp_path, monkeypatch, fallback):
    """FAT and some network filesystems have no hard links: the claim must still refuse an
    existing target (renameat2 RENAME_NOREPLACE, else an exclusive create) and still work
    for a free name."""
    def no_link(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(fileio.os, "link", no_link)
    if fallback == "exclusive-create":
        monkeypatch.setattr(fileio, "_rename_noreplace", lambda tmp, target: False)
    free = tmp_path / "free.wav"
    fileio.atomic_write(free, lambda tmp: tmp.write_bytes(b"new"))
    assert free.read_bytes() == b"new"
    taken = tmp_path / "taken.wav"

    def racing(tmp: Path) -> None:
        tmp.write_bytes(b"ours")
        taken.write_bytes(b"theirs")

    with pytest.raises(OutputExistsError):
        fileio.atomic_write(taken, racing)
    assert taken.read_bytes() == b"theirs"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 3. leftovers of killed runs


def test_stale_part_files_of_dead_runs_are_removed_live_ones_kept(tmp_path, tiny_safetensors):
    """A killed run leaves its hidden temporary file; nothing ever removed them, so a folder
    filled with them run after run.  A live run's temporary file must never be touched."""
    folder = tmp_path / "mels"
    write_mel(folder / "a.npy")
    stale = folder / fileio.part_name("a.wav", pid=dead_pid())
    live = folder / fileio.part_name("b.wav", pid=os.getpid())
    foreign = folder / ".a.wav.12345.notours.part"   # not our pattern: a user's file
    for path in (stale, live, foreign):
        path.write_bytes(b"half a file")
    r = cli("synth", folder, "-c", tiny_safetensors, "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    assert (folder / "a.wav").is_file()
    assert not stale.exists()
    assert live.exists() and foreign.exists()


def test_temporary_names_carry_the_pid(tmp_path):
    """The pid in the name is what makes a leftover recognisable as a dead run's."""
    seen = []
    fileio.atomic_write(tmp_path / "x.npy", lambda tmp: seen.append(tmp.name) or tmp.write_bytes(b"1"))
    assert seen[0].startswith(".x.npy.") and f".{os.getpid()}." in seen[0]
    assert seen[0].endswith(".part")


# ---------------------------------------------------------------------------------------------
# 4. resume in place


def test_synth_twice_in_place_with_skip_existing_rewrites_nothing(tmp_path, tiny_safetensors):
    """`synth dir/` writes dir/a.wav beside dir/a.npy; the resumed run took those outputs for
    copy-synthesis inputs and stopped with "two inputs map to the same output name" (exit 2)."""
    folder = tmp_path / "mels"
    write_mel(folder / "a.npy")
    write_mel(folder / "sub" / "b.npy", seed=1)
    r = cli("synth", folder, "-c", tiny_safetensors, "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    before = {p: fingerprint(p) for p in (folder / "a.wav", folder / "sub" / "b.wav")}
    r = cli("synth", folder, "-c", tiny_safetensors, "--device", "cpu", "--skip-existing")
    assert r.returncode == 0, r.stderr.decode()
    assert "written 0, exist 0, skipped 2, failed 0" in r.stderr.decode()
    assert {p: fingerprint(p) for p in before} == before
    # into an output folder inside the input folder: its wavs are planned outputs, not inputs
    out = folder / "out"
    for flags in ((), ("--skip-existing",)):
        r = cli("synth", folder, "-o", out, "-c", tiny_safetensors, "--device", "cpu", *flags)
        assert r.returncode == 0, r.stderr.decode()
    assert "written 0, exist 0, skipped 2, failed 0" in r.stderr.decode()


def test_mel_then_synth_in_one_folder(tmp_path, tiny_safetensors):
    """`mel dir/` puts a.npy beside the recording a.wav; `synth dir/` then refused the folder
    (exit 2).  The mel is the input and a.wav its output: the recording is never replaced
    without --overwrite, the run resumes with --skip-existing and writes elsewhere with -o."""
    folder = tmp_path / "data"
    recording = write_wav(folder / "a.wav")
    r = cli("mel", folder, "-c", tiny_safetensors)
    assert r.returncode == 0, r.stderr.decode()
    original = fingerprint(recording)
    r = cli("synth", folder, "-c", tiny_safetensors, "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()  # kept and said: not a failure
    lines = r.stderr.decode().splitlines()
    assert any("a.wav: output exists already, kept" in line for line in lines), lines
    assert "two inputs" not in r.stderr.decode()
    assert fingerprint(recording) == original
    r = cli("synth", folder, "-c", tiny_safetensors, "--device", "cpu", "--skip-existing")
    assert r.returncode == 0 and "skipped 1" in r.stderr.decode(), r.stderr.decode()
    r = cli("synth", folder, "-o", tmp_path / "out", "-c", tiny_safetensors, "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.wav"]
    assert fingerprint(recording) == original


def test_synth_then_mel_in_one_folder(tmp_path, tiny_safetensors):
    """The other order: `synth dir/` then `mel dir/`: the mel that was the input is never
    replaced by the mel of its own synthesis; --skip-existing resumes cleanly."""
    folder = tmp_path / "data"
    mel = write_mel(folder / "a.npy")
    r = cli("synth", folder, "-c", tiny_safetensors, "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    original = fingerprint(mel)
    r = cli("mel", folder, "-c", tiny_safetensors)
    assert r.returncode == 0 and b"a.npy: output exists already, kept" in r.stderr
    r = cli("mel", folder, "-c", tiny_safetensors, "--skip-existing")
    assert r.returncode == 0, r.stderr.decode()
    assert fingerprint(mel) == original


def test_audio_named_on_the_command_line_stays_an_input(tmp_path, tiny_safetensors):
    """The rule drops only files found by searching a folder: a file the user names is used,
    so naming a mel and its recording together is still reported as a clash."""
    folder = tmp_path / "data"
    write_mel(folder / "a.npy")
    write_wav(folder / "a.wav")
    r = cli("synth", folder / "a.npy", folder / "a.wav", "-o", tmp_path / "out",
            "-c", tiny_safetensors, "--device", "cpu")
    assert r.returncode == 2 and b"same output name" in r.stderr


# ---------------------------------------------------------------------------------------------
# 5. names in messages


def test_control_characters_in_file_names_are_escaped(tmp_path, tiny_safetensors):
    """A file named with terminal escape codes was echoed raw: it could recolour, retitle or
    rewrite the user's terminal.  The name is shown with the codes escaped; the good file is
    still written."""
    folder = tmp_path / "mels"
    write_mel(folder / "good.npy")
    bad = folder / "a\x1b[31mred.npy"
    bad.write_bytes(b"not a mel")
    r = cli("synth", folder, "-c", tiny_safetensors, "--device", "cpu")
    assert r.returncode == 1
    assert ESC not in r.stderr
    assert "a\\x1b[31mred.npy" in r.stderr.decode()
    assert (folder / "good.wav").is_file()


def test_printable_keeps_ordinary_unicode():
    """Escaping must not mangle names in other scripts."""
    from waveglow_cli.errors import printable

    assert printable("café/中文/ž.wav") == "café/中文/ž.wav"
    assert printable("a\nb\x9b\u202e.wav") == "a\\x0ab\\x9b\\u202e.wav"
    assert printable(os.fsdecode(b"\xff.npy")) == "\\xff.npy"


# ---------------------------------------------------------------------------------------------
# 6. named reasons instead of "internal error"


def test_max_frames_below_the_minimum_is_a_usage_error(tmp_path, tiny_safetensors):
    """--max-frames 1 ended in "internal error (ValueError)" once an input needed cutting."""
    mel = write_mel(tmp_path / "long.npy", frames=40)
    r = cli("synth", mel, "-c", tiny_safetensors, "--device", "cpu", "--max-frames", "1")
    assert r.returncode == 2
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--max-frames 1" in lines[0] and "minimum is" in lines[0], lines
    assert "internal error" not in lines[0]
    assert not (tmp_path / "long.wav").exists()


def test_output_onto_a_device_is_refused(tmp_path, tiny_safetensors):
    """-o /dev/full (or any device or FIFO) is not a regular file: one usage line; with
    --overwrite the device node would otherwise be renamed over."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    mel = write_mel(tmp_path / "a.npy")
    r = cli("synth", mel, "-o", "/dev/full", "-c", tiny_safetensors, "--device", "cpu",
            "--overwrite")
    assert r.returncode == 2
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "/dev/full" in lines[0] and "not a regular file" in lines[0]
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    """ENOSPC surfaced as a bare "[Errno 28]" (or, from a library, no errno at all): the
    message must name the output, and nothing is left under either name."""
    target = tmp_path / "out.wav"

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputWriteError) as info:
        fileio.atomic_write(target, full)
    assert str(info.value) == f"{target}: cannot write: no space left on device"
    assert info.value.errno == errno.ENOSPC
    # soundfile/torch report a full disk as their own RuntimeError: the free space decides

    def library_error(tmp: Path) -> None:
        raise RuntimeError("Error : System error.")

    with pytest.raises(RuntimeError, match="System error"):  # not a full disk: as it was
        fileio.atomic_write(target, library_error)
    monkeypatch.setattr(fileio, "_device_full", lambda folder: True)
    with pytest.raises(OutputWriteError, match="out.wav: cannot write: no space left"):
        fileio.atomic_write(target, library_error)
    assert not target.exists() and leftovers(tmp_path) == []


def test_unexpected_errors_name_their_file():
    """The last-resort line names the file an OSError is about, and keeps "internal error"
    for what is really a bug."""
    from waveglow_cli.cli import _last_resort_message

    message = _last_resort_message(OSError(errno.ENOSPC, "No space left on device", "x.wav"))
    assert message == "error: x.wav: no space left on device"
    assert _last_resort_message(TypeError("boom")).startswith("error: internal error (TypeError")


def test_a_lost_race_counts_as_skipped_under_skip_existing(tmp_path):
    """Two resumed runs on one folder: the one that loses the claim on a file keeps the
    winner's file and counts it as skipped, not as a failure (exit 0); without
    --skip-existing it counts as existing (kept, as if it had been there from the start)."""
    from waveglow_cli.jobs.core import Item, OutputPolicy, run_items

    source = tmp_path / "a.wav"
    source.write_bytes(b"x")
    target = tmp_path / "a.npy"

    def handle(item, data, out, progress):
        out.write_bytes(b"theirs")  # another run publishes first
        fileio.atomic_write(out, lambda tmp: tmp.write_bytes(b"ours"))

    items, outputs = [Item(source, "a.wav")], [target]
    summary = run_items(items, outputs, OutputPolicy(skip_existing=True), handle)
    assert (summary.failed, summary.skipped) == (0, 1)
    assert target.read_bytes() == b"theirs"
    target.unlink()
    summary = run_items(items, outputs, OutputPolicy(), handle)
    assert (summary.failed, summary.existing) == (0, 1)
    assert "output exists" in str(summary.results[0].error)  # kept with the result
    assert target.read_bytes() == b"theirs"
