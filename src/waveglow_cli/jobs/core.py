"""Batch jobs over files: what ``synth``, ``mel`` and ``plot`` do, usable without the CLI.

A job is: discover the inputs (:func:`discover`), plan where each result goes
(:func:`plan_outputs`), then process every item under one exists/overwrite policy
(:class:`OutputPolicy`), isolating failures: each item ends as an :class:`ItemResult` (written,
exists, skipped or failed) and the job as a :class:`Summary` (those types live in
:mod:`waveglow_cli.jobs.summary` and are re-exported here).  Nothing here prints: what a front
end shows (a progress bar, notes, error lines) arrives through a :class:`JobProgress`;
standard input and output are streams passed in (:class:`StandardStreams`).  What a synthesis
job is asked to do arrives as the small objects of :mod:`waveglow_cli.jobs.options`
(:class:`InputOptions`, :class:`OutputOptions`), re-exported here.  :class:`SynthesisJob` is
the windowed load -> synthesise -> write loop; what it writes with is a parameter
(:class:`AudioWriter` writes files or standard output), so a server or a streaming writer reuses
the loop as it is.
"""

from __future__ import annotations

import collections
import itertools
import queue
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from ..errors import (
    InputFileError,
    JobStopped,
    StdoutClosed,
    SynthesisError,
    UsageError,
    WaveGlowError,
)
from ..fileio import remove_stale_parts
from .options import InputOptions, OutputOptions, StandardStreams
from .pipeline import Ahead, Handoff, WriterThread

# The items, policy, results and progress protocol: part of the jobs API, re-exported.
from .summary import (
    Item,
    ItemResult,
    JobProgress,
    OutputPolicy,
    SilentProgress,
    Status,
    Summary,
    input_paths,
)
from .writers import AudioWriter, write_stream  # noqa: F401 - part of the jobs API

if TYPE_CHECKING:
    import numpy as np

    from ..settings import Shard
    from ..synthesis.plans import BatchOptions
    from ..synthesis.synthesizer import MelLike, SynthesisOptions, Synthesizer
    from ..vocoder import Vocoder

MEL_SUFFIXES = (".npy", ".pt")


# ---------------------------------------------------------------------------------------------
# Inputs and where their results go


def discover(inputs: list[str], suffixes: tuple[str, ...]) -> list[Item]:
    """Files as given, folders searched recursively for ``suffixes``, '-' for stdin."""
    items: list[Item] = []
    for spec in inputs:
        if spec == "-":
            items.append(Item(None, "-"))
            continue
        path = Path(spec)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in suffixes and not p.name.startswith("."))
            if not found:
                raise UsageError(f"{spec}: folder holds no {'/'.join(suffixes)} files")
            items += [Item(p, p.relative_to(path).as_posix(), found=True) for p in found]
        elif path.exists():
            items.append(Item(path, path.name))
        else:
            raise UsageError(f"{spec}: no such file or folder")
    if sum(item.source is None for item in items) > 1:
        raise UsageError("'-' (standard input) can be given only once")
    return items


def without_own_outputs(items: list[Item], output: str | None, suffix: str,
                        audio_suffixes: tuple[str, ...]) -> list[Item]:
    """Drop the audio files found in folders that are this run's outputs, so a run can be
    resumed in place (``synth dir/`` then ``synth dir/ --skip-existing``).

    For ``synth``, which takes mels and audio files (copy synthesis): an audio file found in a
    folder is not an input when a mel of the same stem sits beside it (the mel is the input;
    the audio file is its output, or the recording it was computed from: ``mel dir/`` then
    ``synth dir/``), nor when it is the planned output of another input (``-o`` into an input
    folder).  Files named on the command line are always inputs."""
    mel_stems = {item.source.with_suffix("") for item in items
                 if item.source is not None and item.source.suffix.lower() not in audio_suffixes}
    planned_by: dict[Path, set[int]] = {}
    for index, target in enumerate(_planned(items, output, suffix)):
        if target is not None:
            planned_by.setdefault(target.resolve(), set()).add(index)
    kept = []
    for index, item in enumerate(items):
        if (item.found and item.source is not None
                and item.source.suffix.lower() in audio_suffixes
                and (item.source.with_suffix("") in mel_stems
                     or planned_by.get(item.source.resolve(), set()) - {index})):
            continue
        kept.append(item)
    return kept


def _names_one_file(output: str | None) -> bool:
    """A name with an extension is a file (a folder with a dot in its name: end it with '/')."""
    return output is not None and output != "-" and bool(Path(output).suffix) \
        and not output.endswith(("/", "\\")) and not Path(output).is_dir()


