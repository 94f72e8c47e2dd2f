"""What a synthesis job is asked to do, as small frozen objects that a front end builds once
from its options and the library takes as they are (:func:`waveglow_cli.jobs.core.synthesis_job`).

* :class:`InputOptions`: how the inputs are read (a mel's layout and log scale, or another
  toolkit's mel convention to convert from);
* :class:`OutputOptions`: what becomes of the audio (sample format, the exists/overwrite
  policy, figures, standard output's format, and the first piece a lone input is made from);
* :class:`StandardStreams`: standard input and output, passed in (None where there are none).

Nothing here imports torch: the command line builds these before the model loads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .summary import OutputPolicy


@dataclass(frozen=True)
class InputOptions:
    """How the inputs are read: ``mel_layout`` (auto, CT or TC) and ``mel_scale`` (ln, log10 or
    db) of mel files, or ``convention`` (``--mel-from``: a preset name or a TOML file) for mels
    of another toolkit, converted to the checkpoint's mel when read (``mel_scale`` then does
    not apply), with ``mel_stats`` the mean-variance statistics to undo."""

    mel_layout: str = "auto"
    mel_scale: str = "ln"
    convention: str | os.PathLike[str] | None = None
    mel_stats: str | os.PathLike[str] | None = None


@dataclass(frozen=True)
class OutputOptions:
    """What becomes of each item's audio: written as ``subtype`` (PCM_16, PCM_24, PCM_32 or
    FLOAT) under ``policy`` (an existing output kept, replaced or skipped), with a figure
    beside it (``plot``); standard output gets ``stdout_format`` (wav, raw or flac).

    A job of one input makes it front to back in growing pieces from ``first_piece`` frames,
    so its first audio comes early (0: whole; None: :data:`~waveglow_cli.synthesis.plans.
    FIRST_PIECE_FRAMES` for standard output, whole for a file).  The plan depends only on it:
    a file made with the same first piece equals the stream byte for byte."""

    subtype: str = "PCM_16"
    policy: OutputPolicy = field(default_factory=OutputPolicy)
    plot: bool = False
    stdout_format: str = "wav"
    first_piece: int | None = None

    def first_piece_for(self, outputs: Sequence[Path | None]) -> int:
        """The first piece of a one-item job with these ``outputs``: as asked, else a small one
        for standard output (a stream: its first audio early) and none for a file (made whole:
        a stream's boundaries cost work that a file does not need)."""
        from ..synthesis.plans import FIRST_PIECE_FRAMES

        if self.first_piece is not None:
            return self.first_piece
        return FIRST_PIECE_FRAMES if len(outputs) == 1 and outputs[0] is None else 0


@dataclass(frozen=True)
class StandardStreams:
    """Standard input and output as binary streams (None: this process has none, and an
    input or output '-' fails)."""

    stdin: IO[bytes] | None = None
    stdout: IO[bytes] | None = None


__all__ = ["InputOptions", "OutputOptions", "StandardStreams"]
