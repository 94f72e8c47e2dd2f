"""Mels of other toolkits' conventions: every preset converts speech to within a bound
of our own mel of the same audio; the TOML form round-trips; statistics are undone; the
synthesis job and `waveglow mel --from` read them; bad conventions are one clear line.

Each toolkit's mel is computed here by an extractor written from that toolkit's published
parameters (librosa / numpy / torch), not by the library's code."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from test_jobs import KeepAudio
from typer.testing import CliRunner

from waveglow_cli.cli import app

SPEECH = sorted((Path(__file__).parent / "data" / "heldout_speech").glob("*.flac"))
ENV = {"WAVEGLOW_OFFLINE": "1", "COLUMNS": "200"}


def speech(path: Path, rate: int) -> np.ndarray:
    audio, native = sf.read(path, dtype="float32")
    if native != rate:
        audio = soxr.resample(audio, native, rate, quality="HQ").astype(np.float32)
    return audio


# -- independent extractors -------------------------------------------------------------------

def _librosa_stft_magnitude(audio: np.ndarray) -> np.ndarray:
    """librosa.stft defaults as ParallelWaveGAN and Coqui call it: centred, reflect-padded."""
    import librosa

    return np.abs(librosa.stft(audio, n_fft=1024, hop_length=256, win_length=1024,
                               window="hann", center=True, pad_mode="reflect"))


def _slaney(rate: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=rate, n_fft=1024, n_mels=n_mels, fmin=fmin, fmax=fmax)


def _htk_triangles(rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """torchaudio.functional.melscale_fbanks(mel_scale='htk', norm=None), 0 Hz to Nyquist:
    triangles peaking at 1 between HTK-mel-spaced points."""
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    points = 700.0 * (10 ** (np.linspace(0, to_mel(rate / 2), n_mels + 2) / 2595.0) - 1.0)
    lo, centre, hi = points[:-2, None], points[1:-1, None], points[2:, None]
    return np.maximum(0, np.minimum((freqs - lo) / (centre - lo), (hi - freqs) / (hi - centre)))


def _hifigan_magnitude(audio: np.ndarray) -> np.ndarray:
    """HiFi-GAN / BigVGAN meldataset.py: reflect pad (n_fft - hop) / 2, center=False,
    sqrt(re^2 + im^2 + 1e-9)."""
    pad = (1024 - 256) // 2
    x = torch.nn.functional.pad(torch.from_numpy(audio)[None, None], (pad, pad),
                                mode="reflect")[0, 0]
    spec = torch.stft(x, 1024, 256, 1024, torch.hann_window(1024), center=False,
                      return_complex=True)
    return torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9).numpy()


def pwg_mel(path: Path) -> np.ndarray:
    # ParallelWaveGAN ljspeech v1: 80 bands 80-7600 Hz, log10(max(1e-10, mel)).
    return np.log10(np.maximum(1e-10, _slaney(22050, 80, 80, 7600)
                               @ _librosa_stft_magnitude(speech(path, 22050))))


def vocos_mel(path: Path) -> np.ndarray:
    # vocos MelSpectrogramFeatures: 24 kHz, torchaudio (HTK, no norm), power 1, ln clip 1e-7.
    audio = torch.from_numpy(speech(path, 24000))
    spec = torch.stft(audio, 1024, 256, 1024, torch.hann_window(1024), center=True,
                      pad_mode="reflect", return_complex=True).abs().numpy()
    return np.log(np.maximum(_htk_triangles(24000, 1024, 100) @ spec, 1e-7))


def hifigan_mel(path: Path) -> np.ndarray:
    return np.log(np.maximum(_slaney(22050, 80, 0, 8000)
                             @ _hifigan_magnitude(speech(path, 22050)), 1e-5))


def bigvgan_24k_mel(path: Path) -> np.ndarray:
    return np.log(np.maximum(_slaney(24000, 100, 0, 12000)
                             @ _hifigan_magnitude(speech(path, 24000)), 1e-5))


def coqui_mel(path: Path) -> np.ndarray:
    # Coqui AudioProcessor defaults: 20 log10(max(1e-5, mel)) - ref_level_db 20, then
    # symmetric normalisation of [-100, 0] dB onto [-4, 4], clipped.
    db = 20 * np.log10(np.maximum(1e-5, _slaney(22050, 80, 0, None)
                                  @ _librosa_stft_magnitude(speech(path, 22050)))) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def tacotron2_mel(path: Path) -> np.ndarray:
    from waveglow_cli.features.mel import mel_spectrogram

    return mel_spectrogram(speech(path, 22050))[0].numpy()


EXTRACTORS = {"tacotron2": tacotron2_mel, "hifigan": hifigan_mel, "pwg": pwg_mel,
              "coqui": coqui_mel, "vocos": vocos_mel, "bigvgan-24k": bigvgan_24k_mel,
              "bigvgan-22k": hifigan_mel}
# Measured mean |ln difference| per clip (0000, 0004, 0007) when this was written; the bound
# leaves room for other BLAS/librosa versions.
BOUND_NATS = 0.2


@pytest.fixture(scope="module")
def ours() -> dict[str, np.ndarray]:
    return {p.name: tacotron2_mel(p) for p in SPEECH}


def distance(converted: np.ndarray, reference: np.ndarray) -> float:
    frames = min(converted.shape[1], reference.shape[1])
    return float(np.mean(np.abs(converted[:, :frames] - reference[:, :frames])))


def test_the_presets_are_the_ones_the_issue_names():
    from waveglow_cli.features.conventions import PRESETS, resolve_convention

    assert set(PRESETS) == set(EXTRACTORS)
    assert resolve_convention("bigvgan") == PRESETS["bigvgan-24k"]
    assert resolve_convention("PWG") == PRESETS["pwg"]


@pytest.mark.parametrize("preset", sorted(EXTRACTORS))
def test_every_preset_converts_speech_close_to_our_mel(preset, ours):
    from waveglow_cli.features.conventions import PRESETS
    from waveglow_cli.features.mel import MelConfig
    from waveglow_cli.features.melconvert import MelConverter

    converter = MelConverter(PRESETS[preset], MelConfig())
    for path in SPEECH:
        source = EXTRACTORS[preset](path).astype(np.float32)
        converted = converter(source, path.name)
        reference = ours[path.name]
        assert converted.dtype == np.float32 and converted.shape[0] == 80
        assert abs(converted.shape[1] - reference.shape[1]) <= 1
        assert converter.frames_for(source.shape[1]) == converted.shape[1]
        if PRESETS[preset].analysis.sample_rate == 22050:  # same rate: the count is exact
            assert converted.shape[1] == reference.shape[1]
        error = distance(converted, reference)
        assert error <= (1e-6 if preset == "tacotron2" else BOUND_NATS), (path.name, error)
        assert converted.min() >= np.log(1e-5) - 1e-6


def test_uncovered_bands_are_filled_and_said(ours):
    from waveglow_cli.features.conventions import PRESETS
    from waveglow_cli.features.mel import MelConfig
    from waveglow_cli.features.melconvert import MelConverter

    pwg = MelConverter(PRESETS["pwg"], MelConfig())
    (note,) = pwg.notes()
    assert "80-7600 Hz" in note and "3 of our 80 bands" in note
    converted = pwg(pwg_mel(SPEECH[0]))
    # the bands below 80 Hz are not left on the floor
    assert converted[:2].mean() > np.log(1e-5) + 3
    assert MelConverter(PRESETS["vocos"], MelConfig()).notes() == []


def test_a_toml_convention_round_trips_and_converts_like_the_preset(tmp_path, ours):
    from waveglow_cli.features.conventions import PRESETS, convention_from_toml, resolve_convention
    from waveglow_cli.features.melconvert import convert_mel

    for name, preset in PRESETS.items():
        assert convention_from_toml(f"{name}.toml", preset.to_toml()) == preset
    custom = tmp_path / "my-vocos.toml"
    custom.write_text(
        "# what a user would write for vocos\n"
        'name = "my-vocos"\nsample_rate = 24000\nn_fft = 1024\nhop_length = 256\n'
        'win_length = 1024\npadding = "center"\nn_mels = 100\nfmin = 0\n'
        'mel_scale = "htk"\nfilter_norm = "none"\npower = 1\nlog = "ln"\nfloor = 1e-7\n')
    convention = resolve_convention(str(custom))
    assert convention.name == "my-vocos" and convention.fmax_hz == 12000.0
    assert dataclasses.replace(convention, name="vocos", source=PRESETS["vocos"].source) \
        == PRESETS["vocos"]
    source = vocos_mel(SPEECH[1])
    assert np.array_equal(convert_mel(source, convention), convert_mel(source, "vocos"))


def test_a_custom_44khz_power_mel_converts_too(tmp_path, ours):
    """Another rate, FFT size, hop and window, a power mel: the window-energy scaling and the
    time resampling keep it within the presets' bound (measured 0.09-0.13 nats)."""
    import librosa

    from waveglow_cli.features.melconvert import convert_mel

    path = tmp_path / "44k.toml"
    path.write_text('sample_rate = 44100\nn_fft = 2048\nhop_length = 512\nwin_length = 2048\n'
                    'n_mels = 128\npower = 2.0\nfloor = 1e-10\n')
    for clip in SPEECH:
        spec = np.abs(librosa.stft(speech(clip, 44100), n_fft=2048, hop_length=512)) ** 2
        bank = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=128)
        source = np.log(np.maximum(bank @ spec, 1e-10))
        converted = convert_mel(source, str(path))
        assert abs(converted.shape[1] - ours[clip.name].shape[1]) <= 1
        assert distance(converted, ours[clip.name]) <= BOUND_NATS


