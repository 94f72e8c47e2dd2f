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


class DownloadError(WaveGlowError, ConnectionError):
    """A file could not be downloaded from any of its URLs; ``attempts`` lists each URL's reason."""

    def __init__(self, message: str, attempts: tuple[str, ...] | list[str] = ()) -> None:
        self.attempts = list(attempts)
        super().__init__(message)


class ChecksumMismatchError(WaveGlowError, ValueError):
    """Downloaded (or cached) bytes differ from the expected size or sha256.

    ``kind`` is "size" or "sha256"; ``expected`` and ``got`` are the two values.  The bytes were
    deleted: nothing unverified is kept where it would be used."""

    def __init__(self, what: str, source: str, kind: str, expected: object, got: object,
                 note: str = "it was deleted; nothing was kept in the cache") -> None:
        self.what, self.source, self.kind = what, source, kind
        self.expected, self.got = expected, got
        unit = " bytes" if kind == "size" else ""
        super().__init__(f"{what}: {kind} mismatch for {source}: expected {expected}{unit}, "
                         f"got {got}{unit}; {note}")
