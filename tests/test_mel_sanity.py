"""Mel sanity: a mel in another scale than --mel-scale says (linear magnitude, dB, log10) gets a
note naming the file, what it looks like and what to pass; a real Tacotron 2 mel never does.
Audio beyond full scale is counted where it is converted to PCM (the clipping note)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY, run_cli

from waveglow_cli.audio.io import prepare_audio, read_audio
from waveglow_cli.audio.out import CLIP_NOTE_FRACTION, ClipCount, finalize_audio, write_audio_blocks
from waveglow_cli.features.inputs import load_synthesis_input
from waveglow_cli.features.mel import MelConfig, mel_spectrogram
from waveglow_cli.features.melcheck import (
    SAMPLE_WINDOWS,
    WINDOW_FRAMES,
    MelStats,
    check_mel_scale,
    detect_scale,
    sample_values,
)

SPEECH = sorted((Path(__file__).parent / "data" / "heldout_speech").glob("*.flac"))
CONFIG = MelConfig()
TO_DB = 20 / math.log(10)


@pytest.fixture(scope="module")
def real_mels() -> dict[str, np.ndarray]:
    """Tacotron 2 mels as `waveglow mel` computes them: speech at several levels (loud, quiet,
    near silence), silence, full-scale noise and a sine."""
    names, signals = [], []
    for path in SPEECH:
        samples, rate = read_audio(path)
        mono, _ = prepare_audio(samples, rate, CONFIG.sample_rate, path.name)
        for gain in (3.0, 1.0, 0.1, 0.01, 0.001):
            names.append(f"{path.name}*{gain}")
            signals.append(mono * gain)
    rng = np.random.default_rng(0)
    names += ["silence", "noise", "sine"]
    signals += [np.zeros(11025), rng.standard_normal(11025).clip(-1, 1),
                np.sin(np.arange(11025) * 0.1)]
    # one batch (zero-padded to the longest): the padding only adds silent frames at the end
    batch = np.zeros((len(signals), max(map(len, signals))), np.float32)
    for row, signal in zip(batch, signals):
        row[:len(signal)] = signal
    mels = mel_spectrogram(torch.from_numpy(batch), CONFIG).numpy()
    return {name: mel[:, :1 + len(signal) // CONFIG.hop_length]
            for name, mel, signal in zip(names, mels, signals)}


def test_a_real_tacotron2_mel_never_gets_a_note(real_mels):
    assert len(real_mels) >= 15
    for name, mel in real_mels.items():
        assert check_mel_scale(name, mel, "ln") is None, name


def test_linear_and_db_versions_of_real_mels_are_named(real_mels):
    """exp() of a Tacotron 2 mel is its linear magnitude; 20/ln(10) times it is dB."""
    for name, mel in real_mels.items():
        linear = check_mel_scale(name, np.exp(mel), "ln")
        assert linear is not None and linear.startswith(f"{name}: looks like a linear "
                                                        "magnitude mel (all values >= 0"), name
        assert "natural log" in linear and "--mel-scale" not in linear
        if name in ("noise", "silence"):
            continue  # too narrow a range to call dB safely; no note is better than a wrong one
        db = check_mel_scale(name, mel * TO_DB, "ln")
        assert db is not None and f"{name}: looks like a dB mel" in db, (name, db)
        assert db.endswith("pass --mel-scale db or convert it")
        # told the right scale, nothing to say
        assert check_mel_scale(name, mel * TO_DB, "db") is None
        assert check_mel_scale(name, np.exp(mel), "db") is not None


def test_log10_is_named_by_its_floor_and_ln_by_its_own(real_mels):
    """log10 overlaps the natural log's range (loud noise: -2.9 .. 0.6 in ln), so it is named
    only by its floor log10(1e-5) = -5; a Tacotron 2 mel passed with --mel-scale db or log10
    is named by its floor ln(1e-5) (or, against dB, its narrow range)."""
    quiet = real_mels[f"{SPEECH[0].name}*0.01"]
    assert (quiet == np.float32(math.log(1e-5))).mean() > 0.01
    note = check_mel_scale("q.npy", quiet / math.log(10), "ln")
    assert note is not None and note.startswith("q.npy: looks like a log10 mel")
    assert "floor -5" in note and note.endswith("pass --mel-scale log10 or convert it")
    assert check_mel_scale("q.npy", quiet / math.log(10), "log10") is None
    loud = real_mels["noise"] / math.log(10)  # no floor: not called log10
    assert check_mel_scale("n.npy", loud, "ln") is None
    for given in ("db", "log10"):
        note = check_mel_scale("t.npy", quiet, given)
        assert note is not None and "looks like a natural-log (Tacotron 2) mel" in note
        assert "--mel-scale ln" in note
    assert check_mel_scale("t.npy", real_mels[f"{SPEECH[0].name}*1.0"], "db") is not None
    assert check_mel_scale("t.npy", real_mels[f"{SPEECH[0].name}*1.0"], "log10") is None


def test_other_tools_conventions():
    """librosa's power mel (linear), power_to_db with ref=max and top_db=80 (-80 .. 0), a
    silent dB mel (all -100) and an all-zero mel (nothing to say)."""
    rng = np.random.default_rng(1)
    power = rng.gamma(0.3, 50.0, size=(80, 300))
    assert detect_scale(MelStats.of(power)) == "linear"
    db = 10 * np.log10(np.maximum(power, 1e-10))
    db = np.maximum(db - db.max(), -80.0)
    assert detect_scale(MelStats.of(db)) == "db"
    assert detect_scale(MelStats.of(np.full((80, 50), -100.0))) == "db"
    assert detect_scale(MelStats.of(np.zeros((80, 50)))) is None
    assert detect_scale(MelStats.of(rng.normal(size=(80, 50)))) is None


class CountingArray:
    """An (n_mels, frames) array that records which frames were read."""

    def __init__(self, frames: int) -> None:
        self.shape = (80, frames)
        self.read: list[tuple[int, int]] = []

    def __getitem__(self, key):
        lo, hi = key[1].start, key[1].stop
        self.read.append((lo, hi))
        return np.full((80, hi - lo), -5.0 - lo / self.shape[1], np.float32)


def test_only_a_bounded_sample_is_read():
    """Ten hours of frames: only SAMPLE_WINDOWS windows of WINDOW_FRAMES are touched, spread
    from the first frame to the last."""
    data = CountingArray(10 * 3600 * 86)
    values = sample_values(data)  # type: ignore[arg-type]
    assert values.shape == (80, SAMPLE_WINDOWS * WINDOW_FRAMES)
    assert len(data.read) == SAMPLE_WINDOWS
    assert data.read[0][0] == 0 and data.read[-1][1] == data.shape[1]
    assert sum(hi - lo for lo, hi in data.read) == SAMPLE_WINDOWS * WINDOW_FRAMES


def test_loaded_files_get_the_note(tmp_path, real_mels):
    """Through the synthesis reader (a memory-mapped .npy, a .pt, transposed or not): the note
    names the file; the mel itself is unchanged."""
    mel = real_mels[f"{SPEECH[1].name}*1.0"]
    np.save(tmp_path / "lin.npy", np.exp(mel).T)
    torch.save(torch.from_numpy(mel * TO_DB), tmp_path / "db.pt")
    np.save(tmp_path / "ok.npy", mel)
    got, notes = load_synthesis_input(tmp_path / "lin.npy", "mels/lin.npy", CONFIG, lazy=True)
    assert any(n.startswith("mels/lin.npy: looks like a linear magnitude mel") for n in notes)
    assert np.allclose(np.asarray(got), np.exp(mel))
    got, notes = load_synthesis_input(tmp_path / "db.pt", "db.pt", CONFIG)
    assert notes and notes[0].startswith("db.pt: looks like a dB mel")
    got, notes = load_synthesis_input(tmp_path / "db.pt", "db.pt", CONFIG, scale="db")
    assert notes == [] and np.allclose(got, mel, atol=1e-4)
    assert load_synthesis_input(tmp_path / "ok.npy", "ok.npy", CONFIG)[1] == []
    assert load_synthesis_input(SPEECH[0], "speech.flac", CONFIG)[1] == []


def test_synth_prints_the_notes(tmp_path, tiny_checkpoint, real_mels):
    """`waveglow synth` of a folder with a linear and a dB mel and no --mel-scale: a `note:`
    line for each naming the file and its scale; both are still written."""
    rows = [0, 20, 40, 79][:TINY["n_mel_channels"]]
    mel = real_mels[f"{SPEECH[2].name}*1.0"][rows, :40]
    folder = tmp_path / "mels"
    folder.mkdir()
    np.save(folder / "lin.npy", np.exp(mel))
    np.save(folder / "db.npy", mel * TO_DB)
    r = run_cli("synth", folder, "-o", tmp_path / "out", "-c", tiny_checkpoint)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert f"note: {folder / 'lin.npy'}: looks like a linear magnitude mel" in err, err
    assert f"note: {folder / 'db.npy'}: looks like a dB mel" in err, err
    assert "--mel-scale db" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["db.wav", "lin.wav"]


def test_clipping_is_counted_where_audio_becomes_pcm(tmp_path):
    """finalize_audio and write_audio_blocks count the samples beyond full scale; the note
    names the output and the share once more than CLIP_NOTE_FRACTION clipped."""
    clips = ClipCount()
    out = finalize_audio(np.array([0.5, 1.5, -2.0, 1.0], np.float32), "x", "PCM_16", clips)
    assert out.tolist() == [0.5, 1.0, -1.0, 1.0] and (clips.samples, clips.clipped) == (4, 2)
    assert clips.note("out.wav") == ("out.wav: 50% of samples clipped at full scale; the mel is "
                                     "probably not a natural-log Tacotron 2 mel (see --mel-scale)")
    clips = ClipCount()
    blocks = [np.full(680, 3.0, np.float32), np.zeros(320, np.float32)]
    n = write_audio_blocks(tmp_path / "o.wav", iter(blocks), 22050, "PCM_16", clips=clips)
    assert n == 1000 and (clips.samples, clips.clipped) == (1000, 680)
    assert clips.note("o.wav").startswith("o.wav: 68% of samples clipped at full scale")
    assert sf.read(tmp_path / "o.wav")[0].max() <= 1.0
    # FLOAT keeps the samples; the note says they clip when played
    clips = ClipCount()
    finalize_audio(np.array([2.0] + [0.0] * 49, np.float32), "x", "FLOAT", clips)
    assert "2.0% of samples beyond full scale" in clips.note("f.wav")
    # a few clipped samples are no news
    clips = ClipCount()
    few = int(CLIP_NOTE_FRACTION * 10_000)
    finalize_audio(np.concatenate([np.full(few, 1.2), np.zeros(10_000 - few)]), "x", "PCM_16",
                   clips)
    assert clips.clipped == few and clips.note("a.wav") is None
    assert ClipCount().note("empty.wav") is None
    # without a counter, as before
    assert write_audio_blocks(tmp_path / "p.wav", iter(blocks), 22050) == 1000
