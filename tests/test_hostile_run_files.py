"""Hostile files in the places the side-file work had not reached: training file
lists and the audio files they name, a ``--resume`` run folder (run.json, metrics.jsonl, the
training state), and the checkpoint cache's bookkeeping (the lock's owner file, a partial
download and its URL record, metadata.json).

Each file is replaced by hand with a symlink to ``/dev/zero``, a FIFO nobody writes, or a
(sparse) file beyond its cap, and the real CLI is run in a subprocess.  A hang is caught by
the subprocess timeout (the guard: it kills the run and fails the test), never by a timing
assertion.  Every case must end in one line naming the file and the reason, with the
documented exit code, or, for our own bookkeeping files, in a fetch that simply works.
Downloads come from the local HTTP server of test_download; nothing else is contacted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, communicate_or_fail, one_error_line
from test_download import FAST, NAME, cli_env, entry_of, http_server, make_settings, srv  # noqa: F401
from test_train import TINY as TRAIN_FLAGS
from test_train import write_clips

from waveglow_cli.checkpoints.cache import cache_paths, fetch_checkpoint
from waveglow_cli.checkpoints.download import partial_path
from waveglow_cli.checkpoints.transfer import state_path as url_record_path
from waveglow_cli.fileio import size_text
from waveglow_cli.training.data import MAX_FILE_LIST_BYTES
from waveglow_cli.training.rundir import (
    MAX_METRICS_BYTES,
    MAX_RUN_FILE_BYTES,
    STATE_BYTES_PER_WEIGHT_BYTE,
    STATE_EXTRA_BYTES,
    STATE_FORMAT,
    truncate_metrics,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                                reason="needs FIFOs and /dev/zero")

ENV = {"OMP_NUM_THREADS": "1"}
GUARD_S = 180  # far beyond any of these runs; only a hang reaches it
KINDS = ("zero", "fifo", "huge")


def run_guarded(*args: object, env: dict[str, str] | None = None,
                timeout: float = GUARD_S) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the CLI; a run past ``timeout`` (a hang) is killed with
    its process group and fails the test."""
    full_env = {**os.environ, "WAVEGLOW_OFFLINE": "1", **ENV, **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "waveglow_cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env,
                            start_new_session=True)
    out, err = communicate_or_fail(proc, timeout, f"waveglow {' '.join(map(str, args))}")
    return proc.returncode, out.decode(), err.decode()


def plant(path: Path, kind: str, cap: int = 0) -> Path:
    """Put at ``path`` (replacing what is there) a symlink to /dev/zero ("zero"), a FIFO
    nobody writes ("fifo") or a sparse file one byte beyond ``cap`` ("huge")."""
    if path.is_symlink() or path.exists():
        path.unlink()
    if kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        with open(path, "wb") as f:
            f.truncate(cap + 1)  # sparse: costs no disk, but fstat says cap + 1 bytes
    return path


REASONS = {"zero": "is a character device, not a regular file",
           "fifo": "is a FIFO, not a regular file"}


def reason(kind: str, cap: int) -> str:
    return REASONS.get(kind) or f"larger than {size_text(cap)}"


# ---------------------------------------------------------------------------------------------
# Training file lists and the audio files they name


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips") / "speech"
    write_clips(folder, 3)
    return folder


@pytest.mark.parametrize("kind", KINDS)
def test_a_file_list_that_is_a_device_a_fifo_or_too_large_is_one_line(tmp_path, kind):
    """The file list used to be read with read_text: behind a swapped name, /dev/zero read
    without end and a FIFO hung.  Now it gets the bounded open: one line, exit 2, no run."""
    file_list = plant(tmp_path / "list.txt", kind, MAX_FILE_LIST_BYTES)
    run_dir = tmp_path / "run"
    code, _, err = run_guarded("train", file_list, "-o", run_dir, *TRAIN_FLAGS,
                               "--max-steps", "1")
    assert code == 2, err
    one_error_line(err, str(file_list), "training file list", reason(kind, MAX_FILE_LIST_BYTES))
    assert not run_dir.exists()


