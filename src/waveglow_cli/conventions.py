"""Mel conventions of other toolkits: presets, a small TOML form, and mean-variance statistics.

A mel convention says how a toolkit turns audio into the mel its vocoder reads: the analysis
(sample rate, FFT size, hop, window, padding), the filterbank (number of bands, frequency range,
HTK or Slaney scale, filter normalisation, magnitude or power) and the compression (log base,
floor, normalisation).  Every such mel is a linear map of a magnitude spectrum followed by an
invertible compression, so :mod:`waveglow_cli.melconvert` can bring it back to a spectrum and
onto the Tacotron 2 filterbank WaveGlow was trained on.

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

from .errors import UsageError

if TYPE_CHECKING:  # numpy is imported where statistics are read: `waveglow --help` stays fast
    import numpy as np

__all__ = ["Analysis", "Bands", "Compression", "Convention", "MelStats", "PRESETS",
           "TOML_KEYS", "convention_from_toml", "load_mel_stats", "preset_names",
           "resolve_convention"]

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
ALIASES = MappingProxyType({"bigvgan": "bigvgan-24k", "parallel-wavegan": "pwg", "parallelwavegan": "pwg",
           "espnet": "pwg", "hifi-gan": "hifigan", "tts": "coqui", "nvidia": "tacotron2",
           "waveglow": "tacotron2"})


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
    if path.suffix.lower() == ".toml" or path.is_file():
        return convention_from_toml(path)
    raise UsageError(f"unknown mel convention {text!r}; use a preset ({', '.join(PRESETS)}) "
                     "or a .toml file")


def convention_from_toml(source: str | os.PathLike[str], text: str | None = None
                         ) -> Convention:
    """Read a convention from a TOML file (or from ``text``, ``source`` then only names it).
    Unknown keys, wrong types and impossible values are one :class:`UsageError` naming the
    file."""
    name = str(source)
    if text is None:
        try:
            text = Path(source).expanduser().read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"{name}: no such mel convention file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{name}: cannot read the mel convention ({e})") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{name}: not valid TOML ({e})") from None
    unknown = sorted(set(table) - set(TOML_KEYS))
    if unknown:
        raise UsageError(f"{name}: unknown key(s) {', '.join(unknown)}; a convention has "
                         f"{', '.join(TOML_KEYS)}")
    if "sample_rate" not in table or "n_mels" not in table:
        raise UsageError(f"{name}: a convention needs at least sample_rate and n_mels")
    values = {_FROM_TOML.get(k, k): v for k, v in table.items()}
    parts = {}
    for cls in (Analysis, Bands, Compression):
        parts[cls] = cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
    convention = Convention(str(values.get("name") or Path(name).stem), parts[Analysis],
                            parts[Bands], parts[Compression], str(values.get("source", "")))
    return validate_convention(convention, name)


_FROM_TOML = {toml: ours for ours, toml in _TOML_NAMES.items()}

_INTS = ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels")
_FLOATS = ("fmin", "power", "floor", "db_gain", "ref_level_db", "min_level_db", "max_norm")
_CHOICES = {"padding": PADDINGS, "scale": SCALES, "norm": NORMS, "log": LOGS,
            "normalisation": NORMALISATIONS}


def validate_convention(convention: Convention, name: str) -> Convention:
    """The convention with integral floats made ints, or one UsageError listing every problem
    (``name`` is the file or preset it came from)."""
    problems: list[str] = []
    fixed = {}
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
        a, b = convention.analysis, convention.bands
        if a.win_length > a.n_fft:
            problems.append(f"win_length={a.win_length} must be <= n_fft={a.n_fft}")
        top = a.sample_rate / 2 if b.fmax is None else b.fmax
        if top > a.sample_rate / 2 + 1e-9:
            problems.append(f"fmax={b.fmax} must be <= sample_rate/2={a.sample_rate / 2}")
        elif b.fmin >= top:
            problems.append(f"fmin={b.fmin} must be < fmax={top}")
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


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _check_value(key: str, value: Any) -> str | None:
    label = _TOML_NAMES.get(key, key)
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            return f"{label}={value!r} must be one of {', '.join(_CHOICES[key])}"
        return None
    if key == "symmetric":
        return None if isinstance(value, bool) else f"symmetric={value!r} must be true or false"
    if key == "fmax" and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(float(value)):
        return f"{label}={value!r} must be a finite number"
    if key in _INTS and (float(value) != int(value) or value < 1):
        return f"{label}={value!r} must be a whole number >= 1"
    if key in ("power", "floor", "db_gain", "max_norm") and value <= 0:
        return f"{label}={value!r} must be > 0"
    if key in ("fmin", "fmax") and value < 0:
        return f"{label}={value!r} must be >= 0"
    if key == "min_level_db" and value >= 0:
        return f"min_level_db={value!r} must be < 0"
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


def load_mel_stats(path: str | os.PathLike[str], n_mels: int | None = None) -> MelStats:
    """Statistics from a ParallelWaveGAN-style ``stats.h5`` (datasets ``mean`` and ``scale``;
    needs h5py) or ``stats.npy`` (a (2, n_mels) array: mean, then scale)."""
    import numpy as np

    name = str(path)
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{name}: no such mel statistics file")
    try:
        if p.suffix.lower() in (".h5", ".hdf5"):
            mean, scale = _read_h5_stats(p, name)
        else:
            array = np.load(p, allow_pickle=False)
            if array.ndim != 2 or array.shape[0] != 2:
                raise UsageError(f"{name}: mel statistics must be a (2, n_mels) array (mean, "
                                 f"scale), not shape {array.shape}")
            mean, scale = array[0], array[1]
    except UsageError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"{name}: cannot read mel statistics ({str(e)[:160]})") from None
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    if mean.shape != scale.shape or not np.isfinite(mean).all() or not np.isfinite(scale).all():
        raise UsageError(f"{name}: mel statistics need finite mean and scale of one length")
    if n_mels is not None and mean.size != n_mels:
        raise UsageError(f"{name}: statistics for {mean.size} bands; the convention has "
                         f"{n_mels}")
    return MelStats(mean, scale)


def _read_h5_stats(path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    try:
        import h5py
    except ImportError:
        raise UsageError(f"{name}: reading .h5 statistics needs h5py (pip install h5py), or "
                         "give them as a (2, n_mels) .npy of mean and scale") from None
    with h5py.File(path, "r") as f:
        missing = [k for k in ("mean", "scale") if k not in f]
        if missing:
            raise UsageError(f"{name}: no {' or '.join(missing)} dataset (found "
                             f"{', '.join(f.keys()) or 'none'}); expected ParallelWaveGAN's "
                             "stats.h5")
        return np.asarray(f["mean"][()]), np.asarray(f["scale"][()])
