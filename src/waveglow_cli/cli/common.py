"""What every command shares: exit codes, the one exception-to-exit-code table, the stderr
console, settings from the environment, the shared option declarations and the progress
displays (rich lives here, never in the library)."""

from __future__ import annotations

import dataclasses
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from ..errors import (CheckpointNotAvailableError, InputFileError, OutputExistsError,
                      UsageError, WaveGlowError, printable)
from ..registry import DEFAULT_CHECKPOINT
from ..settings import Settings

__all__ = ["EXIT_OK", "EXIT_INPUT_FAILED", "EXIT_USAGE", "DEFAULT_CHECKPOINT", "stderr_console",
           "report", "exit_with", "errors_to_exit", "load_settings", "CheckpointOption",
           "MelCheckpointOption", "DeviceOption", "PrecisionOption", "QuietOption",
           "OverwriteOption", "SkipExistingOption", "OfflineOption", "JsonOption", "ItemProgress",
           "DownloadBar"]

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE = 0, 1, 2


class _MessageConsole(Console):
    """stderr for messages: whatever is printed with ``out`` (errors, notes, summaries) has its
    control characters escaped, so a hostile file name cannot drive the terminal."""

    def out(self, *objects: object, **kwargs: object) -> None:  # type: ignore[override]
        super().out(*(printable(str(o)) for o in objects), **kwargs)  # type: ignore[arg-type]


def stderr_console() -> Console:
    return _MessageConsole(stderr=True, highlight=False, soft_wrap=True)


# One table from exception type to exit code; the message is the exception's own text.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UsageError, EXIT_USAGE),
    (InputFileError, EXIT_INPUT_FAILED),
    (OutputExistsError, EXIT_INPUT_FAILED),
    (CheckpointNotAvailableError, EXIT_INPUT_FAILED),
    (WaveGlowError, EXIT_INPUT_FAILED),
    (ValueError, EXIT_USAGE),
)


def report(error: BaseException, settings: Settings | None = None,
           console: Console | None = None) -> int:
    """Print ``error`` as one line on stderr and return the exit code it maps to."""
    code = getattr(error, "exit_code", None)  # 128 + signal for a run stopped by a signal
    if not isinstance(code, int):
        code = next((c for t, c in _EXIT_CODES if isinstance(error, t)), EXIT_INPUT_FAILED)
    (console or stderr_console()).out(printable(f"error: {error}"))
    if settings is not None and settings.debug:
        traceback.print_exception(error, file=sys.stderr)
    return code


def exit_with(error: BaseException, settings: Settings) -> NoReturn:
    raise typer.Exit(report(error, settings)) from None


@contextmanager
def errors_to_exit(settings: Settings, *, os_errors: bool = True) -> Iterator[None]:
    """Our errors and ValueErrors (and OSErrors, unless ``os_errors`` is False: those then
    reach :func:`main`'s last resort, which names the file) raised inside become one line on
    stderr and the exit code :func:`report` maps them to."""
    caught: tuple[type[BaseException], ...] = (WaveGlowError, ValueError)
    try:
        yield
    except caught + ((OSError,) if os_errors else ()) as e:
        exit_with(e, settings)


def load_settings(offline: bool = False) -> Settings:
    """The settings from the environment (read here, once per command: the library never
    reads it); ``--offline`` on top."""
    settings = Settings.from_env()
    return dataclasses.replace(settings, offline=True) if offline else settings


# ---------------------------------------------------------------------------------------------
# Options several commands declare alike (their help texts as each command shows them)


CheckpointOption = Annotated[str, typer.Option(
    "-c", "--checkpoint", help="Checkpoint file or registry name.")]
MelCheckpointOption = Annotated[str, typer.Option(
    "-c", "--checkpoint", help="Whose mel settings to use: registry name or checkpoint file.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOption = Annotated[str, typer.Option(
    help="auto: bf16 fast path on a CPU with native bf16 (AMX/AVX512-BF16) when sigma > 0, "
         "else fp32 (sigma 0 always fp32: matches the reference); fp32, fp16 or bf16 "
         "(faster, not exact).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q",
                                           help="No progress bar, notes or summary.")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace existing outputs.")]
SkipExistingOption = Annotated[bool, typer.Option(help="Keep existing outputs (resume).")]
OfflineOption = Annotated[bool, typer.Option(
    help="Never touch the network (as WAVEGLOW_OFFLINE=1).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


# ---------------------------------------------------------------------------------------------
# Progress displays


class ItemProgress:
    """A rich progress bar on a TTY (stderr) for more than one item; silent otherwise.  What a
    job reports to (:class:`waveglow_cli.jobs.JobProgress`): failures become error lines,
    notes ``note:`` lines (not with ``notes=False``)."""

    def __init__(self, total: int, label: str, settings: Settings | None = None,
                 notes: bool = True) -> None:
        self.console = stderr_console()
        self.settings = settings
        self.notes = notes
        self._progress = None
        if total > 1 and self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(TextColumn(label), TextColumn("{task.description}"),
                                      BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                      TimeRemainingColumn(), console=self.console)
            self._task = self._progress.add_task("", total=total)

    def __enter__(self) -> ItemProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def advance(self, seconds: float | None = None) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)
            if seconds is not None:
                elapsed = self._progress.tasks[0].elapsed or 0.0
                rtf = f", {seconds / elapsed:.1f}x real time" if elapsed > 0 else ""
                self._progress.update(self._task, description=f"{seconds:.0f} s of audio{rtf}")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, text: str) -> None:
        if self.notes:
            self.console.out(f"note: {text}")

    def failed(self, error: BaseException) -> None:
        report(error, self.settings, self.console)


class DownloadBar:
    """Where downloads report to: a rich bar (bytes, speed, ETA) on a TTY, one-line notes on
    stderr; nothing at all with ``quiet``.  Passed as ``progress=`` to whatever may fetch a
    checkpoint on first use."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = stderr_console()
        self._progress = None
        self._task = None

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        if self._progress is None:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeRemainingColumn, TransferSpeedColumn)

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      DownloadColumn(), TransferSpeedColumn(),
                                      TimeRemainingColumn(), console=self.console)
            self._progress.start()
            self._task = self._progress.add_task(description, total=total, completed=completed)
        else:
            self._progress.reset(self._task, total=total, completed=completed,
                                 description=description)

    def update(self, advance: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, advance)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def note(self, text: str) -> None:
        if not self.quiet:
            (self._progress.console if self._progress is not None else self.console).out(
                f"note: {text}")
