"""The ``waveglow`` command: thin Typer commands over the library.

Exit codes: 0 everything worked, 1 some input failed, 2 usage error.  Messages are one line
on stderr; ``WAVEGLOW_DEBUG=1`` adds the traceback.  Standard output carries data only
(WAV or .npy bytes for ``-o -``).
"""

from __future__ import annotations

import itertools
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import IO, Annotated, NoReturn

import typer
from rich.console import Console

from . import __version__
from .errors import (AudioFileError, CheckpointNotAvailableError, InputFileError,
                     OutputExistsError, SynthesisError, UsageError, WaveGlowError,
                     printable)
from .fileio import refuse_non_regular, remove_stale_parts
from .registry import DEFAULT_CHECKPOINT
from .settings import Settings, Shard

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="WaveGlow vocoder: mel spectrograms to audio, exactly as NVIDIA's "
                       "reference, on CPU, CUDA or MPS.")

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE = 0, 1, 2
MEL_SUFFIXES = (".npy", ".pt")


class _MessageConsole(Console):
    """stderr for messages: whatever is printed with ``out`` (errors, notes, summaries) has its
    control characters escaped, so a hostile file name cannot drive the terminal."""

    def out(self, *objects: object, **kwargs: object) -> None:  # type: ignore[override]
        super().out(*(printable(str(o)) for o in objects), **kwargs)  # type: ignore[arg-type]


def _stderr() -> Console:
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
    (console or _stderr()).out(printable(f"error: {error}"))
    if settings is not None and settings.debug:
        traceback.print_exception(error, file=sys.stderr)
    return code


def _exit_with(error: BaseException, settings: Settings) -> NoReturn:
    raise typer.Exit(report(error, settings)) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"waveglow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """WaveGlow vocoder."""


# ---------------------------------------------------------------------------------------------
# Input discovery and output naming (shared by the commands that map inputs to outputs)


@dataclass(frozen=True)
class Item:
    source: Path | None   # None: standard input
    key: str              # relative path: names outputs and seeds the noise
    found: bool = False   # found by searching a folder (not named on the command line)

    @property
    def display(self) -> str:
        return "<stdin>" if self.source is None else str(self.source)


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
        if item.found and item.source is not None and item.source.suffix.lower() in audio_suffixes:
            if item.source.with_suffix("") in mel_stems \
                    or planned_by.get(item.source.resolve(), set()) - {index}:
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
        return [Path(output)] * len(items)
    return [Path(output) / Path(item.key).with_suffix(suffix) if output is not None
            else None if item.source is None else item.source.with_suffix(suffix)
            for item in items]


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


def check_output(item: Item, target: Path | None, inputs: set[Path], overwrite: bool,
                 skip_existing: bool) -> bool:
    """False when the item is to be skipped; raises when it must not be written.

    An early shortcut that saves the work for a file that exists: the claim itself is taken
    when the file is published (:func:`fileio.atomic_write`)."""
    if target is None:
        return True
    if target.resolve() in inputs:
        raise UsageError(f"{target}: refusing to overwrite an input file")
    refuse_non_regular(target)
    if os.path.lexists(target):
        if skip_existing:
            return False
        if not overwrite:
            raise OutputExistsError(target)
    return True


def lost_to_another_run(error: BaseException, skip_existing: bool) -> bool:
    """True for an output another process created while this run worked on it, under
    ``--skip-existing``: that item counts as skipped, not failed (its file was kept)."""
    return skip_existing and isinstance(error, OutputExistsError)


class ItemProgress:
    """A rich progress bar on a TTY (stderr) for more than one item; silent otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self.console = _stderr()
        self._progress = None
        if total > 1 and self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(TextColumn(label), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(),
                                      console=self.console)
            self._task = self._progress.add_task("", total=total)

    def __enter__(self) -> ItemProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

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
        self.console.out(f"note: {text}")


def run_items(items: list[Item], outputs: list[Path | None], overwrite: bool, skip_existing: bool,
              settings: Settings, label: str,
              handle: Callable[[Item, Path | IO[bytes], Path | None, ItemProgress], None]) -> int:
    """Process every item, isolating failures: returns how many failed.  ``handle`` gets the
    item's path (or standard input, read once into a temporary file with a cap) and its target
    (None: stdout)."""
    input_paths = {item.source.resolve() for item in items if item.source is not None}
    failures = 0
    with ItemProgress(len(items), label) as progress:
        for item, target in zip(items, outputs):
            error: BaseException | None = None
            try:
                if check_output(item, target, input_paths, overwrite, skip_existing):
                    if item.source is None:
                        with read_stdin() as stdin:
                            handle(item, stdin, target, progress)
                    else:
                        handle(item, item.source, target, progress)
            except UsageError as e:
                _exit_with(e, settings)
            except (WaveGlowError, OSError) as e:
                error = e
            except Exception as e:  # noqa: BLE001 - MemoryError, a library's TypeError ...:
                error = InputFileError(item.display, f"failed ({type(e).__name__}: {e})")
            if error is not None and not lost_to_another_run(error, skip_existing):
                failures += 1
                report(error, settings, progress.console)
            progress.advance()
    return failures


def read_stdin() -> IO[bytes]:
    """Standard input, read once into an unlinked temporary file (at most
    ``audio_io.PIPE_LIMIT_BYTES``; an endless stream is refused, not buffered in memory)."""
    from .audio_io import spool

    return spool(sys.stdin.buffer, "<stdin>")


def write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


# ---------------------------------------------------------------------------------------------
# synth


def _all_ranks_sum(value: int, shard: Shard) -> int:
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


