"""The job's input/output pipeline: reading and writing overlap with synthesis, in
bounded amounts, and an interrupted or failing writer leaves nothing behind.

These tests prove overlap by order, not by timing: a writer that will not finish its item until
the next item's audio has been made (or the next window read) would wait forever without it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY

from waveglow_cli.jobs.core import SilentProgress

WAIT = 30.0  # seconds a blocked writer waits before the test calls overlap missing


@pytest.fixture(scope="module")
def vocoder(tiny_checkpoint):
    from waveglow_cli import load_vocoder

    return load_vocoder(str(tiny_checkpoint), "cpu")


def _mels(n: int, frames: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"m{i}.npy": (rng.standard_normal((TINY["n_mel_channels"], frames)) - 4
                          ).astype(np.float32) for i in range(n)}


class Produced(SilentProgress):
    """A JobProgress that counts the audio blocks made (called on the synthesis thread).  It is
    told the audio made so far after every flow of every forward pass; a block is made when
    that reaches the end of one.  ``frames``: the blocks' lengths, in the order made."""

    def __init__(self, frames: list[int], sample_rate: int = 22050, hop: int = 256) -> None:
        ends = np.cumsum(frames) * hop / sample_rate
        self.ends = [float(end) for end in ends]
        self.blocks = 0
        self.changed = threading.Condition()

    def produced(self, seconds: float) -> None:
        with self.changed:
            self.blocks = sum(seconds >= end - 1e-9 for end in self.ends)
            self.changed.notify_all()

    def wait_for(self, blocks: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.blocks >= blocks, timeout=WAIT)


def _job(vocoder, mels, writer, window=64):
    from waveglow_cli.jobs.core import Item, SynthesisJob
    from waveglow_cli.synthesis.plans import BatchOptions
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions

    batch = BatchOptions(batch_size=1, max_frames=1024, batch_frames=1024)
    job = SynthesisJob(vocoder.synthesizer(SynthesisOptions(seed=1), batch),
                       lambda source, name: (mels[Path(str(source)).name], []), writer,
                       vocoder.sample_rate, window=window)
    items = [Item(Path(key), key) for key in mels]
    return job, items


def test_the_next_item_is_synthesised_while_the_writer_works(vocoder):
    progress = Produced([40] * 3)
    overlapped = []

    def writer(item, target, mel, blocks):
        audio = np.concatenate(list(blocks))
        if item.key == "m0.npy":  # hold the first item until the second one's audio exists
            overlapped.append(progress.wait_for(2))
        return audio.size

    job, items = _job(vocoder, _mels(3), writer)
    summary = job.run(items, [None] * 3, progress)
    assert summary.written == 3 and overlapped == [True]


def test_the_next_window_is_read_while_this_one_is_written(vocoder):
    mels = _mels(3)
    read: list[str] = []
    read_more = threading.Event()

    def load(source, name):
        read.append(name)
        if len(read) >= 2:
            read_more.set()
        return mels[Path(str(source)).name], []

    overlapped = []

    def writer(item, target, mel, blocks):
        list(blocks)
        if item.key == "m0.npy":
            overlapped.append(read_more.wait(WAIT))
        return 0

    job, items = _job(vocoder, mels, writer, window=1)
    job.load = load
    summary = job.run(items, [None] * 3, Produced([40] * 3))
    assert summary.written == 3 and overlapped == [True]
    assert read == [str(Path(k)) for k in mels]


def test_a_slow_writer_bounds_the_audio_held_in_flight(vocoder):
    progress = Produced([8] * 16)
    written = []
    most_ahead = []

    def writer(item, target, mel, blocks):
        list(blocks)
        time.sleep(0.05)
        written.append(item.key)
        most_ahead.append(progress.blocks - len(written))
        return 0

    job, items = _job(vocoder, _mels(16, frames=8), writer)
    summary = job.run(items, [None] * 16, progress)
    assert summary.written == 16
    # 4 items queued for the writer, each with at most 4 blocks, one being made: never all 16.
    assert max(most_ahead) <= 6


def test_a_writer_failure_fails_that_item_only_and_stops_its_synthesis(vocoder, tmp_path):
    from waveglow_cli.errors import SynthesisError

    def writer(item, target, mel, blocks):
        for block in blocks:
            if item.key == "m1.npy":
                raise SynthesisError(item.display, "disk says no")
        return 1

    job, items = _job(vocoder, _mels(3), writer)
    summary = job.run(items, [None] * 3)
    assert [r.status for r in summary.results] == ["written", "failed", "written"]
    assert "disk says no" in str(summary.results[1].error)


def test_an_interrupt_leaves_no_partial_file_and_counts_what_was_published(vocoder, tmp_path):
    """Ctrl-C while the writer thread has a file open (the item's later pieces are still being
    made): that file is removed, the one published before counts as written."""
    import _thread

    from waveglow_cli.jobs.core import AudioWriter, Item, SynthesisJob
    from waveglow_cli.synthesis.plans import BatchOptions
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions

    mels = {"m0.npy": _mels(1, 10)["m0.npy"], "m1.npy": _mels(1, 200)["m0.npy"],
            "m2.npy": _mels(1, 10)["m0.npy"]}
    outputs = [tmp_path / f"{i}.wav" for i in range(3)]

    class InterruptOnSecondBlock(Produced):
        interrupted = False

        def produced(self, seconds: float) -> None:
            super().produced(seconds)
            # The whole items first: m0 is with the writer, m2 is made.  Once: this is told
            # after every flow.
            if self.blocks == 2 and not self.interrupted:
                self.interrupted = True
                deadline = time.monotonic() + WAIT
                while not outputs[0].exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
                _thread.interrupt_main()  # as Ctrl-C would
                time.sleep(WAIT)

    batch = BatchOptions(batch_size=1, max_frames=60, batch_frames=60)  # m1: 5 pieces
    job = SynthesisJob(vocoder.synthesizer(SynthesisOptions(seed=1), batch),
                       lambda source, name: (mels[Path(str(source)).name], []),
                       AudioWriter(vocoder.sample_rate), vocoder.sample_rate)
    started = time.monotonic()
    summary = job.run([Item(Path(k), k) for k in mels], outputs, InterruptOnSecondBlock([10, 10]))
    assert time.monotonic() - started < WAIT
    assert summary.interrupted == 2, summary
    assert [r.status for r in summary.results] == ["written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.wav"]  # no temporary file left
