"""`waveglow mel` from real audio files of every common kind, and the shell pipeline into synth."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import librosa
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from conftest import TINY, run_cli

SR = 22050


def speech_like(seconds=1.2, sr=SR, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(0.25 / k * np.sin(k * phase) for k in range(1, 25))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 2.5 * t)
    return (voice * envelope + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def expected_mel(x: np.ndarray) -> np.ndarray:
    """An independent formulation: librosa.stft + librosa's Slaney filterbank + log clamp."""
    spec = np.abs(librosa.stft(x.astype(np.float64), n_fft=1024, hop_length=256, win_length=1024,
                               window="hann", center=True, pad_mode="reflect"))
    fb = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0)
    return np.log(np.maximum(fb @ spec, 1e-5))


def assert_close_mel(got: np.ndarray, ref: np.ndarray, tol=2e-3):
    assert got.dtype == np.float32 and got.shape == ref.shape
    above_floor = ref > math.log(1e-4)  # float32 rounding shows in the log only at the floor
    assert above_floor.mean() > 0.5
    assert np.abs(got - ref)[above_floor].max() <= tol
    assert np.abs(np.exp(got) - np.exp(ref)).max() <= 1e-5 * np.exp(ref).max()


@pytest.mark.parametrize("container,subtype", [
    ("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "FLOAT"), ("flac", "PCM_16"), ("flac", "PCM_24"),
    ("ogg", "VORBIS")])
def test_formats_give_the_tacotron2_mel(tmp_path, subtype, container):
    x = speech_like()
    path = tmp_path / f"a.{container}"
    sf.write(path, x, SR, subtype=subtype)
    r = run_cli("mel", path)
    assert r.returncode == 0, r.stderr.decode()
    got = np.load(path.with_suffix(".npy"))
    decoded, _ = sf.read(path, dtype="float32")
    assert got.shape == (80, 1 + decoded.size // 256)
    assert_close_mel(got, expected_mel(decoded))


def test_stereo_is_averaged_and_44k_resampled_with_notes(tmp_path):
    x = speech_like()
    stereo = np.stack([x, 0.5 * x], axis=1)
    sf.write(tmp_path / "st.wav", stereo, SR, subtype="FLOAT")
    x44 = soxr.resample(x, SR, 44100, quality="VHQ").astype(np.float32)
    sf.write(tmp_path / "hi.wav", x44, 44100, subtype="FLOAT")
    r = run_cli("mel", tmp_path / "st.wav", tmp_path / "hi.wav", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr.decode()
    err = r.stderr.decode()
    assert "2 channels averaged to mono" in err and "resampled from 44100 Hz to 22050 Hz" in err
    assert_close_mel(np.load(tmp_path / "out" / "st.npy"), expected_mel(0.75 * x))
    # Resampled speech is not the original to the last bit; its mel is close in the loud bands.
    hi = np.load(tmp_path / "out" / "hi.npy")
    ref = expected_mel(x)
    n = min(hi.shape[1], ref.shape[1])
    loud = ref[:, :n] > math.log(1e-2)
    assert np.abs(hi[:, :n] - ref[:, :n])[loud].mean() < 0.05


def test_samples_beyond_full_scale_are_processed(tmp_path):
    x = 3.0 * speech_like()
    sf.write(tmp_path / "loud.wav", x, SR, subtype="FLOAT")
    r = run_cli("mel", tmp_path / "loud.wav", "-o", tmp_path / "loud.npy")
    assert r.returncode == 0, r.stderr.decode()
    assert_close_mel(np.load(tmp_path / "loud.npy"), expected_mel(x))


def test_bad_inputs_fail_one_by_one(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "good.wav", speech_like(0.5), SR)
    (folder / "text.wav").write_text("this is not audio\n")
    (folder / "empty.flac").write_bytes(b"")
    sf.write(folder / "zero.wav", np.zeros(0, dtype=np.float32), SR)
    sf.write(folder / "tiny.wav", np.zeros(100, dtype=np.float32), SR)
    r = run_cli("mel", folder, "-o", tmp_path / "out")
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert (tmp_path / "out" / "good.npy").exists()
    for name, reason in [("text.wav", "not a readable audio file"), ("empty.flac", "empty"),
                         ("zero.wav", "zero samples"), ("tiny.wav", "samples")]:
        line = next(l for l in err.splitlines() if name in l)
        assert reason in line, line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.npy"]
    assert "Traceback" not in err


def test_pt_format_and_overwrite_rules(tmp_path):
    sf.write(tmp_path / "a.wav", speech_like(0.5), SR)
    r = run_cli("mel", tmp_path / "a.wav", "--format", "pt")
    assert r.returncode == 0, r.stderr.decode()
    tensor = torch.load(tmp_path / "a.pt", weights_only=True)
    assert tensor.dtype == torch.float32 and tensor.shape[0] == 80
    r = run_cli("mel", tmp_path / "a.wav", "--format", "pt")
    assert r.returncode == 0 and b"exist 1" in r.stderr and b"--overwrite" in r.stderr
    r = run_cli("mel", tmp_path / "a.wav", "-o", tmp_path / "a.wav", "--overwrite")
    assert r.returncode == 2 and b"refusing to overwrite an input" in r.stderr
    assert sf.info(tmp_path / "a.wav").frames > 0


def test_stdin_to_stdout(tmp_path):
    x = speech_like(0.6)
    buffer = io.BytesIO()
    sf.write(buffer, x, SR, subtype="PCM_24", format="FLAC")
    r = run_cli("mel", "-", input=buffer.getvalue())
    assert r.returncode == 0, r.stderr.decode()
    got = np.load(io.BytesIO(r.stdout))
    decoded, _ = sf.read(io.BytesIO(buffer.getvalue()), dtype="float32")
    assert_close_mel(got, expected_mel(decoded))


def test_shell_pipeline_mel_into_synth_equals_reference(tmp_path, tiny_checkpoint, tiny_reference):
    """`waveglow mel a.wav -o - | waveglow synth - -o -` in a real shell, with a tiny model
    whose mel settings are read from the checkpoint (4 mels)."""
    x = speech_like(0.5)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    cmd = (f"{sys.executable} -m waveglow_cli mel a.wav -o - -c {tiny_checkpoint} | "
           f"{sys.executable} -m waveglow_cli synth - -o - -c {tiny_checkpoint} --sigma 0 "
           f"--subtype FLOAT > b.wav")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path, capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    audio, rate = sf.read(tmp_path / "b.wav", dtype="float32")
    assert rate == SR
    from waveglow_cli.features.mel import MelConfig, mel_spectrogram

    mel = mel_spectrogram(torch.from_numpy(x), MelConfig(n_mels=TINY["n_mel_channels"]))
    with torch.no_grad():
        expected = tiny_reference.infer(mel, sigma=0.0)[0].numpy()
    assert audio.shape == expected.shape == ((1 + x.size // 256) * 256,)
    assert np.abs(audio - expected).max() <= 1e-4


def test_copy_synthesis_from_audio_files(tmp_path, tiny_checkpoint):
    sf.write(tmp_path / "a.wav", speech_like(0.5), SR)
    r = run_cli("synth", tmp_path / "a.wav", "-o", tmp_path / "out.wav", "-c", tiny_checkpoint,
                "--seed", "1")
    assert r.returncode == 0, r.stderr.decode()
    assert sf.info(tmp_path / "out.wav").frames == (1 + int(0.5 * SR) // 256) * 256


def test_format_follows_the_output_suffix_and_a_summary_is_printed(tmp_path):
    sf.write(tmp_path / "a.wav", speech_like(0.3), SR)
    r = run_cli("mel", tmp_path / "a.wav", "-o", tmp_path / "x.pt")
    assert r.returncode == 0, r.stderr.decode()
    assert torch.load(tmp_path / "x.pt", weights_only=True).shape[0] == 80
    assert r.stderr.decode().strip() == "written 1, exist 0, skipped 0, failed 0"
    r = run_cli("mel", tmp_path / "a.wav", "-o", tmp_path / "x.npy", "--format", "pt")
    assert r.returncode == 2 and b"--format" in r.stderr and not (tmp_path / "x.npy").exists()
    r = run_cli("mel", tmp_path / "a.wav", "-o", tmp_path / "y.npy", "--format", "npy", "-q")
    assert r.returncode == 0 and r.stderr == b"" and np.load(tmp_path / "y.npy").shape[0] == 80