@app.command()
def synth(
    inputs: Annotated[list[str], typer.Argument(
        help="Mel files (.npy/.pt, natural log), audio files (copy synthesis), folders of them "
             "(recursive), or - for stdin.", show_default=False)],
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="Output .wav/.flac for one input, a folder for several, - for stdout. "
                              "Default: <stem>.wav beside each input (stdout for stdin).")] = None,
    checkpoint: Annotated[str, typer.Option(
        "-c", "--checkpoint", help="Checkpoint file or registry name.")] = DEFAULT_CHECKPOINT,
    sigma: Annotated[float, typer.Option(help="Noise scale (NVIDIA recommends 0.6).", min=0.0)] = 0.6,
    seed: Annotated[int | None, typer.Option(
        help="Seed: each file's noise then depends only on (seed, its relative path).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(
        help="auto: bf16 fast path on a CPU with native bf16 (AMX/AVX512-BF16) when sigma > 0, "
             "else fp32 (sigma 0 always fp32: matches the reference); fp32, fp16 or bf16 "
             "(faster, not exact).")] = "auto",
    subtype: Annotated[str, typer.Option(help="PCM_16, PCM_24, PCM_32 or FLOAT.")] = "PCM_16",
    denoiser_strength: Annotated[float, typer.Option(
        help="Subtract this much of the model's bias spectrum (NVIDIA's denoiser); 0 = off.",
        min=0.0)] = 0.0,
    batch_size: Annotated[int, typer.Option(help="Items per forward pass.", min=1)] = 8,
    max_frames: Annotated[int | None, typer.Option(
        help="Longest piece in frames (256 samples); longer inputs are cut into exact "
             "overlapping pieces, bounding memory. Default: 2048 on a GPU, 1024 on the CPU.",
        min=1, show_default=False)] = None,
    batch_frames: Annotated[int | None, typer.Option(
        help="Memory budget: padded frames per batch. Default: 16384 on a GPU, --max-frames "
             "on the CPU (one piece at a time).", min=1, show_default=False)] = None,
    mel_layout: Annotated[str, typer.Option(
        help="auto, CT (n_mels, frames) or TC (frames, n_mels).")] = "auto",
    mel_scale: Annotated[str, typer.Option(
        help="ln (Tacotron 2), log10, or db (20 log10 magnitude).")] = "ln",
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    skip_existing: Annotated[bool, typer.Option(help="Keep existing outputs (resume).")] = False,
    fail_fast: Annotated[bool, typer.Option(help="Stop at the first failed input.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, notes or summary.")
                     ] = False,
    plot: Annotated[bool, typer.Option(
        "--plot", help="Also write <stem>.png (input mel and output waveform) beside each output; "
                       "needs the [plot] extra.")] = False,
) -> None:
    """Vocode mel spectrograms (or audio files, by copy synthesis) into audio."""
    import numpy as np

    from .api import load_synthesis_input, open_checkpoint
    from .audio_io import (AUDIO_SUFFIXES, MEL_LAYOUTS, MEL_SCALES, encode_audio, finalize_audio,
                           output_format, write_audio_blocks)
    from .synthesis import (BatchOptions, SynthesisOptions, Synthesizer, pick_device, pick_dtype,
                            return_freed_memory_promptly)

    settings = Settings.from_env()
    shard = Shard.from_env()
    return_freed_memory_promptly()  # memory that does not grow with the input's length
    try:
        if overwrite and skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other")
        if mel_layout not in MEL_LAYOUTS or mel_scale not in MEL_SCALES:
            raise UsageError(f"--mel-layout takes {', '.join(MEL_LAYOUTS)}; "
                             f"--mel-scale takes {', '.join(MEL_SCALES)}")
        items = without_own_outputs(discover(inputs, MEL_SUFFIXES + AUDIO_SUFFIXES), output,
                                    ".wav", AUDIO_SUFFIXES)
        outputs = plan_outputs(items, output, ".wav")
        for target in outputs:
            output_format(target if target is not None else "-", subtype)
        refuse_overwriting_inputs(items, outputs)
        if shard.world > 1:
            if any(item.source is None or target is None for item, target in zip(items, outputs)):
                raise UsageError("stdin/stdout cannot be shared between torchrun processes")
            items, outputs = items[shard.rank::shard.world], outputs[shard.rank::shard.world]
        options = SynthesisOptions(sigma=sigma, seed=seed, denoiser_strength=denoiser_strength)
        if device == "auto" and shard.world > 1:
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{shard.local_rank % torch.cuda.device_count()}"
        torch_device = pick_device(device)
        dtype = pick_dtype(precision, torch_device, sigma)
        vocoder = open_checkpoint(checkpoint, torch_device, settings,
                                  with_denoiser=denoiser_strength > 0, dtype=dtype)
        max_frames, batch_frames = _piece_defaults(max_frames, batch_frames, torch_device,
                                                   vocoder.model.config)
        batching = BatchOptions(batch_size=batch_size, max_frames=max_frames,
                                batch_frames=batch_frames)
        synthesizer = Synthesizer(vocoder.model, options, batching, vocoder.denoiser)
        _check_max_frames(max_frames, vocoder.model.config)
        if plot:
            from .plot import plot_signals, require_matplotlib

            require_matplotlib()
    except (WaveGlowError, ValueError) as e:
        _exit_with(e, settings)

    counts = {"written": 0, "skipped": 0, "failed": 0}
    console = _stderr()
    input_paths = {item.source.resolve() for item in items if item.source is not None}
    targets = {item.key: (item, target) for item, target in zip(items, outputs)}

    def fail(error: BaseException, progress: ItemProgress) -> None:
        counts["failed"] += 1
        report(error, settings, progress.console)
        if fail_fast:
            progress.stop()
            _summary(console, counts, quiet)
            raise typer.Exit(EXIT_INPUT_FAILED)

    def load_window(window: list[tuple[Item, Path | None]], progress: ItemProgress
                    ) -> list[tuple[str, object]]:
        loaded = []
        for item, target in window:
            error: BaseException | None = None
            try:
                if not check_output(item, target, input_paths, overwrite, skip_existing):
                    counts["skipped"] += 1
                    progress.advance()
                    continue
                # A mel is kept lazily (a .npy memory-mapped): only pieces are ever read.
                if item.source is None:
                    with read_stdin() as stdin:
                        mel, notes = load_synthesis_input(stdin, item.display, vocoder.mel_config,
                                                          mel_layout, mel_scale, lazy=True)
                else:
                    mel, notes = load_synthesis_input(item.source, item.display,
                                                      vocoder.mel_config, mel_layout, mel_scale,
                                                      lazy=True)
                for text in notes if not quiet else ():
                    progress.note(text)
                loaded.append((item.key, mel))
                if plot:
                    plotted_mels[item.key] = mel
            except UsageError as e:
                _exit_with(e, settings)
            except (WaveGlowError, OSError) as e:
                error = e
            except Exception as e:  # noqa: BLE001 - MemoryError, a library's TypeError ...:
                error = InputFileError(item.display, f"cannot be read ({type(e).__name__}: {e})")
            if error is not None:  # this input fails; the others go on
                fail(error, progress)
                progress.advance()
        return loaded

    def blocks_of(item: Item, events: Iterator[tuple[str, object, bool]]) -> Iterator[object]:
        for _, block, _ in events:
            if isinstance(block, BaseException):
                raise block if isinstance(block, WaveGlowError) else SynthesisError(
                    item.display, f"synthesis failed ({type(block).__name__}: {block})")
            yield block

    def write_item(item: Item, target: Path | None, blocks: Iterator[object]) -> int:
        """Write one item's audio as its blocks arrive; returns its number of samples."""
        if target is None:  # the WAV header needs the length: standard output is written whole
            parts = [finalize_audio(b, item.display, subtype) for b in blocks]
            audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            write_stdout(encode_audio(audio, vocoder.sample_rate, subtype))
            return int(audio.size)
        kept: list[object] = []
        if plot:  # the figure shows the whole waveform
            blocks = (kept.append(b) or b for b in blocks)
        samples = write_audio_blocks(target, blocks, vocoder.sample_rate, subtype,
                                     name=item.display, overwrite=overwrite)
        if plot:
            plot_signals(target.with_suffix(".png"),
                         [("mel", np.asarray(plotted_mels.pop(item.key)), f"{item.display}: mel"),
                          ("wave", np.concatenate(kept), f"{target.name}: synthesised")],
                         vocoder.mel_config, overwrite=overwrite)
        return samples

    plotted_mels: dict[str, object] = {}
    window_size = max(batch_size * 8, 64)
    pairs = list(zip(items, outputs))
    total_seconds = 0.0
    with ItemProgress(0 if quiet else len(items), "synth") as progress:
        for start in range(0, len(pairs), window_size):
            loaded = load_window(pairs[start:start + window_size], progress)
            cancelled: set[str] = set()
            # Each item's events arrive together and in order: write them as they come.
            for key, events in itertools.groupby(synthesizer.stream(loaded, cancelled),
                                                 key=lambda event: event[0]):
                item, target = targets[key]
                error = None
                try:
                    samples = write_item(item, target, blocks_of(item, events))
                    counts["written"] += 1
                    total_seconds += samples / vocoder.sample_rate
                except (WaveGlowError, OSError) as e:
                    error = e
                except Exception as e:  # noqa: BLE001 - MemoryError ...: this item fails
                    error = SynthesisError(item.display,
                                           f"synthesis failed ({type(e).__name__}: {e})")
                if error is not None:
                    cancelled.add(key)  # the rest of its pieces are not computed
                    plotted_mels.pop(key, None)
                    if lost_to_another_run(error, skip_existing):
                        counts["skipped"] += 1
                    else:
                        fail(error, progress)
                progress.advance(seconds=total_seconds)
    _summary(console, counts, quiet, total_seconds)
    failed = _all_ranks_sum(counts["failed"], shard)
    raise typer.Exit(EXIT_INPUT_FAILED if failed else EXIT_OK)


