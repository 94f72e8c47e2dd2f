"""The jobs layer used from Python, without the CLI: a folder of mels to audio files with
per-item results and a summary, failures isolated, progress through callbacks, streams passed
in, and the writer replaceable (what a server or a streaming writer would plug in)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY

from waveglow_cli.jobs.summary import JobProgress


class Recorder(JobProgress):
    """A JobProgress that remembers every call (the audio reports: the protocol's no-ops)."""

    def __init__(self) -> None:
        self.advances: list[float | None] = []
        self.notes: list[str] = []
        self.errors: list[BaseException] = []

    def advance(self, seconds: float | None = None) -> None:
        self.advances.append(seconds)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def failed(self, error: BaseException) -> None:
        self.errors.append(error)


class KeepAudio:
    """An ItemWriter that keeps each item's audio in memory, by key."""

    def __init__(self) -> None:
        self.audio: dict[str, np.ndarray] = {}

    def __call__(self, item, target, mel, blocks):
        self.audio[item.key] = np.concatenate(list(blocks))
        return self.audio[item.key].size


@pytest.fixture(scope="module")
def vocoder(tiny_checkpoint):
    from waveglow_cli import load_vocoder

    return load_vocoder(str(tiny_checkpoint), "cpu")


def mel(frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((TINY["n_mel_channels"], frames)).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    """a.npy, b.npy (good), c.npy (not a mel), sub/d.npy (good)."""
    root = tmp_path / "mels"
    (root / "sub").mkdir(parents=True)
    np.save(root / "a.npy", mel(9, 1))
    np.save(root / "b.npy", mel(5, 2))
    (root / "c.npy").write_bytes(b"not a mel")
    np.save(root / "sub" / "d.npy", mel(7, 3))
    return root


def test_a_folder_job_gives_per_item_results_and_a_summary(vocoder, folder, tmp_path):
    from waveglow_cli.jobs.core import MEL_SUFFIXES, discover, plan_outputs, synthesis_job
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions

    items = discover([str(folder)], MEL_SUFFIXES)
    outputs = plan_outputs(items, str(tmp_path / "out"), ".wav")
    progress = Recorder()
    job = synthesis_job(vocoder, SynthesisOptions(sigma=0.0, seed=0))
    summary = job.run(items, outputs, progress)

    assert [(r.item.key, r.status) for r in summary.results] == [
        ("c.npy", "failed"), ("a.npy", "written"), ("b.npy", "written"),
        ("sub/d.npy", "written")]   # a load failure ends first; the others go on
    assert (summary.written, summary.skipped, summary.failed) == (3, 0, 1)
    assert not summary.stopped
    assert [str(e) for e in progress.errors] == [str(summary.results[0].error)]
    assert "c.npy" in str(progress.errors[0])
    assert len(progress.advances) == 4
    assert summary.seconds == pytest.approx((9 + 5 + 7) * 256 / 22050)
    assert progress.advances[-1] == summary.seconds
    assert summary.line() == \
        f"written 3, exist 0, skipped 0, failed 1 ({summary.seconds:.1f} s of audio)"
    audio, rate = sf.read(tmp_path / "out" / "sub" / "d.wav", dtype="float32")
    assert rate == 22050 and audio.shape == (7 * 256,)
    expected = vocoder(np.load(folder / "sub" / "d.npy"), sigma=0.0).numpy()
    assert np.abs(audio - np.clip(expected, -1, 1)).max() <= 1 / 32767 + 1e-6  # PCM_16

    # again: every output exists; skipped under the skip policy, kept and counted apart by
    # default (not failed: only the unreadable input fails again)
    from waveglow_cli.jobs.core import OutputOptions, OutputPolicy

    again = synthesis_job(vocoder, output=OutputOptions(policy=OutputPolicy(skip_existing=True))
                          ).run(items, outputs)
    assert (again.written, again.skipped, again.failed) == (0, 3, 1)
    kept = synthesis_job(vocoder).run(items, outputs)
    assert (kept.written, kept.existing, kept.skipped, kept.failed) == (0, 3, 0, 1)
    assert kept.existing_targets() == [tmp_path / "out" / name
                                       for name in ("a.wav", "b.wav", "sub/d.wav")]


def test_fail_fast_stops_at_the_first_failure(vocoder, folder, tmp_path):
    from waveglow_cli.jobs.core import MEL_SUFFIXES, discover, plan_outputs, synthesis_job

    items = discover([str(folder)], MEL_SUFFIXES)
    outputs = plan_outputs(items, str(tmp_path / "out"), ".wav")
    summary = synthesis_job(vocoder, fail_fast=True).run(items, outputs)
    assert summary.stopped and summary.failed == 1 and summary.written == 0
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.wav"))


def test_the_writer_is_a_parameter_and_streams_are_passed_in(vocoder):
    """A writer that keeps audio in memory (as a server would), and standard input/output as
    streams: the job's audio is the vocoder's."""
    from waveglow_cli.jobs.core import Item, StandardStreams, SynthesisJob, synthesis_job
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions

    stdin = io.BytesIO()
    np.save(stdin, mel(6, 4))
    stdin.seek(0)
    keep = KeepAudio()
    options = SynthesisOptions(sigma=0.6, seed=3)
    job = synthesis_job(vocoder, options, writer=keep, streams=StandardStreams(stdin=stdin))
    assert isinstance(job, SynthesisJob)
    summary = job.run([Item(None, "-")], [None])
    assert summary.written == 1
    expected = vocoder(mel(6, 4), sigma=0.6, seed=3).numpy()
    # the vocoder's own call keys items "0", "1" ...: the noise depends on the key
    assert keep.audio["-"].shape == expected.shape

    stdin.seek(0)
    stdout = io.BytesIO()
    summary = synthesis_job(vocoder, options, streams=StandardStreams(stdin, stdout)).run(
        [Item(None, "-")], [None])
    assert summary.written == 1
    audio, rate = sf.read(io.BytesIO(stdout.getvalue()), dtype="float32")
    assert rate == 22050
    assert np.abs(audio - np.clip(keep.audio["-"], -1, 1)).max() <= 1 / 32767 + 1e-6


def test_run_items_isolates_failures_and_reports_through_callbacks(tmp_path):
    from waveglow_cli.errors import UsageError
    from waveglow_cli.jobs.core import Item, OutputPolicy, run_items

    sources = [tmp_path / f"{name}.wav" for name in "abc"]
    for path in sources:
        path.write_bytes(b"x")
    items = [Item(path, path.name) for path in sources]
    outputs = [path.with_suffix(".npy") for path in sources]
    outputs[2].write_bytes(b"old")

    def handle(item, source, target, progress):
        if item.key == "a.wav":
            raise RuntimeError("boom")  # not ours: becomes the item's named error
        progress.note(f"{item.key} done")
        target.write_bytes(b"new")

    progress = Recorder()
    summary = run_items(items, outputs, OutputPolicy(skip_existing=True), handle, progress)
    assert [r.status for r in summary.results] == ["failed", "written", "skipped"]
    assert progress.notes == ["b.wav done"] and len(progress.advances) == 3
    assert "a.wav" in str(progress.errors[0]) and "RuntimeError: boom" in str(progress.errors[0])
    assert outputs[2].read_bytes() == b"old"

    with pytest.raises(UsageError, match="exclude each other"):
        OutputPolicy(overwrite=True, skip_existing=True)
    with pytest.raises(UsageError, match="refusing to overwrite an input"):
        run_items(items, [sources[0]] * 3, OutputPolicy(overwrite=True), handle)
