"""Tacotron 2 mel spectrogram and denoiser STFT against independent formulations.

References written here, independently of ``waveglow_cli.features.mel``:

* librosa: ``librosa.stft`` (float64, centred, reflect) -> ``abs`` -> Slaney filterbank -> log(clip);
* an NVIDIA-style float32 ``conv1d`` with a windowed cos/sin basis over the reflect-padded signal
  (the arithmetic of tacotron2's ``stft.py``), for the linear-domain comparison;
* ``librosa.istft`` for the inverse of spectra that are not the STFT of any signal (the denoiser's).
"""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from waveglow_cli.features.mel import (
    STFT,
    MelConfig,
    MelSpectrogram,
    bias_spectrum,
    denoise,
    hann_window,
    mel_spectrogram,
)

SR, N_FFT, HOP, WIN, N_MELS = 22050, 1024, 256, 1024, 80
LOG_FLOOR = math.log(1e-5)


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    n = int(1.5 * SR) + 77  # not a multiple of the hop
    t = np.arange(n) / SR
    f0 = 130.0 + 25.0 * np.sin(2 * np.pi * 5.5 * t)  # vibrato
    phase = 2 * np.pi * np.cumsum(f0) / SR
    harmonics = sum((0.4 / k) * np.sin(k * phase + 0.3 * k) for k in range(1, 25))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.0 * t)  # syllable-rate amplitude modulation
    speech = 0.8 * harmonics * envelope / np.abs(harmonics).max() + 0.005 * rng.standard_normal(n)
    chirp = 0.9 * np.sin(2 * np.pi * (60.0 * t + (10000.0 - 60.0) / (2 * t[-1]) * t**2))
    return {
        "speech": speech,
        "silence": np.zeros(n),
        "white_noise": rng.uniform(-1.0, 1.0, n),
        "chirp": chirp,
        "quiet_noise": 1e-3 * rng.standard_normal(n),
    }


SIGNALS = _signals()


def _as_f32_in_f64(x: np.ndarray) -> np.ndarray:
    # The module rounds input to float32 (as NVIDIA's does); give the references the same samples.
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def librosa_log_mel(x: np.ndarray, window="hann") -> np.ndarray:
    mag = np.abs(librosa.stft(_as_f32_in_f64(x), n_fft=N_FFT, hop_length=HOP, win_length=WIN,
                              window=window, center=True, pad_mode="reflect"))
    fb = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=8000.0)
    return np.log(np.clip(fb.astype(np.float64) @ mag, 1e-5, None))


def float32_window() -> np.ndarray:
    """scipy's periodic Hann, rounded to float32 as NVIDIA's basis holds it."""
    import scipy.signal

    return scipy.signal.get_window("hann", WIN, fftbins=True).astype(np.float32).astype(np.float64)


