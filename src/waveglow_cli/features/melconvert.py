"""Bring a mel of another toolkit's convention onto the Tacotron 2 mel WaveGlow reads.

A mel is ``bank @ |STFT| ** power`` compressed by a log (and maybe a normalisation).  So:

1. undo the normalisation and the log: the source's linear mel (its floor values are kept as
   they are: they are an upper bound of what was there);
2. resample the time axis when the source's frames are not ours (another hop in seconds, or
   frames centred elsewhere): each of our frame centres between the two source frames around
   it, interpolated in the log domain;
3. back to a non-negative spectrum over the source filterbank: the minimum-norm least-squares
   solution (pseudo-inverse) clamped at 0, then multiplicative updates of a non-negative fit
   (see :data:`NNLS_STEPS` and :func:`_spectrum` for what was measured and chosen);
4. the spectrum, as a level per Hz, onto our FFT bins (another sample rate or FFT size) and
   through our filterbank, scaled for the window energy and sample rate (see :func:`_plan`);
   bands the source never saw (below its ``fmin``, above its ``fmax``) get the level of the
   nearest band it did see, and a note says so;
5. our log and floor: ``ln(max(mel, clip_min))``.

The frame count is ours for the most likely length of the audio (a mel does not say where in
its last hop the signal ended): exact when the source frames have our hop in seconds, within
one frame otherwise.  Everything is a few (mostly sparse) matrix products per block of frames,
precomputed once per convention and target: about 30 ms per second of audio on one busy CPU
core, far below synthesis time.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MelFileError, UsageError
from .conventions import Convention, MelStats, resolve_convention
from .mel import MelConfig

__all__ = ["MelConverter", "convert_mel", "is_identity"]

# Refinement steps after the clamped pseudo-inverse (see _spectrum).  Measured on the held-out
# speech in tests/data (mean |ln difference| to the Tacotron 2 mel of the same audio, 3 clips):
# the clamp alone gives pwg 0.106, vocos 0.139, coqui 0.112 nats; 30 steps 0.094, 0.126, 0.099
# (the clamp errs most in quiet bands beside loud ones, where its negative lobes were cut);
# 100 steps gain < 0.001 more.  Least-squares (Euclidean) updates instead: 0.098, 0.130,
# 0.106.  30 steps cost ~15 ms per second of audio on one core.
NNLS_STEPS = 30
_TINY = 1e-30
# No mel band of audio within [-1, 1] reaches this magnitude (a full-scale sine gives at most
# a few hundred with an unnormalised 1024-point window and peak-1 triangles).
_LOUDEST = 1e4
# Frames converted at a time: bounds the spectrum held in memory (frames x FFT bins).
BLOCK_FRAMES = 4096
# The longest mel converted (it is read and converted whole): four hours of audio, 1.24
# million of our frames (400 MB of float32 at 80 bands).  A convention's frame period is at
# most 0.1 s (conventions.MAX_FRAME_SECONDS), so a source frame becomes at most ~9 of ours.
MAX_CONVERTED_SECONDS = 4 * 3600


def is_identity(convention: Convention, target: MelConfig) -> bool:
    """Whether the convention's mel already is ``target``'s (nothing to convert)."""
    a, b, c = convention.analysis, convention.bands, convention.compression
    return (a.sample_rate == target.sample_rate and a.n_fft == target.n_fft
            and a.hop_length == target.hop_length and a.win_length == target.win_length
            and a.padding == "center" and b.n_mels == target.n_mels
            and b.fmin == target.fmin and convention.fmax_hz == target.fmax_hz
            and b.scale == "slaney" and b.norm == "slaney" and b.power == 1.0
            and c.log == "ln" and c.floor == target.clip_min and c.normalisation == "none")


def _bank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool,
          slaney_norm: bool) -> np.ndarray:
    import warnings

    import librosa  # lazily: slow to import

    with warnings.catch_warnings():  # empty bands are said once, as a note (_Plan.empty)
        warnings.filterwarnings("ignore", message="Empty filters detected")
        return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin,
                                   fmax=fmax, htk=htk, norm="slaney" if slaney_norm else None,
                                   dtype=np.float64)


@dataclass(frozen=True)
class _Plan:
    """What one (convention, target) pair needs, computed once."""

    unmix: np.ndarray        # (K_src, C_src): pseudo-inverse of the source bank
    source_bank: np.ndarray  # (C_src, K_src)
    remix: np.ndarray        # (C_tgt, K_src): target bank after the source bins -> our bins map
    low_fill: np.ndarray     # (C_tgt,): target mel of a unit spectrum below the source's fmin
    high_fill: np.ndarray    # (C_tgt,): ... above its fmax
    low_level: np.ndarray    # (C_src,): source mel -> mean level of its lowest band
    high_level: np.ndarray   # (C_src,): ... of its highest band
    uncovered: tuple[int, ...]  # target bands mostly outside the source's range
    empty: int               # source bands that hold no FFT bin (their values are ignored)
    bank_peak: float         # the largest column sum of the source bank
    sparse_bank: Any         # source_bank as a scipy CSR matrix, and its transpose
    sparse_bank_t: Any


def _window_energy(length: int) -> float:
    """Sum of squares of the periodic Hann window every preset analyses with."""
    n = np.arange(length)
    return float(np.sum((0.5 - 0.5 * np.cos(2 * np.pi * n / length)) ** 2))


@functools.lru_cache(maxsize=16)
def _plan(convention: Convention, target: MelConfig) -> _Plan:
    """The matrices of one conversion: the source bank and its pseudo-inverse, the map from a
    source spectrum to our mel, and the fills for what the source does not cover."""
    from scipy import sparse

    a, b = convention.analysis, convention.bands
    source_bank = _bank(a.sample_rate, a.n_fft, b.n_mels, b.fmin, convention.fmax_hz,
                        b.scale == "htk", b.norm == "slaney")
    target_bank = _bank(target.sample_rate, target.n_fft, target.n_mels, target.fmin,
                        target.fmax_hz, False, True)
    unmix = np.linalg.pinv(source_bank, rcond=1e-6)
    # Our bins in Hz, read off the source's spectrum by linear interpolation (a density in Hz:
    # a level per bin, the same for noise whatever the bin width).
    src_hz = np.arange(source_bank.shape[1]) * a.sample_rate / a.n_fft
    tgt_hz = np.arange(target.n_freqs) * target.sample_rate / target.n_fft
    lo_hz, hi_hz = float(b.fmin), convention.fmax_hz
    inside = (tgt_hz >= lo_hz) & (tgt_hz <= hi_hz)
    resample = np.zeros((target.n_freqs, source_bank.shape[1]))
    pos = np.clip(np.interp(tgt_hz, src_hz, np.arange(src_hz.size)), 0, src_hz.size - 1)
    left = np.floor(pos).astype(int)
    right = np.minimum(left + 1, src_hz.size - 1)
    frac = pos - left
    rows = np.nonzero(inside)[0]
    np.add.at(resample, (rows, left[rows]), 1 - frac[rows])
    np.add.at(resample, (rows, right[rows]), frac[rows])
    # Magnitude per bin of a signal whose spectrum is smooth over a window's resolution (noise,
    # and speech harmonics the window does not resolve): sqrt(sum(window^2) * rate * its power
    # density), whatever the FFT size.  Scale the source's to ours by that.  Measured on speech:
    # vocos (24 kHz) 0.128 -> 0.126 nats; a 16 kHz, 400-sample-window mel 0.79 -> 0.25.
    gain = math.sqrt(_window_energy(target.win_length) * target.sample_rate
                     / (_window_energy(a.win_length) * a.sample_rate))
    remix = gain * (target_bank @ resample)
    # A band's mean level: its value over its weights' sum (what a flat spectrum there gives).
    sums = source_bank.sum(axis=1)
    used = np.nonzero(sums > 0)[0]
    if used.size == 0:  # validate_convention refuses such a convention; a preset never is one
        raise UsageError(f"mel convention {convention.name}: every band of its filterbank is "
                         "empty (no FFT bin inside any)")
    low_level = np.zeros(b.n_mels)
    high_level = np.zeros(b.n_mels)
    low_level[used[0]] = 1 / sums[used[0]]
    high_level[used[-1]] = 1 / sums[used[-1]]
    below, above = (tgt_hz < lo_hz).astype(float), (tgt_hz > hi_hz).astype(float)
    weight = target_bank.sum(axis=1)
    outside = (target_bank @ (below + above)) / np.where(weight > 0, weight, 1)
    return _Plan(unmix, source_bank, remix, gain * (target_bank @ below),
                 gain * (target_bank @ above),
                 low_level, high_level, tuple(int(i) for i in np.nonzero(outside > 0.5)[0]),
                 int(b.n_mels - used.size),
                 float(max(source_bank.sum(axis=0).max(), 1e-12)),
                 sparse.csr_matrix(source_bank), sparse.csr_matrix(source_bank.T))


def _uncompress(values: np.ndarray, convention: Convention, stats: MelStats | None
                ) -> np.ndarray:
    """The source's linear mel (float64) from its stored values."""
    c = convention.compression
    x = np.asarray(values, dtype=np.float64)
    if stats is not None:
        x = stats.undo(x)
    if c.normalisation == "coqui":
        span = -c.min_level_db
        x = ((x + c.max_norm) * span / (2 * c.max_norm) if c.symmetric
             else x * span / c.max_norm) + c.min_level_db + c.ref_level_db
    if c.log == "ln":
        x = np.exp(np.minimum(x, 60.0))
    elif c.log == "log10":
        x = np.power(10.0, np.minimum(x, 26.0))
    elif c.log == "db":
        x = np.power(10.0, np.minimum(x / c.db_gain, 26.0))
    return np.maximum(x, 0.0)