def test_mean_variance_statistics_are_undone(tmp_path):
    from waveglow_cli.features.conventions import load_mel_stats
    from waveglow_cli.features.inputs import mel_converter
    from waveglow_cli.features.mel import MelConfig

    raw = pwg_mel(SPEECH[2])
    mean, scale = raw.mean(axis=1), raw.std(axis=1) + 0.1
    normalised = ((raw - mean[:, None]) / scale[:, None]).astype(np.float32)
    np.save(tmp_path / "stats.npy", np.stack([mean, scale]))
    plain = mel_converter("pwg", MelConfig())(raw.astype(np.float32))
    undone = mel_converter("pwg", MelConfig(), tmp_path / "stats.npy")(normalised)
    assert np.abs(undone - plain).max() < 1e-3
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "stats.h5", "w") as f:  # ParallelWaveGAN's compute_statistics
        f["mean"], f["scale"] = mean, scale
    stats = load_mel_stats(tmp_path / "stats.h5", 80)
    assert np.allclose(stats.mean, mean) and np.allclose(stats.scale, scale)


def test_conversion_is_vectorised_and_fast():
    """A minute of vocos mel converts in well under the time WaveGlow takes to vocode it."""
    from waveglow_cli.features.melconvert import convert_mel

    source = np.tile(vocos_mel(SPEECH[0]), (1, 24))  # ~60 s
    convert_mel(source[:, :100], "vocos")  # filterbanks built once
    start = time.perf_counter()
    converted = convert_mel(source, "vocos")
    seconds = time.perf_counter() - start
    assert converted.shape[1] > 5000
    assert seconds < 6.0  # measured ~1.5 s on 2 busy cores (30 ms per second of audio)


