"""How close resynthesised audio is to its source: the log-mel distance used for the demo
model's copy-synthesis checks and the reduced-precision checks on trained weights."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..features.mel import MelConfig, mel_spectrogram

#: natural-log units to decibels of magnitude: 20 / ln(10).
NATS_TO_DB = 20 / math.log(10)


def log_mel_distance(reference: Tensor | np.ndarray, test: Tensor | np.ndarray,
                     config: MelConfig | None = None) -> float:
    """Mean absolute difference of the two signals' Tacotron 2 log mels (natural log, the
    1e-5 floor included), over the frames both have: 0 for identical audio; multiply by
    :data:`NATS_TO_DB` for decibels.  Lengths may differ by the vocoder's rounding to whole
    frames: the shorter signal's frames are compared."""
    ref_mel = mel_spectrogram(reference, config)
    test_mel = mel_spectrogram(test, config)
    frames = min(ref_mel.size(-1), test_mel.size(-1))
    return float(torch.mean(torch.abs(ref_mel[..., :frames] - test_mel[..., :frames])))


def snr_db(reference: Tensor | np.ndarray, test: Tensor | np.ndarray) -> float:
    """10 log10(|reference|^2 / |test - reference|^2) over the samples both have (inf when
    equal)."""
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float64).flatten()
    out = torch.as_tensor(np.asarray(test), dtype=torch.float64).flatten()
    n = min(ref.numel(), out.numel())
    noise = float(torch.sum((out[:n] - ref[:n]) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(torch.sum(ref[:n] ** 2)) / noise)