def _planned(items: list[Item], output: str | None, suffix: str) -> list[Path | None]:
    """Each item's output path by the naming rules alone (None: standard output)."""
    if output == "-":
        return [None] * len(items)
    if _names_one_file(output):
        return [Path(output)] * len(items)  # type: ignore[arg-type]
    return [Path(output) / Path(item.key).with_suffix(suffix) if output is not None
            else None if item.source is None else _beside(item.source, suffix)
            for item in items]


def _beside(source: Path, suffix: str) -> Path:
    """The default output beside an input: ``<stem><suffix>``, or ``<stem>.synth<suffix>``
    where that would be the input itself (copy synthesis of ``speech.wav``)."""
    target = source.with_suffix(suffix)
    if target.name.lower() == source.name.lower():
        return source.with_suffix(".synth" + suffix)
    return target


def plan_outputs(items: list[Item], output: str | None, suffix: str) -> list[Path | None]:
    """Where each item's result goes (None: standard output).

    Also removes the temporary files that killed runs of ours left in the output folders
    (their process is gone; a live run's are kept)."""
    if output is not None and output != "-":
        _refuse_special_output(output)
    outputs = _plan_outputs(items, output, suffix)
    for folder in dict.fromkeys(target.parent for target in outputs if target is not None):
        remove_stale_parts(folder)
    return outputs


def _refuse_special_output(output: str) -> None:
    """``-o`` naming an existing device, FIFO or socket (``/dev/full``, ``/dev/stdout``) is a
    usage error: outputs are regular files written beside the target and renamed onto it."""
    import stat

    try:
        mode = Path(output).stat().st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UsageError(f"-o {output}: not a regular file or folder (a device, FIFO or "
                         "socket); outputs are written as regular files (use -o - for "
                         "standard output)")


def _plan_outputs(items: list[Item], output: str | None, suffix: str) -> list[Path | None]:
    if output == "-":
        if len(items) != 1:
            raise UsageError("-o - (standard output) takes exactly one input")
        return [None]
    if _names_one_file(output) and len(items) != 1:
        raise UsageError(f"-o {output} names one file but {len(items)} inputs were given; "
                         "pass a folder")
    outputs = _planned(items, output, suffix)
    keys = [str(o) for o in outputs if o is not None]
    if len(keys) != len(set(keys)):
        raise UsageError("two inputs map to the same output name (e.g. a.npy and a.pt); "
                         "give them different stems")
    return outputs


def refuse_overwriting_inputs(items: list[Item], outputs: list[Path | None]) -> None:
    """Before anything is written: no output may be one of the inputs."""
    inputs = {item.source.resolve() for item in items if item.source is not None}
    clashes = [str(t) for t in outputs if t is not None and t.resolve() in inputs]
    if clashes:
        raise UsageError(f"refusing to overwrite input files ({', '.join(clashes[:3])}"
                         f"{' ...' if len(clashes) > 3 else ''}); choose another -o")


def take_shard(items: list[Item], outputs: list[Path | None], shard: Shard
               ) -> tuple[list[Item], list[Path | None]]:
    """This process's share of the work under torchrun (every ``world``-th item)."""
    if shard.world == 1:
        return items, outputs
    if any(item.source is None or target is None for item, target in zip(items, outputs)):
        raise UsageError("stdin/stdout cannot be shared between torchrun processes")
    return items[shard.rank::shard.world], outputs[shard.rank::shard.world]


def all_ranks_sum(value: int, shard: Shard) -> int:
    """Sum ``value`` over all torchrun ranks (gloo), so every rank exits with the job's status."""
    if shard.world == 1:
        return value
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    total = torch.tensor([value])
    dist.all_reduce(total)
    dist.destroy_process_group()
    return int(total.item())


def _as_item_error(item: Item, error: BaseException, what: str, kind: type[InputFileError]
                   ) -> BaseException:
    """Our errors and OSErrors as they are; anything else (MemoryError, a library's TypeError)
    as the item's named error."""
    if isinstance(error, (WaveGlowError, OSError)):
        return error
    return kind(item.display, f"{what} ({type(error).__name__}: {error})")


# ---------------------------------------------------------------------------------------------
# The generic per-item loop (mel, plot)


Handler = Callable[[Item, "Path | IO[bytes]", "Path | None", JobProgress], None]