@pytest.mark.parametrize("text, expected", [
    ('sample_rate = 24000\nn_mels = 100\nhop = 256\n', "unknown key(s) hop"),
    ('n_mels = 100\n', "needs at least sample_rate and n_mels"),
    ('sample_rate = 24000\nn_mels = 100\nmel_scale = "bark"\n', "mel_scale='bark'"),
    ('sample_rate = 24000\nn_mels = 100\nfmax = 20000\n', "fmax=20000 must be <="),
    ('sample_rate = 24000\nn_mels = 100.5\n', "n_mels=100.5 must be a whole number"),
    ('sample_rate = 24000\nn_mels = [1]\n', "must be a finite number"),
    ('sample_rate = = 1\n', "not valid TOML"),
])
def test_a_bad_toml_convention_is_one_line_naming_the_file(tmp_path, text, expected):
    from waveglow_cli.errors import UsageError
    from waveglow_cli.features.conventions import resolve_convention

    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as caught:
        resolve_convention(str(path))
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_other_misuse_is_a_clear_error(tmp_path):
    from waveglow_cli.errors import MelFileError, UsageError
    from waveglow_cli.features.conventions import PRESETS, load_mel_stats, resolve_convention
    from waveglow_cli.features.mel import MelConfig
    from waveglow_cli.features.melconvert import MelConverter

    with pytest.raises(UsageError, match="unknown mel convention 'hifi'.*vocos"):
        resolve_convention("hifi")
    with pytest.raises(UsageError, match="no such mel convention file"):
        resolve_convention(str(tmp_path / "missing.toml"))
    meanvar = dataclasses.replace(PRESETS["pwg"], compression=dataclasses.replace(
        PRESETS["pwg"].compression, normalisation="meanvar"))
    with pytest.raises(UsageError, match="--mel-stats"):
        MelConverter(meanvar, MelConfig())
    np.save(tmp_path / "stats.npy", np.zeros((2, 100)))
    with pytest.raises(UsageError, match="statistics for 100 bands; the convention has 80"):
        load_mel_stats(tmp_path / "stats.npy", 80)
    np.save(tmp_path / "flat.npy", np.zeros(80))
    with pytest.raises(UsageError, match=r"\(2, n_mels\)"):
        load_mel_stats(tmp_path / "flat.npy")
    with pytest.raises(MelFileError, match="x.npy: .*vocos has 100 bands"):
        MelConverter(PRESETS["vocos"], MelConfig())(np.zeros((80, 10)), "x.npy")


