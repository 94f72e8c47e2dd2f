"""``waveglow train``: maximum-likelihood training and fine-tuning of WaveGlow.

The objective is NVIDIA's ``WaveGlowLoss`` (:func:`waveglow_cli.model.waveglow_loss`) on random
segments of audio, with the mel computed on the fly by
:func:`waveglow_cli.features.mel.mel_spectrogram`, exactly as ``waveglow mel`` and copy synthesis
compute it.  Semantics follow NVIDIA's ``train.py``/``mel2samp.py`` (random segment per file,
zero-padded when the file is shorter, Adam, constant learning rate); the code is our own.

Modules: :mod:`.options` (what was asked), :mod:`.data` (files and the segment stream),
:mod:`.rundir` (the run folder), :mod:`.setup` (device, precision, the starting model),
:mod:`.report` (notes, progress, metrics), :mod:`.stop` (signals), :mod:`.loop` (the steps).
"""

from __future__ import annotations

from ..errors import TrainingError, TrainingInterrupted
from .data import (
           AudioFile,
           SegmentDataset,
           StepBatches,
           collect_files,
           probe,
           split_validation,
           take_segment,
)
from .loop import train
from .options import TrainOptions
from .rundir import checkpoint_steps, model_path, state_path

__all__ = [
           "AudioFile",
           "SegmentDataset",
           "StepBatches",
           "TrainOptions",
           "TrainingError",
           "TrainingInterrupted",
           "checkpoint_steps",
           "collect_files",
           "model_path",
           "probe",
           "split_validation",
           "state_path",
           "take_segment",
           "train",
]