def run_items(items: list[Item], outputs: list[Path | None], policy: OutputPolicy,
              handle: Handler, progress: JobProgress | None = None,
              stdin: IO[bytes] | None = None, inputs: set[Path] | None = None) -> Summary:
    """Process every item, isolating failures.  ``handle`` gets the item's path (or standard
    input, ``stdin`` read once into a temporary file with a cap) and its target (None:
    standard output).  No output may be one of ``inputs`` (resolved paths; default: the
    items').  A :class:`UsageError` stops the job (raised)."""
    progress = progress or SilentProgress()
    inputs = input_paths(items) if inputs is None else inputs
    summary = Summary()
    try:
        _run_items(items, outputs, policy, handle, progress, stdin, inputs, summary)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (errors.Terminated): the results so far
        summary.interrupted = getattr(e, "signal_number", 2)
    return summary


def _run_items(items: list[Item], outputs: list[Path | None], policy: OutputPolicy,
               handle: Handler, progress: JobProgress, stdin: IO[bytes] | None,
               inputs: set[Path], summary: Summary) -> None:
    for item, target in zip(items, outputs):
        status: Status = "written"
        error: BaseException | None = None
        try:
            kept = policy.existing(target, inputs)
            if kept is not None:
                status = kept
            elif item.source is None:
                with read_stdin(stdin) as data:
                    handle(item, data, target, progress)
            else:
                handle(item, item.source, target, progress)
        except (UsageError, StdoutClosed):
            raise
        except Exception as e:  # noqa: BLE001 - one item's failure must not stop the others
            error = _as_item_error(item, e, "failed", InputFileError)
        if error is not None:
            status = policy.settles(error) or "failed"
            if status == "failed":
                progress.failed(error)
        summary.add(ItemResult(item, target, status, error))
        progress.advance()


def read_stdin(stream: IO[bytes] | None) -> IO[bytes]:
    """Standard input, read once into an unlinked temporary file (at most
    ``audio_io.PIPE_LIMIT_BYTES``; an endless stream is refused, not buffered in memory)."""
    from ..audio.io import spool

    if stream is None:
        raise UsageError("standard input ('-') is not available to this job")
    return spool(stream, "<stdin>")


# ---------------------------------------------------------------------------------------------
# Synthesis: windowed load -> synthesise -> write


Loader = Callable[["Path | IO[bytes]", str], "tuple[MelLike, list[str]]"]


class ItemWriter(Protocol):
    """Writes one item's audio as its blocks arrive; returns its number of samples."""

    def __call__(self, item: Item, target: Path | None, mel: MelLike,
                 blocks: Iterator[np.ndarray]) -> int: ...


@dataclass
class SynthesisJob:
    """Items -> audio, a window of items at a time: each window is loaded (a mel stays lazy:
    only its pieces are read), synthesised in exact batches and written item by item as its
    audio arrives.  Failures are per item; ``fail_fast`` ends the job at the first."""

    synthesizer: Synthesizer
    load: Loader                    # (path or stream, display name) -> (mel, notes)
    write: ItemWriter
    sample_rate: int
    # The exists/overwrite policy, and the first piece a job of one item is made from
    # (OutputOptions.first_piece_for; it becomes the synthesizer's BatchOptions.first_piece).
    output: OutputOptions = field(default_factory=OutputOptions)
    fail_fast: bool = False
    window: int = 64                # items loaded at a time (bounds open inputs and memory)
    stdin: IO[bytes] | None = None

    @property
    def policy(self) -> OutputPolicy:
        return self.output.policy

    def run(self, items: list[Item], outputs: list[Path | None],
            progress: JobProgress | None = None) -> Summary:
        """Every item to its output.  ``progress`` (where given) is told each item's end, its
        notes and failures, and the job's audio as it is expected and made (within each
        forward pass); None reports nothing, and the engine runs without a callback."""
        synthesizer = self.synthesizer
        first = self.output.first_piece_for(outputs)
        if len(items) == 1 and first and not synthesizer.batch.first_piece:
            # One input: front to back in growing pieces, so its first audio comes early.  The
            # plan depends only on ``first``, so a file made with the same one equals the stream.
            import dataclasses

            synthesizer = dataclasses.replace(synthesizer, batch=dataclasses.replace(
                synthesizer.batch, first_piece=first))
        run = _SynthesisRun(self, synthesizer, progress or SilentProgress(), input_paths(items),
                            Summary(sample_rate=self.sample_rate),
                            reports_audio=progress is not None)
        pairs = list(zip(items, outputs))
        windows = [pairs[start:start + self.window] for start in range(0, len(pairs), self.window)]
        try:
            with WriterThread(items=4, depth=4) as writer:
                # The next window is read while this one is synthesised and written.
                ahead = Ahead(partial(run.read, windows[0])) if windows else None
                for index in range(len(windows)):
                    assert ahead is not None
                    outcomes = ahead.result()
                    if index + 1 < len(windows):
                        ahead = Ahead(partial(run.read, windows[index + 1]))
                    run.window(outcomes, writer)
        except JobStopped:
            run.summary.stopped = True
            run.record_published()
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: what was written so far
            run.summary.interrupted = getattr(e, "signal_number", 2)
            run.record_published()
        return run.summary


