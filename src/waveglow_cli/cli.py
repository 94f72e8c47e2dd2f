"""The ``waveglow`` command: thin Typer commands over the library.

Exit codes: 0 everything worked, 1 some input failed, 2 usage error.  Messages are one line
on stderr; ``WAVEGLOW_DEBUG=1`` adds the traceback.  Standard output carries data only
(WAV or .npy bytes for ``-o -``).
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from . import __version__
from .errors import (CheckpointNotAvailableError, InputFileError, OutputExistsError, UsageError,
                     WaveGlowError)
from .registry import DEFAULT_CHECKPOINT
from .settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="WaveGlow vocoder: mel spectrograms to audio, exactly as NVIDIA's "
                       "reference, on CPU, CUDA or MPS.")

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE = 0, 1, 2
MEL_SUFFIXES = (".npy", ".pt")


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


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
    code = next((c for t, c in _EXIT_CODES if isinstance(error, t)), EXIT_INPUT_FAILED)
    (console or _stderr()).out(f"error: {error}")
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
            items += [Item(p, p.relative_to(path).as_posix()) for p in found]
        elif path.exists():
            items.append(Item(path, path.name))
        else:
            raise UsageError(f"{spec}: no such file or folder")
    if sum(item.source is None for item in items) > 1:
        raise UsageError("'-' (standard input) can be given only once")
    return items


def plan_outputs(items: list[Item], output: str | None, suffix: str) -> list[Path | None]:
    """Where each item's result goes (None: standard output)."""
    if output == "-":
        if len(items) != 1:
            raise UsageError("-o - (standard output) takes exactly one input")
        return [None]
    # A name with an extension is a file (a folder with a dot in its name: end it with '/').
    if output is not None and Path(output).suffix and not output.endswith(("/", "\\")) \
            and not Path(output).is_dir():
        if len(items) != 1:
            raise UsageError(f"-o {output} names one file but {len(items)} inputs were given; "
                             "pass a folder")
        return [Path(output)]
    outputs: list[Path | None] = []
    for item in items:
        if output is not None:
            outputs.append(Path(output) / Path(item.key).with_suffix(suffix))
        elif item.source is None:
            outputs.append(None)
        else:
            outputs.append(item.source.with_suffix(suffix))
    keys = [str(o) for o in outputs if o is not None]
    if len(keys) != len(set(keys)):
        raise UsageError("two inputs map to the same output name (e.g. a.npy and a.pt); "
                         "give them different stems")
    return outputs


def check_output(item: Item, target: Path | None, inputs: set[Path], overwrite: bool,
                 skip_existing: bool) -> bool:
    """False when the item is to be skipped; raises when it must not be written."""
    if target is None:
        return True
    if target.resolve() in inputs:
        raise UsageError(f"{target}: refusing to overwrite an input file")
    if target.exists():
        if skip_existing:
            return False
        if not overwrite:
            raise OutputExistsError(target)
    return True


