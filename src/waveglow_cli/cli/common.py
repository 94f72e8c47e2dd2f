"""What every command shares: exit codes, the one exception-to-exit-code table, the stderr
console, settings from the environment, the shared option declarations and the progress
displays (rich lives here, never in the library)."""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from ..checkpoints.registry import DEFAULT_CHECKPOINT
from ..errors import (
    CheckpointNotAvailableError,
    InputFileError,
    OutputExistsError,
    StdoutClosed,
    Terminated,
    UsageError,
    WaveGlowError,
    printable,
)
from ..settings import Settings

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from ..jobs.core import Summary
    from ..jobs.options import StandardStreams

__all__ = [
    "DEFAULT_CHECKPOINT",
    "EXIT_INPUT_FAILED",
    "EXIT_OK",
    "EXIT_STDOUT_CLOSED",
    "EXIT_USAGE",
    "CheckpointOption",
    "DeviceOption",
    "DownloadBar",
    "ItemProgress",
    "JsonOption",
    "MelCheckpointOption",
    "OfflineOption",
    "OverwriteOption",
    "PrecisionOption",
    "QuietOption",
    "SkipExistingOption",
    "StepStatus",
    "check_checkpoint",
    "end_of_job",
    "errors_to_exit",
    "existing_outputs_hint",
    "exit_with",
    "interrupts_to_exit",
    "load_settings",
    "refuse_binary_to_terminal",
    "report",
    "require_extra",
    "standard_streams",
    "stderr_console",
]

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -c 1`'s yes


class _MessageConsole(Console):
    """stderr for messages: whatever is printed with ``out`` (errors, notes, summaries) has its
    control characters escaped, so a hostile file name cannot drive the terminal."""

    def out(self, *objects: object, **kwargs: object) -> None:
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
    if os_errors:
        caught = (*caught, OSError)
    try:
        yield
    except caught as e:
        exit_with(e, settings)


def load_settings(offline: bool = False) -> Settings:
    """The settings from the environment (read here, once per command: the library never
    reads it); ``--offline`` on top."""
    settings = Settings.from_env()
    return dataclasses.replace(settings, offline=True) if offline else settings


# ---------------------------------------------------------------------------------------------
# Checks made before anything heavy is imported, and the end of a batch job


def refuse_binary_to_terminal(targets: list[Path | None], what: str, suffix: str) -> None:
    """Standard output (a target None) that is a terminal gets no binary data (as curl)."""
    stdout = sys.stdout
    if any(t is None for t in targets) and stdout is not None and stdout.isatty():
        raise UsageError(f"refusing to write {what} to a terminal; redirect it "
                         f"(-o - > out{suffix}), pipe it (-o - | ...) or pass -o FILE")


def standard_streams() -> StandardStreams:
    """This process's standard input and output as binary streams (None where it has none),
    for a job to read '-' from and write '-' to."""
    from ..jobs.options import StandardStreams

    return StandardStreams(getattr(sys.stdin, "buffer", None),
                           getattr(sys.stdout, "buffer", None))


def check_checkpoint(spec: str, settings: Settings) -> None:
    """An unknown checkpoint name is reported before torch is imported (a file that exists
    and a registry name pass; what they hold is checked when loaded)."""
    from ..checkpoints.registry import Registry, unknown_checkpoint_error

    if Path(spec).expanduser().exists():
        return
    registry = Registry.load(settings)
    if registry.find(spec) is None:
        raise unknown_checkpoint_error(spec, registry)


def require_extra(command: str, extra: str, modules: tuple[str, ...]) -> None:
    """One line naming the extra to install when one of ``modules`` is missing, before torch
    is imported or a model loaded (as ``serve`` does): found, not imported, so it costs
    nothing where they are installed."""
    import importlib.util

    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken package, or a finder that refuses it
            found = False
        if not found:
            raise UsageError(f"waveglow {command} needs the {extra} extra ({name} is missing): "
                             f"pip install 'waveglow-exact[{extra}]'")


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextmanager
def interrupts_to_exit() -> Iterator[None]:
    """Inside, SIGTERM raises :class:`~waveglow_cli.errors.Terminated` (a KeyboardInterrupt),
    so a job stops at either signal and returns its summary so far (:func:`end_of_job`).
    One that arrives outside a job (loading the model) is one line and exit 130 (SIGINT) or
    143 (SIGTERM).  A reader that closes standard output (``| head -c 100``) ends the command
    quietly: no message, exit 141 (128 + SIGPIPE, as a shell shows for other tools)."""
    import signal

    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        yield
    except KeyboardInterrupt as e:
        stderr_console().out("interrupted; nothing was written")
        raise typer.Exit(128 + getattr(e, "signal_number", 2)) from None
    except StdoutClosed:
        _silence_stdout()
        raise typer.Exit(EXIT_STDOUT_CLOSED) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so the interpreter's last flush of standard
    output meets no broken pipe (and prints no "Exception ignored")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


#: The flags of a command with the whole exists policy (synth, mel); plot has --overwrite only.
EXISTS_FLAGS = ("--overwrite", "--skip-existing")


def existing_outputs_hint(summary: Summary, flags: tuple[str, ...] = EXISTS_FLAGS
                          ) -> str | None:
    """One line for the outputs that existed and were kept under the default policy (None
    when there were none), naming the flags ``flags`` of its command that decide otherwise."""
    targets = summary.existing_targets()
    if not targets:
        return None
    it = "it" if len(targets) == 1 else "them"
    ways = {"--overwrite": f"--overwrite replaces {it}",
            "--skip-existing": f"--skip-existing keeps {it} quietly"}
    how = ", ".join(ways[flag] for flag in flags if flag in ways)
    if len(targets) == 1:
        return f"note: {targets[0]}: output exists already, kept: {how}"
    return f"note: {len(targets)} outputs exist already, kept ({targets[0]}, ...): {how}"


def end_of_job(summary: Summary, quiet: bool, flags: tuple[str, ...] = EXISTS_FLAGS) -> None:
    """Print the job's summary line (unless ``quiet``) and, where outputs existed and were
    kept, one hint line (even when ``quiet``: nothing else says the outputs are not fresh;
    ``--skip-existing`` is the quiet way).  An interrupted job also says how to resume and
    exits 130/143, a fail-fast one exits 1.  Returns for a job that ran through: existing
    outputs are not failures (the command exits 0 unless an input failed)."""
    console = stderr_console()
    if not quiet:
        console.out(summary.line(with_seconds=not summary.stopped))
    hint = existing_outputs_hint(summary, flags)
    if hint is not None:
        console.out(hint)
    if summary.interrupted:
        name = "SIGTERM" if summary.interrupted == 15 else "SIGINT"
        console.out(f"interrupted ({name}): the outputs written are complete and kept, none is "
                    "half-written; run the same command with --skip-existing to resume")
        raise typer.Exit(128 + summary.interrupted)
    if summary.stopped:
        raise typer.Exit(EXIT_INPUT_FAILED)


# ---------------------------------------------------------------------------------------------
# Options several commands declare alike (their help texts as each command shows them)


CheckpointOption = Annotated[str, typer.Option(
    "-c", "--checkpoint", help="Checkpoint file or registry name.")]
MelCheckpointOption = Annotated[str, typer.Option(
    "-c", "--checkpoint", help="Whose mel settings to use: registry name or checkpoint file.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOption = Annotated[str, typer.Option(
    help="auto: bf16 on a CPU with native bf16 (AMX/AVX512-BF16) when sigma > 0, else fp32 "
         "(sigma 0: always fp32, exact as the reference); fp32; fp16 or bf16 (faster, not "
         "exact).")]
EngineOption = Annotated[str, typer.Option(
    help="auto (packed on a CPU, else eager), eager (the model itself), packed (the CPU fast "
         "path, fp32 or bf16), gpu (packed-row matrix products, float32 coupling, any device; "
         "not yet measured on a GPU) or compiled (gpu through torch.compile, its code cached "
         "in WAVEGLOW_HOME/compile-cache).")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q",
                                           help="No progress bar, notes or summary.")]
# A flag that is off unless given shows no "[default: no-overwrite]"
OverwriteOption = Annotated[bool, typer.Option(help="Replace existing outputs.",
                                               show_default=False)]
SkipExistingOption = Annotated[bool, typer.Option(help="Keep existing outputs (resume).",
                                                  show_default=False)]
OfflineOption = Annotated[bool, typer.Option(
    help="Never touch the network (as WAVEGLOW_OFFLINE=1).", show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


# ---------------------------------------------------------------------------------------------
# Progress displays


class ItemProgress:
    """A rich progress bar on a TTY (stderr) for more than one item; silent otherwise (pipes,
    files).  What a job reports to (:class:`waveglow_cli.jobs.core.JobProgress`): failures become
    error lines, notes ``note:`` lines (not with ``notes=False``).

    With ``audio`` (synthesis), the bar measures seconds of audio.  It appears once the first
    inputs are opened, with the total from its first frame (``status``, a
    :class:`StepStatus` shown until then, makes way for it), and it moves within each forward
    pass (after every flow), so even one long file made in one pass shows movement; its rate
    is a real-time factor and its ETA comes from the audio still to make."""

    def __init__(self, total: int, label: str, settings: Settings | None = None,
                 notes: bool = True, audio: bool = False,
                 status: StepStatus | None = None) -> None:
        self.console = stderr_console()
        self.settings = settings
        self.notes = notes
        self.status = status
        self._progress = None
        self._started = False
        self._audio = audio and total > 0
        self._items, self._ended, self._expected, self._produced = total, 0, 0.0, 0.0
        self._redrawn = 0.0  # the audio seconds shown by the last redraw asked for
        if self._audio and self.console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn(label), BarColumn(),
                                      TextColumn("{task.description}"), TimeRemainingColumn(),
                                      console=self.console)
            # Its clock starts with the bar (the rate counts synthesis, not reading).
            self._task = self._progress.add_task(self._audio_text(), total=None, start=False)
        elif total > 1 and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(TextColumn(label), TextColumn("{task.description}"),
                                      BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                      TimeRemainingColumn(), console=self.console)
            self._task = self._progress.add_task("", total=total)

    def __enter__(self) -> ItemProgress:
        if not self._audio:  # an audio bar waits for its total (expect)
            self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        if self._progress is not None and not self._started:
            if self.status is not None:
                self.status.stop()
            if self._audio:
                self._progress.start_task(self._task)
            self._progress.start()
            self._started = True

    def _audio_text(self) -> str:
        tasks = self._progress.tasks if self._progress is not None else []
        elapsed = tasks[0].elapsed if tasks else None
        rate = (f", {self._produced / elapsed:.1f}x real time"
                if elapsed and self._produced else "")
        return (f"{self._produced:.1f}/{self._expected:.1f} s of audio{rate}, "
                f"{self._ended}/{self._items} files")

    def expect(self, seconds: float) -> None:
        self._expected += seconds
        if self._progress is not None:
            self._progress.update(self._task, total=self._expected,
                                  description=self._audio_text())
            self._start()  # its first frame shows the total

    def produced(self, seconds: float) -> None:
        if seconds <= self._produced:
            return
        self._produced = seconds
        if self._progress is not None:
            # Besides rich's own redraws (ten a second, from its thread), one for every 1% of
            # the total: a step within a long pass is shown even on a busy machine.
            redraw = self._started and seconds - self._redrawn >= 0.01 * self._expected
            if redraw:
                self._redrawn = seconds
            self._progress.update(self._task, completed=seconds,
                                  description=self._audio_text(), refresh=redraw)

    def advance(self, seconds: float | None = None) -> None:
        if self._audio:
            self._ended += 1
            if seconds is not None:
                self._produced = max(self._produced, seconds)
            if self._progress is not None:
                self._progress.update(self._task, completed=self._produced,
                                      description=self._audio_text())
            return
        if self._progress is not None:
            self._progress.advance(self._task)
            if seconds is not None:
                elapsed = self._progress.tasks[0].elapsed or 0.0
                rtf = f", {seconds / elapsed:.1f}x real time" if elapsed > 0 else ""
                self._progress.update(self._task, description=f"{seconds:.0f} s of audio{rtf}")

    def stop(self) -> None:
        if self._progress is not None and self._started:
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

    def __init__(self, quiet: bool = False, status: StepStatus | None = None) -> None:
        self.quiet = quiet
        self.console = stderr_console()
        self._progress: RichProgress | None = None
        self._task: TaskID  # set with the bar
        self.status = status  # a status line shown before: it makes way for the bar

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        if self.quiet or not self.console.is_terminal:
            return
        if self._progress is None:
            if self.status is not None:
                self.status.stop()
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

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


class StepStatus:
    """What a long command shows while it works (a
    :data:`~waveglow_cli.progress.StatusCallback`): on a terminal (stderr), one line with a
    spinner, the step and its elapsed time, redrawn ten times a second so it moves even
    through a step of minutes, and cleared at the end; nothing elsewhere (pipes, files) or
    with ``quiet``.  It appears at the first step reported: a download bar before it
    (:class:`DownloadBar`, its own display) has finished by then."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = stderr_console()
        self.shown = not quiet and self.console.is_terminal
        self._progress: RichProgress | None = None
        self._task: TaskID  # set with the bar

    def __call__(self, text: str) -> None:
        if not self.shown:
            return
        if self._progress is None:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                      TimeElapsedColumn(), console=self.console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task(text, total=None)
        else:  # the elapsed time is the step's
            self._progress.reset(self._task, description=text)

    def __enter__(self) -> StepStatus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
