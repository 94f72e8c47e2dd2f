"""Reading what is synthesised from: a mel file (.npy/.pt), or an audio file whose mel is
computed (copy synthesis), told apart by content."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import IO

import numpy as np
import torch

from .audio_io import LazyMel, open_input, peek, prepare_audio, read_audio, read_mel, sniff
from .errors import AudioFileError, MelFileError
from .mel import MelConfig, mel_spectrogram
from .melcheck import check_mel_scale


def audio_to_mel(source: str | os.PathLike[str] | bytes | IO[bytes], config: MelConfig,
                 name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Any audio file (or its bytes, or an open binary file) -> (float32 (n_mels, frames) log
    mel, notes).

    Multi-channel audio is averaged; another sample rate is resampled to ``config``'s."""
    name = name or ("<stdin>" if isinstance(source, bytes) else str(getattr(source, "name", source)))
    samples, rate = read_audio(source, name)
    mono, notes = prepare_audio(samples, rate, config.sample_rate, name)
    del samples
    try:
        mel = mel_spectrogram(torch.from_numpy(mono), config)[0]
    except ValueError as e:  # too short to analyse
        raise AudioFileError(name, str(e)) from None
    return mel.numpy(), notes


def load_synthesis_input(source: str | os.PathLike[str] | bytes | IO[bytes], name: str,
                         config: MelConfig, layout: str = "auto", scale: str = "ln", *,
                         lazy: bool = False) -> tuple[np.ndarray | LazyMel, list[str]]:
    """A mel file (.npy/.pt) or an audio file (copy synthesis), told apart by content.

    The input is opened once (a FIFO is read once, with a cap; devices are refused).  With
    ``lazy`` a mel comes back as a :class:`LazyMel` that reads frames on demand (a ``.npy`` is
    memory-mapped, never copied whole); audio gives its computed mel."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_from(io.BytesIO(bytes(source)), name, config, layout, scale, lazy)
    if hasattr(source, "read"):
        return _load_from(source, name, config, layout, scale, lazy)  # type: ignore[arg-type]
    with open_input(source, name, MelFileError) as f:  # type: ignore[arg-type]
        return _load_from(f, name, config, layout, scale, lazy)


def _load_from(f: IO[bytes], name: str, config: MelConfig, layout: str, scale: str, lazy: bool
               ) -> tuple[np.ndarray | LazyMel, list[str]]:
    if sniff(peek(f, name, MelFileError)) == "audio":
        return audio_to_mel(f, config, name)
    notes: list[str] = []
    mel = read_mel(f, name, n_mels=config.n_mels, layout=layout, scale=scale, notes=notes,
                   lazy=True)
    assert isinstance(mel, LazyMel)
    # The file's own values (before the log-base conversion), a few windows of frames only.
    note = check_mel_scale(name, mel.data, scale, config.clip_min)
    mel.release()
    if note is not None:
        notes.append(note)
    return (mel if lazy else np.asarray(mel)), notes


@dataclass(frozen=True)
class SynthesisInputReader:
    """What a synthesis job loads its items with: (path or open file, display name) ->
    ((n_mels, frames) mel, notes); a mel file stays lazy (only its pieces are ever read)."""

    config: MelConfig
    layout: str = "auto"
    scale: str = "ln"

    def __call__(self, source: str | os.PathLike[str] | IO[bytes], name: str
                 ) -> tuple[np.ndarray | LazyMel, list[str]]:
        return load_synthesis_input(source, name, self.config, self.layout, self.scale,
                                    lazy=True)
