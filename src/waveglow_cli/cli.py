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
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from . import __version__
from .errors import (CheckpointNotAvailableError, InputFileError, OutputExistsError, UsageError,
                     WaveGlowError)
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


def report(error: BaseException, settings: Settings | None = None) -> int:
    """Print ``error`` as one line on stderr and return the exit code it maps to."""
    code = next((c for t, c in _EXIT_CODES if isinstance(error, t)), EXIT_INPUT_FAILED)
    _stderr().out(f"error: {error}")
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


# ---------------------------------------------------------------------------------------------
# synth


@app.command()
def synth(
    inputs: Annotated[list[str], typer.Argument(
        help="Mel files (.npy/.pt, (n_mels, frames), natural log), folders of them, or - for stdin.",
        show_default=False)],
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="Output .wav/.flac for one input, a folder for several, - for stdout. "
                              "Default: <stem>.wav beside each input (stdout for stdin).")] = None,
    checkpoint: Annotated[str, typer.Option(
        "-c", "--checkpoint", help="Checkpoint file or registry name.")] = "universal",
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
    """Vocode mel spectrograms into audio."""
    from .api import open_checkpoint
    from .audio_io import finalize_audio, output_format, read_mel, write_audio, encode_audio
    from .synthesis import SynthesisOptions, pick_device, synthesize

    settings = Settings.from_env()
    try:
        if overwrite and skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other")
        items = discover(inputs, MEL_SUFFIXES)
        outputs = plan_outputs(items, output, ".wav")
        for target in outputs:
            output_format(target if target is not None else "-", subtype)
        options = SynthesisOptions(sigma=sigma, seed=seed, denoiser_strength=denoiser_strength)
        torch_device = pick_device(device)
    except (WaveGlowError, ValueError) as e:
        _exit_with(e, settings)
    try:
        model, ckpt, denoiser = open_checkpoint(checkpoint, torch_device, settings,
                                                with_denoiser=denoiser_strength > 0)
    except (WaveGlowError, ValueError) as e:
        _exit_with(e, settings)

    input_paths = {item.source.resolve() for item in items if item.source is not None}
    failures = 0
    stdin_bytes = sys.stdin.buffer.read() if any(i.source is None for i in items) else b""
    for item, target in zip(items, outputs):
        try:
            if not check_output(item, target, input_paths, overwrite, skip_existing):
                continue
            mel = read_mel(stdin_bytes if item.source is None else item.source, item.display,
                           n_mels=model.config.n_mel_channels)
            audio = synthesize(model, mel, options, key=item.key, denoiser=denoiser)
            audio = finalize_audio(audio, item.display, subtype)
            if target is None:
                sys.stdout.buffer.write(encode_audio(audio, ckpt.sample_rate, subtype))
                sys.stdout.buffer.flush()
            else:
                write_audio(target, audio, ckpt.sample_rate, subtype)
        except UsageError as e:
            _exit_with(e, settings)
        except (WaveGlowError, OSError) as e:
            failures += 1
            report(e, settings)
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
