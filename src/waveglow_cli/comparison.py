"""How close generated audio is to its reference, file by file (``waveglow compare``).

Both signals are read, mixed to mono and resampled to the Tacotron 2 rate (22.05 kHz), cut to
the shorter one (a vocoder rounds to whole frames) and measured frame-aligned (no time warping:
this compares copy synthesis and mel conversions, whose output is aligned with the reference):

* ``log_mel_distance``: mean |ln difference| of the two Tacotron 2 mels, nats
  (:func:`waveglow_cli.quality.log_mel_distance`, the measure of the demo evaluation);
* ``mcd_db``: mel-cepstral distortion, dB: ``10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)``
  (Kubichek 1993) over cepstral coefficients 1..24, averaged over frames.  The cepstrum is the
  cosine transform of the same natural-log mel (``c_d = 1/M sum_m ln mel_m cos(pi d (m + 1/2)
  / M)``, so ``ln mel = c_0 + 2 sum_d c_d cos(...)``), computed here rather than with SPTK's
  all-pass-warped ``mcep`` (pysptk): no new dependency, and the same mel as the other numbers.
  Values are comparable with each other and with MFCC-based MCD, not with SPTK-based papers;
* ``f0_rmse_hz`` (over frames voiced in both) and ``voicing_error`` (share of frames whose
  voiced/unvoiced decision differs), from librosa's probabilistic YIN (``pyin``, 50-600 Hz);
* ``loudness_diff_db``: RMS level of the generated signal minus the reference's, dB.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .audio_io import AUDIO_SUFFIXES, prepare_audio, read_audio
from .errors import AudioFileError, UsageError
from .mel import MelConfig, mel_spectrogram
from .quality import log_mel_distance

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
    voiced in both), the seconds compared and how much longer the generated file is."""

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

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


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


def _pitch(audio: np.ndarray, config: MelConfig) -> tuple[np.ndarray, np.ndarray]:
    import librosa

    f0, voiced, _ = librosa.pyin(audio, fmin=F0_RANGE_HZ[0], fmax=F0_RANGE_HZ[1],
                                 sr=config.sample_rate, frame_length=config.n_fft,
                                 hop_length=config.hop_length)
    return np.nan_to_num(f0), voiced.astype(bool)


def _level_db(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return SILENCE_DB if rms <= 0 else max(SILENCE_DB, 20 * math.log10(rms))


def compare_signals(reference: np.ndarray, generated: np.ndarray, config: MelConfig | None = None,
                    *, f0: bool = True) -> dict[str, float | None]:
    """The metrics of two mono float signals at ``config``'s sample rate, over the samples
    both have (the longer is cut).  ``f0=False`` leaves out the pitch metrics (None): pyin is
    the slow part (about 0.4 s per second of audio)."""
    config = config or MelConfig()
    n = min(reference.size, generated.size)
    if n <= config.n_fft // 2:
        raise ValueError(f"{n} common samples; at least {config.n_fft // 2 + 1} are needed")
    ref, gen = reference[:n], generated[:n]
    ref_mel = mel_spectrogram(ref, config)[0].numpy()
    gen_mel = ref_mel if np.array_equal(ref, gen) else mel_spectrogram(gen, config)[0].numpy()
    result: dict[str, float | None] = {
        "log_mel_distance": log_mel_distance(ref, gen, config),
        "mcd_db": mel_cepstral_distortion(ref_mel, gen_mel),
        "f0_rmse_hz": None, "voicing_error": None,
        "loudness_diff_db": _level_db(gen) - _level_db(ref)}
    if f0:
        ref_f0, ref_voiced = _pitch(ref, config)
        gen_f0, gen_voiced = (ref_f0, ref_voiced) if gen_mel is ref_mel else _pitch(gen, config)
        both = ref_voiced & gen_voiced
        result["voicing_error"] = float(np.mean(ref_voiced != gen_voiced))
        if both.any():
            result["f0_rmse_hz"] = float(np.sqrt(np.mean((ref_f0[both] - gen_f0[both]) ** 2)))
    return result


def _read_mono(path: Path, name: str, sample_rate: int) -> np.ndarray:
    samples, rate = read_audio(path, name)
    mono, _ = prepare_audio(samples, rate, sample_rate, name)
    return mono


def compare_files(key: str, reference: Path, generated: Path, config: MelConfig | None = None,
                  *, f0: bool = True) -> PairResult:
    """Read both files (any rate or channel count: mixed to mono, resampled) and compare
    them; an unreadable or too short file is an :class:`AudioFileError` naming it."""
    config = config or MelConfig()
    ref = _read_mono(reference, str(reference), config.sample_rate)
    gen = _read_mono(generated, str(generated), config.sample_rate)
    for audio, path in ((ref, reference), (gen, generated)):
        if audio.size <= config.n_fft // 2:
            raise AudioFileError(str(path), f"audio has {audio.size} samples; at least "
                                            f"{config.n_fft // 2 + 1} are needed to compare")
    metrics = compare_signals(ref, gen, config, f0=f0)
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
