"""Looking at audio through the model: ``score`` (exact likelihood) and ``plot`` (figures)."""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from ..errors import UsageError, WaveGlowError, printable
from .common import (DEFAULT_CHECKPOINT, EXIT_INPUT_FAILED, EXIT_OK, CheckpointOption,
                     DeviceOption, DownloadBar, ItemProgress, errors_to_exit, load_settings,
                     report, stderr_console)

if TYPE_CHECKING:
    from ..jobs import Item, JobProgress
    from ..mel import MelConfig


def score(
    inputs: Annotated[list[str], typer.Argument(help="Audio files or folders of them.",
                                                show_default=False)],
    checkpoint: CheckpointOption = DEFAULT_CHECKPOINT,
    device: DeviceOption = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
) -> None:
    """Exact log-likelihood of audio under the model: NVIDIA's training loss (sigma 1) and the
    true negative log-likelihood in nats and bits per sample."""
    import json

    from ..audio_io import AUDIO_SUFFIXES, prepare_audio, read_audio
    from ..errors import AudioFileError
    from ..jobs import discover
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
            samples, rate = read_audio(item.source, item.display)  # type: ignore[arg-type]
            mono, notes = prepare_audio(samples, rate, vocoder.sample_rate, item.display)
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
    from ..audio_io import AUDIO_SUFFIXES
    from ..jobs import MEL_SUFFIXES, OutputPolicy, discover, input_paths, plan_outputs, run_items
    from ..plot import plot_signals
    from ..vocoder import mel_settings_for

    settings = load_settings()
    with errors_to_exit(settings, os_errors=False):
        items = discover(inputs, MEL_SUFFIXES + AUDIO_SUFFIXES)
        if any(item.source is None for item in items):
            raise UsageError("plot reads files, not standard input")
        if compare and len(items) != 2:
            raise UsageError("--compare takes exactly two inputs")
        groups = [items] if compare else [[item] for item in items]
        if compare and (output is None or Path(output).suffix.lower() != ".png"):
            raise UsageError("--compare needs -o FIGURE.png")
        outputs = [Path(output)] if compare else plan_outputs(items, output, ".png")  # type: ignore[arg-type]
        config = mel_settings_for(checkpoint, settings, DownloadBar())
    # One figure per group (each input, or the two compared): the group's first item stands
    # for it in the job.
    group_of = {group[0]: group for group in groups}

    def handle(item: Item, source: Path | IO[bytes], target: Path | None,
               progress: JobProgress) -> None:
        panels = [p for member in group_of[item] for p in _panels_for(member, config)]
        plot_signals(target, panels, config, overwrite=overwrite)  # type: ignore[arg-type]

    with errors_to_exit(settings, os_errors=False):
        with _PlotProgress(0, "plot", settings) as progress:  # no bar: one line per failure
            summary = run_items([group[0] for group in groups], outputs,  # type: ignore[arg-type]
                                OutputPolicy(overwrite=overwrite), handle, progress,
                                inputs=input_paths(items))
    raise typer.Exit(EXIT_INPUT_FAILED if summary.failed else EXIT_OK)


class _PlotProgress(ItemProgress):
    """An existing figure's message names only --overwrite (plot has no --skip-existing)."""

    def failed(self, error: BaseException) -> None:
        from ..errors import OutputExistsError, OutputExistsHint

        if isinstance(error, OutputExistsError) and not isinstance(error, OutputExistsHint):
            error = OutputExistsHint.of(error, ("--overwrite",))
        super().failed(error)


def _panels_for(item: Item, config: MelConfig) -> list[tuple[str, Any, str]]:
    """A mel file: its mel; an audio file: its waveform and its mel."""
    from ..audio_io import prepare_audio, read_audio, read_bytes, read_mel, sniff
    from ..errors import MelFileError
    from ..inputs import audio_to_mel

    source: Path = item.source  # type: ignore[assignment]
    name = source.name
    if sniff(read_bytes(source, item.display, MelFileError, 64)) == "audio":
        samples, rate = read_audio(source, item.display)
        mono, _ = prepare_audio(samples, rate, config.sample_rate, item.display)
        mel_array, _ = audio_to_mel(source, config, item.display)
        return [("wave", mono, f"{name}: waveform"), ("mel", mel_array, f"{name}: mel")]
    return [("mel", read_mel(source, item.display, n_mels=None), f"{name}: mel")]
