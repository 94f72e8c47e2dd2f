"""Looking at audio through the model: ``score`` (exact likelihood) and ``plot`` (figures)."""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from ..errors import UsageError, WaveGlowError, printable
from .common import (
    DEFAULT_CHECKPOINT,
    EXIT_INPUT_FAILED,
    EXIT_OK,
    CheckpointOption,
    DeviceOption,
    DownloadBar,
    ItemProgress,
    errors_to_exit,
    existing_outputs_hint,
    load_settings,
    report,
    stderr_console,
)

if TYPE_CHECKING:
    from ..features.mel import MelConfig
    from ..jobs.core import Handler, Item, JobProgress


def score(
    inputs: Annotated[list[str], typer.Argument(
        metavar="INPUT", help="Audio files or folders of them.", show_default=False)],
    checkpoint: CheckpointOption = DEFAULT_CHECKPOINT,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
) -> None:
    """Exact log-likelihood of audio under the model.

    Per file: NVIDIA's training loss (sigma 1) and the true negative log-likelihood in nats
    and bits per sample."""
    import json

    from ..audio.io import AUDIO_SUFFIXES, read_mono
    from ..errors import AudioFileError
    from ..jobs.core import discover
    from ..vocoder import load_vocoder

    settings = load_settings()
    with errors_to_exit(settings, os_errors=False):
        items = discover(inputs, AUDIO_SUFFIXES)
        if any(item.source is None for item in items):
            raise UsageError("score reads files, not standard input")
        vocoder = load_vocoder(checkpoint, device, settings=settings, progress=DownloadBar())
    failures = 0
    for item in items:
        try:
            # Decoded a block at a time; absurd rates and over-long files refused first.
            mono, notes = read_mono(item.source, item.display,  # type: ignore[arg-type]
                                    vocoder.sample_rate, max_seconds=_score_seconds(vocoder))
            for text in notes:
                stderr_console().out(f"note: {text}")
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


# score runs the model over the whole file at once, so its memory grows with the audio:
# measured ~6 bytes per mel channel and ~24 per WN channel for every sample (6 KB per sample,
# 1.3 GB per 10 s, with the 256-channel universal model).  A file that would need more than
# this is refused before it is decoded (the universal model scores up to ~29 s at once).
SCORE_MEMORY_BYTES = 4 << 30


def _score_seconds(vocoder: Any) -> float:
    from ..audio.io import MAX_AUDIO_SECONDS

    config = vocoder.config
    per_sample = 6 * config.n_mel_channels + 24 * config.n_channels + 128
    return min(float(MAX_AUDIO_SECONDS), SCORE_MEMORY_BYTES / per_sample / vocoder.sample_rate)


def plot(
    inputs: Annotated[list[str], typer.Argument(
        metavar="INPUT",
        help="Mel files (.npy/.pt) or audio files; with --compare, exactly two audio files.",
        show_default=False)],
    output: Annotated[str | None, typer.Option(
        "-o", "--output", help="PNG file for one figure, a folder for several. "
                              "Default: <stem>.png beside each input.")] = None,
    compare: Annotated[bool, typer.Option(help="Stack two signals in one figure.",
                                          show_default=False)] = False,
    checkpoint: Annotated[str, typer.Option(
        "-c", "--checkpoint", help="Whose mel settings to use.")] = DEFAULT_CHECKPOINT,
    overwrite: Annotated[bool, typer.Option(help="Replace existing figures.",
                                            show_default=False)] = False,
) -> None:
    """Figures: a mel spectrogram, a waveform with its mel, or two signals stacked (--compare).

    Axes in seconds and mel frequency, with a colour bar."""
    from ..jobs.core import OutputPolicy, input_paths, run_items
    from ..vocoder import mel_settings_for

    settings = load_settings()
    with errors_to_exit(settings, os_errors=False):
        items, groups, outputs = _plot_plan(inputs, output, compare)
        config = mel_settings_for(checkpoint, settings, DownloadBar())
    # One figure per group (each input, or the two compared): the group's first item stands
    # for it in the job.
    handle = _figure_maker({group[0]: group for group in groups}, config, overwrite)
    # (No bar: one line per failure.)
    with errors_to_exit(settings, os_errors=False), \
            ItemProgress(0, "plot", settings) as progress:
        summary = run_items([group[0] for group in groups], outputs,
                            OutputPolicy(overwrite=overwrite), handle, progress,
                            inputs=input_paths(items))
    # Existing figures are kept, said in one line (plot has --overwrite, no --skip-existing).
    hint = existing_outputs_hint(summary, ("--overwrite",))
    if hint is not None:
        stderr_console().out(hint)
    raise typer.Exit(EXIT_INPUT_FAILED if summary.failed else EXIT_OK)


def _plot_plan(inputs: list[str], output: str | None, compare: bool
               ) -> tuple[list[Item], list[list[Item]], list[Path | None]]:
    """plot's inputs, their groups (one figure each) and each group's figure."""
    from ..audio.io import AUDIO_SUFFIXES
    from ..jobs.core import MEL_SUFFIXES, discover, plan_outputs

    items = discover(inputs, MEL_SUFFIXES + AUDIO_SUFFIXES)
    if any(item.source is None for item in items):
        raise UsageError("plot reads files, not standard input")
    if compare and len(items) != 2:
        raise UsageError("--compare takes exactly two inputs")
    groups = [items] if compare else [[item] for item in items]
    if compare and (output is None or Path(output).suffix.lower() != ".png"):
        raise UsageError("--compare needs -o FIGURE.png")
    outputs: list[Path | None] = ([Path(output)] if compare and output is not None
                                  else plan_outputs(items, output, ".png"))
    return items, groups, outputs


def _figure_maker(group_of: dict[Item, list[Item]], config: MelConfig, overwrite: bool
                  ) -> Handler:
    """What makes each group's figure, as the job's per-item handler."""
    from ..analysis.plot import plot_signals

    def handle(item: Item, source: Path | IO[bytes], target: Path | None,
               progress: JobProgress) -> None:
        panels = [p for member in group_of[item] for p in _panels_for(member, config)]
        plot_signals(target, panels, config, overwrite=overwrite)  # type: ignore[arg-type]

    return handle


def _panels_for(item: Item, config: MelConfig) -> list[tuple[str, Any, str]]:
    """A mel file: its mel; an audio file: its waveform and its mel."""
    from ..audio.io import read_bytes, read_mel, read_mono, sniff
    from ..errors import AudioFileError, MelFileError
    from ..features.mel import log_mel_frames

    source: Path = item.source  # type: ignore[assignment]
    name = source.name
    if sniff(read_bytes(source, item.display, MelFileError, 64)) == "audio":
        # Read once, a block at a time (bounded like every audio input); its mel from that.
        mono, _ = read_mono(source, item.display, config.sample_rate)
        try:
            mel_array = log_mel_frames(mono, config)
        except ValueError as e:  # too short to analyse
            raise AudioFileError(item.display, str(e)) from None
        return [("wave", mono, f"{name}: waveform"), ("mel", mel_array, f"{name}: mel")]
    return [("mel", read_mel(source, item.display, n_mels=None), f"{name}: mel")]