def test_a_linear_or_foreign_mel_gets_a_note():
    from waveglow_cli.features.inputs import mel_converter
    from waveglow_cli.features.mel import MelConfig

    converter = mel_converter("pwg", MelConfig())
    mel = pwg_mel(SPEECH[0])
    assert converter.check(mel, "a.npy") is None
    assert "looks like a linear mel" in converter.check(10 ** mel, "a.npy")
    assert "far beyond any audio" in converter.check(mel * 20, "a.npy")  # dB given as log10
    coqui = mel_converter("coqui", MelConfig())
    assert coqui.check(coqui_mel(SPEECH[0]), "c.npy") is None
    assert "outside +-4" in coqui.check(mel * 20, "c.npy")


# -- the command line and the synthesis job ---------------------------------------------------


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=ENV, catch_exceptions=False)
    return result.exit_code, result.stderr


def test_waveglow_mel_from_converts_pwg_and_vocos_files(tmp_path):
    clip = SPEECH[1]
    wav = tmp_path / "clip.wav"
    sf.write(wav, speech(clip, 22050), 22050)
    np.save(tmp_path / "pwg.npy", pwg_mel(clip).T.astype(np.float32))   # (frames, 80): as PWG
    np.save(tmp_path / "vocos.npy", vocos_mel(clip)[None].astype(np.float32))  # (1, 100, T)
    assert run("mel", str(wav), "-o", str(tmp_path / "ours.npy"), "-q")[0] == 0
    ours_mel = np.load(tmp_path / "ours.npy")
    for preset in ("pwg", "vocos"):
        out = tmp_path / f"{preset}.tacotron2.npy"
        code, err = run("mel", str(tmp_path / f"{preset}.npy"), "--from", preset)
        assert code == 0, err
        converted = np.load(out)
        assert converted.shape[0] == 80 and abs(converted.shape[1] - ours_mel.shape[1]) <= 1
        assert distance(converted, ours_mel) <= 0.25
    assert "80-7600 Hz" in run("mel", str(tmp_path / "pwg.npy"), "--from", "pwg", "-o",
                               str(tmp_path / "again.npy"))[1]