def _piece_defaults(max_frames: int | None, batch_frames: int | None, device: object,
                    config: object) -> tuple[int, int]:
    """--max-frames and --batch-frames when not given.  On the CPU one piece of 1024 frames at
    a time: the upsampled mel alone is M x hop floats per frame (80 KiB at 80 mels), so a
    GPU-sized batch (16384 frames) would take gigabytes of RAM.  Never below 4 context margins,
    so a model with a wide receptive field still has room for the piece itself."""
    from .synthesis import context_margin

    on_cpu = getattr(device, "type", "cpu") == "cpu"
    if max_frames is None:
        max_frames = max(1024 if on_cpu else 2048, 4 * context_margin(config))  # type: ignore[arg-type]
    if batch_frames is None:
        batch_frames = max_frames if on_cpu else max(16384, max_frames)
    return max_frames, batch_frames


def _check_max_frames(max_frames: int, config: object) -> None:
    """A long input is cut into pieces of ``max_frames`` that carry the model's context margin
    on both sides; a limit below 3 margins leaves no room for the piece itself."""
    from .synthesis import context_margin

    if config.hop_length % config.n_group:  # type: ignore[attr-defined]
        return  # such a model is synthesised whole; --max-frames does not apply
    margin = context_margin(config)  # type: ignore[arg-type]
    if max_frames < 3 * margin:
        raise UsageError(f"--max-frames {max_frames} is too small for this checkpoint: the "
                         f"minimum is {3 * margin} frames (3 x its {margin}-frame context "
                         "margin)")


