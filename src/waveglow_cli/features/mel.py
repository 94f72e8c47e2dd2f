"""Tacotron 2 mel spectrograms and the STFT of WaveGlow's denoiser, as NVIDIA compute them.

The numbers are those of NVIDIA's ``tacotron2/layers.py`` ``TacotronSTFT.mel_spectrogram``
(built on ``stft.py`` and ``audio_processing.py``), which WaveGlow was trained on:

* frames are centred: the signal is reflect-padded by ``n_fft // 2`` on each side, so a signal of
  ``S`` samples gives ``1 + S // hop_length`` frames;
* the analysis window is a *periodic* Hann window of ``win_length`` samples
  (``scipy.signal.get_window('hann', win_length, fftbins=True)``), zero-padded on both sides to
  ``n_fft`` (left pad ``(n_fft - win_length) // 2``);
* the spectrogram is the *magnitude* ``sqrt(re**2 + im**2)`` of the one-sided DFT (no power, no
  normalisation of the DFT);
* mel filters are librosa's Slaney-style, area-normalised triangles
  (``librosa.filters.mel(sr=..., n_fft=..., n_mels=..., fmin=..., fmax=...)``, ``htk=False``);
* the result is ``log(clamp(mel, min=1e-5))`` (natural log), float32.

NVIDIA computes the DFT as a ``conv1d`` with a windowed Fourier basis in float32, and so do we,
op for op (basis built in the same order, same padding, same magnitude and matmul), because the
checkpoints were trained on those numbers: near the 1e-5 floor (quiet bands of loud frames)
float32 rounding shows in the log domain by up to a few 1e-3, and an "exact" float64 STFT would
differ from the reference by that much.  On the CPU we match NVIDIA's TacotronSTFT to within
1e-6 in the log domain (measured on speech-like audio, noise and a chirp; the only difference is
a correctly rounded square root, see _conv_magnitude); on CUDA the convolution runs without
TF32.  Unlike NVIDIA we do not assert that the input lies in ``[-1, 1]``: louder input is
processed as is.

:class:`STFT` reproduces ``stft.py``'s ``STFT.transform``/``STFT.inverse`` (magnitude and phase
out, overlap-add with division by the window's sum-square envelope and ``n_fft // 2`` trims back),
which is all WaveGlow's ``denoiser.py`` needs; :func:`denoise` is that denoiser given a bias
spectrum computed elsewhere (this module never loads a model).

Shapes: B batch, S samples, M mel channels, K = n_fft // 2 + 1 frequency bins, T frames.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "STFT",
    "MelConfig",
    "MelSpectrogram",
    "bias_spectrum",
    "denoise",
    "hann_window",
    "log_mel_frames",
    "mel_filterbank",
    "mel_spectrogram",
]

# Keys NVIDIA's configs use for the same quantities (tacotron2 hparams, waveglow config.json).
_ALIASES = {
    "filter_length": "n_fft",
    "n_mel_channels": "n_mels",
    "sampling_rate": "sample_rate",
    "mel_fmin": "fmin",
    "mel_fmax": "fmax",
}
_KEYS = ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax", "clip_min")


def _as_int(name: str, value: Any, problems: list[str]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        problems.append(f"{name}={value!r} must be an integer")
        return None
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        problems.append(f"{name}={value!r} must be an integer")
        return None
    return int(value)


def _as_float(name: str, value: Any, problems: list[str]) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        problems.append(f"{name}={value!r} must be a number")
        return None
    if not math.isfinite(float(value)):
        problems.append(f"{name}={value!r} must be finite")
        return None
    return float(value)


@dataclass(frozen=True)
class MelConfig:
    """Analysis parameters.  Defaults are NVIDIA's Tacotron 2 / WaveGlow ones (LJ Speech,
    22.05 kHz).

    ``fmax=None`` means the Nyquist frequency ``sample_rate / 2``.  ``n_fft`` must be even (the
    reference's bin count and frame count assume it).  Integral floats (``22050.0``) are accepted
    and stored as ints.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0
    clip_min: float = 1e-5

    def __post_init__(self) -> None:
        problems: list[str] = []
        ints = {}
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            value = _as_int(name, getattr(self, name), problems)
            if value is not None:
                if value < 1:
                    problems.append(f"{name}={value} must be >= 1")
                ints[name] = value
                object.__setattr__(self, name, value)
        fmin = _as_float("fmin", self.fmin, problems)
        fmax = None if self.fmax is None else _as_float("fmax", self.fmax, problems)
        clip_min = _as_float("clip_min", self.clip_min, problems)
        if fmin is not None:
            object.__setattr__(self, "fmin", fmin)
        if fmax is not None:
            object.__setattr__(self, "fmax", fmax)
        if clip_min is not None:
            object.__setattr__(self, "clip_min", clip_min)
            if clip_min <= 0:
                problems.append(f"clip_min={clip_min} must be > 0")

        n_fft, win = ints.get("n_fft"), ints.get("win_length")
        if n_fft is not None and n_fft >= 1 and n_fft % 2:
            problems.append(f"n_fft={n_fft} must be even")
        if n_fft is not None and win is not None and win > n_fft:
            problems.append(f"win_length={win} must be <= n_fft={n_fft}")
        sr = ints.get("sample_rate")
        nyquist = sr / 2 if sr is not None and sr >= 1 else None
        top = (nyquist if self.fmax is None else fmax)
        if fmin is not None and fmin < 0:
            problems.append(f"fmin={fmin} must be >= 0")
        if fmax is not None and nyquist is not None and fmax > nyquist:
            problems.append(f"fmax={fmax} must be <= sample_rate/2={nyquist}")
        if fmin is not None and top is not None and fmin >= top:
            problems.append(f"fmin={fmin} must be < fmax={top}")
        if problems:
            raise ValueError("invalid mel configuration: " + "; ".join(problems))

    @property
    def fmax_hz(self) -> float:
        """Upper edge of the filterbank in Hz (``fmax``, or ``sample_rate / 2`` when it is None)."""
        return self.sample_rate / 2 if self.fmax is None else float(self.fmax)

    @property
    def n_freqs(self) -> int:
        """Number of one-sided frequency bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def min_samples(self) -> int:
        """Shortest signal that can be reflect-padded by ``n_fft // 2``: ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    def num_frames(self, n_samples: int) -> int:
        """Frames produced for ``n_samples`` samples: ``1 + n_samples // hop_length``."""
        return 1 + int(n_samples) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MelConfig:
        """Build from a mapping.

        Accepts our names (``sample_rate, n_fft, hop_length, win_length, n_mels, fmin, fmax,
        clip_min``) and NVIDIA's (``sampling_rate, filter_length, n_mel_channels, mel_fmin,
        mel_fmax``).  Keys whose value is None keep the default (so ``fmax=None`` here means the
        default 8000 Hz; pass ``MelConfig(fmax=None)`` for Nyquist).  Other keys are ignored, so a
        whole ``config.json`` section can be passed.  Two spellings of one key with different values
        raise ValueError.
        """
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            name = _ALIASES.get(key, key)
            if name not in _KEYS or value is None:
                continue
            if name in kwargs and kwargs[name] != value:
                raise ValueError(
                    f"conflicting mel settings: {name}={kwargs[name]!r} and {key}={value!r}")
            kwargs[name] = value
        return cls(**kwargs)


def hann_window(win_length: int, n_fft: int | None = None) -> Tensor:
    """Periodic Hann window (scipy ``get_window('hann', win_length, fftbins=True)``), float32,
    zero-padded centred to ``n_fft`` (left pad ``(n_fft - win_length) // 2``, like librosa
    ``pad_center``)."""
    n_fft = win_length if n_fft is None else n_fft
    if win_length < 1 or n_fft < win_length:
        raise ValueError(f"need 1 <= win_length={win_length} <= n_fft={n_fft}")
    from scipy.signal import get_window  # the reference's window, to the last bit

    window = get_window("hann", win_length, fftbins=True)
    left = (n_fft - win_length) // 2
    padded = np.zeros(n_fft, dtype=np.float64)
    padded[left:left + win_length] = window
    return torch.from_numpy(padded).float()


@functools.lru_cache(maxsize=16)
def _mel_filterbank_np(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                       fmax: float | None) -> np.ndarray:
    import librosa  # imported lazily: it is slow to import and only needed here

    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                htk=False, norm="slaney")
    basis = basis.astype(np.float32)
    basis.setflags(write=False)
    return basis