def test_waveglow_mel_from_refuses_clearly(tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((80, 20), dtype=np.float32))
    code, err = run("mel", str(tmp_path / "m.npy"), "--from", "nope", "-o", str(tmp_path / "o.npy"))
    assert code == 2 and err.count("\n") == 1 and "unknown mel convention 'nope'" in err
    code, err = run("mel", str(tmp_path / "m.npy"), "--from", "vocos", "-o",
                    str(tmp_path / "o.npy"), "-q")
    assert code == 1 and "m.npy" in err and "vocos has 100 bands" in err
    assert err.count("\n") == 1
    code, err = run("mel", str(tmp_path / "m.npy"), "--mel-stats", "s.npy")
    assert code == 2 and "--mel-stats goes with --from" in err
    code, err = run("mel", str(tmp_path / "m.npy"), "--from", "pwg", "--mel-stats",
                    str(tmp_path / "nope.h5"), "-o", str(tmp_path / "o.npy"))
    assert code == 1 or code == 2
    assert "nope.h5: no such mel statistics file" in err


@pytest.fixture(scope="module")
def demo():
    from waveglow_cli import load_vocoder

    return load_vocoder("demo", "cpu", torch.float32)


def short_clip(tmp_path: Path, seconds: float = 0.5) -> Path:
    """The voiced middle of a held-out clip as a WAV (synthesis time grows with length)."""
    audio = speech(SPEECH[0], 22050)
    start = int(0.6 * 22050)
    path = tmp_path / "short.wav"
    sf.write(path, audio[start:start + int(seconds * 22050)], 22050, subtype="FLOAT")
    return path


def test_a_synthesis_job_vocodes_a_vocos_mel(demo, tmp_path):
    """SynthesisInputReader(converter=...) reads the 100-band mel, converts it, and the job
    vocodes it like our own mel of the same audio."""
    from waveglow_cli.analysis.quality import log_mel_distance
    from waveglow_cli.features.inputs import SynthesisInputReader, mel_converter
    from waveglow_cli.jobs.core import Item, SynthesisJob
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions

    clip = short_clip(tmp_path)
    np.save(tmp_path / "v.npy", vocos_mel(clip).astype(np.float32))
    converter = mel_converter("vocos", demo.mel_config)
    reader = SynthesisInputReader(demo.mel_config, converter=converter)
    mel, notes = reader(tmp_path / "v.npy", "v.npy")
    assert mel.shape[0] == 80 and notes == []
    assert distance(mel, tacotron2_mel(clip)) <= BOUND_NATS

    keep = KeepAudio()
    options = SynthesisOptions(sigma=0.6, seed=0)
    job = SynthesisJob(demo.synthesizer(options, demo.batch), reader, keep, demo.sample_rate)
    start = time.perf_counter()
    summary = job.run([Item(tmp_path / "v.npy", "v.npy")], [None])
    synthesis_s = time.perf_counter() - start
    assert summary.written == 1, summary.results
    audio = keep.audio["v.npy"]
    assert audio.size == mel.shape[1] * 256
    # The demo model's copy synthesis of held-out speech scores 0.9-1.4 nats (docs/demo-model.md)
    assert log_mel_distance(speech(clip, 22050), audio) <= 1.8
    start = time.perf_counter()
    converter(vocos_mel(clip))
    assert time.perf_counter() - start < synthesis_s


def synth_takes_mel_from() -> bool:
    result = CliRunner().invoke(app, ["synth", "--help"], env=ENV)
    return "--mel-from" in result.output


@pytest.mark.skipif(not synth_takes_mel_from(),
                    reason="LEAD: enable by adding --mel-from/--mel-stats to cli/synth.py")
def test_waveglow_synth_mel_from_vocos(tmp_path):
    np.save(tmp_path / "v.npy", vocos_mel(short_clip(tmp_path)).astype(np.float32))
    code, err = run("synth", str(tmp_path / "v.npy"), "-c", "demo", "--mel-from", "vocos",
                    "-o", str(tmp_path / "v.wav"), "--seed", "0", "-q")
    assert code == 0, err
    from waveglow_cli.features.inputs import mel_converter
    from waveglow_cli.features.mel import MelConfig

    audio, rate = sf.read(tmp_path / "v.wav")
    frames = mel_converter("vocos", MelConfig()).frames_for(np.load(tmp_path / "v.npy").shape[1])
    assert rate == 22050 and audio.size == frames * 256
    code, err = run("synth", str(tmp_path / "v.npy"), "-c", "demo", "--mel-from", "nope",
                    "-o", str(tmp_path / "w.wav"))
    assert code == 2 and "unknown mel convention" in err and err.count("\n") == 1
