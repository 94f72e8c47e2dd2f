"""Mel conventions of other toolkits: presets, a small TOML form, and mean-variance statistics.

A mel convention says how a toolkit turns audio into the mel its vocoder reads: the analysis
(sample rate, FFT size, hop, window, padding), the filterbank (number of bands, frequency range,
HTK or Slaney scale, filter normalisation, magnitude or power) and the compression (log base,
floor, normalisation).  Every such mel is a linear map of a magnitude spectrum followed by an
invertible compression, so :mod:`waveglow_cli.features.melconvert` can bring it back to a spectrum
and onto the Tacotron 2 filterbank WaveGlow was trained on.

Each preset below cites where its numbers come from (the toolkit's published configuration or
feature code, read for the parameters only).  A custom convention is a TOML file with the keys
of :data:`TOML_KEYS` (see :meth:`Convention.to_toml`).
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import UsageError, closest_names, did_you_mean
from ..fileio import read_side_file, read_side_text

if TYPE_CHECKING:  # numpy is imported where statistics are read: `waveglow --help` stays fast
    import numpy as np

__all__ = [
    "PRESETS",
    "TOML_KEYS",
    "Analysis",
    "Bands",
    "Compression",
    "Convention",
    "MelStats",
    "convention_from_toml",
    "load_mel_stats",
    "preset_names",
    "resolve_convention",
]

PADDINGS = ("center", "hifigan", "none")
SCALES = ("slaney", "htk")
NORMS = ("slaney", "none")
LOGS = ("ln", "log10", "db", "linear")
NORMALISATIONS = ("none", "meanvar", "coqui")


@dataclass(frozen=True)
class Analysis:
    """The STFT: a periodic Hann window of ``win_length`` zero-padded to ``n_fft``.

    ``padding``: ``center`` (reflect by ``n_fft // 2``, frame k centred on sample k * hop: torch
    ``center=True``, librosa, ours), ``hifigan`` (reflect by ``(n_fft - hop) // 2`` then
    ``center=False``: frame k centred on k * hop + hop / 2, ``samples // hop`` frames) or
    ``none`` (no padding: frame k starts at sample k * hop)."""

    sample_rate: int
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    padding: str = "center"

    @property
    def centre_offset(self) -> float:
        """Where frame 0 is centred, in samples of the signal."""
        return {"center": 0.0, "hifigan": self.hop_length / 2,
                "none": self.n_fft / 2}[self.padding]

    def samples_for(self, frames: int) -> float:
        """The most likely signal length for ``frames`` frames (the middle of the range of
        lengths that give that many frames: a mel does not say where in its last hop the
        signal ended)."""
        hop = self.hop_length
        if self.padding == "center":      # frames = 1 + S // hop
            low = (frames - 1) * hop
        elif self.padding == "hifigan":   # frames = (S + 2 pad - n_fft) // hop + 1 = S // hop
            low = frames * hop
        else:                             # frames = 1 + (S - n_fft) // hop
            low = (frames - 1) * hop + self.n_fft
        return low + (hop - 1) / 2


@dataclass(frozen=True)
class Bands:
    """The mel filterbank applied to ``|STFT| ** power``: ``n_mels`` triangles from ``fmin`` to
    ``fmax`` (None: Nyquist) on the HTK or Slaney mel scale, area-normalised (``slaney``) or
    peaking at 1 (``none``)."""

    n_mels: int
    fmin: float = 0.0
    fmax: float | None = None
    scale: str = "slaney"
    norm: str = "slaney"
    power: float = 1.0


@dataclass(frozen=True)
class Compression:
    """How the mel values were compressed: ``log`` of ``max(mel, floor)`` (``db``: ``db_gain *
    log10``), then an optional normalisation: ``meanvar`` (per band, with statistics given
    separately) or ``coqui`` (Coqui TTS's ``AudioProcessor.normalize``: subtract
    ``ref_level_db``, map ``[min_level_db, 0]`` onto ``[-max_norm, max_norm]`` when
    ``symmetric`` else ``[0, max_norm]``, clipped)."""

    log: str = "ln"
    floor: float = 1e-5
    db_gain: float = 20.0
    normalisation: str = "none"
    ref_level_db: float = 20.0
    min_level_db: float = -100.0
    max_norm: float = 4.0
    symmetric: bool = True


@dataclass(frozen=True)
class Convention:
    """One toolkit's mel: its name, where the numbers come from, and the three parts."""

    name: str
    analysis: Analysis
    bands: Bands
    compression: Compression = Compression()
    source: str = ""

    @property
    def n_mels(self) -> int:
        return self.bands.n_mels

    @property
    def fmax_hz(self) -> float:
        nyquist = self.analysis.sample_rate / 2
        return nyquist if self.bands.fmax is None else min(float(self.bands.fmax), nyquist)

    @property
    def frame_seconds(self) -> float:
        return self.analysis.hop_length / self.analysis.sample_rate

    def to_toml(self) -> str:
        """The convention as the TOML file :func:`convention_from_toml` reads back."""
        title = f"mel convention {self.name}" + (f": {self.source}" if self.source else "")
        lines = ["# " + "".join(c if c.isprintable() else " " for c in title)]
        for key, value in self.flat().items():
            if value is None:
                continue  # fmax omitted: Nyquist
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def flat(self) -> dict[str, Any]:
        """The TOML keys and their values (``mel_scale`` and ``filter_norm`` are the bands'
        ``scale`` and ``norm``)."""
        out: dict[str, Any] = {"name": self.name, "source": self.source}
        for part in (self.analysis, self.bands, self.compression):
            for f in fields(part):
                out[_TOML_NAMES.get(f.name, f.name)] = getattr(part, f.name)
        return out


_TOML_NAMES = {"scale": "mel_scale", "norm": "filter_norm"}
TOML_KEYS = tuple(Convention("", Analysis(1), Bands(1)).flat())


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'
    if isinstance(value, float):
        return repr(value)  # shortest repr that reads back exactly (1e-05, 7600.0)
    return str(value)


# ---------------------------------------------------------------------------------------------
# Presets: the numbers each toolkit publishes.  Parameters only; none of their code is used.

PRESETS: MappingProxyType[str, Convention] = MappingProxyType({
    # NVIDIA tacotron2 hparams.py / layers.TacotronSTFT (ours; see mel.py): 22.05 kHz, n_fft
    # 1024, hop 256, 80 Slaney bands 0-8000 Hz of the magnitude, ln, clamp 1e-5.  Identity.
    "tacotron2": Convention(
        "tacotron2", Analysis(22050), Bands(80, 0.0, 8000.0),
        source="NVIDIA tacotron2 hparams.py (TacotronSTFT)"),
    # jik876/hifi-gan meldataset.py mel_spectrogram with config_v1.json: 22.05 kHz, n_fft 1024,
    # hop 256, win 1024, 80 bands 0-8000 Hz (librosa Slaney), reflect pad (n_fft - hop) / 2 and
    # center=False, sqrt(re^2 + im^2 + 1e-9), ln of clamp 1e-5.
    "hifigan": Convention(
        "hifigan", Analysis(22050, padding="hifigan"), Bands(80, 0.0, 8000.0),
        source="jik876/hifi-gan meldataset.py, config_v1.json"),
    # kan-bayashi/ParallelWaveGAN egs/ljspeech/voc1 conf/parallel_wavegan.v1.yaml and
    # bin/preprocess.py logmelfilterbank (also ESPnet's LJSpeech recipe): 22.05 kHz, fft_size
    # 1024, hop 256, win 1024 (null), 80 bands fmin 80 fmax 7600 (librosa Slaney), librosa.stft
    # centred with reflect padding, log10 of max(1e-10, mel); training features are then
    # mean-variance normalised with stats.h5 (--mel-stats undoes it).
    "pwg": Convention(
        "pwg", Analysis(22050), Bands(80, 80.0, 7600.0),
        Compression(log="log10", floor=1e-10),
        source="kan-bayashi/ParallelWaveGAN ljspeech parallel_wavegan.v1.yaml, preprocess.py"),
    # coqui-ai/TTS BaseAudioConfig defaults and utils/audio AudioProcessor.melspectrogram:
    # 22.05 kHz, fft_size 1024, hop 256, win 1024, 80 bands mel_fmin 0, mel_fmax None (Nyquist),
    # librosa Slaney filters on |STFT| (reflect, centred), spec_gain 20 * log10(max(1e-5, mel)),
    # ref_level_db 20, min_level_db -100, signal_norm with symmetric_norm, max_norm 4, clip.
    "coqui": Convention(
        "coqui", Analysis(22050), Bands(80, 0.0, None),
        Compression(log="db", floor=1e-5, db_gain=20.0, normalisation="coqui"),
        source="coqui-ai/TTS BaseAudioConfig defaults (AudioProcessor)"),
    # gemelo-ai/vocos feature_extractors.MelSpectrogramFeatures and the published
    # charactr/vocos-mel-24khz config: torchaudio MelSpectrogram at 24 kHz, n_fft 1024, hop 256,
    # 100 mels (torchaudio defaults: HTK scale, no filter norm, 0 Hz to Nyquist), power 1,
    # center=True (reflect), then safe_log = ln(clip(x, 1e-7)).
    "vocos": Convention(
        "vocos", Analysis(24000), Bands(100, 0.0, None, scale="htk", norm="none"),
        Compression(log="ln", floor=1e-7),
        source="gemelo-ai/vocos MelSpectrogramFeatures (vocos-mel-24khz)"),
    # NVIDIA/BigVGAN meldataset.py (HiFi-GAN's extractor) with bigvgan_24khz_100band and
    # bigvgan_v2_24khz_100band_256x configs: 24 kHz, n_fft 1024, hop 256, win 1024, 100 bands
    # 0-12000 Hz (librosa Slaney), reflect pad (n_fft - hop) / 2, center=False, ln clamp 1e-5.
    "bigvgan-24k": Convention(
        "bigvgan-24k", Analysis(24000, padding="hifigan"), Bands(100, 0.0, 12000.0),
        source="NVIDIA/BigVGAN meldataset.py, bigvgan(_v2)_24khz_100band configs"),
    # NVIDIA/BigVGAN bigvgan_22khz_80band (and v2 22khz_80band_fmax8k_256x): 22.05 kHz, n_fft
    # 1024, hop 256, win 1024, 80 bands 0-8000 Hz, same extractor as bigvgan-24k.
    "bigvgan-22k": Convention(
        "bigvgan-22k", Analysis(22050, padding="hifigan"), Bands(80, 0.0, 8000.0),
        source="NVIDIA/BigVGAN meldataset.py, bigvgan_22khz_80band config"),
})
# Other spellings people use for the same conventions.
ALIASES = MappingProxyType({"bigvgan": "bigvgan-24k", "parallel-wavegan": "pwg",
           "parallelwavegan": "pwg", "espnet": "pwg", "hifi-gan": "hifigan", "tts": "coqui",
           "nvidia": "tacotron2", "waveglow": "tacotron2"})


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def resolve_convention(spec: str | os.PathLike[str]) -> Convention:
    """A preset name (case-insensitive; see :data:`PRESETS` and its aliases) or the path of a
    TOML file describing a convention.  Anything else is a :class:`UsageError` listing the
    presets."""
    text = str(spec)
    key = text.strip().lower()
    key = ALIASES.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(text).expanduser()
    if path.suffix.lower() == ".toml" or os.path.lexists(path):
        return convention_from_toml(path)
    spellings = [(name, name) for name in PRESETS] + list(ALIASES.items())
    hint = did_you_mean(closest_names(key, spellings))
    raise UsageError(f"unknown mel convention {text!r}; {hint}use a preset "
                     f"({', '.join(PRESETS)}) or a .toml file")


def convention_from_toml(source: str | os.PathLike[str], text: str | None = None
                         ) -> Convention:
    """Read a convention from a TOML file (or from ``text``, ``source`` then only names it).
    Unknown keys, wrong types and impossible values are one :class:`UsageError` naming the
    file.  The file is read through the one bounded open of side files (a device or a FIFO
    is refused, not read) and may hold at most :data:`MAX_CONVENTION_BYTES`."""
    name = str(source)
    if text is None:
        text = read_side_text(source, "mel convention file", MAX_CONVENTION_BYTES)
    elif len(text) > MAX_CONVENTION_BYTES:
        raise UsageError(f"{name}: cannot read mel convention file (larger than "
                         f"{MAX_CONVENTION_BYTES >> 10} KiB; a mel convention file is far "
                         "smaller)")
    try:
        table = tomllib.loads(text)
    except ValueError as e:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise UsageError(f"{name}: not valid TOML ({str(e)[:200]})") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise UsageError(f"{name}: not valid TOML (nested too deeply)") from None
    unknown = sorted(set(table) - set(TOML_KEYS))
    if unknown:
        shown = ", ".join(_toml_value(k) if not k.isidentifier() else k for k in unknown[:10])
        raise UsageError(f"{name}: unknown key(s) {shown}; a convention has "
                         f"{', '.join(TOML_KEYS)}")
    if "sample_rate" not in table or "n_mels" not in table:
        raise UsageError(f"{name}: a convention needs at least sample_rate and n_mels")
    values = {_FROM_TOML.get(k, k): v for k, v in table.items()}
    problems = [f"{key}={_short(values[key])} must be a string of at most {_MAX_TEXT} "
                "characters" for key in ("name", "source")
                if key in values and (not isinstance(values[key], str)
                                      or len(values[key]) > _MAX_TEXT)]
    if problems:
        raise UsageError(f"{name}: invalid mel convention: " + "; ".join(problems))
    analysis = Analysis(**_given(Analysis, values))
    bands = Bands(**_given(Bands, values))
    compression = Compression(**_given(Compression, values))
    convention = Convention(str(values.get("name") or Path(name).stem), analysis, bands,
                            compression, str(values.get("source", "")))
    return validate_convention(convention, name)


def _given(cls: type[Analysis | Bands | Compression], values: dict[str, Any]
           ) -> dict[str, Any]:
    """The values of ``cls``'s fields that ``values`` gives."""
    return {f.name: values[f.name] for f in fields(cls) if f.name in values}


# A convention file is a score of short lines (see README "A custom convention": under 1 KB);
# 64 KiB leaves room for any comments and refuses a multi-megabyte file before tomllib spends
# minutes on it (a 60 MB array was still being parsed after 120 s).
MAX_CONVENTION_BYTES = 64 << 10
_MAX_TEXT = 1000


def _short(value: Any) -> str:
    """A value for a message, cut to a readable length (a hostile file's values can be huge)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_FROM_TOML = {toml: ours for ours, toml in _TOML_NAMES.items()}

_INTS = ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels")
_FLOATS = ("fmin", "power", "floor", "db_gain", "ref_level_db", "min_level_db", "max_norm")
_CHOICES = {"padding": PADDINGS, "scale": SCALES, "norm": NORMS, "log": LOGS,
            "normalisation": NORMALISATIONS}
# What real toolkits use lies well inside these ranges (8-48 kHz, n_fft 256-4096, 40-128
# bands, magnitude or power, 10 or 20 dB per decade).  Outside them a file only asks for work
# or for numbers that overflow: 16 Hz with a hop of 10^6 asked for a 79 GiB mel; the matrices
# of a conversion are n_mels x (n_fft / 2 + 1), at most 512 x 8193 here (33 MB each).
LIMITS: MappingProxyType[str, tuple[float, float]] = MappingProxyType({
    "sample_rate": (1_000, 384_000), "n_fft": (16, 16_384), "win_length": (1, 16_384),
    "hop_length": (1, 16_384), "n_mels": (1, 512), "fmin": (0.0, 192_000.0),
    "fmax": (0.0, 192_000.0), "power": (0.25, 4.0), "floor": (1e-30, 1.0),
    "db_gain": (1.0, 100.0), "ref_level_db": (-300.0, 300.0), "min_level_db": (-300.0, -1e-3),
    "max_norm": (1e-3, 1000.0)})
# The longest frame period accepted (seconds per frame): toolkits use 5-25 ms.  It bounds how
# many of our frames (11.6 ms) one source frame becomes when converted: at most ~9.
MAX_FRAME_SECONDS = 0.1


def validate_convention(convention: Convention, name: str) -> Convention:
    """The convention with integral floats made ints, or one UsageError listing every problem
    (``name`` is the file or preset it came from).  Every value is checked against
    :data:`LIMITS` before anything is built from it."""
    problems: list[str] = []
    fixed: dict[str, Any] = {}  # ints and floats, for fields of either type
    for part in (convention.analysis, convention.bands, convention.compression):
        for f in fields(part):
            value = getattr(part, f.name)
            problem = _check_value(f.name, value)
            if problem:
                problems.append(problem)
            elif f.name in _INTS:
                fixed[f.name] = int(value)
            elif f.name in _FLOATS or (f.name == "fmax" and value is not None):
                fixed[f.name] = float(value)
    if not problems:
        problems = _check_together(convention)
    if problems:
        raise UsageError(f"{name}: invalid mel convention: " + "; ".join(problems))
    return replace(convention,
                   analysis=replace(convention.analysis, **{k: v for k, v in fixed.items()
                                                            if k in _field_names(Analysis)}),
                   bands=replace(convention.bands, **{k: v for k, v in fixed.items()
                                                      if k in _field_names(Bands)}),
                   compression=replace(convention.compression,
                                       **{k: v for k, v in fixed.items()
                                          if k in _field_names(Compression)}))


def _check_together(convention: Convention) -> list[str]:
    """The checks of values against each other (each value is in its range already)."""
    a, b = convention.analysis, convention.bands
    problems = []
    if a.win_length > a.n_fft:
        problems.append(f"win_length={a.win_length} must be <= n_fft={a.n_fft}")
    if a.hop_length / a.sample_rate > MAX_FRAME_SECONDS:
        problems.append(f"hop_length={a.hop_length} at sample_rate={a.sample_rate} is a frame "
                        f"every {a.hop_length / a.sample_rate:.3g} s; at most "
                        f"{MAX_FRAME_SECONDS:g} s is accepted")
    top = a.sample_rate / 2 if b.fmax is None else b.fmax
    if top > a.sample_rate / 2 + 1e-9:
        problems.append(f"fmax={b.fmax} must be <= sample_rate/2={a.sample_rate / 2}")
    elif b.fmin >= top:
        problems.append(f"fmin={b.fmin} must be < fmax={top}")
    elif not problems and _empty_bands(convention) == b.n_mels:
        problems.append(f"the filterbank is empty: no FFT bin (every {a.sample_rate / a.n_fft:.4g}"
                        f" Hz at n_fft={a.n_fft}) lies inside any of the n_mels={b.n_mels} "
                        f"bands between fmin={b.fmin:g} and fmax={top:g} Hz; widen fmin-fmax, "
                        "use fewer bands or a larger n_fft")
    return problems


def _empty_bands(convention: Convention) -> int:
    """How many of the convention's mel triangles hold no FFT bin (librosa's "empty filters":
    triangle k has weight only at bins strictly between its edges k and k + 2)."""
    import librosa  # lazily: slow to import; a custom convention is converted with it anyway
    import numpy as np

    a, b = convention.analysis, convention.bands
    edges = librosa.mel_frequencies(b.n_mels + 2, fmin=b.fmin, fmax=convention.fmax_hz,
                                    htk=b.scale == "htk")
    bins = np.arange(a.n_fft // 2 + 1) * (a.sample_rate / a.n_fft)
    inside = np.searchsorted(bins, edges[2:], "left") - np.searchsorted(bins, edges[:-2], "right")
    return int(np.count_nonzero(inside <= 0))


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _check_value(key: str, value: Any) -> str | None:
    label = _TOML_NAMES.get(key, key)
    if key in _CHOICES:
        if not isinstance(value, str) or value not in _CHOICES[key]:
            return f"{label}={_short(value)} must be one of {', '.join(_CHOICES[key])}"
        return None
    if key == "symmetric":
        return None if isinstance(value, bool) else \
            f"symmetric={_short(value)} must be true or false"
    if key == "fmax" and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and not math.isfinite(value)):
        return f"{label}={_short(value)} must be a finite number"
    if key in _INTS and ((isinstance(value, float) and not value.is_integer()) or value < 1):
        return f"{label}={_short(value)} must be a whole number >= 1"
    if key in ("power", "floor", "db_gain", "max_norm") and value <= 0:
        return f"{label}={value!r} must be > 0"
    if key in ("fmin", "fmax") and value < 0:
        return f"{label}={value!r} must be >= 0"
    if key == "min_level_db" and value >= 0:
        return f"min_level_db={value!r} must be < 0"
    low, high = LIMITS[key]
    if not low <= value <= high:
        return f"{label}={_short(value)} must be between {low:g} and {high:g}"
    return None


# ---------------------------------------------------------------------------------------------
# Mean-variance statistics (ParallelWaveGAN's stats.h5 / stats.npy, ESPnet, Coqui's scaler)


@dataclass(frozen=True)
class MelStats:
    """Per-band mean and scale (standard deviation) of normalised features: the stored value is
    ``(x - mean) / scale``, so ``x = value * scale + mean``."""

    mean: np.ndarray
    scale: np.ndarray

    def undo(self, values: np.ndarray) -> np.ndarray:
        """The features before normalisation, from (n_mels, frames) normalised values."""
        return values * self.scale[:, None] + self.mean[:, None]


# A statistics file holds two vectors of n_mels numbers: ParallelWaveGAN's stats.h5 is ~6 KB.
MAX_STATS_BYTES = 4 << 20
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# HDF5 decompresses whole chunks: a chunk may hold at most this many bytes (a legitimate
# stats.h5 is contiguous or chunked by the vector itself), so a 4 MiB file cannot inflate.
_MAX_CHUNK_BYTES = 1 << 20


def load_mel_stats(path: str | os.PathLike[str], n_mels: int | None = None) -> MelStats:
    """Statistics in exactly the two documented layouts: ParallelWaveGAN's ``stats.h5`` (1-D
    real float datasets ``mean`` and ``scale`` of n_mels values; needs h5py) or a ``.npy``
    holding a (2, n_mels) real float array (mean, then scale).

    The file is read whole through the bounded open of side files (a device or FIFO is
    refused; at most :data:`MAX_STATS_BYTES`), the format is told by its content, and shapes
    and dtypes are checked from the headers before any value is read.  HDF5 data stored
    outside the file (external storage, virtual datasets, external links) is refused, so no
    other file's bytes are ever used.  Anything else is one :class:`UsageError` naming the
    file."""
    import numpy as np

    name = str(path)
    data = read_side_file(path, "mel statistics file", MAX_STATS_BYTES)
    if data.startswith(_HDF5_MAGIC):
        mean, scale = _read_h5_stats(data, name, n_mels)
    elif data.startswith(b"\x93NUMPY"):
        mean, scale = _read_npy_stats(data, name, n_mels)
    else:
        what = "a zip (.npz) archive" if data.startswith(b"PK\x03\x04") else \
            "neither HDF5 nor .npy"
        raise UsageError(f"{name}: the mel statistics file is {what}; give ParallelWaveGAN's "
                         "stats.h5 (datasets mean and scale) or a (2, n_mels) .npy of mean "
                         "and scale")
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    if mean.shape != scale.shape or not np.isfinite(mean).all() or not np.isfinite(scale).all():
        raise UsageError(f"{name}: mel statistics need finite mean and scale of one length")
    return MelStats(mean, scale)


def _stats_problem(dtype: np.dtype, shape: tuple[int, ...] | None, wanted: str) -> str | None:
    """Why an array declared as ``shape`` of ``dtype`` cannot be statistics (None: it can)."""
    if dtype.hasobject or dtype.names or dtype.subdtype is not None or dtype.kind != "f" \
            or dtype.itemsize > 8:
        return f"has dtype {dtype}; expected real floating point numbers"
    if shape is None:
        return "is empty (no dataspace)"
    if wanted == "vector" and len(shape) != 1:
        return f"has shape {shape}; expected a vector (n_mels,)"
    return None


def _check_bands(name: str, bands: int, n_mels: int | None) -> None:
    limit = int(LIMITS["n_mels"][1])
    if not 1 <= bands <= limit:
        raise UsageError(f"{name}: statistics for {bands} bands; between 1 and {limit} are "
                         "accepted")
    if n_mels is not None and bands != n_mels:
        raise UsageError(f"{name}: statistics for {bands} bands; the convention has {n_mels}")


def _read_npy_stats(data: bytes, name: str, n_mels: int | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of a (2, n_mels) .npy, its header parsed (without pickle, numpy's own
    header size cap) and checked before the values are looked at."""
    import io

    import numpy as np

    fmt = np.lib.format
    f = io.BytesIO(data)
    try:
        version = fmt.read_magic(f)
        read_header = {(1, 0): fmt.read_array_header_1_0,
                       (2, 0): fmt.read_array_header_2_0}.get(version)
        if read_header is None:
            raise UsageError(f"{name}: .npy format version {version[0]}.{version[1]} is not "
                             "supported (1.0 and 2.0 are)")
        shape, fortran, dtype = read_header(f)
    except UsageError:
        raise
    except (ValueError, TypeError, SyntaxError, EOFError, OSError) as e:
        raise UsageError(f"{name}: corrupt .npy header in the mel statistics "
                         f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})"
                         ) from None
    problem = _stats_problem(dtype, shape, "pair")
    if problem is None and (len(shape) != 2 or shape[0] != 2):
        problem = f"has shape {shape}"
    if problem:
        raise UsageError(f"{name}: mel statistics must be a (2, n_mels) array (mean, scale) of "
                         f"real floats; the .npy array {problem}")
    _check_bands(name, shape[1], n_mels)
    count = 2 * shape[1]
    if len(data) - f.tell() < count * dtype.itemsize:
        raise UsageError(f"{name}: truncated .npy file: its header declares shape {shape} but "
                         "the file holds less")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell())
    array = array.reshape(shape, order="F" if fortran else "C")
    return array[0], array[1]


