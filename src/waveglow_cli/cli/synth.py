"""``waveglow synth``: declare the options, load the vocoder, run the synthesis job
(:class:`waveglow_cli.jobs.core.SynthesisJob`), print its summary and exit with its status."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from ..settings import Shard
from .common import (
    DEFAULT_CHECKPOINT,
    EXIT_INPUT_FAILED,
    EXIT_OK,
    CheckpointOption,
    DeviceOption,
    DownloadBar,
    EngineOption,
    ItemProgress,
    OverwriteOption,
    PrecisionOption,
    QuietOption,
    SkipExistingOption,
    StepStatus,
    check_checkpoint,
    end_of_job,
    errors_to_exit,
    interrupts_to_exit,
    load_settings,
    refuse_binary_to_terminal,
)

if TYPE_CHECKING:
    from ..jobs.core import Item, OutputPolicy, SynthesisJob
    from ..settings import Settings

Inputs = Annotated[list[str], typer.Argument(
    metavar="INPUT", help="Mel files (.npy/.pt, natural log), audio files (copy synthesis), "
                          "folders of them (recursive), or - for stdin.", show_default=False)]
Output = Annotated[str | None, typer.Option(
    "-o", "--output", help="Output .wav/.flac for one input, a folder for several, - for stdout. "
                          "Default: <stem>.wav beside each input (<stem>.synth.wav for a "
                          "WAV input), stdout for stdin.")]
Sigma = Annotated[float, typer.Option(help="Noise scale (NVIDIA recommends 0.6).", min=0.0)]
Seed = Annotated[int | None, typer.Option(
    help="Seed: each file's noise then depends only on (seed, its relative path).")]
Subtype = Annotated[str, typer.Option(help="PCM_16, PCM_24, PCM_32 or FLOAT.")]
DenoiserStrength = Annotated[float, typer.Option(
    help="Subtract this much of the model's bias spectrum (NVIDIA's denoiser); 0 = off.",
    min=0.0)]
BatchSize = Annotated[int, typer.Option(help="Items per forward pass.", min=1)]
MaxFrames = Annotated[int | None, typer.Option(
    help="Longest piece in frames (256 samples); longer inputs are cut into exact "
         "overlapping pieces, bounding memory. Default: 2048 on a GPU, 1024 on the CPU.",
    min=1, show_default=False)]
BatchFrames = Annotated[int | None, typer.Option(
    help="Memory budget: padded frames per batch. Default: 16384 on a GPU, --max-frames "
         "on the CPU (one piece at a time).", min=1, show_default=False)]
MelLayout = Annotated[str, typer.Option(help="auto, CT (n_mels, frames) or TC (frames, n_mels).")]
MelScale = Annotated[str, typer.Option(help="ln (Tacotron 2), log10, or db (20 log10 magnitude).")]
MelFrom = Annotated[str | None, typer.Option(
    "--mel-from", help="The input mels are another toolkit's: a preset (tacotron2, hifigan, "
                       "pwg, coqui, vocos, bigvgan-24k, bigvgan-22k) or a .toml convention; "
                       "converted to the checkpoint's mel (--mel-scale does not apply).",
    show_default=False)]
MelStatsFile = Annotated[str | None, typer.Option(
    "--mel-stats", help="With --mel-from: undo mean-variance normalisation (ParallelWaveGAN "
                        "stats.h5, or a (2, n_mels) .npy of mean and scale).",
    show_default=False)]
FailFast = Annotated[bool, typer.Option(help="Stop at the first failed input.",
                                        show_default=False)]
Format = Annotated[str | None, typer.Option(
    "--format", help="Standard output's format: wav (streamed as it is made; the header holds "
                     "the exact length), raw (headerless little-endian PCM, streamed, for "
                     "aplay/ffplay) or flac (written at the end). Files take theirs from "
                     "the extension.", show_default=False)]
FirstPiece = Annotated[int | None, typer.Option(
    help="One input is made front to back in growing pieces, the first of this many frames, "
         "so its first audio comes early; 0: whole. Default: 32 for standard output (-o -), "
         "whole for a file (-o - equals -o f.wav --first-piece 32 byte for byte).",
    min=0, show_default=False)]
Plot = Annotated[bool, typer.Option(
    "--plot", help="Also write <stem>.png (input mel and output waveform) beside each output; "
                   "needs the plot extra.")]


def synth(
    inputs: Inputs,
    output: Output = None,
    checkpoint: CheckpointOption = DEFAULT_CHECKPOINT,
    sigma: Sigma = 0.6,
    seed: Seed = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    engine: EngineOption = "auto",
    subtype: Subtype = "PCM_16",
    denoiser_strength: DenoiserStrength = 0.0,
    batch_size: BatchSize = 8,
    max_frames: MaxFrames = None,
    batch_frames: BatchFrames = None,
    mel_layout: MelLayout = "auto",
    mel_scale: MelScale = "ln",
    mel_from: MelFrom = None,
    mel_stats: MelStatsFile = None,
    overwrite: OverwriteOption = False,
    skip_existing: SkipExistingOption = False,
    fail_fast: FailFast = False,
    quiet: QuietOption = False,
    plot: Plot = False,
    format: Format = None,
    first_piece: FirstPiece = None,
) -> None:
    """Vocode mel spectrograms (or audio files, by copy synthesis) into audio."""
    from ..jobs.core import OutputPolicy, all_ranks_sum

    settings, shard = load_settings(), Shard.from_env()
    with errors_to_exit(settings, os_errors=False):  # all before torch is imported
        policy = OutputPolicy(overwrite, skip_existing)
        items, outputs = _plan(inputs, output, subtype, mel_layout, mel_scale, shard, format)
        _check_mel_from(mel_from, mel_stats)
        check_checkpoint(checkpoint, settings)
    with interrupts_to_exit(), errors_to_exit(settings, os_errors=False):
        with StepStatus(quiet) as status:  # on a terminal: torch starting, the model loading
            job = _synthesis_job(
                settings, shard, policy, status, checkpoint=checkpoint, sigma=sigma, seed=seed,
                device=device, precision=precision, engine=engine, subtype=subtype,
                denoiser_strength=denoiser_strength, batch_size=batch_size,
                max_frames=max_frames, batch_frames=batch_frames, mel_layout=mel_layout,
                mel_scale=mel_scale, mel_from=mel_from, mel_stats=mel_stats,
                fail_fast=fail_fast, plot=plot, stdout_format=format or "wav",
                first_piece=first_piece)
            status("reading the inputs")  # until the bar appears, with its total
            with ItemProgress(0 if quiet else len(items), "synth", settings, notes=not quiet,
                              audio=True, status=status) as progress:
                summary = job.run(items, outputs, progress)
    end_of_job(summary, quiet)
    failed = all_ranks_sum(summary.failed, shard)
    raise typer.Exit(EXIT_INPUT_FAILED if failed else EXIT_OK)


def _plan(inputs: list[str], output: str | None, subtype: str, mel_layout: str,
          mel_scale: str, shard: Shard, fmt: str | None
          ) -> tuple[list[Item], list[Path | None]]:
    """The inputs, where each one's audio goes, and this process's share of them."""
    from ..audio.io import AUDIO_SUFFIXES, MEL_LAYOUTS, MEL_SCALES
    from ..audio.out import STREAM_FORMATS, output_format
    from ..jobs.core import (
        MEL_SUFFIXES,
        discover,
        plan_outputs,
        refuse_overwriting_inputs,
        take_shard,
        without_own_outputs,
    )

    if mel_layout not in MEL_LAYOUTS or mel_scale not in MEL_SCALES:
        raise UsageError(f"--mel-layout takes {', '.join(MEL_LAYOUTS)}; "
                         f"--mel-scale takes {', '.join(MEL_SCALES)}")
    items = without_own_outputs(discover(inputs, MEL_SUFFIXES + AUDIO_SUFFIXES), output,
                                ".wav", AUDIO_SUFFIXES)
    outputs = plan_outputs(items, output, ".wav")
    for target in outputs:
        output_format(target if target is not None else "-", subtype)
    if fmt is not None and (fmt not in STREAM_FORMATS or any(t is not None for t in outputs)):
        raise UsageError(f"--format {fmt}: it sets standard output's format (-o -), one of "
                         f"{', '.join(STREAM_FORMATS)}; files take theirs from the extension")
    if fmt == "flac" and subtype not in ("PCM_16", "PCM_24"):
        raise UsageError(f"--format flac: FLAC stores PCM_16 or PCM_24, not {subtype}")
    refuse_binary_to_terminal(outputs, "binary audio", ".wav")
    refuse_overwriting_inputs(items, outputs)
    return take_shard(items, outputs, shard)


def _check_mel_from(mel_from: str | None, mel_stats: str | None) -> None:
    """A bad --mel-from (or --mel-stats without it) fails before torch is imported."""
    if mel_from is None:
        if mel_stats is not None:
            raise UsageError("--mel-stats goes with --mel-from (the convention it normalises)")
        return
    from ..features.conventions import resolve_convention

    resolve_convention(mel_from)


def _synthesis_job(settings: Settings, shard: Shard, policy: OutputPolicy,
                   status: StepStatus, *, checkpoint: str,
                   sigma: float, seed: int | None, device: str, precision: str, engine: str,
                   subtype: str,
                   denoiser_strength: float, batch_size: int, max_frames: int | None,
                   batch_frames: int | None, mel_layout: str, mel_scale: str,
                   mel_from: str | None, mel_stats: str | None, fail_fast: bool,
                   plot: bool, stdout_format: str, first_piece: int | None) -> SynthesisJob:
    """The vocoder for the device and precision asked for, and the job around it; each step
    that takes seconds (torch starting, the checkpoint read and prepared) told to ``status``."""
    status("starting torch")
    from ..analysis.bench import precision_name
    from ..checkpoints.cache import ensure_checkpoint
    from ..engines.devices import pick_device, pick_dtype
    from ..jobs.core import synthesis_job
    from ..synthesis.plans import BatchOptions
    from ..synthesis.synthesizer import SynthesisOptions, return_freed_memory_promptly
    from ..vocoder import load_vocoder

    return_freed_memory_promptly()  # memory that does not grow with the input's length
    options = SynthesisOptions(sigma=sigma, seed=seed, denoiser_strength=denoiser_strength)
    if device == "auto" and shard.world > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    torch_device = pick_device(device)
    dtype = pick_dtype(precision, torch_device, sigma)
    # A download first, with its own bar; then the status again while the model is prepared.
    path = ensure_checkpoint(checkpoint, settings, DownloadBar(status=status))
    status(f"loading {Path(path).name} ({precision_name(dtype)} on {torch_device})")
    vocoder = load_vocoder(checkpoint, torch_device, dtype, settings=settings,
                           denoise=denoiser_strength > 0, engine=engine)
    batching = BatchOptions.for_device(torch_device, vocoder.config, batch_size=batch_size,
                                       max_frames=max_frames, batch_frames=batch_frames)
    if plot:
        from ..analysis.plot import require_matplotlib

        require_matplotlib()
    # Standard input and output as streams (None where this process has none).
    return synthesis_job(vocoder, options, batching, subtype=subtype, policy=policy,
                         fail_fast=fail_fast, mel_layout=mel_layout, mel_scale=mel_scale,
                         mel_from=mel_from, mel_stats=mel_stats,
                         plot=plot, stdin=getattr(sys.stdin, "buffer", None),
                         stdout=getattr(sys.stdout, "buffer", None),
                         stdout_format=stdout_format, first_piece=first_piece)
