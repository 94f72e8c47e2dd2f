"""`waveglow synth` as a user runs it: real subprocesses, real files, real pipes."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import reference_glow as R
import soundfile as sf
import torch
from conftest import TINY, run_cli, save_nvidia_pickle

N_MELS = TINY["n_mel_channels"]


def reference_audio(ref, mel: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return ref.infer(torch.from_numpy(mel)[None], sigma=0.0)[0].numpy()


@pytest.fixture()
def mel_file(tmp_path):
    mel = np.random.default_rng(0).normal(size=(N_MELS, 12)).astype(np.float32)
    path = tmp_path / "utt.npy"
    np.save(path, mel)
    return path, mel


def test_sigma0_float_output_matches_reference(tmp_path, tiny_checkpoint, tiny_reference, mel_file):
    path, mel = mel_file
    out = tmp_path / "out.wav"
    r = run_cli("synth", path, "-o", out, "--checkpoint", tiny_checkpoint, "--sigma", "0",
                "--subtype", "FLOAT", "--device", "cpu")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b""
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 22050 and sf.info(out).subtype == "FLOAT"
    assert audio.shape == (12 * 256,)
    assert np.abs(audio - reference_audio(tiny_reference, mel)).max() <= 1e-4


def test_pt_mel_stdin_to_stdout_pipeline(tmp_path, tiny_checkpoint, tiny_reference):
    mel = np.random.default_rng(1).normal(size=(N_MELS, 7)).astype(np.float32)
    pt = tmp_path / "m.pt"
    torch.save(torch.from_numpy(mel), pt)
    r = run_cli("synth", "-", "-o", "-", "-c", tiny_checkpoint, "--sigma", "0",
                "--subtype", "FLOAT", input=pt.read_bytes())
    assert r.returncode == 0, r.stderr.decode()
    audio, rate = sf.read(io.BytesIO(r.stdout), dtype="float32")
    assert np.abs(audio - reference_audio(tiny_reference, mel)).max() <= 1e-4


def test_pcm_output_is_clipped_not_wrapped(tmp_path):
    """A model whose output is far beyond full scale: PCM must saturate, never wrap."""
    ref = R.build(**TINY, scale=0.12, seed=3)
    ckpt = save_nvidia_pickle(ref, tmp_path / "loud.pt")
    mel = np.full((N_MELS, 6), 3.0, dtype=np.float32)
    np.save(tmp_path / "m.npy", mel)
    expected = reference_audio(ref, mel)
    assert np.abs(expected).max() > 1.5, "fixture must exceed full scale"
    r = run_cli("synth", tmp_path / "m.npy", "-o", tmp_path / "o.wav", "-c", ckpt, "--sigma", "0")
    assert r.returncode == 0, r.stderr.decode()
    audio, _ = sf.read(tmp_path / "o.wav", dtype="float32")
    clipped = np.clip(expected, -1, 1)
    assert np.abs(audio - clipped).max() < 2 / 32768
    loud = np.abs(expected) > 1
    assert np.all(np.sign(audio[loud]) == np.sign(expected[loud]))


def test_seed_makes_noise_reproducible(tmp_path, tiny_checkpoint, mel_file):
    path, _ = mel_file
    outs = []
    for i, seed in enumerate(("5", "5", "6")):
        out = tmp_path / f"o{i}.wav"
        r = run_cli("synth", path, "-o", out, "-c", tiny_checkpoint, "--seed", seed,
                    "--subtype", "FLOAT")
        assert r.returncode == 0, r.stderr.decode()
        outs.append(sf.read(out)[0])
    assert np.array_equal(outs[0], outs[1])
    assert not np.allclose(outs[0], outs[2])


def test_default_output_beside_input_and_refuses_to_overwrite(tmp_path, tiny_checkpoint, mel_file):
    path, _ = mel_file
    r = run_cli("synth", path, "-c", tiny_checkpoint)
    assert r.returncode == 0, r.stderr.decode()
    out = path.with_suffix(".wav")
    assert out.exists()
    before = out.read_bytes()
    r = run_cli("synth", path, "-c", tiny_checkpoint, "--seed", "1")
    # kept, and said once; not a failure (nothing was wrong with the input): exit 0
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr.decode().splitlines() == [
        "written 0, exist 1, skipped 0, failed 0",
        f"note: {out}: output exists already, kept: --overwrite replaces it, --skip-existing "
        "keeps it quietly"]
    assert out.read_bytes() == before
    r = run_cli("synth", path, "-c", tiny_checkpoint, "--skip-existing")
    assert r.returncode == 0 and out.read_bytes() == before
    r = run_cli("synth", path, "-c", tiny_checkpoint, "--overwrite", "--seed", "1")
    assert r.returncode == 0 and out.read_bytes() != before


def test_never_overwrites_an_input(tmp_path, tiny_checkpoint, mel_file):
    path, _ = mel_file
    victim = tmp_path / "keep.wav"
    victim.write_bytes(b"precious")
    r = run_cli("synth", path, victim, "-o", tmp_path, "-c", tiny_checkpoint, "--overwrite")
    assert victim.read_bytes() == b"precious"
    assert r.returncode in (1, 2)


def test_one_bad_file_does_not_stop_the_others(tmp_path, tiny_checkpoint):
    mels = tmp_path / "mels"
    (mels / "sub").mkdir(parents=True)
    rng = np.random.default_rng(2)
    np.save(mels / "a.npy", rng.normal(size=(N_MELS, 5)).astype(np.float32))
    torch.save(torch.randn(N_MELS, 9), mels / "sub" / "b.pt")
    np.save(mels / "wrong_mels.npy", rng.normal(size=(N_MELS + 1, 5)).astype(np.float32))
    np.save(mels / "transposed.npy", rng.normal(size=(5, N_MELS)).astype(np.float32))
    (mels / "page.pt").write_bytes(b"<!DOCTYPE html><html>Google Drive - Quota exceeded</html>")
    (mels / "garbage.npy").write_bytes(os.urandom(300))
    (mels / "empty.npy").write_bytes(b"")
    np.save(mels / "nan.npy", np.full((N_MELS, 4), np.nan, dtype=np.float32))
    out = tmp_path / "wavs"
    r = run_cli("synth", mels, "-o", out, "-c", tiny_checkpoint, "--batch-size", "3")
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert sf.info(out / "a.wav").frames == 5 * 256
    assert sf.info(out / "sub" / "b.wav").frames == 9 * 256
    # (frames, n_mels) is unambiguous here: transposed, with a note
    assert sf.info(out / "transposed.wav").frames == 5 * 256
    assert "transposed" in next(l for l in err.splitlines() if "transposed.npy" in l)
    for name, reason in [("wrong_mels.npy", "expects 4"), ("page.pt", "HTML page"),
                         ("nan.npy", "NaN"), ("garbage.npy", "not a mel spectrogram"),
                         ("empty.npy", "empty")]:
        line = next(l for l in err.splitlines() if name in l)
        assert line.startswith("error:") and reason in line, line
        assert not (out / name).with_suffix(".wav").exists()
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "written 3, exist 0, skipped 0, failed 5 (0.2 s of audio)"
    assert sorted(p.name for p in out.rglob("*")) == ["a.wav", "b.wav", "sub", "transposed.wav"]
    # --mel-layout CT refuses the transposed file instead, and --fail-fast stops at the first
    r = run_cli("synth", mels / "transposed.npy", "-o", tmp_path / "t.wav", "-c", tiny_checkpoint,
                "--mel-layout", "CT")
    assert r.returncode == 1 and b"transpose it" in r.stderr
    r = run_cli("synth", mels, "-o", tmp_path / "ff", "-c", tiny_checkpoint, "--fail-fast")
    assert r.returncode == 1 and r.stderr.decode().count("error:") == 1


def test_model_producing_nan_writes_nothing(tmp_path):
    ref = R.build(**TINY, seed=4)
    with torch.no_grad():
        ref.WN[0].end.bias.fill_(float("nan"))
    ckpt = save_nvidia_pickle(ref, tmp_path / "nan.pt")
    np.save(tmp_path / "m.npy", np.zeros((N_MELS, 3), dtype=np.float32))
    r = run_cli("synth", tmp_path / "m.npy", "-o", tmp_path / "o.wav", "-c", ckpt)
    assert r.returncode == 1
    assert b"NaN" in r.stderr
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("args,message", [
    (["--device", "cuda:7"], b"CUDA"),
    (["--subtype", "PCM_8"], b"subtype"),
    (["-o", "x.mp3"], b"extension"),
    (["--overwrite", "--skip-existing"], b"exclude"),
    (["--sigma", "-1"], b"sigma"),
])
def test_usage_errors_exit_2(tmp_path, tiny_checkpoint, mel_file, args, message):
    path, _ = mel_file
    r = run_cli("synth", path, "-c", tiny_checkpoint, *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr.decode()
    assert message in r.stderr
    assert b"Traceback" not in r.stderr


def test_bad_checkpoints_fail_cleanly(tmp_path, mel_file):
    path, _ = mel_file
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9")
    for ckpt, code, message in [(truncated, 1, b"truncated"),
                                (tmp_path / "nope.pt", 2, b"no such checkpoint file"),
                                ("no-such-name", 2, b"unknown checkpoint"),
                                ("universal", 1, b"not downloaded")]:
        r = run_cli("synth", path, "-c", ckpt, env={"WAVEGLOW_HOME": str(tmp_path / "home")})
        assert r.returncode == code, (ckpt, r.stderr.decode())
        assert message in r.stderr
        assert len(r.stderr.decode().strip().splitlines()) == 1
    assert not path.with_suffix(".wav").exists()


def test_info_and_convert(tmp_path, tiny_checkpoint, tiny_reference, mel_file):
    r = run_cli("info", tiny_checkpoint)
    assert r.returncode == 0 and b"glow.WaveGlow" in r.stdout and b"n_flows:" in r.stdout
    out = tmp_path / "tiny.safetensors"
    assert run_cli("convert", tiny_checkpoint, out).returncode == 0
    path, mel = mel_file
    r = run_cli("synth", path, "-o", tmp_path / "o.wav", "-c", out, "--sigma", "0",
                "--subtype", "FLOAT")
    assert r.returncode == 0, r.stderr.decode()
    audio, _ = sf.read(tmp_path / "o.wav", dtype="float32")
    assert np.abs(audio - reference_audio(tiny_reference, mel)).max() <= 1e-4

    # --dtype fp16: half the bytes, read back as float32, output close to (not equal) fp32's.
    half = tmp_path / "tiny16.safetensors"
    assert run_cli("convert", tiny_checkpoint, half, "--dtype", "fp16").returncode == 0
    assert half.stat().st_size < 0.6 * out.stat().st_size
    r = run_cli("synth", path, "-o", tmp_path / "h.wav", "-c", half, "--sigma", "0",
                "--subtype", "FLOAT")
    assert r.returncode == 0, r.stderr.decode()
    audio16, _ = sf.read(tmp_path / "h.wav", dtype="float32")
    assert 0 < np.abs(audio16 - audio).max() <= 0.05 * np.abs(audio).max()
    r = run_cli("convert", tiny_checkpoint, tmp_path / "x.safetensors", "--dtype", "int8")
    assert r.returncode == 2 and b"--dtype" in r.stderr


def test_denoiser_removes_the_bias_spectrum(tmp_path, tiny_checkpoint, mel_file):
    """The reference algorithm, written out here with librosa: |STFT| minus strength x bias
    (first frame of the zero-mel output), clamped, inverted with the original phase."""
    import librosa

    from waveglow_cli.checkpoints.reader import read_checkpoint

    path, mel = mel_file
    outs = {}
    for strength in ("0", "0.5"):
        out = tmp_path / f"d{strength}.wav"
        r = run_cli("synth", path, "-o", out, "-c", tiny_checkpoint, "--sigma", "0",
                    "--subtype", "FLOAT", "--denoiser-strength", strength)
        assert r.returncode == 0, r.stderr.decode()
        outs[strength], _ = sf.read(out, dtype="float32")
    raw, denoised = outs["0"], outs["0.5"]
    assert denoised.shape == raw.shape
    model = read_checkpoint(tiny_checkpoint).build_model()
    with torch.no_grad():
        bias_audio = model.infer(torch.zeros(1, N_MELS, 88), sigma=0.0)[0].numpy()
    stft = dict(n_fft=1024, hop_length=256, win_length=1024, window="hann", center=True,
                pad_mode="reflect")
    bias = np.abs(librosa.stft(bias_audio, **stft))[:, :1]
    spec = librosa.stft(raw, **stft)
    cleaned = np.maximum(np.abs(spec) - 0.5 * bias, 0) * np.exp(1j * np.angle(spec))
    expected = librosa.istft(cleaned, hop_length=256, win_length=1024, window="hann",
                             center=True, length=raw.size)
    inner = slice(1024, raw.size - 1024)  # edges differ by window normalisation convention
    assert np.abs(denoised[inner] - expected[inner]).max() < 1e-3
    assert np.abs(denoised - raw).max() > 1e-3  # it did something