def mel_filterbank(config: MelConfig | None = None) -> Tensor:
    """librosa's Slaney mel filterbank for ``config``, float32, shape (M, K)."""
    c = config or MelConfig()
    return torch.from_numpy(
        _mel_filterbank_np(c.sample_rate, c.n_fft, c.n_mels, c.fmin, c.fmax).copy())


def _as_audio(audio: Tensor | np.ndarray, what: str = "audio") -> tuple[Tensor, bool]:
    """Float32 (B, S) tensor from a (S,) or (B, S) tensor/array; also says whether it was 1-D."""
    if isinstance(audio, np.ndarray):
        if not (np.issubdtype(audio.dtype, np.floating)):
            raise TypeError(f"{what} must be floating point in [-1, 1], got numpy {audio.dtype}")
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    elif not isinstance(audio, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or numpy array, got {type(audio).__name__}")
    if not torch.is_floating_point(audio):
        # int16 PCM cast to float would be 32768x too loud; make the caller scale it.
        raise TypeError(f"{what} must be floating point in [-1, 1], got {audio.dtype}")
    if audio.dim() not in (1, 2):
        raise ValueError(f"{what} must have shape (S,) or (B, S), got {tuple(audio.shape)}")
    unbatched = audio.dim() == 1
    if unbatched:
        audio = audio.unsqueeze(0)
    if audio.size(0) == 0:
        raise ValueError(f"{what} has an empty batch, shape {tuple(audio.shape)}")
    return audio.float(), unbatched


def _check_length(n_samples: int, n_fft: int, what: str = "audio") -> None:
    # Reflect padding by n_fft // 2 needs more than n_fft // 2 samples.  NVIDIA's code fails here
    # too (inside F.pad); we refuse clearly rather than pad with made-up samples, which would give
    # numbers the reference never produces.
    if n_samples <= n_fft // 2:
        raise ValueError(
            f"{what} has {n_samples} samples; at least n_fft // 2 + 1 = {n_fft // 2 + 1} are "
            f"needed to reflect-pad by n_fft // 2 = {n_fft // 2}")


def _complex_stft(audio: Tensor, window: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """Centred, reflect-padded, one-sided, unnormalised STFT of (B, S) real -> (B, K, T) complex."""
    return torch.stft(audio, n_fft=n_fft, hop_length=hop_length, win_length=n_fft,
                      window=window.to(device=audio.device, dtype=audio.dtype), center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)


def fourier_basis(n_fft: int, window: Tensor) -> Tensor:
    """NVIDIA's analysis basis: rows cos / -sin of the one-sided DFT, times the window, as a
    float32 conv1d weight (2K, 1, n_fft).  Built in the reference's order (float64 DFT matrix,
    cast to float32, then multiplied by the float32 window) so it is bit-identical to it."""
    dft = np.fft.fft(np.eye(n_fft))
    cutoff = n_fft // 2 + 1
    basis = np.vstack([np.real(dft[:cutoff, :]), np.imag(dft[:cutoff, :])])
    return torch.tensor(basis[:, None, :], dtype=torch.float32) * window.float()


def _conv_magnitude(audio: Tensor, basis: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """|STFT| (B, K, T) by NVIDIA's arithmetic: reflect pad, float32 conv1d, sqrt(re^2 + im^2)."""
    x = F.pad(audio.unsqueeze(1), (n_fft // 2, n_fft // 2), mode="reflect")
    return _padded_magnitude(x, basis, n_fft, hop_length)


def _padded_magnitude(x: Tensor, basis: Tensor, n_fft: int, hop_length: int) -> Tensor:
    """|STFT| (B, K, T) of an already padded (B, 1, S) signal: one frame per hop, no padding."""
    if x.is_cuda:  # TF32 convolutions would cost ~1e-3 relative accuracy
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            spec = F.conv1d(x, basis.to(x.device), stride=hop_length)
    else:
        spec = F.conv1d(x, basis.to(x.device), stride=hop_length)
    cutoff = n_fft // 2 + 1
    power = spec[:, :cutoff, :] ** 2 + spec[:, cutoff:, :] ** 2
    if power.device.type == "cpu":
        # numpy's float32 sqrt is the correctly rounded hardware instruction, the bits NVIDIA's
        # torch.sqrt gives.  torch's own vectorised CPU sqrt was not repeatable on this
        # machine: in some processes (measured: 8 in 60) half of the elements of the first call
        # came out ~1e-4 off.
        return torch.from_numpy(np.sqrt(power.numpy()))
    return torch.sqrt(power)


def _log_mel(audio: Tensor, mel_basis: Tensor, basis: Tensor, config: MelConfig) -> Tensor:
    # Op for op what NVIDIA's TacotronSTFT.mel_spectrogram does, in float32: the checkpoints were
    # trained on these numbers, and near the 1e-5 floor float rounding shows in the log domain
    # (an exact float64 STFT differs from the reference by up to ~5e-3 there), so we reproduce
    # the reference's rounding rather than improve on it.
    _check_length(audio.size(-1), config.n_fft)
    x = audio.float()
    magnitude = _conv_magnitude(x, basis, config.n_fft, config.hop_length)
    mel = torch.matmul(mel_basis.to(x.device), magnitude)
    return torch.log(torch.clamp(mel, min=config.clip_min))


class MelSpectrogram(nn.Module):
    """Log-mel spectrogram as Tacotron 2 / WaveGlow were trained on.

    ``forward(audio)`` takes float audio of shape (B, S) or (S,) (treated as B = 1) and returns the
    natural-log mel spectrogram, float32, shape (B, M, 1 + S // hop_length), on the module's device
    (the input is moved there).  The filterbank (M, K) and the zero-padded periodic Hann window
    (n_fft,) are float32 non-persistent buffers, so ``.to(device)`` moves them and the state dict
    stays empty.  Whatever the input dtype, it is rounded to float32 (as the reference's is), the
    arithmetic is float64 (see the module docstring) and the output float32.  Audio of at most
    ``n_fft // 2`` samples raises ValueError: it cannot be reflect-padded, and padding it some
    other way would give numbers the reference never produces.  Integer audio raises TypeError.
    """

    mel_basis: Tensor
    window: Tensor
    fourier_basis: Tensor

    def __init__(self, config: MelConfig | None = None) -> None:
        super().__init__()
        self.config = config or MelConfig()
        self.register_buffer("mel_basis", mel_filterbank(self.config), persistent=False)
        window = hann_window(self.config.win_length, self.config.n_fft)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("fourier_basis", fourier_basis(self.config.n_fft, window),
                             persistent=False)

    def forward(self, audio: Tensor | np.ndarray) -> Tensor:
        x, _ = _as_audio(audio)
        return _log_mel(x.to(self.mel_basis.device), self.mel_basis, self.fourier_basis,
                        self.config)

    def extra_repr(self) -> str:
        return repr(self.config)


@functools.lru_cache(maxsize=8)
def _cached_module(config: MelConfig) -> MelSpectrogram:
    # CPU only and never moved: mel_spectrogram() copies the buffers to the audio's device per call.
    return MelSpectrogram(config)


def mel_spectrogram(audio: Tensor | np.ndarray, config: MelConfig | None = None) -> Tensor:
    """Log-mel spectrogram of (S,) or (B, S) float audio (tensor or numpy) -> (B, M, T) float32.

    The result is on the tensor's device (CPU for numpy input); numbers are the same on any device
    up to float32 rounding.  Same semantics as :class:`MelSpectrogram`.
    """
    c = config or MelConfig()
    x, _ = _as_audio(audio)
    module = _cached_module(c)
    return _log_mel(x, module.mel_basis, module.fourier_basis, c)


# Frames analysed at a time by log_mel_frames: the spectrum of a block is 2 x 513 float32 per
# frame (33 MB for 8192 frames, 95 s at 22.05 kHz), where a whole hour's would be 1.3 GB.
MEL_BLOCK_FRAMES = 8192


def log_mel_frames(audio: np.ndarray, config: MelConfig | None = None,
                   block_frames: int = MEL_BLOCK_FRAMES) -> np.ndarray:
    """The log mel of (S,) float audio on the CPU as a float32 (M, 1 + S // hop) array, in the
    memory of ``block_frames`` frames' spectrum instead of the whole signal's.

    Up to ``block_frames`` frames it is :func:`mel_spectrogram`'s result itself.  Longer
    audio is analysed a block of frames at a time, each frame from its own ``n_fft`` samples
    of the reflect-padded signal through the same float32 operations: the same numbers up to
    float32 rounding (the convolution's summation order depends on its input's length;
    measured at most 2e-6 nats apart, in 0.02 % of the values).  Only the samples a block
    needs are copied (with the reflection at either end)."""
    c = config or MelConfig()
    samples = np.asarray(audio).reshape(-1)
    n = samples.size
    _check_length(n, c.n_fft)
    pad, hop = c.n_fft // 2, c.hop_length
    frames = 1 + n // hop
    if frames <= block_frames:
        return mel_spectrogram(samples, c)[0].numpy()
    module = _cached_module(c)
    out = np.empty((c.n_mels, frames), dtype=np.float32)
    for lo in range(0, frames, block_frames):
        hi = min(frames, lo + block_frames)
        start, stop = lo * hop - pad, (hi - 1) * hop + c.n_fft - pad  # in unpadded samples
        if start >= 0 and stop <= n:
            piece = samples[start:stop]
        else:  # reflect at either end, as F.pad(mode="reflect") does
            index = np.abs(np.arange(start, stop))
            piece = samples[np.where(index > n - 1, 2 * (n - 1) - index, index)]
        x = torch.from_numpy(np.ascontiguousarray(piece, dtype=np.float32))[None, None]
        magnitude = _padded_magnitude(x, module.fourier_basis, c.n_fft, hop)
        mel = torch.matmul(module.mel_basis, magnitude)
        out[:, lo:hi] = torch.log(torch.clamp(mel, min=c.clip_min))[0].numpy()
    return out


class STFT(nn.Module):
    """The STFT of NVIDIA's ``tacotron2/stft.py`` (as WaveGlow's ``denoiser.py`` uses it).

    ``transform`` gives magnitude and phase ``atan2(im, re)`` of the centred, reflect-padded,
    periodic-Hann-windowed one-sided DFT, each (B, K, T).  ``inverse`` inverts each frame with
    the (real) inverse DFT, windows it again, overlap-adds, divides by the window's sum-square
    envelope wherever that exceeds float32's smallest normal (elsewhere it leaves the sum as is) and
    drops ``n_fft // 2`` samples at the start.  NVIDIA's inverse uses a pseudo-inverse Fourier
    basis scaled by ``n_fft / hop`` and multiplies back by ``n_fft / hop``; mathematically that is
    the inverse real DFT, which is what we compute.
    """

    window: Tensor

    def __init__(self, n_fft: int = 1024, hop_length: int = 256,
                 win_length: int | None = None) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        if n_fft < 2 or n_fft % 2:
            raise ValueError(f"n_fft={n_fft} must be even and >= 2")
        if hop_length < 1:
            raise ValueError(f"hop_length={hop_length} must be >= 1")
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.win_length = int(win_length)
        self.register_buffer("window", hann_window(self.win_length, self.n_fft), persistent=False)

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def transform(self, audio: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """(B, S) or (S,) float audio -> (magnitude, phase), each float32 (B, K, 1 + S // hop)."""
        x, _ = _as_audio(audio)
        x = x.to(self.window.device)
        _check_length(x.size(-1), self.n_fft)
        spec = _complex_stft(x, self.window, self.n_fft, self.hop_length)
        return spec.abs(), torch.atan2(spec.imag, spec.real)

    def inverse(self, magnitude: Tensor, phase: Tensor, length: int | None = None) -> Tensor:
        """(B, K, T) magnitude and phase -> (B, S') float32 audio.

        With ``length=None`` the result has the reference's length ``hop * (T - 1)`` (the reference
        trims ``n_fft // 2`` at both ends of the overlap-add).  With ``length`` it keeps ``length``
        samples after the first ``n_fft // 2``: for a spectrum of an S-sample signal and
        ``length=S`` that is the whole signal, including the last ``S % hop`` samples the reference
        drops (they are covered by the last frame, so they are reconstructed, not invented).  Only
        if the overlap-add is shorter than that (``hop > n_fft / 2``) are zeros appended.
        """
        if (magnitude.shape != phase.shape or magnitude.dim() != 3
                or magnitude.size(1) != self.n_freqs):
            raise ValueError(
                f"magnitude {tuple(magnitude.shape)} and phase {tuple(phase.shape)} must both be "
                f"(B, {self.n_freqs}, T)")
        magnitude = magnitude.float()
        phase = phase.float().to(magnitude.device)
        window = self.window.to(magnitude.device)
        n_frames = magnitude.size(-1)
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        # irfft ignores the imaginary parts of the DC and Nyquist bins, as the reference's
        # pseudo-inverse basis does (they are outside the range of the real DFT).
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=1) * window[:, None]
        total = self.n_fft + self.hop_length * (n_frames - 1)
        fold = functools.partial(F.fold, output_size=(1, total), kernel_size=(1, self.n_fft),
                                 stride=(1, self.hop_length))
        signal = fold(frames).reshape(frames.size(0), total)
        envelope = fold((window ** 2)[None, :, None].expand(1, self.n_fft, n_frames)).reshape(total)
        nonzero = envelope > torch.finfo(torch.float32).tiny
        signal = torch.where(nonzero, signal / torch.where(nonzero, envelope, 1.0), signal)

        start = self.n_fft // 2
        if length is None:
            return signal[:, start:total - start]
        length = int(length)
        if length < 0:
            raise ValueError(f"length={length} must be >= 0")
        out = signal[:, start:start + length]
        if out.size(-1) < length:
            out = F.pad(out, (0, length - out.size(-1)))
        return out

    def forward(self, audio: Tensor) -> Tensor:
        """Analysis then synthesis; (B, S) -> (B, S), equal to the input up to float32 rounding."""
        x, _ = _as_audio(audio)
        return self.inverse(*self.transform(x), length=x.size(-1))

    def denoise(self, audio: Tensor | np.ndarray, bias_spec: Tensor,
                strength: float = 0.1) -> Tensor:
        """WaveGlow's denoiser: subtract ``strength * bias_spec`` from every frame's magnitude,
        clamp at 0, resynthesise with the original phase.

        ``audio`` is (B, S) or (S,); the result has the same shape (and length: see below), float32.
        ``bias_spec`` is the magnitude of one frame of the model's output for silence, shape (K,),
        (K, 1) or (1, K, 1) (see :func:`bias_spectrum`).  The reference's inverse returns
        ``hop * (T - 1)`` samples, which is ``S - S % hop``; we return exactly ``S`` samples by
        keeping the reconstructed tail (see :meth:`inverse`), so the first ``S - S % hop`` samples
        are the reference's and the output length always equals the input length.
        """
        x, unbatched = _as_audio(audio)
        strength = float(strength)
        if not math.isfinite(strength) or strength < 0:
            raise ValueError(f"strength={strength} must be finite and >= 0")
        bias = torch.as_tensor(bias_spec)
        if (bias.numel() != self.n_freqs or bias.dim() > 3
                or (bias.dim() >= 2 and bias.size(-1) != 1)):
            raise ValueError(
                f"bias_spec has shape {tuple(bias.shape)}; expected ({self.n_freqs},), "
                f"({self.n_freqs}, 1) or (1, {self.n_freqs}, 1)")
        magnitude, phase = self.transform(x)
        bias = bias.reshape(1, self.n_freqs, 1).to(device=magnitude.device, dtype=torch.float32)
        cleaned = torch.clamp(magnitude - bias * strength, min=0.0)
        out = self.inverse(cleaned, phase, length=x.size(-1))
        return out[0] if unbatched else out


def bias_spectrum(bias_audio: Tensor | np.ndarray, stft: STFT | None = None) -> Tensor:
    """Magnitude of the first STFT frame of ``bias_audio`` (the vocoder's output for an all-zero
    mel), shape (K, 1): the ``bias_spec`` of WaveGlow's ``Denoiser``.  ``bias_audio`` is one signal,
    (S,) or (1, S)."""
    stft = stft or STFT()
    x, _ = _as_audio(bias_audio, "bias audio")
    if x.size(0) != 1:
        raise ValueError(f"bias audio must be one signal, got shape {tuple(x.shape)}")
    magnitude, _ = stft.transform(x)
    return magnitude[0, :, :1]


def denoise(audio: Tensor | np.ndarray, bias_spec: Tensor, strength: float = 0.1, *,
            stft: STFT | None = None) -> Tensor:
    """:meth:`STFT.denoise` with NVIDIA's denoiser STFT (n_fft 1024, hop 256, win 1024) unless
    ``stft`` is given.  Output has the input's shape and length, float32, on the input's device."""
    stft = stft or STFT()
    if isinstance(audio, Tensor) and stft.window.device != audio.device:
        stft = STFT(stft.n_fft, stft.hop_length, stft.win_length).to(audio.device)
    return stft.denoise(audio, bias_spec, strength)