def test_devices_and_fifos_named_as_training_audio_are_skipped_with_a_note(clips, tmp_path):
    """Audio files of a list (or DATA) that are a FIFO or lead to /dev/zero are skipped with a
    note saying what they are; their headers are read from the one descriptor checked, so
    a FIFO is never waited on.  Training goes on with the real files."""
    fifo = plant(tmp_path / "fifo.wav", "fifo")
    zero = plant(tmp_path / "zero.flac", "zero")
    file_list = tmp_path / "list.txt"
    file_list.write_text("".join(f"{p}|text\n" for p in [*sorted(clips.iterdir()), fifo]))
    code, _, err = run_guarded("train", file_list, zero, "-o", tmp_path / "run", *TRAIN_FLAGS,
                               "--batch-size", "2", "--max-steps", "1", "--seed", "1")
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: skipped")]
    assert any(str(fifo) in n and REASONS["fifo"] in n for n in notes), err
    assert any(str(zero) in n and REASONS["zero"] in n for n in notes), err
    assert "training on 3 files" in err


# ---------------------------------------------------------------------------------------------
# A run folder given to --resume


@pytest.fixture(scope="module")
def base_run(clips, tmp_path_factory) -> Path:
    """Two steps with a checkpoint set at step 2: run.json, metrics.jsonl, weights, state."""
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    code, _, err = run_guarded("train", clips, "-o", run_dir, *TRAIN_FLAGS, "--batch-size", "2",
                               "--max-steps", "2", "--checkpoint-every", "2", "--seed", "1")
    assert code == 0, err
    return run_dir


def resume(run_dir: Path) -> tuple[int, str, str]:
    return run_guarded("train", "-o", run_dir, "--resume", "--max-steps", "3", "-q")