class ItemProgress:
    """A rich progress bar on a TTY (stderr) for more than one item; silent otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self.console = _stderr()
        self._progress = None
        if total > 1 and self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(),
                                      console=self.console)
            self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> ItemProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def note(self, text: str) -> None:
        self.console.out(f"note: {text}")


def run_items(items: list[Item], outputs: list[Path | None], overwrite: bool, skip_existing: bool,
              settings: Settings, label: str,
              handle: Callable[[Item, Path | bytes, Path | None, ItemProgress], None]) -> int:
    """Process every item, isolating failures: returns how many failed.  ``handle`` gets the
    item's path (or stdin's bytes) and its target (None: stdout)."""
    input_paths = {item.source.resolve() for item in items if item.source is not None}
    stdin_bytes = sys.stdin.buffer.read() if any(i.source is None for i in items) else b""
    failures = 0
    with ItemProgress(len(items), label) as progress:
        for item, target in zip(items, outputs):
            try:
                if check_output(item, target, input_paths, overwrite, skip_existing):
                    handle(item, stdin_bytes if item.source is None else item.source, target,
                           progress)
            except UsageError as e:
                _exit_with(e, settings)
            except (WaveGlowError, OSError) as e:
                failures += 1
                report(e, settings, progress.console)
            progress.advance()
    return failures


def write_stdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


# ---------------------------------------------------------------------------------------------
# synth


@app.command()
def synth(
    inputs: Annotated[list[str], typer.Argument(
        help="Mel files (.npy/.pt, (n_mels, frames), natural log), audio files (copy synthesis), "
             "folders of them, or - for stdin.", show_default=False)],
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="Output .wav/.flac for one input, a folder for several, - for stdout. "
                              "Default: <stem>.wav beside each input (stdout for stdin).")] = None,
    checkpoint: Annotated[str, typer.Option(
        "-c", "--checkpoint", help="Checkpoint file or registry name.")] = DEFAULT_CHECKPOINT,
    sigma: Annotated[float, typer.Option(help="Noise scale (NVIDIA recommends 0.6).", min=0.0)] = 0.6,
    seed: Annotated[int | None, typer.Option(
        help="Seed: each file's noise then depends only on (seed, its relative path).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    subtype: Annotated[str, typer.Option(help="PCM_16, PCM_24, PCM_32 or FLOAT.")] = "PCM_16",
    denoiser_strength: Annotated[float, typer.Option(
        help="Subtract this much of the model's bias spectrum (NVIDIA's denoiser); 0 = off.",
        min=0.0)] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
    skip_existing: Annotated[bool, typer.Option(help="Keep existing outputs (resume).")] = False,
) -> None:
    """Vocode mel spectrograms (or audio files, by copy synthesis) into audio."""
    from .api import load_synthesis_input, open_checkpoint
    from .audio_io import AUDIO_SUFFIXES, encode_audio, finalize_audio, output_format, write_audio
    from .synthesis import SynthesisOptions, pick_device, synthesize

    settings = Settings.from_env()
    try:
        if overwrite and skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other")
        items = discover(inputs, MEL_SUFFIXES + AUDIO_SUFFIXES)
        outputs = plan_outputs(items, output, ".wav")
        for target in outputs:
            output_format(target if target is not None else "-", subtype)
        options = SynthesisOptions(sigma=sigma, seed=seed, denoiser_strength=denoiser_strength)
        torch_device = pick_device(device)
        vocoder = open_checkpoint(checkpoint, torch_device, settings,
                                  with_denoiser=denoiser_strength > 0)
    except (WaveGlowError, ValueError) as e:
        _exit_with(e, settings)

    def handle(item: Item, source: Path | bytes, target: Path | None, progress: ItemProgress) -> None:
        mel, notes = load_synthesis_input(source, item.display, vocoder.mel_config)
        for text in notes:
            progress.note(text)
        audio = synthesize(vocoder.model, mel, options, key=item.key, denoiser=vocoder.denoiser)
        audio = finalize_audio(audio, item.display, subtype)
        if target is None:
            write_stdout(encode_audio(audio, vocoder.sample_rate, subtype))
        else:
            write_audio(target, audio, vocoder.sample_rate, subtype)

    failures = run_items(items, outputs, overwrite, skip_existing, settings, "synth", handle)
    raise typer.Exit(EXIT_INPUT_FAILED if failures else EXIT_OK)


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
    from .api import audio_to_mel, mel_config_for
    from .audio_io import AUDIO_SUFFIXES, atomic_write, encode_mel
    from .checkpoint import read_checkpoint
    from .registry import Registry

    settings = Settings.from_env()
    try:
        if overwrite and skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other")
        if fmt not in ("npy", "pt"):
            raise UsageError(f"unknown --format {fmt!r}; use npy or pt")
        items = discover(inputs, AUDIO_SUFFIXES)
        outputs = plan_outputs(items, output, f".{fmt}")
        entry = Registry.load(settings).find(checkpoint)
        if entry is not None and not Path(checkpoint).exists():
            config = mel_config_for(None, entry)
        else:
            from .registry import resolve_checkpoint

            config = mel_config_for(read_checkpoint(resolve_checkpoint(checkpoint, settings)), None)
    except (WaveGlowError, ValueError) as e:
        _exit_with(e, settings)

    def handle(item: Item, source: Path | bytes, target: Path | None, progress: ItemProgress) -> None:
        spectrogram, notes = audio_to_mel(source, config, item.display)
        for text in notes:
            progress.note(text)
        data = encode_mel(spectrogram, fmt)
        if target is None:
            write_stdout(data)
        else:
            atomic_write(target, lambda tmp: tmp.write_bytes(data))

    failures = run_items(items, outputs, overwrite, skip_existing, settings, "mel", handle)
    raise typer.Exit(EXIT_INPUT_FAILED if failures else EXIT_OK)


# ---------------------------------------------------------------------------------------------
# info / convert


@app.command()
def info(checkpoint: Annotated[str, typer.Argument(help="Checkpoint file or registry name.")]) -> None:
    """Describe a checkpoint: format, architecture, sample rate."""
    from .checkpoint import read_checkpoint
    from .registry import resolve_checkpoint

    settings = Settings.from_env()
    try:
        ckpt = read_checkpoint(resolve_checkpoint(checkpoint, settings))
    except (WaveGlowError, ValueError) as e:
        _exit_with(e, settings)
    c = ckpt.config
    n_params = sum(t.numel() for t in ckpt.state_dict.values())
    typer.echo(f"format:       {ckpt.source_format}")
    typer.echo(f"parameters:   {n_params:,}")
    typer.echo(f"sample rate:  {ckpt.sample_rate}")
    for key, value in c.to_dict().items():
        typer.echo(f"{key + ':':<14}{value}")


@app.command()
def convert(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint file or registry name.")],
    output: Annotated[Path, typer.Argument(help="Output .safetensors file.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Convert any supported checkpoint to the safe, fast-loading safetensors format."""
    from .checkpoint import read_checkpoint, save_checkpoint
    from .registry import resolve_checkpoint

    settings = Settings.from_env()
    try:
        if output.suffix != ".safetensors":
            raise UsageError(f"{output}: the output must end in .safetensors")
        source = resolve_checkpoint(checkpoint, settings)
        if output.exists() and output.resolve() == source.resolve():
            raise UsageError(f"{output}: refusing to overwrite the input")
        if output.exists() and not overwrite:
            raise OutputExistsError(output)
        save_checkpoint(output, read_checkpoint(source))
    except (WaveGlowError, ValueError, OSError) as e:
        _exit_with(e, settings)
    _stderr().out(f"wrote {output}")


def main() -> None:
    """Console entry point; turns anything unexpected into one line (exit 1)."""
    try:
        app()
    except KeyboardInterrupt:
        _stderr().out("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - last resort: one line, not a traceback
        settings = Settings.from_env()
        _stderr().out(f"error: internal error ({type(e).__name__}: {e}); "
                      "set WAVEGLOW_DEBUG=1 for the traceback")
        if settings.debug:
            traceback.print_exception(e, file=sys.stderr)
        sys.exit(EXIT_INPUT_FAILED)
