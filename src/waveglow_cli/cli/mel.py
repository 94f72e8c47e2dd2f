"""``waveglow mel``: audio files to Tacotron 2 mel spectrograms, one item at a time
(:func:`waveglow_cli.jobs.run_items`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Annotated

import typer

from ..errors import UsageError
from .common import (DEFAULT_CHECKPOINT, EXIT_INPUT_FAILED, EXIT_OK, DownloadBar, ItemProgress,
                     MelCheckpointOption, OverwriteOption, SkipExistingOption, errors_to_exit,
                     load_settings)


def mel(
    inputs: Annotated[list[str], typer.Argument(
        help="Audio files (WAV, FLAC, OGG, ...), folders of them, or - for stdin.",
        show_default=False)],
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="Output file for one input, a folder for several, - for stdout. "
                              "Default: <stem>.npy beside each input (stdout for stdin).")] = None,
    checkpoint: MelCheckpointOption = DEFAULT_CHECKPOINT,
    fmt: Annotated[str, typer.Option("--format", help="npy, or pt (a torch tensor, as NVIDIA's "
                                                      "inference.py reads).")] = "npy",
    overwrite: OverwriteOption = False,
    skip_existing: SkipExistingOption = False,
) -> None:
    """Compute Tacotron 2 mel spectrograms (float32, (n_mels, frames), natural log)."""
    from ..audio_io import AUDIO_SUFFIXES, atomic_write, encode_mel
    from ..inputs import audio_to_mel
    from ..jobs import Item, JobProgress, OutputPolicy, discover, plan_outputs, run_items, \
        write_stream
    from ..vocoder import mel_settings_for

    settings = load_settings()
    with errors_to_exit(settings, os_errors=False):
        policy = OutputPolicy(overwrite, skip_existing)
        if fmt not in ("npy", "pt"):
            raise UsageError(f"unknown --format {fmt!r}; use npy or pt")
        items = discover(inputs, AUDIO_SUFFIXES)
        outputs = plan_outputs(items, output, f".{fmt}")
        config = mel_settings_for(checkpoint, settings, DownloadBar())
    stdout = getattr(sys.stdout, "buffer", None)

    def handle(item: Item, source: Path | IO[bytes], target: Path | None,
               progress: JobProgress) -> None:
        spectrogram, notes = audio_to_mel(source, config, item.display)
        for text in notes:
            progress.note(text)
        data = encode_mel(spectrogram, fmt)
        if target is None:
            write_stream(stdout, data)
        else:
            atomic_write(target, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)

    with errors_to_exit(settings, os_errors=False):
        with ItemProgress(len(items), "mel", settings) as progress:
            summary = run_items(items, outputs, policy, handle, progress,
                                stdin=getattr(sys.stdin, "buffer", None))
    raise typer.Exit(EXIT_INPUT_FAILED if summary.failed else EXIT_OK)