def _summary(console: Console, counts: dict[str, int], quiet: bool, seconds: float = 0.0) -> None:
    if not quiet:
        console.out(f"written {counts['written']}, skipped {counts['skipped']}, "
                    f"failed {counts['failed']}" + (f" ({seconds:.1f} s of audio)" if seconds else ""))


def refuse_overwriting_inputs(items: list[Item], outputs: list[Path | None]) -> None:
    """Before anything is written: no output may be one of the inputs."""
    inputs = {item.source.resolve() for item in items if item.source is not None}
    clashes = [str(t) for t in outputs if t is not None and t.resolve() in inputs]
    if clashes:
        raise UsageError(f"refusing to overwrite input files ({', '.join(clashes[:3])}"
                         f"{' ...' if len(clashes) > 3 else ''}); choose another -o")


# ---------------------------------------------------------------------------------------------
# mel


@app.command()
def mel(
    inputs: Annotated[list[str], typer.Argument(
        help="Audio files (WAV, FLAC, OGG, ...), folders of them, or - for stdin.",
        show_default=False)],
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="Output file for one input, a folder for several, - for stdout. "
                              "Default: <stem>.npy beside each input (stdout for stdin).")] = None,
    checkpoint: Annotated[str, typer.Option(
        "-c", "--checkpoint", help="Whose mel settings to use: registry name or checkpoint file.")
    ] = DEFAULT_CHECKPOINT,
    fmt: Annotated[str, typer.Option("--format", help="npy, or pt (a torch tensor, as NVIDIA's "
                                                      "inference.py reads).")] = "npy",
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    skip_existing: Annotated[bool, typer.Option(help="Keep existing outputs (resume).")] = False,
) -> None:
    """Compute Tacotron 2 mel spectrograms (float32, (n_mels, frames), natural log)."""
    from .api import audio_to_mel, mel_settings_for
    from .audio_io import AUDIO_SUFFIXES, atomic_write, encode_mel

    settings = Settings.from_env()
    try:
        if overwrite and skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other")
        if fmt not in ("npy", "pt"):
            raise UsageError(f"unknown --format {fmt!r}; use npy or pt")
        items = discover(inputs, AUDIO_SUFFIXES)
        outputs = plan_outputs(items, output, f".{fmt}")
        config = mel_settings_for(checkpoint, settings)
    except (WaveGlowError, ValueError) as e:
        _exit_with(e, settings)

    def handle(item: Item, source: Path | IO[bytes], target: Path | None,
               progress: ItemProgress) -> None:
        spectrogram, notes = audio_to_mel(source, config, item.display)
        for text in notes:
            progress.note(text)
        data = encode_mel(spectrogram, fmt)
        if target is None:
            write_stdout(data)
        else:
            atomic_write(target, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)

    failures = run_items(items, outputs, overwrite, skip_existing, settings, "mel", handle)
    raise typer.Exit(EXIT_INPUT_FAILED if failures else EXIT_OK)


# ---------------------------------------------------------------------------------------------
# info / convert


@app.command()
def info(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file or registry name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    offline: Annotated[bool, typer.Option(
        help="Never touch the network (as WAVEGLOW_OFFLINE=1).")] = False,
) -> None:
    """Describe a checkpoint: architecture, parameters, sample rate, mel, format, sha256.

    A registry name not yet cached is downloaded first (unless offline)."""
    import json

    from .api import mel_config_for
    from .cache import cache_paths, read_record
    from .checkpoint import read_checkpoint
    from .download import sha256_file
    from .registry import Registry, ensure_checkpoint

    settings = _settings(offline)
    try:
        registry = Registry.load(settings)
        entry = None if Path(checkpoint).expanduser().exists() else registry.find(checkpoint)
        path = ensure_checkpoint(checkpoint, settings, DownloadBar(), registry)
        ckpt = read_checkpoint(path)
        meta, record_problem = read_record(entry, settings) if entry is not None else ({}, "")
        if record_problem:  # the bytes are hashed below instead; a damaged record is a note
            _stderr().out(f"note: {entry.name}: {record_problem}; `waveglow fetch --verify "
                          f"{entry.name}` repairs it")
        original = cache_paths(entry, settings).original if entry is not None else path
        sha256 = meta.get("sha256") or (sha256_file(original) if original.is_file() else None)
        mel = mel_config_for(ckpt, entry).to_dict()
    except (WaveGlowError, ValueError, OSError) as e:
        _exit_with(e, settings)
    c = ckpt.config
    n_params = sum(t.numel() for t in ckpt.state_dict.values())
    data = {
        "name": entry.name if entry is not None else None,
        "path": str(path),
        "format": ckpt.source_format,
        "original_format": meta.get("format"),
        "sha256": sha256,
        "sha256_of": str(original),
        "sha256_published": bool(entry is not None and entry.sha256),
        "size": original.stat().st_size if original.is_file() else meta.get("size"),
        "cache_dir": str(cache_paths(entry, settings).folder) if entry is not None else None,
        "source_url": meta.get("url"),
        "downloaded_at": meta.get("downloaded_at"),
        "parameters": n_params,
        "sample_rate": ckpt.sample_rate,
        "architecture": c.to_dict(),
        "mel": mel,
    }
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if entry is not None:
        typer.echo(f"name:         {entry.name}")
    typer.echo(f"file:         {path}")
    typer.echo(f"format:       {ckpt.source_format}"
               + (f" (converted from {meta['format']})" if meta.get("format") else ""))
    if sha256:
        typer.echo(f"sha256:       {sha256}" + (f" ({original.name})" if original != path else ""))
    if entry is not None:
        typer.echo(f"cache:        {data['cache_dir']}")
    typer.echo(f"parameters:   {n_params:,}")
    typer.echo(f"sample rate:  {ckpt.sample_rate}")
    for key, value in c.to_dict().items():
        typer.echo(f"{key + ':':<13} {value}")
    typer.echo("mel:          " + ", ".join(f"{k}={v}" for k, v in mel.items()))