# How reading a window ended for one item: (item, target, outcome, mel or error, notes)
Outcome = tuple[Item, "Path | None", Literal["loaded", "exists", "skipped", "failed"], Any,
                list[str]]


@dataclass
class _Pending:
    """An item handed to the writer thread, not yet settled."""

    item: Item
    target: Path | None
    handoff: Handoff


@dataclass
class _SynthesisRun:
    """One run of a :class:`SynthesisJob`: its results so far.  Reading (:meth:`read`) runs
    on a thread of its own; everything that reports (progress, summary) runs here."""

    job: SynthesisJob
    synthesizer: Synthesizer
    progress: JobProgress
    inputs: set[Path]
    summary: Summary
    reports_audio: bool = True      # tell progress the audio made within each forward pass
    pending: collections.deque[_Pending] = field(default_factory=collections.deque)
    # Samples of audio each window read holds, put by the reading thread as soon as it has
    # opened the window's mels, taken and reported here (so the next window's audio joins the
    # total while this one is made, not only when it starts).
    expected: queue.SimpleQueue[int] = field(default_factory=queue.SimpleQueue)
    synthesised: int = 0            # samples synthesised in the windows before this one
    in_window: int = 0              # ... and so far in this one

    def read(self, pairs: list[tuple[Item, Path | None]]) -> list[Outcome]:
        """Check and open each input of a window (on the reading thread: it reports nothing)."""
        outcomes: list[Outcome] = []
        for item, target in pairs:
            try:
                kept = self.job.policy.existing(target, self.inputs)
                if kept is not None:
                    outcomes.append((item, target, kept, None, []))
                    continue
                if item.source is None:
                    with read_stdin(self.job.stdin) as stdin:
                        mel, notes = self.job.load(stdin, item.display)
                else:
                    mel, notes = self.job.load(item.source, item.display)
                outcomes.append((item, target, "loaded", mel, notes))
            except UsageError:
                raise
            except Exception as e:  # noqa: BLE001 - this input fails; the others go on
                error = _as_item_error(item, e, "cannot be read", InputFileError)
                outcomes.append((item, target, "failed", error, []))
        self.expected.put(sum(self.synthesizer.samples(int(value.shape[1]))
                              for _, _, outcome, value, _ in outcomes if outcome == "loaded"))
        return outcomes

    def window(self, outcomes: list[Outcome], writer: WriterThread) -> None:
        loaded = self._report_reading(outcomes)
        targets = {item.key: (item, target) for item, target, *_ in outcomes}
        mels = dict(loaded)
        cancelled: set[str] = set()
        self._report_expected()
        # Audio progress within the forward passes, where a front end passed a progress.
        stream = self.synthesizer.stream(
            loaded, cancelled, progress=self._synthesised if self.reports_audio else None)
        pending = self.pending
        # Each item's events arrive together and in order: hand them to the writer as they
        # come, and settle the items it has finished.
        for key, events in itertools.groupby(stream, key=lambda event: event[0]):
            item, target = targets[key]
            handoff = writer.submit(partial(self.job.write, item, target, mels[key]))
            pending.append(_Pending(item, target, handoff))
            try:
                for block in _blocks_of(item, events):
                    if not handoff.put(block):  # the writer failed it: compute no more of it
                        cancelled.add(key)
                        break
                handoff.finish()
            except Exception as e:  # noqa: BLE001 - its synthesis failed: the writer drops it
                cancelled.add(key)
                handoff.fail(e)
            self._settle(pending, cancelled, wait=False)
        self.synthesised, self.in_window = self.synthesised + self.in_window, 0
        self._settle(pending, cancelled, wait=True)

    def _synthesised(self, samples: int) -> None:
        """The synthesizer's report (samples made so far in this window's stream), as the
        job's audio so far; with it, the next window's total once the reader has it."""
        self.in_window = samples
        self._report_expected()
        self.progress.produced(self._seconds(self.synthesised + samples))

    def _seconds(self, samples: int) -> float:
        return samples / self.job.sample_rate

    def _report_expected(self) -> None:
        """Report the audio of the windows read so far that has not been reported yet."""
        while True:
            try:
                samples = self.expected.get_nowait()
            except queue.Empty:
                return
            if samples:
                self.progress.expect(self._seconds(samples))

    def _report_reading(self, outcomes: list[Outcome]) -> list[tuple[str, Any]]:
        loaded = []
        for item, target, outcome, value, notes in outcomes:
            for text in notes:
                self.progress.note(text)
            if outcome == "loaded":
                loaded.append((item.key, value))
                continue
            if outcome in ("exists", "skipped"):
                self._end(ItemResult(item, target, outcome))
            else:
                self._failed(item, target, value)
            self.progress.advance()
        return loaded

    def _settle(self, pending: collections.deque[_Pending], cancelled: set[str],
                wait: bool) -> None:
        """Record the items the writer has finished, in order (all of them with ``wait``)."""
        while pending and (wait or pending[0].handoff.done.is_set()):
            done = pending.popleft()
            while not done.handoff.done.wait(0.1):  # a timed wait lets Ctrl-C through
                pass
            item, target, error = done.item, done.target, done.handoff.error
            if isinstance(error, (StdoutClosed, KeyboardInterrupt)):
                raise error
            if error is None:
                self._end(ItemResult(item, target, "written", samples=done.handoff.value))
                for text in getattr(self.job.write, "take_notes", list)():
                    self.progress.note(text)  # e.g. most samples clipped: a wrong mel scale
            else:
                cancelled.add(item.key)  # the rest of its pieces are not computed
                self._failed(item, target, _as_item_error(item, error, "synthesis failed",
                                                          SynthesisError))
            self.progress.advance(seconds=self.summary.seconds)

    def record_published(self) -> None:
        """After the job stopped early (the writer thread has ended): the items the writer
        finished were published, so they count as written."""
        for done in self.pending:
            if done.handoff.done.is_set() and done.handoff.error is None:
                self._end(ItemResult(done.item, done.target, "written",
                                     samples=done.handoff.value))
        self.pending.clear()

    def _end(self, result: ItemResult) -> None:
        self.summary.add(result)

    def _failed(self, item: Item, target: Path | None, error: BaseException) -> None:
        kept = self.job.policy.settles(error)
        if kept is not None:
            self._end(ItemResult(item, target, kept, error))
            return
        self._end(ItemResult(item, target, "failed", error))
        self.progress.failed(error)
        if self.job.fail_fast:
            raise JobStopped from None