def _read_h5_stats(data: bytes, name: str, n_mels: int | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    import io


    try:
        import h5py
    except ImportError:
        raise UsageError(f"{name}: reading .h5 statistics needs h5py (pip install h5py), or "
                         "give them as a (2, n_mels) .npy of mean and scale") from None
    try:
        # From the bytes already read: the name is never opened a second time.
        with h5py.File(io.BytesIO(data), "r") as f:
            return tuple(_h5_vector(f, key, name, n_mels)  # type: ignore[return-value]
                         for key in ("mean", "scale"))
    except UsageError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        text = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UsageError(f"{name}: cannot read mel statistics ({text})") from None


def _h5_vector(f: Any, key: str, name: str, n_mels: int | None) -> np.ndarray:
    """One dataset of ParallelWaveGAN's stats.h5, checked from its header before it is read:
    a dataset stored in this file (not a link elsewhere, external storage or a virtual
    dataset), a vector of real floats, of a bounded length and chunk size."""
    import math

    import h5py
    import numpy as np

    def refuse(reason: str) -> UsageError:
        return UsageError(f"{name}: mel statistics '{key}' {reason}")

    link = f.get(key, getlink=True)
    if link is None:
        found = ", ".join(list(f.keys())[:10]) or "none"
        raise UsageError(f"{name}: no {key} dataset (found {found}); expected "
                         "ParallelWaveGAN's stats.h5 (datasets mean and scale)")
    if not isinstance(link, h5py.HardLink):
        kind = {"SoftLink": "a soft link", "ExternalLink": "an external link"}.get(
            type(link).__name__, "a link")
        raise refuse(f"is {kind}, not a dataset stored in this file")
    dataset = f[key]
    if not isinstance(dataset, h5py.Dataset):
        raise refuse(f"is a {type(dataset).__name__.lower()}, not a dataset")
    if dataset.is_virtual or dataset.external:
        raise refuse("is stored outside this file (external storage or a virtual dataset); "
                     "refused")
    problem = _stats_problem(dataset.dtype, dataset.shape, "vector")
    if problem:
        raise refuse(problem)
    _check_bands(name, dataset.shape[0], n_mels)
    if dataset.chunks is not None \
            and math.prod(dataset.chunks) * dataset.dtype.itemsize > _MAX_CHUNK_BYTES:
        raise refuse(f"is stored in chunks of {dataset.chunks} values; refused")
    return np.asarray(dataset[()])
