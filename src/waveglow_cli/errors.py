"""Typed errors on built-in bases.

Callers can catch the specific class or the standard base it derives from.  Every error carries
the file it is about (where there is one) so the CLI can print one line that names it.
"""

from __future__ import annotations

import difflib
import os
import pickle
from collections.abc import Iterable
from pathlib import Path

# Characters that must not reach a terminal from a file name: C0 controls (ESC starts escape
# sequences that can recolour, retitle or rewrite the screen; a newline breaks "one line"),
# DEL and C1 controls, bidirectional overrides (they reorder what is shown), and the lone
# surrogates Python uses for file-name bytes that are not UTF-8 (they cannot even be encoded).
_BIDI_CONTROLS = frozenset((0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def printable(text: str) -> str:
    """``text`` with control characters written as ``\\xNN`` / ``\\uNNNN`` escapes; every other
    character, accented letters and CJK included, is kept as it is."""
    if text.isprintable() and text.isascii():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:      # surrogateescape: the original byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif code in _BIDI_CONTROLS or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def closest_names(word: str, spellings: Iterable[tuple[str, str]], n: int = 3) -> list[str]:
    """The names ``word`` may be a typo of, closest first: ``spellings`` pairs each way of
    writing a name (the name itself, an alias) with that name; case is ignored.  Checkpoint
    names and mel convention presets are suggested alike."""
    by_key: dict[str, str] = {}
    for key, name in spellings:
        by_key.setdefault(key.lower(), name)
    found: list[str] = []
    for key in difflib.get_close_matches(word.lower(), list(by_key), n=2 * n, cutoff=0.6):
        if by_key[key] not in found:
            found.append(by_key[key])
    return found[:n]


def did_you_mean(matches: list[str]) -> str:
    """"did you mean 'a' or 'b'? " to start a hint in an error message; "" for no match."""
    return f"did you mean {' or '.join(repr(m) for m in matches)}? " if matches else ""



class WaveGlowError(Exception):
    """Base of every error this package raises on purpose."""


class InputFileError(WaveGlowError, ValueError):
    """A file given to us cannot be used; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
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
    """An output file exists and neither overwrite nor skip was asked for.

    ``meanwhile``: it did not exist when the run checked, another process created it while
    this one was working (the claim is taken when the file is published, so it was kept)."""

    def __init__(self, path: str | Path, *, meanwhile: bool = False) -> None:
        self.path = str(path)
        self.meanwhile = meanwhile
        what = "output exists (written by another run meanwhile)" if meanwhile \
            else "output exists"
        super().__init__(
            f"{self.path}: {what}; pass --overwrite to replace it or --skip-existing to keep it"
        )


class OutputWriteError(WaveGlowError, OSError):
    """An output file could not be written (full disk, no permission, not a regular file...);
    ``path`` names it, ``reason`` says why, ``errno`` is the system's code where there is one.
    Nothing was left under its name."""

    def __init__(self, path: str | Path, reason: str, code: int | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
        self.errno = code


class PlotUnavailableError(WaveGlowError, ImportError):
    """Plotting was asked for but matplotlib (the ``plot`` extra) is not installed."""

    def __init__(self) -> None:
        super().__init__("plotting needs matplotlib: pip install 'waveglow-exact[plot]'")


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


class TrainingError(WaveGlowError):
    """Training stopped (a non-finite loss, no usable data, an unreadable run folder)."""


class TrainingInterrupted(TrainingError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; exit 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# ---------------------------------------------------------------------------------------------
# Reading torch checkpoints (torch_container, safe_pickle).  checkpoint.read_checkpoint turns
# each into a CheckpointError / UnsafePickleError that names the file.


class ContainerError(ValueError):
    """The container around a torch pickle (legacy stream or zip archive) is malformed; the
    message is the one-line reason."""


class UnsafeGlobal(pickle.UnpicklingError):
    """Raised for a global outside the allow-list; ``name`` is 'module.qualname'."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"global '{name}' is not allowed")


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asks for something we never do (mutate a callable, allocate more than the
    file holds, nest too deep ...); ``reason`` says what, in one line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


# ---------------------------------------------------------------------------------------------
# Downloading (download, transfer, gdrive).  download() turns a SourceFailed into one entry of
# DownloadError.attempts and tries the next source; the two transfer signals never leave the
# transfer loop.


class SourceFailed(WaveGlowError):
    """One source cannot deliver the file (an HTTP error, a page instead of the file, too
    slow, a bad archive); the message says why, in one line."""


class SourceRefused(SourceFailed):
    """A source sent (or announced) more than is allowed: its bytes are discarded, never kept
    for a resume."""


class TransferCut(Exception):
    """The transfer stopped before the end; resume it (internal to the transfer loop)."""


class TransferRestart(Exception):
    """The server's answer to a Range request cannot be appended; start from zero (internal
    to the transfer loop)."""


class JobStopped(Exception):
    """Internal: ends a batch job at its first failure (``--fail-fast``); the job returns its
    summary so far, marked stopped.  Never reaches a user."""


class StdoutClosed(Exception):
    """Standard output was closed by its reader (``| head -c 100``): the job ends at once and
    the command exits quietly, as other Unix tools do.  Not an item failure."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception by the command line's handler so a job stops as at
    Ctrl-C (its summary so far is printed; exit 143 instead of 130)."""

    signal_number = 15


class OutputExistsHint(OutputExistsError):
    """An :class:`OutputExistsError` whose hint names only the flags its command offers
    (``convert`` and ``plot`` have ``--overwrite`` but no ``--skip-existing``).

    A command rephrases one raised deeper (same path, same ``meanwhile``, same exit code)::

        except OutputExistsError as e:
            raise OutputExistsHint.of(e, ("--overwrite",)) from None
    """

    _WAYS = (("--overwrite", "--overwrite to replace it"),
             ("--skip-existing", "--skip-existing to keep it"))

    def __init__(self, path: str | Path, *, meanwhile: bool = False,
                 flags: tuple[str, ...] = ("--overwrite",)) -> None:
        super().__init__(path, meanwhile=meanwhile)
        self.flags = tuple(flags)
        what = "output exists (written by another run meanwhile)" if meanwhile \
            else "output exists"
        ways = [way for flag, way in self._WAYS if flag in self.flags]
        self.args = (f"{self.path}: {what}" + (f"; pass {' or '.join(ways)}" if ways else ""),)

    @classmethod
    def of(cls, error: OutputExistsError, flags: tuple[str, ...]) -> OutputExistsHint:
        return cls(error.path, meanwhile=error.meanwhile, flags=flags)
