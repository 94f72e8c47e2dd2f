"""How close generated audio is to its reference, file by file (``waveglow compare``).

Both signals are read, mixed to mono and resampled to the Tacotron 2 rate (22.05 kHz), cut to
the shorter one (a vocoder rounds to whole frames) and measured frame-aligned (no time warping:
this compares copy synthesis and mel conversions, whose output is aligned with the reference):

* ``log_mel_distance``: mean |ln difference| of the two Tacotron 2 mels, nats
  (:func:`waveglow_cli.analysis.quality.log_mel_distance`, the measure of the demo evaluation);
* ``mcd_db``: mel-cepstral distortion, dB: ``10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)``
  (Kubichek 1993) over cepstral coefficients 1..24, averaged over frames.  The cepstrum is the
  cosine transform of the same natural-log mel (``c_d = 1/M sum_m ln mel_m cos(pi d (m + 1/2)
  / M)``, so ``ln mel = c_0 + 2 sum_d c_d cos(...)``), computed here rather than with SPTK's
  all-pass-warped ``mcep`` (pysptk): no new dependency, and the same mel as the other numbers.
  Values are comparable with each other and with MFCC-based MCD, not with SPTK-based papers;
* ``f0_rmse_hz`` (over frames voiced in both) and ``voicing_error`` (share of frames whose
  voiced/unvoiced decision differs), from librosa's probabilistic YIN (``pyin``, 50-600 Hz),
  with the frames analysed and how many of them are voiced in each signal (so an F0 RMSE that
  is undefined says why: :meth:`PairResult.f0_missing_reason`);
* ``loudness_diff_db``: RMS level of the generated signal minus the reference's, dB.

Every metric is finite or the pair fails: a file whose mel is not finite (float samples so
loud that the spectrum overflows float32, 1e30) is one error naming it, never a ``nan`` row.
Long files are read a block at a time and analysed a block of frames at a time (pitch in
pieces of :data:`PITCH_BLOCK_FRAMES` frames, each decoded on its own), so memory grows with
the audio itself, not with its spectra.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio.io import AUDIO_SUFFIXES, read_mono
from ..errors import AudioFileError, UsageError
from ..features.mel import MelConfig, log_mel_frames

__all__ = ["PairResult", "compare_files", "compare_signals", "mel_cepstral_distortion",
           "pair_inputs", "summarise"]

CEPSTRAL_ORDER = 24
F0_RANGE_HZ = (50.0, 600.0)
# An all-zero signal's level (dB re full scale) instead of -inf, so differences stay finite.
SILENCE_DB = -200.0
METRICS = ("log_mel_distance", "mcd_db", "f0_rmse_hz", "voicing_error", "loudness_diff_db")


@dataclass(frozen=True)
class PairResult:
    """One reference/generated pair: the metrics above (None where undefined, e.g. no frame
    voiced in both), the seconds compared and how much longer the generated file is, and the
    pitch frames with the voiced ones of each side (None without pitch metrics)."""

    key: str
    reference: str
    generated: str
    seconds: float
    length_diff_s: float
    log_mel_distance: float
    mcd_db: float
    f0_rmse_hz: float | None
    voicing_error: float | None
    loudness_diff_db: float
    pitch_frames: int | None = None
    reference_voiced_frames: int | None = None
    generated_voiced_frames: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def f0_missing_reason(self) -> str | None:
        """Why there is no F0 RMSE (None when there is one): pitch not measured, or which
        signal has no voiced frame, or that no frame is voiced in both."""
        if self.f0_rmse_hz is not None:
            return None
        if self.pitch_frames is None:
            return "pitch not measured"
        ref, gen = self.reference_voiced_frames, self.generated_voiced_frames
        if not ref and not gen:
            return f"no voiced frames in either, of {self.pitch_frames}"
        if not gen:
            return f"no voiced frames in generated; reference: {ref} of {self.pitch_frames}"
        if not ref:
            return f"no voiced frames in reference; generated: {gen} of {self.pitch_frames}"
        return (f"no frame voiced in both; voiced: reference {ref}, generated {gen}, of "
                f"{self.pitch_frames}")


def mel_cepstrum(log_mel: np.ndarray, order: int = CEPSTRAL_ORDER) -> np.ndarray:
    """(M, T) natural-log mel -> (order + 1, T) cepstrum ``c_0..c_order`` (see the module
    docstring for the scaling)."""
    bands = log_mel.shape[0]
    d = np.arange(order + 1)[:, None]
    m = np.arange(bands)[None, :]
    basis = np.cos(np.pi * d * (m + 0.5) / bands) / bands
    return basis @ log_mel.astype(np.float64)


def mel_cepstral_distortion(ref_log_mel: np.ndarray, gen_log_mel: np.ndarray,
                            order: int = CEPSTRAL_ORDER) -> float:
    """Mean MCD in dB over the frames both (M, T) log mels have, c_0 (level) excluded."""
    frames = min(ref_log_mel.shape[1], gen_log_mel.shape[1])
    diff = (mel_cepstrum(ref_log_mel[:, :frames], order)
            - mel_cepstrum(gen_log_mel[:, :frames], order))[1:]
    per_frame = (10 / math.log(10)) * np.sqrt(2 * np.sum(diff ** 2, axis=0))
    return float(per_frame.mean())


# pyin holds several arrays per frame (~2.5 MB per second of audio): it runs on pieces of at
# most this many frames (95 s), each frame analysed from its own samples of the padded signal,
# as in one run.  Only the HMM's smoothing restarts at a piece boundary; audio up to one piece
# long gives exactly what a single pyin run gives.
PITCH_BLOCK_FRAMES = 8192


def _pitch(audio: np.ndarray, config: MelConfig) -> tuple[np.ndarray, np.ndarray]:
    import librosa

    frame, hop = config.n_fft, config.hop_length
    frames = 1 + audio.size // hop
    if frames <= PITCH_BLOCK_FRAMES:
        f0, voiced, _ = librosa.pyin(audio, fmin=F0_RANGE_HZ[0], fmax=F0_RANGE_HZ[1],
                                     sr=config.sample_rate, frame_length=frame,
                                     hop_length=hop)
        return np.nan_to_num(f0), voiced.astype(bool)
    pieces_f0, pieces_voiced = [], []
    for lo in range(0, frames, PITCH_BLOCK_FRAMES):
        hi = min(frames, lo + PITCH_BLOCK_FRAMES)
        # pyin's centring pads with zeros by frame // 2: frame t covers padded samples
        # [t * hop, t * hop + frame), i.e. these samples of the signal.
        start, stop = lo * hop - frame // 2, (hi - 1) * hop + frame - frame // 2
        piece = np.zeros(stop - start, dtype=audio.dtype)
        piece[max(0, -start):piece.size - max(0, stop - audio.size)] = \
            audio[max(0, start):min(audio.size, stop)]
        f0, voiced, _ = librosa.pyin(piece, fmin=F0_RANGE_HZ[0], fmax=F0_RANGE_HZ[1],
                                     sr=config.sample_rate, frame_length=frame,
                                     hop_length=hop, center=False)
        pieces_f0.append(np.nan_to_num(f0))
        pieces_voiced.append(voiced.astype(bool))
    return np.concatenate(pieces_f0), np.concatenate(pieces_voiced)


def _finite_log_mel(audio: np.ndarray, config: MelConfig, name: str) -> np.ndarray:
    """The log mel of one signal, refused (naming it) when not finite: float samples beyond
    ~1e16 overflow float32 in the spectrum, and every distance to it would be nan."""
    mel = log_mel_frames(audio, config)
    if not np.isfinite(mel).all():
        peak = float(np.max(np.abs(audio)))
        raise AudioFileError(name, f"its mel spectrogram is not finite (samples up to "
                                   f"{peak:.3g} overflow the analysis); it cannot be compared")
    return mel


def _level_db(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return SILENCE_DB if rms <= 0 else max(SILENCE_DB, 20 * math.log10(rms))


def compare_signals(reference: np.ndarray, generated: np.ndarray, config: MelConfig | None = None,
                    *, f0: bool = True, names: tuple[str, str] = ("reference", "generated")
                    ) -> dict[str, float | None]:
    """The metrics of two mono float signals at ``config``'s sample rate, over the samples
    both have (the longer is cut).  ``f0=False`` leaves out the pitch metrics (None): pyin is
    the slow part (about 0.4 s per second of audio).  A signal whose mel is not finite is an
    :class:`AudioFileError` under its name in ``names``; every metric returned is finite.
    With pitch, ``pitch_frames`` and each side's voiced frames come too (counts)."""
    config = config or MelConfig()
    n = min(reference.size, generated.size)
    if n <= config.n_fft // 2:
        raise ValueError(f"{n} common samples; at least {config.n_fft // 2 + 1} are needed")
    ref, gen = reference[:n], generated[:n]
    same = np.array_equal(ref, gen)
    ref_mel = _finite_log_mel(ref, config, names[0])
    gen_mel = ref_mel if same else _finite_log_mel(gen, config, names[1])
    # quality.log_mel_distance's arithmetic, on the mels already computed.
    distance = float(torch.mean(torch.abs(torch.from_numpy(ref_mel) - torch.from_numpy(gen_mel))))
    result: dict[str, float | None] = {
        "log_mel_distance": distance,
        "mcd_db": mel_cepstral_distortion(ref_mel, gen_mel),
        "f0_rmse_hz": None, "voicing_error": None,
        "loudness_diff_db": _level_db(gen) - _level_db(ref)}
    voicing: dict[str, int] = {}
    if f0:
        ref_f0, ref_voiced = _pitch(ref, config)
        gen_f0, gen_voiced = (ref_f0, ref_voiced) if same else _pitch(gen, config)
        both = ref_voiced & gen_voiced
        result["voicing_error"] = float(np.mean(ref_voiced != gen_voiced))
        voicing = {"pitch_frames": int(ref_voiced.size),
                   "reference_voiced_frames": int(ref_voiced.sum()),
                   "generated_voiced_frames": int(gen_voiced.sum())}
        if both.any():
            result["f0_rmse_hz"] = float(np.sqrt(np.mean((ref_f0[both] - gen_f0[both]) ** 2)))
    bad = [key for key, value in result.items() if value is not None and not math.isfinite(value)]
    if bad:  # cannot happen for finite mels; a nan must never reach a report
        raise AudioFileError(f"{names[0]} vs {names[1]}",
                             f"{', '.join(bad)} not finite; the pair cannot be compared")
    return {**result, **voicing}


