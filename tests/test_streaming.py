"""Streaming: audio handed on piece by piece as it is made, byte-identical to files.

A WAV stream's header states the exact length before the audio exists, so ``synth -o -`` can
write each piece as it finishes; one input is made front to back in growing pieces (the first
small), and the piece plan does not depend on the destination, so the stream equals the file.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY, run_cli

HOP = 256


@pytest.fixture(scope="module")
def vocoder(tiny_checkpoint):
    from waveglow_cli import load_vocoder

    return load_vocoder(str(tiny_checkpoint), "cpu")


def _mel(frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((TINY["n_mel_channels"], frames)) * 0.5 - 4).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The encoder: libsndfile's bytes, a block at a time


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32"])
@pytest.mark.parametrize("samples", [0, 1000, 1001])
def test_the_streamed_wav_is_the_file_libsndfile_writes(subtype, samples):
    from waveglow_cli.audio.out import StreamEncoder

    audio = (np.random.default_rng(1).standard_normal(samples) * 0.7).astype(np.float32)
    reference = io.BytesIO()
    sf.write(reference, audio, 22050, subtype=subtype, format="WAV")
    encoder = StreamEncoder("wav", 22050, subtype, samples)
    streamed = (encoder.header() + encoder.encode(audio[:333], "x")
                + encoder.encode(audio[333:], "x") + encoder.trailer())
    assert streamed == reference.getvalue()


def test_float_wav_has_no_peak_chunk_and_is_reproducible(tmp_path):
    """libsndfile's PEAK chunk needs the whole signal and stamps the time: a stream cannot
    carry it, and with it two runs of the same synthesis differ.  Ours has fmt, fact, data."""
    from waveglow_cli.audio.out import StreamEncoder, write_audio_blocks

    audio = (np.random.default_rng(2).standard_normal(999) * 2).astype(np.float32)
    encoder = StreamEncoder("wav", 16000, "FLOAT", audio.size)
    streamed = encoder.header() + encoder.encode(audio, "x") + encoder.trailer()
    assert b"PEAK" not in streamed and streamed[36:40] == b"fact"
    back, rate = sf.read(io.BytesIO(streamed), dtype="float32")
    assert rate == 16000 and np.array_equal(back, audio)  # FLOAT is not clipped
    write_audio_blocks(tmp_path / "a.wav", [audio[:500], audio[500:]], 16000, "FLOAT")
    time.sleep(1.1)  # libsndfile's PEAK chunk would now hold another time stamp
    write_audio_blocks(tmp_path / "b.wav", [audio], 16000, "FLOAT")
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes() == streamed


def test_raw_is_the_wav_data_and_pcm_is_clipped():
    from waveglow_cli.audio.out import StreamEncoder

    audio = np.array([0.5, 3.0, -3.0, -0.25], dtype=np.float32)
    wav = StreamEncoder("wav", 8000, "PCM_16", 4)
    raw = StreamEncoder("raw", 8000, "PCM_16", 4)
    assert raw.header() == b"" and raw.trailer() == b""
    data = raw.encode(audio, "x")
    assert wav.header() + wav.encode(audio, "x") == wav.header() + data
    assert struct.unpack("<4h", data)[1:3] == (32767, -32767) or \
        struct.unpack("<4h", data)[1:3] == (32767, -32768)


def test_a_nan_block_names_the_item():
    from waveglow_cli.audio.out import StreamEncoder
    from waveglow_cli.errors import SynthesisError

    with pytest.raises(SynthesisError, match="item.npy.*NaN"):
        StreamEncoder("wav", 8000, "PCM_16", 2).encode(np.array([0.0, np.nan]), "item.npy")


# ---------------------------------------------------------------------------------------------
# The piece plan


def test_one_item_goes_front_to_back_in_growing_pieces():
    from waveglow_cli.synthesis.plans import plan_pieces

    pieces = plan_pieces(0, 3000, max_frames=1024, margin=20, first=32)
    cores = [p.end - p.start for p in pieces]
    # 4x larger each time up to the largest that fits (1024 - 2 x 20), the rest in one piece
    assert cores == [32, 128, 512, 984, 984, 360] and sum(cores) == 3000
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
    assert all(p.hi - p.lo <= 1024 for p in pieces)
    assert all(p.lo == max(0, p.start - 20) and p.hi == min(3000, p.end + 20) for p in pieces)
    # Short items too (they would fit one piece): the first audio must come early.
    assert [p.end - p.start for p in plan_pieces(0, 100, 1024, 20, first=32)] == [32, 68]
    assert len(plan_pieces(0, 30, 1024, 20, first=32)) == 1
    assert len(plan_pieces(0, 1000, 1024, 20)) == 1  # without a first piece: whole


def test_a_stream_of_nvidias_model_has_few_boundaries():
    """10 s with the 256-channel model's 100-frame margins: three pieces, the last taking the
    rest as soon as it fits, so the stream computes 1193 frames for 861 (it was 1661 with
    pieces doubling from 32); a file is one piece of 861."""
    from waveglow_cli.synthesis.plans import plan_pieces

    stream = plan_pieces(0, 861, 1024, 100, first=32)
    assert [(p.start, p.end) for p in stream] == [(0, 32), (32, 160), (160, 861)]
    assert sum(p.hi - p.lo for p in stream) == 1193
    assert [(p.lo, p.hi) for p in plan_pieces(0, 861, 1024, 100)] == [(0, 861)]


def test_a_long_file_is_cut_into_as_few_pieces_as_the_budget_allows():
    """The first and last pieces need context on one side only, so they are the longest."""
    from waveglow_cli.synthesis.plans import plan_pieces

    pieces = plan_pieces(0, 3000, 1024, 100)
    assert [(p.start, p.end) for p in pieces] == [(0, 924), (924, 1748), (1748, 2572),
                                                 (2572, 3000)]
    assert max(p.hi - p.lo for p in pieces) == 1024


def test_waves_put_every_items_first_piece_first_and_never_two_of_one_item_together():
    from waveglow_cli.synthesis.plans import BatchOptions, plan_pieces, plan_waves

    pieces = [p for i, n in enumerate([300, 40, 900]) for p in plan_pieces(i, n, 1024, 6, 32)]
    batches = plan_waves(pieces, BatchOptions(batch_size=8, max_frames=1024, batch_frames=4096))
    assert {p.item for p in batches[0]} == {0, 1, 2} and all(p.start == 0 for p in batches[0])
    for batch in batches:
        assert len({p.item for p in batch}) == len(batch)
    seen: dict[int, int] = {}
    for batch in batches:  # each item's pieces run in order
        for p in batch:
            assert p.start == seen.get(p.item, 0)
            seen[p.item] = p.end


# ---------------------------------------------------------------------------------------------
# Synthesis


def test_streamed_pieces_join_to_the_whole_synthesis(vocoder):
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions, synthesize

    mel = _mel(700)
    whole = synthesize(vocoder.engine, mel, SynthesisOptions(sigma=0.6, seed=5), key="a.npy")
    pieces = list(vocoder.stream(mel, sigma=0.6, seed=5, key="a.npy"))
    assert pieces[0].size == 32 * HOP and len(pieces) >= 3
    joined = np.concatenate(pieces)
    assert joined.shape == whole.shape == (700 * HOP,)
    np.testing.assert_allclose(joined, whole, atol=1e-5)
    assert not np.array_equal(joined, np.concatenate(list(vocoder.stream(mel, seed=6,
                                                                         key="a.npy"))))


def test_interleaved_items_equal_their_lone_results_and_seeds_override(vocoder):
    from waveglow_cli.synthesis.noise import item_seed
    from waveglow_cli.synthesis.plans import BatchOptions
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer

    mels = {"r1": _mel(300, 1), "r2": _mel(90, 2), "r3": _mel(200, 3)}
    user_keys = {"r1": "a.npy", "r2": "b/c.npy", "r3": "a.npy"}
    batch = BatchOptions(batch_size=8, max_frames=1024, batch_frames=8192, first_piece=32)
    runner = Synthesizer(vocoder.engine, SynthesisOptions(sigma=0.6), batch)
    seeds = {key: item_seed(9, user_keys[key]) for key in mels}
    order, parts = [], {}
    for key, block, done in runner.stream(list(mels.items()), seeds=seeds):
        assert not isinstance(block, Exception)
        order.append(key)
        parts.setdefault(key, []).append(block)
    assert order[:3] == ["r1", "r2", "r3"] or set(order[:3]) == set(mels)  # interleaved
    for key, mel in mels.items():
        alone = np.concatenate(list(vocoder.stream(mel, seed=9, key=user_keys[key])))
        np.testing.assert_allclose(np.concatenate(parts[key]), alone, atol=1e-5)


def test_cancelled_items_stop_being_computed(vocoder):
    from waveglow_cli.synthesis.plans import BatchOptions
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer

    batch = BatchOptions(max_frames=1024, batch_frames=8192, first_piece=32)
    runner = Synthesizer(vocoder.engine, SynthesisOptions(seed=1), batch)
    cancelled: set[str] = set()
    seen = {"a": 0, "b": 0}
    for key, block, done in runner.stream([("a", _mel(900)), ("b", _mel(900))], cancelled):
        seen[key] += 1
        cancelled.add("a")
    assert seen["a"] == 1 and seen["b"] >= 3


def test_one_item_job_writes_standard_output_piece_by_piece(vocoder):
    """Each piece is written and flushed as it is made, the header with the first one."""
    from waveglow_cli.jobs.core import Item, StandardStreams, synthesis_job
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions

    class Recorder(io.BytesIO):
        def __init__(self) -> None:
            super().__init__()
            self.flushes: list[int] = []

        def flush(self) -> None:
            self.flushes.append(self.tell())

    out = Recorder()
    mel = _mel(600)
    job = synthesis_job(vocoder, SynthesisOptions(seed=3), streams=StandardStreams(stdout=out))
    job.load = lambda source, name: (mel, [])
    summary = job.run([Item(Path("x.npy"), "x.npy")], [None])
    assert summary.written == 1, summary.results
    assert out.flushes[0] == 44 + 32 * HOP * 2  # the header and the first piece, at once
    assert len(out.flushes) >= 4 and out.flushes[-1] == len(out.getvalue())
    audio, _ = sf.read(io.BytesIO(out.getvalue()), dtype="float32")
    assert audio.size == 600 * HOP


def test_a_file_is_made_whole_and_a_stream_in_pieces(vocoder, tmp_path):
    """One input to a file takes one forward pass of its frames; to standard output the ramp's
    three (each boundary adds context frames)."""
    from waveglow_cli.jobs.core import Item, StandardStreams, synthesis_job
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions

    class Recording:
        def __init__(self, engine):
            self.engine, self.frames = engine, []
            self.config, self.device, self.dtype = engine.config, engine.device, engine.dtype

        def infer(self, mel, sigma, z, lengths=None):
            self.frames.append(mel.shape[2])
            return self.engine.infer(mel, sigma, z, lengths)

    mel = _mel(600)
    for target, stdout, plan in ((tmp_path / "x.wav", None, [600]), (None, io.BytesIO(), None)):
        recording = Recording(vocoder.engine)
        job = synthesis_job(vocoder.with_engine(recording), SynthesisOptions(seed=3),
                            streams=StandardStreams(stdout=stdout))
        job.load = lambda source, name: (mel, [])
        assert job.run([Item(Path("x.npy"), "x.npy")], [target]).written == 1
        if plan is not None:
            assert recording.frames == plan
        else:
            assert len(recording.frames) == 3 and recording.frames[0] < 100


# ---------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def long_mel(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "long.npy"
    np.save(path, _mel(1200, 7))
    return path


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_streamed_stdout_is_byte_identical_to_the_file_with_its_first_piece(
        tiny_checkpoint, long_mel, tmp_path, subtype):
    """`-o -` equals `-o f.wav --first-piece 32` byte for byte (the same piece plan); a file
    by default is made whole, as `--first-piece 0` makes it."""
    args = ["synth", long_mel, "-c", tiny_checkpoint, "--seed", "4", "--subtype", subtype]
    files = {}
    for name, extra in (("ramp", ["--first-piece", "32"]), ("default", []),
                        ("whole", ["--first-piece", "0"])):
        files[name] = tmp_path / f"{name}.wav"
        done = run_cli(*args, "-o", files[name], *extra)
        assert done.returncode == 0, done.stderr
    streamed = run_cli(*args, "-o", "-")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == files["ramp"].read_bytes()
    assert files["default"].read_bytes() == files["whole"].read_bytes()


def test_raw_and_flac_to_standard_output(tiny_checkpoint, long_mel, tmp_path):
    args = ["synth", long_mel, "-c", tiny_checkpoint, "--seed", "4", "-o", "-"]
    wav = run_cli(*args)
    raw = run_cli(*args, "--format", "raw")
    flac = run_cli(*args, "--format", "flac")
    assert wav.returncode == raw.returncode == flac.returncode == 0, raw.stderr + flac.stderr
    assert raw.stdout == wav.stdout[44:]
    a = sf.read(io.BytesIO(wav.stdout), dtype="int16")[0].astype(np.int32)
    b = sf.read(io.BytesIO(flac.stdout), dtype="int16")[0].astype(np.int32)
    # libsndfile scales floats by 32767 for WAV and by 32768 for FLAC: at most 1 LSB apart.
    assert a.shape == b.shape and np.abs(a - b).max() <= 1
    bad = run_cli("synth", long_mel, "-c", tiny_checkpoint, "-o", tmp_path / "x.wav",
                  "--format", "raw")
    assert bad.returncode == 2 and "standard output" in bad.stderr.decode()
    bad = run_cli(*args, "--format", "flac", "--subtype", "FLOAT")
    assert bad.returncode == 2 and "FLAC" in bad.stderr.decode()


def test_the_first_audio_comes_long_before_the_end(tiny_checkpoint, tmp_path):
    """Timed from outside as a user would: the header and first piece arrive while the
    synthesis of the rest is still running."""
    mel = tmp_path / "longer.npy"
    np.save(mel, _mel(6000, 8))
    process = subprocess.Popen([sys.executable, "-m", "waveglow_cli", "synth", str(mel), "-c",
                                str(tiny_checkpoint), "--seed", "1", "-o", "-"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.read(44 + 32 * HOP * 2)
    first_at = time.monotonic()
    still_running = process.poll() is None
    rest = process.stdout.read()
    process.wait(timeout=300)
    end_at = time.monotonic()
    assert process.returncode == 0, process.stderr.read()
    assert first[:4] == b"RIFF" and len(first + rest) == 44 + 6000 * HOP * 2
    assert still_running and end_at - first_at > 0.5


def test_a_closed_pipe_stops_the_stream_quietly(tiny_checkpoint, tmp_path):
    mel = tmp_path / "longer.npy"
    np.save(mel, _mel(6000, 9))
    process = subprocess.Popen([sys.executable, "-m", "waveglow_cli", "synth", str(mel), "-c",
                                str(tiny_checkpoint), "-o", "-"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.read(1000)[:4] == b"RIFF"
    process.stdout.close()  # the reader goes away (`| head -c 1000`)
    started = time.monotonic()
    process.wait(timeout=120)
    assert process.stderr.read() == b""  # no message: the reader chose to stop
    assert process.returncode == 141  # 128 + SIGPIPE, as a shell pipeline expects
    assert time.monotonic() - started < 60