def damaged_copy(base_run: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    return run_dir


def edit_run_file(run_dir: Path, change) -> None:
    record = json.loads((run_dir / "run.json").read_text())
    change(record)
    (run_dir / "run.json").write_text(json.dumps(record))


RUN_FILE_DAMAGES = {
    "zero": None, "fifo": None, "huge": None,
    "not-json": ("{ not json", "unreadable"),
    "a-list": ("[1, 2]", "a JSON list, not an object"),
    "deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "options-a-list": (lambda r: r.update(options=[1]), "'options' is not an object"),
    "batch-size-a-text": (lambda r: r["options"].update(batch_size="12"),
                          "options.batch_size is not an integer"),
    "data-not-texts": (lambda r: r["options"].update(data=[1, 2]),
                       "options.data is not a list of texts"),
    "lr-a-flag": (lambda r: r["options"].update(lr=True), "options.lr is not a number"),
}


@pytest.mark.parametrize("damage", list(RUN_FILE_DAMAGES))
def test_a_hostile_run_json_is_one_line(base_run, tmp_path, damage):
    """run.json was read whole with read_text, after an is_file() check by name: /dev/zero or
    a FIFO behind it was ignored ("no run.json to take DATA from"), a swap after the check
    read without end, and a JSON list, a value of the wrong type or deep nesting ended in
    "internal error".  Now: the bounded open (16 MiB) and a check of every field a resume
    uses; one line naming run.json, exit 1, nothing trained."""
    run_dir = damaged_copy(base_run, tmp_path)
    run_file = run_dir / "run.json"
    spec = RUN_FILE_DAMAGES[damage]
    if spec is None:
        plant(run_file, damage, MAX_RUN_FILE_BYTES)
        needle = reason(damage, MAX_RUN_FILE_BYTES)
    elif callable(spec[0]):
        edit_run_file(run_dir, spec[0])
        needle = spec[1]
    else:
        run_file.write_text(spec[0])
        needle = spec[1]
    code, _, err = resume(run_dir)
    assert code == 1, err
    one_error_line(err, str(run_file), needle)
    assert not (run_dir / "step_000003.safetensors").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_a_metrics_file_that_is_a_device_a_fifo_or_too_large_is_one_line(base_run, tmp_path,
                                                                         kind):
    """metrics.jsonl was skipped by is_file() and then opened for appending by name: a FIFO
    hung the resumed run for good, /dev/zero swallowed every record (exit 0).  Now it is
    streamed through the bounded open (1 GiB, a line at a time) and appended to only as a
    regular file: one line naming it, exit 1."""
    run_dir = damaged_copy(base_run, tmp_path)
    metrics = plant(run_dir / "metrics.jsonl", kind, MAX_METRICS_BYTES)
    code, _, err = resume(run_dir)
    assert code == 1, err
    one_error_line(err, str(metrics), "metrics file", reason(kind, MAX_METRICS_BYTES))
    assert not (run_dir / "step_000003.safetensors").exists()


def test_metrics_are_cut_back_line_by_line_dropping_damage(tmp_path):
    """A resumed run keeps the records up to its checkpoint's step.  Lines that are no record
    (not JSON, no step, a line beyond 64 KiB) are dropped, never held whole; a metrics name
    that is a link is replaced by a regular file, and what it pointed to is left alone."""
    records = [json.dumps({"step": step, "loss": -step / 10}) for step in range(1, 6)]
    lines = [records[0], "{ not json", "x" * 200_000, records[1], json.dumps({"loss": 1}),
             records[2], json.dumps({"step": "2"}), records[3], records[4]]
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("\n".join(lines))  # the last line without its newline
    metrics = tmp_path / "metrics.jsonl"
    metrics.symlink_to(elsewhere)
    truncate_metrics(metrics, 3)
    assert not metrics.is_symlink()
    assert metrics.read_text().splitlines() == records[:3]
    assert elsewhere.read_text() == "\n".join(lines)
    truncate_metrics(metrics, 10)   # nothing to drop: kept as it is
    assert metrics.read_text().splitlines() == records[:3]


def state_cap(run_dir: Path) -> int:
    weights = (run_dir / "step_000002.safetensors").stat().st_size
    return STATE_BYTES_PER_WEIGHT_BYTE * weights + STATE_EXTRA_BYTES


STATE_DAMAGES = {
    "zero": None, "fifo": None, "huge": None,
    "not-a-zip": (lambda path: path.write_bytes(b"\x80\x02}q\x00."), "not a training state"),
    "a-pickled-call": (lambda path: torch.save({"format": STATE_FORMAT, "run": os.system},
                                               path), "is not allowed"),
    "another-format": (lambda path: torch.save({"format": "something else", "step": 2}, path),
                       "not a training state file"),
    "no-optimizer": (lambda path: torch.save({"format": STATE_FORMAT, "step": 2}, path),
                     "no optimizer state"),
}


@pytest.mark.parametrize("damage", list(STATE_DAMAGES))
def test_a_hostile_training_state_is_one_line(base_run, tmp_path, damage):
    """The training state was read with torch.load by name: a FIFO planted in its place made
    --resume silently start over from step 0 (and then fail to write there), and its size
    was unbounded.  Now it is read as checkpoints are (our container reader, allow-listed
    unpickler) from the one descriptor checked, within four times its weights file: one
    line naming it, exit 1."""
    run_dir = damaged_copy(base_run, tmp_path)
    state = run_dir / "step_000002.state.pt"
    spec = STATE_DAMAGES[damage]
    if spec is None:
        plant(state, damage, state_cap(run_dir))
        needle = reason(damage, state_cap(run_dir))
    else:
        state.unlink()
        spec[0](state)
        needle = spec[1]
    code, _, err = resume(run_dir)
    assert code == 1, err
    one_error_line(err, str(state), needle)
    assert not (run_dir / "step_000003.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# The checkpoint cache's own files: the lock's owner file, a partial download, its URL record


def owner_file(settings) -> Path:
    lock = cache_paths(entry_of(settings, "tiny"), settings).lock
    lock.parent.mkdir(parents=True, exist_ok=True)
    return lock.with_name(lock.name + ".pid")


def tiny_settings(srv, tmp_path: Path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"]}})


def test_a_fifo_as_the_lock_owner_file_does_not_hang_fetch_or_synth(srv, tmp_path):
    """The owner pid was written with a plain open(): a FIFO planted under its name hung
    `waveglow fetch` (and `synth -c NAME`, which fetches) before the download began.  It is
    now written to a new file and renamed over the name, so the FIFO is replaced."""
    s = tiny_settings(srv, tmp_path)
    owner = plant(owner_file(s), "fifo")
    code, out, err = run_guarded("fetch", "tiny", env=cli_env(s))
    assert code == 0, err
    assert out.strip() == str(cache_paths(entry_of(s, "tiny"), s).converted)
    assert not owner.exists() or owner.is_file()

    s = tiny_settings(srv, tmp_path / "second")
    plant(owner_file(s), "fifo")
    mels = tmp_path / "mels"
    mels.mkdir()
    np.save(mels / "u.npy", np.zeros((TINY["n_mel_channels"], 5), np.float32))
    code, _, err = run_guarded("synth", mels, "-c", "tiny", "-o", tmp_path / "wavs",
                               env=cli_env(s))
    assert code == 0, err
    assert (tmp_path / "wavs" / "u.wav").is_file()


def test_a_link_as_the_lock_owner_file_is_replaced_not_written_through(srv, tmp_path):
    s = tiny_settings(srv, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    owner_file(s).symlink_to(victim)
    code, _, err = run_guarded("fetch", "tiny", env=cli_env(s))
    assert code == 0, err
    assert victim.read_text() == "keep me\n"


HOLD_LOCK = """
import sys, time
from pathlib import Path
from waveglow_cli.checkpoints.lock import CheckpointLock
from waveglow_cli.progress import ProgressReporter
with CheckpointLock(Path(sys.argv[1]), "tiny", ProgressReporter(None)):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_waiter_reading_a_fifo_owner_file_still_gives_up_with_one_line(srv, tmp_path):
    """A waiter reads the holder's pid for its message: a FIFO swapped in for the owner file
    hung that read (open() waits for a writer), so the stall timeout never fired.  Now the
    owner file is opened non-blocking and read only if it is a small regular file."""
    s = tiny_settings(srv, tmp_path)
    lock = cache_paths(entry_of(s, "tiny"), s).lock
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        plant(owner_file(s), "fifo")
        code, _, err = run_guarded("fetch", "tiny",
                                   env=cli_env(s, WAVEGLOW_LOCK_TIMEOUT="1"))
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert code == 1, err
    one_error_line(err, str(lock), "holds the lock", "no progress")
    assert srv.requests() == []


def download_paths(settings) -> tuple[Path, Path]:
    """(the partial download, its URL record) of `tiny` in ``settings``' cache."""
    partial = partial_path(cache_paths(entry_of(settings, "tiny"), settings).original)
    partial.parent.mkdir(parents=True, exist_ok=True)
    return partial, url_record_path(partial)


@pytest.mark.parametrize("planted", ["fifo-url-record", "zero-url-record", "fifo-partial",
                                     "link-partial"])
def test_planted_download_bookkeeping_does_not_hang_or_write_elsewhere(srv, tmp_path, planted):
    """The partial download's URL record was read and written with plain open()s, and the
    partial itself appended to by name: a FIFO in either place hung `fetch`, and a link as
    the partial (with a record naming the right URL) was written through, truncating the
    file it pointed to.  Now the record is read bounded and replaced by rename, and a
    partial that is no regular file is removed before the download starts."""
    s = tiny_settings(srv, tmp_path)
    partial, record = download_paths(s)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    kind, _, where = planted.partition("-")
    if where == "url-record":
        plant(record, kind)
    else:
        record.write_text(json.dumps({"url": f"{srv.base}/files/{NAME}"}))
        if kind == "fifo":
            plant(partial, "fifo")
        else:
            partial.symlink_to(victim)
    code, _, err = run_guarded("fetch", "tiny", env=cli_env(s))
    assert code == 0, err
    assert victim.read_text() == "keep me\n"
    assert cache_paths(entry_of(s, "tiny"), s).original.read_bytes() == srv.data


@pytest.mark.parametrize("kind", ["zero", "fifo"])
def test_a_device_or_fifo_as_the_cache_record_is_named_by_list(srv, tmp_path, kind):
    """metadata.json goes through the shared bounded open now; what `list` says of a record
    that is no regular file is unchanged: exit 0, the problem named."""
    s = tiny_settings(srv, tmp_path)
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    plant(cache_paths(entry_of(s, "tiny"), s).metadata, kind)
    code, out, err = run_guarded("list", "--json", env=cli_env(s))
    assert code == 0, err
    row = {r["name"]: r for r in json.loads(out)}["tiny"]
    assert row["cached"] and row["record_problem"] == "metadata.json is not a regular file"