def compare_files(key: str, reference: Path, generated: Path, config: MelConfig | None = None,
                  *, f0: bool = True) -> PairResult:
    """Read both files (any rate or channel count: mixed to mono, resampled) and compare
    them; an unreadable, too short or too loud file is an :class:`AudioFileError` naming
    it."""
    config = config or MelConfig()
    ref, _ = read_mono(reference, str(reference), config.sample_rate)
    gen, _ = read_mono(generated, str(generated), config.sample_rate)
    for audio, path in ((ref, reference), (gen, generated)):
        if audio.size <= config.n_fft // 2:
            raise AudioFileError(str(path), f"audio has {audio.size} samples; at least "
                                            f"{config.n_fft // 2 + 1} are needed to compare")
    metrics = compare_signals(ref, gen, config, f0=f0, names=(str(reference), str(generated)))
    rate = config.sample_rate
    return PairResult(key, str(reference), str(generated), min(ref.size, gen.size) / rate,
                      (gen.size - ref.size) / rate, **metrics)  # type: ignore[arg-type]


def _audio_files(folder: Path) -> dict[str, Path]:
    """Audio files under ``folder`` by relative path without suffix (``a/b.wav`` -> ``a/b``)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES \
                and not path.name.startswith("."):
            found.setdefault(path.relative_to(folder).with_suffix("").as_posix(), path)
    return found


def pair_inputs(reference: str | os.PathLike[str], generated: str | os.PathLike[str]
                ) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """(key, reference, generated) pairs, and the reference keys with no generated file.

    Two files are one pair; two folders are matched by relative path without suffix (so
    ``ref/a.flac`` meets ``gen/a.wav``, what ``waveglow synth ref/ -o gen/`` writes).  A file
    against a folder, or anything missing, is a :class:`UsageError`."""
    ref, gen = Path(reference), Path(generated)
    for path in (ref, gen):
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder")
    if ref.is_dir() != gen.is_dir():
        raise UsageError(f"compare takes two files or two folders, not a "
                         f"{'folder' if ref.is_dir() else 'file'} ({ref}) and a "
                         f"{'folder' if gen.is_dir() else 'file'} ({gen})")
    if not ref.is_dir():
        return [(ref.name, ref, gen)], []
    refs, gens = _audio_files(ref), _audio_files(gen)
    if not refs:
        raise UsageError(f"{ref}: folder holds no audio files")
    pairs = [(key, path, gens[key]) for key, path in refs.items() if key in gens]
    missing = [str(path) for key, path in refs.items() if key not in gens]
    return pairs, missing


def summarise(rows: list[PairResult]) -> dict[str, float | int | None]:
    """Mean of each metric over the files where it is defined, the file count and the worst
    (largest) log-mel distance."""
    summary: dict[str, float | int | None] = {"files": len(rows)}
    for metric in METRICS:
        values = [v for r in rows if (v := getattr(r, metric)) is not None]
        summary[metric] = float(np.mean(values)) if values else None
    summary["worst_log_mel_distance"] = max((r.log_mel_distance for r in rows), default=None)
    return summary