def _frame_positions(convention: Convention, target: MelConfig, frames: int) -> np.ndarray:
    """For each of our frames, its centre as a (fractional) source frame index."""
    a = convention.analysis
    seconds = a.samples_for(frames) / a.sample_rate
    ours = 1 + round(seconds * target.sample_rate) // target.hop_length
    centre_s = np.arange(ours) * target.hop_length / target.sample_rate
    return (centre_s * a.sample_rate - a.centre_offset) / a.hop_length


def _resample_time(linear: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The linear mel at fractional frame ``positions``, interpolated between the two frames
    around each in the log domain (geometric): measured on speech with the HiFi-GAN framing
    (frames half a hop from ours) it errs 0.11 nats where linear interpolation errs 0.13."""
    frames = linear.shape[1]
    pos = np.clip(positions, 0, frames - 1)
    left = np.floor(pos).astype(int)
    right = np.minimum(left + 1, frames - 1)
    frac = (pos - left)[None, :]
    logs = np.log(np.maximum(linear, _TINY))
    return np.exp(logs[:, left] * (1 - frac) + logs[:, right] * frac)


def _needs_time_resampling(convention: Convention, target: MelConfig) -> bool:
    a = convention.analysis
    return (a.hop_length * target.sample_rate != target.hop_length * a.sample_rate
            or a.centre_offset != 0.0)


def _spectrum(block: np.ndarray, plan: _Plan, steps: int) -> np.ndarray:
    """(C_src, T) linear mel -> (K_src, T) non-negative spectrum that the source bank maps onto
    it: the clamped pseudo-inverse, refined by ``steps`` multiplicative updates."""
    spectrum = np.maximum(plan.unmix @ block, 0.0)
    if not steps:
        return spectrum
    # Each bin lies under at most two triangles: sparse products cost ~1/40 of dense ones.
    bank, bank_t = plan.sparse_bank, plan.sparse_bank_t
    # Multiplicative updates keep every bin positive but cannot move one from 0: start each
    # bin at least at a small share of what the bands covering it hold.
    spectrum = np.maximum(spectrum, 1e-3 * (bank_t @ block) / plan.bank_peak) + _TINY
    for _ in range(steps):
        # Itakura-Saito non-negative fit (Fevotte et al. 2009): its updates weigh each band's
        # relative error alike, which is what the log mel sees.  Measured on tests/data speech
        # it beats least squares (Euclidean updates or the clamp alone) in the log domain.
        fitted = bank @ spectrum + _TINY
        spectrum *= (bank_t @ (block / fitted ** 2)) / (bank_t @ (1.0 / fitted) + _TINY)
    return spectrum


@dataclass(frozen=True)
class MelConverter:
    """Converts (n_mels, frames) mels of ``convention`` to ``target``'s Tacotron 2 mel."""

    convention: Convention
    target: MelConfig
    stats: MelStats | None = None
    nnls_steps: int = NNLS_STEPS

    def __post_init__(self) -> None:
        c = self.convention.compression
        if c.normalisation == "meanvar" and self.stats is None:
            raise UsageError(f"mel convention {self.convention.name} is mean-variance "
                             "normalised: give its statistics (--mel-stats stats.h5|.npy)")
        if self.stats is not None and self.stats.mean.size != self.convention.n_mels:
            raise UsageError(f"mel statistics have {self.stats.mean.size} bands; convention "
                             f"{self.convention.name} has {self.convention.n_mels}")

    def notes(self) -> list[str]:
        """What the conversion cannot know, said once per input."""
        if self.identity:
            return []
        plan = _plan(self.convention, self.target)
        b, notes = self.convention.bands, []
        if plan.uncovered:
            notes.append(f"mel convention {self.convention.name} covers {b.fmin:g}-"
                         f"{self.convention.fmax_hz:g} Hz; {len(plan.uncovered)} of our "
                         f"{self.target.n_mels} bands lie mostly outside it and were filled "
                         "with the level of its nearest band")
        if plan.empty:
            notes.append(f"mel convention {self.convention.name}: {plan.empty} of its "
                         f"{b.n_mels} bands hold no FFT bin (empty filters); their values "
                         "are ignored")
        return notes

    def check_length(self, frames: int, name: str) -> None:
        """Refuse a mel longer than :data:`MAX_CONVERTED_SECONDS` of audio (it is converted
        whole), before it is read."""
        a = self.convention.analysis
        seconds = frames * a.hop_length / a.sample_rate
        if seconds > MAX_CONVERTED_SECONDS:
            raise MelFileError(name, f"{frames} frames of mel convention "
                                     f"{self.convention.name} are {seconds / 3600:.3g} h of "
                                     f"audio; at most {MAX_CONVERTED_SECONDS // 3600} h are "
                                     "converted at once")

    def check(self, mel: np.ndarray, name: str) -> str | None:
        """A note when a bounded sample of the stored values cannot be this convention's (a
        linear mel given as a log one, another scale, normalised values without their
        statistics): converted anyway, such a mel is vocoded into loud noise."""
        from .melcheck import sample_values

        values = sample_values(mel)
        if values.size == 0:
            return None
        c, label = self.convention.compression, f"a {self.convention.name} mel"
        low, high = float(values.min()), float(values.max())
        if c.normalisation == "coqui" and self.stats is None:
            if low < -c.max_norm - 1e-3 or high > c.max_norm + 1e-3:
                return (f"{name}: values from {low:.3g} to {high:.3g} lie outside "
                        f"+-{c.max_norm:g}, the range of {label}; is it another convention?")
            return None
        if self.stats is None and c.log != "linear" and low >= 0.0 and high > 0.0:
            return (f"{name}: all values >= 0 (max {high:.3g}): that looks like a linear mel, "
                    f"not {label} ({c.log}); is it another convention?")
        loudest = float(_uncompress(values, self.convention, self.stats).max())
        if loudest ** (1 / self.convention.bands.power) > _LOUDEST:
            return (f"{name}: values up to {high:.3g} mean a magnitude of {loudest:.3g}, far "
                    f"beyond any audio for {label}; is it another convention or normalised "
                    "(--mel-stats)?")
        return None

    @property
    def identity(self) -> bool:
        return self.stats is None and is_identity(self.convention, self.target)

    def frames_for(self, frames: int) -> int:
        """How many of our frames a source mel of ``frames`` frames becomes."""
        if not _needs_time_resampling(self.convention, self.target) or self.identity:
            return frames
        return int(_frame_positions(self.convention, self.target, frames).size)

    def __call__(self, mel: np.ndarray, name: str = "<mel>") -> np.ndarray:
        """(C_src, T_src) stored values -> float32 (C_tgt, T) natural-log Tacotron 2 mel."""
        values = np.asarray(mel)
        if values.ndim != 2 or values.shape[0] != self.convention.n_mels:
            raise MelFileError(name, f"mel has shape {values.shape}; convention "
                                     f"{self.convention.name} has {self.convention.n_mels} "
                                     "bands")
        if values.shape[1] == 0:
            raise MelFileError(name, "mel has zero frames")
        self.check_length(values.shape[1], name)
        if not np.isfinite(values).all():
            raise MelFileError(name, "mel contains NaN or infinite values")
        if is_identity(self.convention, self.target):  # ours already, maybe normalised
            if self.stats is not None:
                values = np.maximum(self.stats.undo(values), np.log(self.target.clip_min))
            return np.ascontiguousarray(values, dtype=np.float32)
        plan = _plan(self.convention, self.target)
        positions = (_frame_positions(self.convention, self.target, values.shape[1])
                     if _needs_time_resampling(self.convention, self.target) else None)
        count = values.shape[1] if positions is None else positions.size
        out = np.empty((self.target.n_mels, count), dtype=np.float32)
        power = self.convention.bands.power
        for lo in range(0, count, BLOCK_FRAMES):
            hi = min(count, lo + BLOCK_FRAMES)
            if positions is None:
                linear = _uncompress(values[:, lo:hi], self.convention, self.stats)
            else:
                # Only the source frames this block interpolates between are uncompressed.
                first = max(0, int(np.floor(positions[lo:hi].min())))
                last = min(values.shape[1], int(np.floor(positions[lo:hi].max())) + 2)
                linear = _uncompress(values[:, first:last], self.convention, self.stats)
                linear = _resample_time(linear, positions[lo:hi] - first)
            spectrum = _spectrum(linear, plan, self.nnls_steps)
            low = (plan.low_level @ linear)[None, :]
            high = (plan.high_level @ linear)[None, :]
            if power != 1.0:
                spectrum, low, high = (np.power(v, 1 / power) for v in (spectrum, low, high))
            target_mel = (plan.remix @ spectrum + plan.low_fill[:, None] * low
                          + plan.high_fill[:, None] * high)
            out[:, lo:hi] = np.log(np.maximum(target_mel, self.target.clip_min))
        return out


def convert_mel(mel: np.ndarray, convention: Convention | str, target: MelConfig | None = None,
                stats: MelStats | None = None) -> np.ndarray:
    """One-call form of :class:`MelConverter`: ``convention`` is a :class:`Convention`, a
    preset name or a TOML file (:func:`~waveglow_cli.features.conventions.resolve_convention`)."""
    if isinstance(convention, str):
        convention = resolve_convention(convention)
    return MelConverter(convention, target or MelConfig(), stats)(mel)