@app.command()
def convert(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file or registry name.")],
    output: Annotated[Path, typer.Argument(help="Output .safetensors file.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Storage type: fp32, or fp16 (half the size; weights rounded once, "
                        "computation unchanged).")] = "fp32",
) -> None:
    """Convert any supported checkpoint to the safe, fast-loading safetensors format."""
    import torch

    from .checkpoint import read_checkpoint, save_checkpoint
    from .registry import ensure_checkpoint

    settings = Settings.from_env()
    try:
        if output.suffix != ".safetensors":
            raise UsageError(f"{output}: the output must end in .safetensors")
        storage = {"fp32": torch.float32, "fp16": torch.float16}.get(dtype)
        if storage is None:
            raise UsageError(f"--dtype {dtype!r}: use fp32 or fp16")
        source = ensure_checkpoint(checkpoint, settings, DownloadBar())
        if output.exists() and output.resolve() == source.resolve():
            raise UsageError(f"{output}: refusing to overwrite the input")
        if output.exists() and not overwrite:
            raise OutputExistsError(output)
        save_checkpoint(output, read_checkpoint(source), dtype=storage, overwrite=overwrite)
    except (WaveGlowError, ValueError, OSError) as e:
        _exit_with(e, settings)
    _stderr().out(f"wrote {output}")


# ---------------------------------------------------------------------------------------------
# The checkpoint cache: fetch / list / rm (and the download progress bar every command uses)


class DownloadBar:
    """Where downloads report to: a rich bar (bytes, speed, ETA) on a TTY, one-line notes on
    stderr; nothing at all with ``quiet``."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = _stderr()
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


def _install_download_bar() -> None:
    """Commands that fetch a checkpoint on first use (synth -c NAME, ...) show this bar."""
    from .download import set_default_progress

    set_default_progress(DownloadBar)


_install_download_bar()


def _settings(offline: bool = False) -> Settings:
    import dataclasses

    settings = Settings.from_env()
    return dataclasses.replace(settings, offline=True) if offline else settings


def _registry_entries(names: list[str], settings: Settings) -> list:
    """The registry entries ``names`` name (names or aliases), each once, or a usage error."""
    from .registry import Registry, unknown_checkpoint_error

    registry = Registry.load(settings)
    entries = []
    for name in names:
        entry = registry.find(name)
        if entry is None:
            if Path(name).expanduser().is_file():
                raise UsageError(f"{name}: a file, not a registry name (this command takes "
                                 "registry names; see `waveglow list`)")
            raise unknown_checkpoint_error(name, registry)
        if entry not in entries:
            entries.append(entry)
    return entries


def _human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


@app.command()
def fetch(
    names: Annotated[list[str], typer.Argument(
        help="Registry names or aliases (see `waveglow list`).", show_default=False)],
    force: Annotated[bool, typer.Option(help="Download again even if cached.")] = False,
    verify: Annotated[bool, typer.Option(
        help="Re-hash the cached file against the published (else recorded) sha256 and "
             "download it again if it differs.")] = False,
    offline: Annotated[bool, typer.Option(
        help="Never touch the network (as WAVEGLOW_OFFLINE=1).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes.")
                     ] = False,
) -> None:
    """Download checkpoints into the cache (verified, resumable, locked).

    A cached checkpoint needs no network at all.  Prints each one's cached path on stdout."""
    from .cache import fetch_checkpoint

    settings = _settings(offline)
    try:
        if force and verify:
            raise UsageError("--force and --verify exclude each other")
        if settings.problems and not settings.offline:  # e.g. WAVEGLOW_MAX_DOWNLOAD_BYTES=lots
            raise UsageError("; ".join(settings.problems))
        entries = _registry_entries(names, settings)
    except (WaveGlowError, ValueError) as e:
        _exit_with(e, settings)
    failures = 0
    for entry in entries:
        bar = DownloadBar(quiet)
        try:
            result = fetch_checkpoint(entry, settings, force=force, verify=verify, progress=bar)
        except (WaveGlowError, OSError) as e:
            bar.finish()
            failures += 1
            report(e, settings, bar.console)
            continue
        bar.finish()
        if result.action == "cached":
            bar.note(f"{entry.name}: already cached (sha256 {result.sha256 or 'not recorded'})")
        elif result.action == "verified":
            bar.note(f"{entry.name}: verified (sha256 {result.sha256})")
        elif result.action == "bundled":
            bar.note(f"{entry.name}: ships with the package, nothing to download "
                     f"(sha256 {result.sha256}{' verified' if result.published_sha256 else ''})")
        typer.echo(str(result.path))
    raise typer.Exit(EXIT_INPUT_FAILED if failures else EXIT_OK)


