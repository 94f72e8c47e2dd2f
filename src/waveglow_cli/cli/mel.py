"""``waveglow mel``: audio files to Tacotron 2 mel spectrograms, one item at a time
(:func:`waveglow_cli.jobs.core.run_items`); with ``--from PRESET|FILE.toml``, mels of another
toolkit's convention converted to ours (:mod:`waveglow_cli.features.melconvert`) without
vocoding."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from ..features.conventions import PRESETS
from .common import (
    DEFAULT_CHECKPOINT,
    EXIT_INPUT_FAILED,
    EXIT_OK,
    DownloadBar,
    ItemProgress,
    MelCheckpointOption,
    OverwriteOption,
    QuietOption,
    SkipExistingOption,
    check_checkpoint,
    end_of_job,
    errors_to_exit,
    interrupts_to_exit,
    load_settings,
    refuse_binary_to_terminal,
    standard_streams,
)

if TYPE_CHECKING:
    from ..jobs.summary import Item

FORMATS = ("npy", "pt")

Inputs = Annotated[list[str], typer.Argument(
    metavar="INPUT", help="Audio files (WAV, FLAC, OGG, ...), folders of them, or - for "
                          "stdin; with --from, mel files (.npy/.pt) of that convention too.",
    show_default=False)]
Output = Annotated[str | None, typer.Option(
    "-o", "--output", help="Output file for one input, a folder for several, - for stdout. "
                          "Default: <stem>.npy beside each input (stdout for stdin).")]
Format = Annotated[str | None, typer.Option(
    "--format", help="npy, or pt (a torch tensor, as NVIDIA's inference.py reads). "
                     "Default: the suffix of -o FILE.npy/.pt, else npy.",
    show_default=False)]
From = Annotated[str | None, typer.Option(
    "--from", help="Convert mel files of this convention to ours instead: a preset "
                   f"({', '.join(PRESETS)}) or a .toml file. Default output: "
                   "<stem>.tacotron2.npy beside each input.", show_default=False)]
MelStats = Annotated[str | None, typer.Option(
    "--mel-stats", help="With --from: undo mean-variance normalisation with these "
                        "statistics (ParallelWaveGAN stats.h5, or a (2, n_mels) .npy of "
                        "mean and scale).", show_default=False)]
MelLayout = Annotated[str, typer.Option(
    help="With --from: auto, CT (n_mels, frames) or TC (frames, n_mels).")]


def mel(
    inputs: Inputs,
    output: Output = None,
    checkpoint: MelCheckpointOption = DEFAULT_CHECKPOINT,
    fmt: Format = None,
    overwrite: OverwriteOption = False,
    skip_existing: SkipExistingOption = False,
    quiet: QuietOption = False,
    convention: From = None,
    mel_stats: MelStats = None,
    mel_layout: MelLayout = "auto",
) -> None:
    """Compute Tacotron 2 mel spectrograms, or convert another toolkit's mels (--from).

    Each mel is float32, shaped (n_mels, frames), in natural log."""
    from ..jobs.core import OutputPolicy

    settings = load_settings()
    with errors_to_exit(settings, os_errors=False):
        policy = OutputPolicy(overwrite, skip_existing)
        fmt = _format(fmt, output)
        items, outputs = _plan(inputs, output, fmt, convention, mel_stats, mel_layout)
        check_checkpoint(checkpoint, settings)
    with interrupts_to_exit(), errors_to_exit(settings, os_errors=False):
        from ..features.inputs import mel_converter
        from ..jobs.mel_job import MelJob
        from ..vocoder import mel_settings_for

        config = mel_settings_for(checkpoint, settings, DownloadBar(quiet))
        converter = (None if convention is None
                     else mel_converter(convention, config, mel_stats))
        job = MelJob(config, fmt, converter, mel_layout, policy, standard_streams())
        with ItemProgress(0 if quiet else len(items), "mel", settings,
                          notes=not quiet) as progress:
            summary = job.run(items, outputs, progress)
    end_of_job(summary, quiet)
    raise typer.Exit(EXIT_INPUT_FAILED if summary.failed else EXIT_OK)


def _plan(inputs: list[str], output: str | None, fmt: str, convention: str | None,
          mel_stats: str | None, mel_layout: str) -> tuple[list[Item], list[Path | None]]:
    """The inputs and where each one's mel goes; bad options (a bad --from among them) fail
    here, before any work."""
    from ..audio.io import AUDIO_SUFFIXES, MEL_LAYOUTS
    from ..jobs.core import MEL_SUFFIXES, discover, plan_outputs

    if convention is None and mel_stats is not None:
        raise UsageError("--mel-stats goes with --from (the convention it normalises)")
    if mel_layout not in MEL_LAYOUTS:
        raise UsageError(f"--mel-layout takes {', '.join(MEL_LAYOUTS)}")
    if convention is not None:
        from ..features.conventions import resolve_convention

        resolve_convention(convention)  # a bad spec fails before any work
    items = discover(inputs, AUDIO_SUFFIXES if convention is None
                     else MEL_SUFFIXES + AUDIO_SUFFIXES)
    # Beside a mel input, <stem>.npy would be the input itself.
    outputs = plan_outputs(items, output, f".{fmt}" if convention is None or output
                           else f".tacotron2.{fmt}")
    refuse_binary_to_terminal(outputs, f"binary .{fmt} data", f".{fmt}")
    return items, outputs


def _format(fmt: str | None, output: str | None) -> str:
    """--format as given, else from -o's suffix (.npy/.pt), else npy; a suffix that names the
    other format is refused (a torch file under .npy would fool every reader)."""
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; use npy or pt")
    suffix = Path(output).suffix.lower().lstrip(".") if output not in (None, "-") else ""
    if suffix in FORMATS:
        if fmt is not None and fmt != suffix:
            raise UsageError(f"-o {output} names a .{suffix} file but --format is {fmt}; "
                             f"name it .{fmt} or drop --format")
        return suffix
    return fmt or "npy"
