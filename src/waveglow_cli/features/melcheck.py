"""Mel sanity: which scale an input mel is likely in, judged from a bounded sample of its values.

WaveGlow's checkpoints were trained on Tacotron 2 mels: ``ln(max(mel, 1e-5))`` of a magnitude
mel, which lie in about -11.5 .. 2 (quiet bands sit on the floor ln(1e-5) = -11.51).  Mels from
other tools are often a linear magnitude (all values >= 0), dB (20 log10 of the magnitude, about
-100 .. +20) or log10 (about -5 .. 1); vocoded as natural-log mels they give loud noise.  A note
is made only when the values say so clearly (a real Tacotron 2 mel, silence included, never
gets one): log10 is recognised only by its floor log10(1e-5) = -5 holding many values, the
natural log (when another scale was asked for) by its floor or, against dB, by its narrow range.

Only a few windows of frames are read (a long ``.npy`` is memory-mapped; see
:class:`audio_io.LazyMel`), so the check costs the same for a second and for ten hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Frames read to judge a mel: this many windows, evenly spaced, of this many frames each.
SAMPLE_WINDOWS = 16
WINDOW_FRAMES = 32

# A "floor" (the clamp value of a log) holds at least this fraction of the sampled values
# (and at least FLOOR_MIN_COUNT of them) within FLOOR_TOLERANCE of one value.
FLOOR_FRACTION = 0.005
FLOOR_MIN_COUNT = 20
FLOOR_TOLERANCE = 1e-4

# What a natural-log magnitude mel cannot reach: values below DB_BELOW (its floor is ln 1e-5 =
# -11.5), or above DB_ABOVE (a magnitude of e**15, far beyond any audio in [-1, 1]) with a
# spread of DB_SPREAD: those are dB.
DB_BELOW = -30.0
DB_ABOVE = 15.0
DB_SPREAD = 20.0

DESCRIPTIONS = {"linear": "a linear magnitude mel", "db": "a dB mel", "log10": "a log10 mel",
                "ln": "a natural-log (Tacotron 2) mel"}
SCALE_NAMES = {"ln": "natural-log (Tacotron 2)", "log10": "log10", "db": "dB"}


@dataclass(frozen=True)
class MelStats:
    """What the scale is judged from: the sampled values' range and where they pile up."""

    low: float
    high: float
    floor: float | None     # the lowest value, when many values sit exactly on it (a clamp)

    @classmethod
    def of(cls, values: np.ndarray) -> MelStats:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(0.0, 0.0, None)
        low, high = float(values.min()), float(values.max())
        near = int(np.count_nonzero(values <= low + FLOOR_TOLERANCE))
        piled = near >= max(FLOOR_MIN_COUNT, FLOOR_FRACTION * values.size)
        return cls(low, high, low if piled else None)


def sample_values(data: np.ndarray, windows: int = SAMPLE_WINDOWS,
                  frames: int = WINDOW_FRAMES) -> np.ndarray:
    """The values of at most ``windows * frames`` frames of an (n_mels, frames) array (a memory
    map is only touched there), as float64: every frame of a short mel, else evenly spaced
    windows from the first frame to the last."""
    total = int(data.shape[1])
    if total <= windows * frames:
        return np.asarray(data, dtype=np.float64)
    starts = np.linspace(0, total - frames, windows).astype(np.int64)
    return np.concatenate([np.asarray(data[:, lo:lo + frames], dtype=np.float64)
                           for lo in starts], axis=1)


def detect_scale(stats: MelStats, given: str = "ln", clip_min: float = 1e-5) -> str | None:
    """'linear', 'db', 'log10', 'ln', or None when the values do not say clearly.

    ``given`` is the scale the caller was told (the natural log against dB is told by its
    range only then: a dB mel of audio spans far more than 17 dB)."""
    low, high = stats.low, stats.high
    if low >= 0.0 and high > 0.0:
        return "linear"
    if low < min(DB_BELOW, 2 * math.log(clip_min)) or (high > DB_ABOVE
                                                        and high - low >= DB_SPREAD):
        return "db"
    if stats.floor is not None:
        if abs(stats.floor - math.log(clip_min)) <= 1e-3:
            return "ln"
        if abs(stats.floor - math.log10(clip_min)) <= 1e-3 and high <= 2.0:
            return "log10"
    if given == "db" and math.log(clip_min) - 0.1 <= low < 0.0 and high <= 6.0:
        return "ln"
    return None


def _number(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def scale_note(name: str, stats: MelStats, given: str = "ln", clip_min: float = 1e-5
               ) -> str | None:
    """A note when the mel looks like another scale than ``given`` (ln, log10, db): what it
    looks like and what to do; None when it matches or the values do not say."""
    found = detect_scale(stats, given, clip_min)
    if found is None or found == given:
        return None
    if found == "linear":
        looks = f"all values >= 0, max {_number(stats.high)}"
    else:
        looks = f"values from {_number(stats.low)} to {_number(stats.high)}"
        if stats.floor is not None:
            looks += f", floor {_number(stats.floor)}"
    text = f"{name}: looks like {DESCRIPTIONS[found]} ({looks}), not {SCALE_NAMES[given]}; "
    if found == "linear":
        return text + ("take its natural log first (numpy.log(numpy.maximum(mel, 1e-5))), "
                       "else it is vocoded into loud noise")
    if found == "ln":
        return text + "pass --mel-scale ln (the default) or leave --mel-scale out"
    return text + f"pass --mel-scale {found} or convert it"


def check_mel_scale(name: str, data: np.ndarray, given: str = "ln", clip_min: float = 1e-5
                    ) -> str | None:
    """:func:`scale_note` of a bounded sample of an (n_mels, frames) array's raw values (as the
    file holds them, before any conversion)."""
    return scale_note(name, MelStats.of(sample_values(data)), given, clip_min)