@app.command("list")
def list_checkpoints(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")
                       ] = False,
) -> None:
    """List the registry's checkpoints and whether each is cached (no network)."""
    import json

    from .cache import describe_cached
    from .registry import Registry

    settings = Settings.from_env()
    try:
        rows = [describe_cached(entry, settings)
                for entry in Registry.load(settings).entries.values()]
    except (WaveGlowError, ValueError, OSError) as e:
        _exit_with(e, settings)
    for row in rows:  # a damaged cache record is a note, never a failure of `list`
        if row.get("record_problem"):
            _stderr().out(f"note: {row['name']}: {row['record_problem']}; "
                          f"`waveglow fetch --verify {row['name']}` repairs it")
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(show_lines=False)
    for column in ("name", "aliases", "size", "cached", "description"):
        table.add_column(column, overflow="fold")
    for row in rows:
        first_sentence = row["description"].split(". ")[0].rstrip(".")
        aliases = [a for a in row["aliases"] if a.removesuffix(".pt") == a
                   or a.removesuffix(".pt") not in row["aliases"]]   # x.pt beside x: shown once
        table.add_row(row["name"], "\n".join(aliases), _human_size(row["size"]),
                      "bundled" if row.get("bundled") else "yes" if row["cached"] else "no", first_sentence)
    Console(highlight=False).print(table)


@app.command()
def rm(
    names: Annotated[list[str], typer.Argument(
        help="Registry names or aliases to remove from the cache.", show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No notes.")] = False,
) -> None:
    """Remove checkpoints from the cache (the next use downloads them again)."""
    from .cache import remove_checkpoint
    from .registry import Registry, unknown_checkpoint_error

    settings = Settings.from_env()
    console = _stderr()
    try:
        registry = Registry.load(settings)
        targets = []
        for name in names:
            entry = registry.find(name)
            if entry is not None:
                targets.append(entry.name)
            elif "/" not in name and "\\" not in name and name not in (".", "..") \
                    and (settings.checkpoint_dir / name).is_dir():
                targets.append(name)  # cached from a registry file no longer in use
            else:
                raise unknown_checkpoint_error(name, registry)
        for name in dict.fromkeys(targets):
            entry = registry.find(name)
            if entry is not None and entry.bundled is not None:
                if not quiet:
                    console.out(f"note: {name}: ships with the package; nothing to remove")
                continue
            removed = remove_checkpoint(name, settings)
            if not quiet:
                console.out(f"removed {removed}" if removed else f"note: {name}: not cached")
    except (WaveGlowError, ValueError, OSError) as e:
        _exit_with(e, settings)


# ---------------------------------------------------------------------------------------------
# score / plot


@app.command()
def score(
    inputs: Annotated[list[str], typer.Argument(help="Audio files or folders of them.",
                                                show_default=False)],
    checkpoint: Annotated[str, typer.Option(
        "-c", "--checkpoint", help="Checkpoint file or registry name.")] = DEFAULT_CHECKPOINT,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
) -> None:
    """Exact log-likelihood of audio under the model: NVIDIA's training loss (sigma 1) and the
    true negative log-likelihood in nats and bits per sample."""
    import json

    from .audio_io import AUDIO_SUFFIXES, prepare_audio, read_audio
    from .synthesis import pick_device
    from .vocoder import load_vocoder

    settings = Settings.from_env()
    try:
        items = discover(inputs, AUDIO_SUFFIXES)
        if any(item.source is None for item in items):
            raise UsageError("score reads files, not standard input")
        vocoder = load_vocoder(checkpoint, pick_device(device))
    except (WaveGlowError, ValueError) as e:
        _exit_with(e, settings)
    failures = 0
    for item in items:
        try:
            samples, rate = read_audio(item.source, item.display)
            mono, notes = prepare_audio(samples, rate, vocoder.sample_rate, item.display)
            for text in notes:
                _stderr().out(f"note: {text}")
            if mono.size <= vocoder.mel_config.n_fft // 2:
                raise AudioFileError(item.display, f"audio has {mono.size} samples; too short "
                                                   "to score")
            result = vocoder.score(mono)
        except (WaveGlowError, OSError) as e:
            failures += 1
            report(e, settings)
            continue
        if as_json:
            typer.echo(json.dumps({"file": item.display, **result.as_dict()}))
        else:
            typer.echo(f"{printable(item.display)}\tloss {result.loss:.6f}\t"
                       f"nll {result.nll_nats_per_sample:.6f} nats/sample\t"
                       f"{result.bits_per_sample:.6f} bits/sample")
    raise typer.Exit(EXIT_INPUT_FAILED if failures else EXIT_OK)


@app.command()
def plot(
    inputs: Annotated[list[str], typer.Argument(
        help="Mel files (.npy/.pt) or audio files; with --compare, exactly two audio files.",
        show_default=False)],
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="PNG file for one figure, a folder for several. "
                              "Default: <stem>.png beside each input.")] = None,
    compare: Annotated[bool, typer.Option(help="Stack two signals in one figure.")] = False,
    checkpoint: Annotated[str, typer.Option(
        "-c", "--checkpoint", help="Whose mel settings to use.")] = DEFAULT_CHECKPOINT,
    overwrite: Annotated[bool, typer.Option(help="Replace existing figures.")] = False,
) -> None:
    """Figures: a mel spectrogram (time in seconds, mel frequency, colour bar), a waveform with
    its mel, or two signals stacked (--compare)."""
    from .api import audio_to_mel, mel_settings_for
    from .audio_io import AUDIO_SUFFIXES, prepare_audio, read_audio, read_mel, sniff, read_bytes
    from .errors import MelFileError
    from .plot import plot_signals

    settings = Settings.from_env()
    try:
        items = discover(inputs, MEL_SUFFIXES + AUDIO_SUFFIXES)
        if any(item.source is None for item in items):
            raise UsageError("plot reads files, not standard input")
        if compare and len(items) != 2:
            raise UsageError("--compare takes exactly two inputs")
        groups = [items] if compare else [[item] for item in items]
        if compare and (output is None or Path(output).suffix.lower() != ".png"):
            raise UsageError("--compare needs -o FIGURE.png")
        outputs = ([Path(output)] if compare else plan_outputs(items, output, ".png"))
        config = mel_settings_for(checkpoint, settings)
    except (WaveGlowError, ValueError) as e:
        _exit_with(e, settings)

    def panels_for(item: Item) -> list[tuple[str, object, str]]:
        name = item.source.name
        if sniff(read_bytes(item.source, item.display, MelFileError, 64)) == "audio":
            samples, rate = read_audio(item.source, item.display)
            mono, _ = prepare_audio(samples, rate, config.sample_rate, item.display)
            mel_array, _ = audio_to_mel(item.source, config, item.display)
            return [("wave", mono, f"{name}: waveform"), ("mel", mel_array, f"{name}: mel")]
        return [("mel", read_mel(item.source, item.display, n_mels=None), f"{name}: mel")]

    failures = 0
    inputs_resolved = {i.source.resolve() for i in items}
    for group, target in zip(groups, outputs):
        try:
            if target.resolve() in inputs_resolved:
                raise UsageError(f"{target}: refusing to overwrite an input file")
            if target.exists() and not overwrite:
                raise OutputExistsError(target)
            plot_signals(target, [p for item in group for p in panels_for(item)], config,
                         overwrite=overwrite)
        except UsageError as e:
            _exit_with(e, settings)
        except (WaveGlowError, OSError) as e:
            failures += 1
            report(e, settings)
    raise typer.Exit(EXIT_INPUT_FAILED if failures else EXIT_OK)


