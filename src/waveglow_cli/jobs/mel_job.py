"""The mel job: audio files (or another toolkit's mels) to Tacotron 2 mel files, item by item.

It mirrors :class:`~waveglow_cli.jobs.core.SynthesisJob`: the command line plans the inputs
and outputs, builds the job once from its options, and runs it; failures are per item and the
result is a :class:`~waveglow_cli.jobs.summary.Summary`.  No model runs here, so there is no
batching: each item is read, converted and written before the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from ..audio.io import LazyMel, encode_mel
from ..features.mel import MelConfig
from ..features.melconvert import MelConverter
from ..fileio import atomic_write
from .core import run_items
from .options import StandardStreams
from .summary import Item, JobProgress, OutputPolicy, Summary
from .writers import write_stream


@dataclass(frozen=True)
class MelJob:
    """Each input's mel, written as ``fmt`` (npy or pt) to its target or standard output.

    ``converter`` set: the inputs are another toolkit's mels (or audio) converted onto
    ``config``'s mel (``mel --from``), read in ``mel_layout``; unset: audio files whose mel is
    computed with ``config``."""

    config: MelConfig
    fmt: str = "npy"
    converter: MelConverter | None = None
    mel_layout: str = "auto"
    policy: OutputPolicy = field(default_factory=OutputPolicy)
    streams: StandardStreams = field(default_factory=StandardStreams)

    def run(self, items: list[Item], outputs: list[Path | None],
            progress: JobProgress | None = None) -> Summary:
        return run_items(items, outputs, self.policy, self.write_one, progress,
                         stdin=self.streams.stdin)

    def write_one(self, item: Item, source: Path | IO[bytes], target: Path | None,
                  progress: JobProgress) -> None:
        """One item: its mel computed (or converted), its notes reported, the file written
        atomically (or the bytes to standard output)."""
        from ..features.inputs import audio_to_mel, load_synthesis_input

        spectrogram: np.ndarray | LazyMel
        if self.converter is None:
            spectrogram, notes = audio_to_mel(source, self.config, item.display)
        else:
            spectrogram, notes = load_synthesis_input(source, item.display, self.config,
                                                      self.mel_layout,
                                                      converter=self.converter)
        for text in notes:
            progress.note(text)
        data = encode_mel(np.asarray(spectrogram), self.fmt)  # an array already: as it is
        if target is None:
            write_stream(self.streams.stdout, data)
        else:
            atomic_write(target, lambda tmp: tmp.write_bytes(data),
                         overwrite=self.policy.overwrite)