def conv1d_mel(x: np.ndarray) -> torch.Tensor:
    """NVIDIA-style arithmetic: float32 conv1d with a windowed Fourier basis, in the linear domain."""
    n = np.arange(N_FFT)
    k = np.arange(N_FFT // 2 + 1)[:, None]
    w = float32_window()
    basis = np.concatenate([np.cos(2 * np.pi * k * n / N_FFT) * w,
                            -np.sin(2 * np.pi * k * n / N_FFT) * w])
    weight = torch.from_numpy(basis).float()[:, None, :]
    sig = torch.from_numpy(np.asarray(x, dtype=np.float32))[None, None, :]
    sig = F.pad(sig, (N_FFT // 2, N_FFT // 2), mode="reflect")
    out = F.conv1d(sig, weight, stride=HOP)[0]
    re, im = out[: N_FFT // 2 + 1], out[N_FFT // 2 + 1:]
    mag = torch.sqrt(re**2 + im**2)
    fb = torch.from_numpy(librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0,
                                              fmax=8000.0)).float()
    return fb @ mag


@pytest.fixture(scope="module")
def mel_module() -> MelSpectrogram:
    return MelSpectrogram()


# ----------------------------------------------------------------------------- mel: reference


@pytest.mark.parametrize("name", list(SIGNALS))
def test_log_mel_matches_librosa(mel_module, name):
    x = SIGNALS[name]
    ours = mel_module(torch.from_numpy(x).float())
    assert ours.dtype == torch.float32
    assert ours.shape == (1, N_MELS, 1 + len(x) // HOP)
    ours = ours[0].double().numpy()
    # The module reproduces NVIDIA's float32 arithmetic, whose rounding is ~1e-6 of a frame's
    # largest magnitude; in bands at the 1e-5 floor that shows in the log domain (measured: up
    # to 3.6e-3 for the chirp, whose frames are loud and narrow).  Above 1e-4 (20 dB over the
    # floor) the log mels agree to 2e-3 (measured: <= 1.4e-5), and in the linear domain everywhere.
    for reference in (librosa_log_mel(x), librosa_log_mel(x, window=float32_window())):
        above_floor = reference > math.log(1e-4)
        assert above_floor.mean() > 0.05 or name == "silence"
        assert np.abs(ours - reference)[above_floor].max(initial=0) <= 2e-3
        linear = np.abs(np.exp(ours) - np.exp(reference))
        assert linear.max() <= 1e-6 * max(1.0, np.exp(reference).max())


@pytest.mark.parametrize("name", list(SIGNALS))
def test_linear_mel_matches_float32_conv1d_formulation(mel_module, name):
    x = SIGNALS[name]
    ref = conv1d_mel(x).double()
    ours = torch.exp(mel_module(torch.from_numpy(x).float())[0].double())
    floor = ref < 1e-5  # both sides are clamped there
    diff = (ours - ref.clamp(min=1e-5)).abs()
    # float32 conv1d rounding (measured: <= ~6e-7 of the largest mel value).
    assert diff.max().item() <= 3e-6 * max(1.0, ref.max().item()) + 1e-7, diff.max().item()
    assert torch.all(ours[floor] <= 1e-5 * (1 + 1e-5) + 2e-7)


def test_silence_is_log_floor_everywhere(mel_module):
    out = mel_module(torch.zeros(2, 5000))
    assert out.shape == (2, N_MELS, 1 + 5000 // HOP)
    assert torch.equal(out, torch.full_like(out, LOG_FLOOR))


def test_known_level_of_a_pure_tone(mel_module):
    # A 1 kHz sine of amplitude A, far from the edges: the Hann-windowed DFT peak bins have
    # magnitudes A * sum(w) / 2 * W(delta) where the mel band is the weighted sum of them.  Check the
    # absolute scale against a direct numpy DFT of one centred frame, with no librosa involved.
    n = 8192
    t = np.arange(n) / SR
    x = 0.5 * np.sin(2 * np.pi * 1000.0 * t)
    frame_index = 10
    start = frame_index * HOP - N_FFT // 2  # centred frame, wholly inside the signal
    w = float32_window()
    spec = np.abs(np.fft.rfft(_as_f32_in_f64(x)[start:start + N_FFT] * w))
    fb = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=8000.0)
    expected = np.log(np.maximum(fb.astype(np.float64) @ spec, 1e-5))
    got = mel_module(torch.from_numpy(x).float())[0, :, frame_index].double().numpy()
    loud = expected > math.log(1e-3)  # float32 rounding dominates near the floor
    assert loud.sum() >= 5
    assert np.abs(got - expected)[loud].max() <= 1e-4
    assert np.abs(np.exp(got) - np.exp(expected)).max() <= 1e-6 * np.exp(expected).max()
    assert expected.max() > 0  # loud enough that the check means something


# ------------------------------------------------------------------------- mel: shapes & inputs


@pytest.mark.parametrize("n", [513, 1000, 1024, 256 * 40, 256 * 40 + 255, 22050])
def test_frame_count_and_dtype(mel_module, n):
    x = torch.from_numpy(SIGNALS["speech"][:n]).float()
    out = mel_module(x)
    assert out.shape == (1, N_MELS, 1 + n // HOP)
    assert out.dtype == torch.float32
    assert MelConfig().num_frames(n) == 1 + n // HOP


def test_batch_of_two_equals_each_alone(mel_module):
    a = torch.from_numpy(SIGNALS["speech"]).float()
    b = torch.from_numpy(SIGNALS["chirp"]).float()
    both = mel_module(torch.stack([a, b]))
    assert both.shape[0] == 2
    assert torch.allclose(both[0], mel_module(a)[0], rtol=0, atol=1e-6)
    assert torch.allclose(both[1], mel_module(b[None])[0], rtol=0, atol=1e-6)
    assert not torch.allclose(both[0], both[1], atol=1e-1)


def test_values_beyond_unit_range_are_accepted_and_scale(mel_module):
    x = torch.from_numpy(SIGNALS["speech"]).float()
    loud = mel_module(3.0 * x)  # NVIDIA would assert here; we compute
    assert torch.isfinite(loud).all()
    quiet = mel_module(x)
    unclipped = quiet > LOG_FLOOR + 1.0  # mel is linear in the magnitude: log(3 m) = log 3 + log m
    assert unclipped.float().mean() > 0.5
    assert torch.allclose(loud[unclipped], quiet[unclipped] + math.log(3.0), atol=1e-4)


def test_function_accepts_numpy_and_tensor_batched_or_not():
    x = SIGNALS["speech"][:9000]
    from_np = mel_spectrogram(x)
    from_np32 = mel_spectrogram(x.astype(np.float32))
    from_tensor = mel_spectrogram(torch.from_numpy(x).float()[None])
    assert from_np.shape == (1, N_MELS, 1 + 9000 // HOP)
    assert torch.equal(from_np, from_np32)  # float64 input is rounded to float32 first
    assert torch.equal(from_np, from_tensor)
    assert torch.allclose(from_np, MelSpectrogram()(torch.from_numpy(x)), atol=1e-6, rtol=0)
    batch = mel_spectrogram(np.stack([x, x[::-1].copy()]))
    assert batch.shape == (2, N_MELS, 1 + 9000 // HOP)


def test_function_honours_config():
    cfg = MelConfig(sample_rate=16000, n_fft=512, hop_length=128, win_length=400, n_mels=40,
                    fmin=50.0, fmax=None)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 4000)
    out = mel_spectrogram(x, cfg)
    assert out.shape == (1, 40, 1 + 4000 // 128)
    mag = np.abs(librosa.stft(_as_f32_in_f64(x), n_fft=512, hop_length=128, win_length=400,
                              window="hann", center=True, pad_mode="reflect"))
    fb = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=50.0, fmax=8000.0)
    ref = np.log(np.clip(fb.astype(np.float64) @ mag, 1e-5, None))
    assert np.abs(out[0].double().numpy() - ref).max() <= 2e-3
    assert np.abs(out[0].double().numpy() - ref).max() <= 1e-4  # noise: no floor-level bands


def test_too_short_audio_raises_naming_length(mel_module):
    with pytest.raises(ValueError, match=r"512 samples.*513"):
        mel_module(torch.zeros(512))
    assert mel_module(torch.zeros(513)).shape == (1, N_MELS, 1 + 513 // HOP)


@pytest.mark.parametrize("bad", [torch.zeros(2000, dtype=torch.int16),
                                 np.zeros(2000, dtype=np.int16)])
def test_integer_audio_is_refused(bad):
    with pytest.raises(TypeError, match="floating"):
        mel_spectrogram(bad)


def test_wrong_rank_is_refused(mel_module):
    with pytest.raises(ValueError, match=r"\(S,\) or \(B, S\)"):
        mel_module(torch.zeros(1, 1, 2000))


def test_module_buffers_move_and_state_dict_is_empty(mel_module):
    names = dict(mel_module.named_buffers())
    assert names["mel_basis"].shape == (N_MELS, N_FFT // 2 + 1)
    assert names["window"].shape == (N_FFT,)
    assert mel_module.state_dict() == {}
    fb = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=8000.0)
    assert torch.equal(names["mel_basis"], torch.from_numpy(fb).float())
    assert torch.equal(names["window"], torch.from_numpy(float32_window()).float())
    moved = MelSpectrogram().to("meta")
    assert moved.mel_basis.device.type == "meta" and moved.window.device.type == "meta"


def test_hann_window_is_periodic_and_centred():
    w = hann_window(400, 512).double().numpy()
    import scipy.signal

    ref = np.zeros(512)
    ref[56:456] = scipy.signal.get_window("hann", 400, fftbins=True)
    assert np.abs(w - ref).max() < 1e-7
    assert w[56] == 0.0 and w[55] == 0.0 and w[456] == 0.0 and w[455] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_same_numbers_on_gpu():
    x = torch.from_numpy(np.stack([SIGNALS["speech"], SIGNALS["chirp"]])).float()
    cpu = mel_spectrogram(x)
    gpu = mel_spectrogram(x.cuda())
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max().item() <= 1e-5
    module_gpu = MelSpectrogram().cuda()(x.cuda())
    assert (module_gpu.cpu() - cpu).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------- config


def test_config_defaults_are_nvidias():
    c = MelConfig()
    assert (c.sample_rate, c.n_fft, c.hop_length, c.win_length, c.n_mels) == (22050, 1024, 256, 1024, 80)
    assert (c.fmin, c.fmax, c.clip_min) == (0.0, 8000.0, 1e-5)
    assert MelConfig(fmax=None).fmax_hz == 11025.0


@pytest.mark.parametrize("kwargs, words", [
    ({"n_fft": 0}, ["n_fft=0"]),
    ({"hop_length": -3}, ["hop_length=-3"]),
    ({"win_length": 2048}, ["win_length=2048", "n_fft=1024"]),
    ({"n_fft": 1023, "win_length": 1000}, ["n_fft=1023", "even"]),
    ({"fmax": 12000.0}, ["fmax=12000.0", "11025"]),
    ({"fmin": 9000.0}, ["fmin=9000.0", "fmax=8000.0"]),
    ({"fmin": -1.0}, ["fmin=-1.0"]),
    ({"clip_min": 0.0}, ["clip_min=0.0"]),
    ({"n_mels": 2.5}, ["n_mels=2.5"]),
    ({"sample_rate": True}, ["sample_rate=True"]),
    ({"fmax": float("nan")}, ["fmax=nan"]),
])
def test_config_validation_names_values(kwargs, words):
    with pytest.raises(ValueError) as info:
        MelConfig(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_config_from_dict():
    assert MelConfig.from_dict({}) == MelConfig()
    c = MelConfig.from_dict({"n_fft": 2048, "hop_length": 512, "win_length": None, "n_mels": 128,
                             "fmin": 20, "fmax": None, "sample_rate": 44100.0, "other": "x"})
    assert c == MelConfig(sample_rate=44100, n_fft=2048, hop_length=512, win_length=1024,
                          n_mels=128, fmin=20.0, fmax=8000.0)
    assert isinstance(c.sample_rate, int)
    nv = MelConfig.from_dict({"sampling_rate": 16000, "filter_length": 800, "hop_length": 200,
                              "win_length": 800, "n_mel_channels": 80, "mel_fmin": 0.0,
                              "mel_fmax": 8000.0, "segment_length": 16000})
    assert (nv.sample_rate, nv.n_fft, nv.hop_length) == (16000, 800, 200)
    with pytest.raises(ValueError, match="n_fft"):
        MelConfig.from_dict({"n_fft": 1024, "filter_length": 2048})
    with pytest.raises(ValueError, match="hop_length=0"):
        MelConfig.from_dict({"hop_length": 0})


# --------------------------------------------------------------------------- STFT & denoiser


def test_stft_transform_matches_librosa():
    x = SIGNALS["speech"]
    mag, phase = STFT().transform(torch.from_numpy(x).float()[None])
    ref = librosa.stft(_as_f32_in_f64(x), n_fft=N_FFT, hop_length=HOP, win_length=WIN,
                       window=float32_window(), center=True, pad_mode="reflect")
    assert mag.shape == phase.shape == (1, N_FFT // 2 + 1, 1 + len(x) // HOP)
    assert mag.dtype == torch.float32
    peak = np.abs(ref).max()
    assert np.abs(mag[0].double().numpy() - np.abs(ref)).max() <= 1e-6 * peak
    recombined = mag[0].double().numpy() * np.exp(1j * phase[0].double().numpy())
    assert np.abs(recombined - ref).max() <= 2e-6 * peak


@pytest.mark.parametrize("n", [256 * 30, 256 * 30 + 1, 256 * 30 + 200, 5000])
def test_stft_round_trip(n):
    x = torch.from_numpy(np.stack([SIGNALS["white_noise"][:n], SIGNALS["speech"][:n]])).float()
    stft = STFT()
    mag, phase = stft.transform(x)
    full = stft.inverse(mag, phase, length=n)
    assert full.shape == (2, n) and full.dtype == torch.float32
    assert (full - x).abs().max().item() <= 1e-5  # whole signal, edges included
    reference_length = stft.inverse(mag, phase)  # the reference's length: hop * (T - 1)
    assert reference_length.shape == (2, HOP * (n // HOP))
    assert torch.equal(reference_length, full[:, : HOP * (n // HOP)])
    assert torch.allclose(stft(x), full)


def test_stft_inverse_of_inconsistent_spectrum_matches_librosa_istft():
    # For a spectrum that is no signal's STFT the result depends on the window-sum-square
    # normalisation (not just on "being an inverse"); librosa.istft does the same normalisation.
    x = SIGNALS["speech"][:20000]
    stft = STFT()
    mag, phase = stft.transform(torch.from_numpy(x).float()[None])
    rng = np.random.default_rng(5)
    mag = mag * torch.from_numpy(rng.uniform(0.2, 1.0, mag.shape)).float()
    phase = phase + torch.from_numpy(rng.uniform(-0.5, 0.5, phase.shape)).float()
    ours = stft.inverse(mag, phase, length=len(x))[0].double().numpy()
    spec = mag[0].double().numpy() * np.exp(1j * phase[0].double().numpy())
    ref = librosa.istft(spec, hop_length=HOP, win_length=WIN, n_fft=N_FFT,
                        window=float32_window(), center=True, length=len(x))
    assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    assert np.abs(ours - x).max() > 1e-2  # the perturbation did change the signal


def test_denoise_strength_zero_returns_input():
    x = torch.from_numpy(SIGNALS["speech"][:12345]).float()
    bias = torch.rand(N_FFT // 2 + 1, 1)
    out = denoise(x, bias, strength=0.0)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert (out - x).abs().max().item() <= 1e-5
    batch = denoise(torch.stack([x, -x]), bias, strength=0.0)
    assert batch.shape == (2, 12345)
    assert (batch[1] + x).abs().max().item() <= 1e-5


def test_denoise_subtracts_bias_like_reference():
    rng = np.random.default_rng(9)
    x = SIGNALS["speech"][:15000] + 0.05 * np.sin(2 * np.pi * 3000.0 * np.arange(15000) / SR)
    # A cosine is symmetric about sample 0, so the reflect-padded first frame sees a clean tone.
    bias_audio = 0.05 * np.cos(2 * np.pi * 3000.0 * np.arange(4096) / SR) + 1e-4 * rng.standard_normal(4096)
    bias = bias_spectrum(bias_audio)
    assert bias.shape == (N_FFT // 2 + 1, 1)
    strength = 0.8
    out = denoise(torch.from_numpy(x).float()[None], bias, strength=strength)
    assert out.shape == (1, 15000)
    # Independent: librosa STFT, subtract, clamp, librosa.istft.
    w = float32_window()
    spec = librosa.stft(_as_f32_in_f64(x), n_fft=N_FFT, hop_length=HOP, window=w, center=True,
                        pad_mode="reflect")
    b = np.abs(librosa.stft(_as_f32_in_f64(bias_audio), n_fft=N_FFT, hop_length=HOP, window=w,
                            center=True, pad_mode="reflect"))[:, :1]
    cleaned = np.maximum(np.abs(spec) - strength * b, 0.0) * np.exp(1j * np.angle(spec))
    ref = librosa.istft(cleaned, hop_length=HOP, n_fft=N_FFT, window=w, center=True, length=15000)
    assert np.abs(out[0].double().numpy() - ref).max() <= 1e-4
    # and it did remove most of the 3 kHz tone's energy
    before = np.abs(np.fft.rfft(x))[int(3000 * 15000 / SR)]
    after = np.abs(np.fft.rfft(out[0].double().numpy()))[int(3000 * 15000 / SR)]
    assert after < 0.5 * before


def test_denoise_validates_inputs():
    x = torch.zeros(4000)
    with pytest.raises(ValueError, match="bias_spec"):
        denoise(x, torch.zeros(100, 1))
    with pytest.raises(ValueError, match="strength"):
        denoise(x, torch.zeros(N_FFT // 2 + 1, 1), strength=-0.1)
    out = denoise(x, torch.zeros(1, N_FFT // 2 + 1, 1), strength=0.1)  # NVIDIA's buffer shape
    assert out.shape == (4000,)