@app.command()
def train(
    ctx: typer.Context,
    data: Annotated[list[str] | None, typer.Argument(
        help="Training audio: folders (searched recursively), audio files, or text file lists "
             "(one path per line; 'path|text' filelists work). Optional with --resume.",
        show_default=False)] = None,
    output: Annotated[Path, typer.Option(
        "-o", "--output", help="Run folder: checkpoints, metrics.jsonl, run.json.",
        show_default=False)] = ...,  # type: ignore[assignment]
    val: Annotated[str | None, typer.Option(
        help="Held-out data: a fraction of DATA (e.g. 0.05) or a folder/file list.")] = None,
    max_steps: Annotated[int, typer.Option(help="Train up to this step (optimizer updates).")
                         ] = 100_000,
    batch_size: Annotated[int, typer.Option(help="Segments per step and process.")] = 12,
    segment_length: Annotated[int, typer.Option(
        help="Samples per training segment (shorter files are zero-padded).")] = 16000,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-4,
    lr_schedule: Annotated[str, typer.Option(
        help="constant, or cosine (from --lr down to --lr-min at --max-steps).")] = "constant",
    lr_min: Annotated[float, typer.Option(help="Final learning rate of the cosine schedule.")
                      ] = 0.0,
    warmup_steps: Annotated[int, typer.Option(
        help="Raise the learning rate linearly over the first N steps.")] = 0,
    sigma: Annotated[float, typer.Option(help="Sigma of the Gaussian in the loss.")] = 1.0,
    grad_clip: Annotated[float | None, typer.Option(
        help="Clip the gradient norm to this value (default: no clipping).")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Write a checkpoint every N steps.")
                                ] = 1000,
    keep: Annotated[int, typer.Option(help="Keep the newest K checkpoints.")] = 5,
    val_every: Annotated[int | None, typer.Option(
        help="Validate every N steps (default: at each checkpoint).")] = None,
    log_every: Annotated[int, typer.Option(
        help="Write a metrics.jsonl record every N steps (mean loss over them).")] = 1,
    device: Annotated[str, typer.Option(
        help="auto (CUDA: this process's LOCAL_RANK GPU, else CPU), cpu, cuda, cuda:N, mps.")
                      ] = "auto",
    precision: Annotated[str, typer.Option(
        help="auto (bf16 on CUDA where supported, else fp16 with a grad scaler; fp32 on CPU), "
             "fp32, bf16 or fp16.")] = "auto",
    workers: Annotated[int | None, typer.Option(
        help="Data loader processes (default: 0 on CPU, up to 4 on CUDA).")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed for the initial weights and the data order (default: random, recorded).")
                    ] = None,
    init_from: Annotated[str | None, typer.Option(
        "--from", help="Fine-tune this checkpoint (registry name or file); the architecture "
                       "and mel settings come from it.")] = None,
    resume: Annotated[bool, typer.Option(
        help="Continue the run in -o from its latest checkpoint (same step, optimizer, data "
             "order).")] = False,
    n_channels: Annotated[int, typer.Option(help="WN channels (fresh model).")] = 256,
    n_layers: Annotated[int, typer.Option(help="WN layers per flow (fresh model).")] = 8,
    n_flows: Annotated[int, typer.Option(help="Flows (fresh model).")] = 12,
    n_group: Annotated[int, typer.Option(help="Samples per group (fresh model).")] = 8,
    n_early_every: Annotated[int, typer.Option(help="Early output every N flows.")] = 4,
    n_early_size: Annotated[int, typer.Option(help="Channels per early output.")] = 2,
    n_mel_channels: Annotated[int, typer.Option(help="Mel channels (fresh model).")] = 80,
    sample_rate: Annotated[int, typer.Option(help="Sample rate (fresh model).")] = 22050,
    tensorboard: Annotated[bool, typer.Option(
        help="Also log the metrics as TensorBoard scalars in RUN_DIR/tensorboard (needs the "
             "tensorboard package).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress line or notes.")
                     ] = False,
) -> None:
    """Train WaveGlow by maximum likelihood, or fine-tune a checkpoint (--from); several
    processes or GPUs with torchrun."""
    from .train import TrainingInterrupted, TrainOptions
    from .train import train as run_training

    settings = Settings.from_env()
    # Options given on the command line (typer vendors click, so compare the source by name).
    explicit = frozenset(name for name in ctx.params if getattr(
        ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP"))
    try:
        options = TrainOptions(
            data=list(data or []), run_dir=output, val=val, segment_length=segment_length,
            batch_size=batch_size, max_steps=max_steps, lr=lr, lr_schedule=lr_schedule,
            lr_min=lr_min, warmup_steps=warmup_steps, sigma=sigma, grad_clip=grad_clip,
            checkpoint_every=checkpoint_every, keep=keep, val_every=val_every,
            log_every=log_every, device=device, precision=precision, workers=workers, seed=seed,
            init_from=init_from, resume=resume, quiet=quiet, tensorboard=tensorboard,
            n_channels=n_channels, n_layers=n_layers, n_flows=n_flows, n_group=n_group,
            n_early_every=n_early_every,
            n_early_size=n_early_size, n_mel_channels=n_mel_channels, sample_rate=sample_rate,
            explicit=explicit)
        last = run_training(options)
    except TrainingInterrupted as e:
        if Shard.from_env().rank != 0:  # every rank stopped at the same step; one says so
            raise typer.Exit(e.exit_code) from None
        _exit_with(e, settings)
    except (WaveGlowError, ValueError, OSError) as e:
        _exit_with(e, settings)
    if last is not None and Shard.from_env().rank == 0:
        typer.echo(str(last))


@app.command()
def bench(
    checkpoint: Annotated[str | None, typer.Option(
        "-c", "--checkpoint", help="Checkpoint file or registry name (default: a random "
                                   "full-size 256-channel model; works offline).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(
        help="auto (as in synth: the bf16 fast path on a CPU with native bf16, else fp32), "
             "fp32, fp16 or bf16.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Utterances per forward pass.", min=1)] = 1,
    seconds: Annotated[float, typer.Option(help="Length of each synthetic utterance.",
                                           min=0.01)] = 10.0,
    repeats: Annotated[int, typer.Option(help="Timed runs (the median is reported).", min=1)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Synthesis speed on synthetic mels: samples/s, x real time, peak memory, and the fraction
    of the device's matmul peak (measured in the same run)."""
    import json

    from .bench import RANDOM_CHECKPOINT, BenchOptions, random_model, run_bench
    from .synthesis import pick_device, pick_dtype

    settings = Settings.from_env()
    try:
        options = BenchOptions(batch_size=batch_size, seconds=seconds, repeats=repeats)
        torch_device = pick_device(device)
        dtype = pick_dtype(precision, torch_device, options.sigma)
        if checkpoint is None:
            model = random_model().to(torch_device)
            if dtype != next(model.parameters()).dtype:
                from .checkpoint import Checkpoint

                model = Checkpoint(model.config, model.state_dict()).build_model(torch_device,
                                                                                 dtype)
            name, rate = RANDOM_CHECKPOINT, 22050
        else:
            from .api import open_checkpoint

            vocoder = open_checkpoint(checkpoint, torch_device, settings, dtype=dtype)
            model, name, rate = vocoder.model, checkpoint, vocoder.sample_rate
        result = run_bench(model, rate, options, name)
    except (WaveGlowError, ValueError) as e:
        _exit_with(e, settings)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['checkpoint']} on {result['device_name']} ({result['device']}, "
               f"{result['precision']}, {result['path']}, {result['threads']} threads)")
    typer.echo(f"batch {result['batch_size']} x {result['seconds']:.2f} s: "
               f"{result['seconds_per_run']:.3f} s per run (median of {result['repeats']})")
    typer.echo(f"{result['samples_per_second'] / 1e3:,.1f} k samples/s, "
               f"{result['x_real_time']:.2f}x real time")
    typer.echo(f"{result['flops_per_sample'] / 1e6:.1f} MFLOP/sample -> "
               f"{result['achieved_tflops']:.3f} TFLOP/s = {100 * result['fraction_of_peak']:.1f}% "
               f"of the measured {result['precision']} matmul peak "
               f"({result['matmul_peak_tflops']:.3f} TFLOP/s)")
    typer.echo(f"peak memory {result['peak_memory_mib']:,.0f} MiB ({result['memory_kind']})")


def main() -> None:
    """Console entry point; turns anything unexpected into one line (exit 1)."""
    try:
        app()
    except KeyboardInterrupt:
        _stderr().out("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        settings = Settings.from_env()
        _stderr().out(_last_resort_message(e))
        if settings.debug:
            traceback.print_exception(e, file=sys.stderr)
        sys.exit(EXIT_INPUT_FAILED)


def _last_resort_message(error: BaseException) -> str:
    """One line for an exception no command caught: the file and the system's reason where
    the error names one (an OSError: "out.wav: no space left on device"), else "internal
    error" with the type, so a bug still reads as one."""
    from .fileio import describe_os_error

    if isinstance(error, WaveGlowError):  # ours: the message names the file already
        return f"error: {error}"
    if isinstance(error, OSError) and error.filename:
        return f"error: {error.filename}: {describe_os_error(error)}"
    if isinstance(error, MemoryError):
        return "error: out of memory" + (f" ({error})" if str(error) else "")
    return (f"error: internal error ({type(error).__name__}: {error}); "
            "set WAVEGLOW_DEBUG=1 for the traceback")