def _blocks_of(item: Item, events: Iterable[tuple[str, object, bool]]) -> Iterator[Any]:
    """The item's audio blocks, ending at its last event: not at the next item's first (which
    would hold its file back until the next batch is made)."""
    for _, block, last in events:
        if isinstance(block, BaseException):
            raise block if isinstance(block, WaveGlowError) else SynthesisError(
                item.display, f"synthesis failed ({type(block).__name__}: {block})")
        yield block
        if last:
            return


def synthesis_job(vocoder: Vocoder, options: SynthesisOptions | None = None,
                  batch: BatchOptions | None = None, *, inputs: InputOptions | None = None,
                  output: OutputOptions | None = None, fail_fast: bool = False,
                  writer: ItemWriter | None = None,
                  streams: StandardStreams | None = None) -> SynthesisJob:
    """A :class:`SynthesisJob` over a loaded vocoder: mel files (or audio, by copy synthesis)
    read as ``inputs`` says, to audio files (or ``writer``'s choice) as ``output`` says, in
    windows of ``8 x batch size`` (at least 64); ``fail_fast`` ends the job at its first
    failure.  Standard input and output are ``streams`` (none by default)."""
    from ..features.inputs import SynthesisInputReader, mel_converter

    batch = batch or vocoder.batch
    inputs = inputs or InputOptions()
    output = output or OutputOptions()
    streams = streams or StandardStreams()
    synthesizer = vocoder.synthesizer(options, batch)
    # Mels of another toolkit's convention (--mel-from) are converted when read.
    converter = None if inputs.convention is None else mel_converter(
        inputs.convention, vocoder.mel_config, inputs.mel_stats)
    writer = writer or AudioWriter(vocoder.sample_rate, output.subtype,
                                   overwrite=output.policy.overwrite, stdout=streams.stdout,
                                   plot=vocoder.mel_config if output.plot else None,
                                   stdout_format=output.stdout_format,
                                   samples_of=synthesizer.samples)
    reader = SynthesisInputReader(vocoder.mel_config, inputs.mel_layout, inputs.mel_scale,
                                  converter=converter,
                                  context_frames=vocoder.config.context_frames())
    return SynthesisJob(synthesizer, reader, writer, vocoder.sample_rate, output, fail_fast,
                        window=max(batch.batch_size * 8, 64), stdin=streams.stdin)
