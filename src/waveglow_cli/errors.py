"""Typed errors on built-in bases.

Callers can catch the specific class or the standard base it derives from.  Every error carries
the file it is about (where there is one) so the CLI can print one line that names it.
"""

from __future__ import annotations

import pickle
from pathlib import Path


class WaveGlowError(Exception):
    """Base of every error this package raises on purpose."""


class InputFileError(WaveGlowError, ValueError):
    """A file given to us cannot be used; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(InputFileError):
    """A checkpoint file is unreadable, corrupt, truncated or not a WaveGlow."""


class UnsafePickleError(CheckpointError, pickle.UnpicklingError):
    """A pickle asked for a global outside our allow-list; nothing from it was executed."""

    def __init__(self, path: str | Path, global_name: str) -> None:
        self.global_name = global_name
        super().__init__(
            path,
            f"refused to load: the pickle references '{global_name}', which is not on the "
            "allow-list of harmless globals (nothing from the file was executed)",
        )


class MelFileError(InputFileError):
    """A mel spectrogram input is unreadable or has the wrong shape, dtype or values."""


class AudioFileError(InputFileError):
    """An audio input is unreadable, empty or not audio."""


class SynthesisError(InputFileError):
    """Synthesis of one item failed (for example the model produced NaN/inf samples)."""


class OutputExistsError(WaveGlowError, FileExistsError):
    """An output file exists and neither overwrite nor skip was asked for."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        super().__init__(
            f"{self.path}: output exists; pass --overwrite to replace it or --skip-existing to keep it"
        )


class UsageError(WaveGlowError, ValueError):
    """The command line or API call is inconsistent (maps to exit code 2)."""


class UnknownCheckpointError(UsageError, LookupError):
    """A checkpoint name is neither a registry entry nor an existing file."""


class CheckpointNotAvailableError(WaveGlowError, FileNotFoundError):
    """A registry checkpoint is known but not on disk (and cannot be fetched now)."""
