"""``waveglow synth``: declare the options, load the vocoder, run the synthesis job
(:class:`waveglow_cli.jobs.core.SynthesisJob`), print its summary and exit with its status."""

from __future__ import annotations

from dataclasses import dataclass
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
    standard_streams,
)

if TYPE_CHECKING:
    from ..jobs.core import Item, SynthesisJob
    from ..jobs.options import InputOptions, OutputOptions
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
    convention: MelFrom = None,
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
    from ..jobs.options import InputOptions, OutputOptions

    settings, shard = load_settings(), Shard.from_env()
    with errors_to_exit(settings, os_errors=False):  # all before torch is imported
        out = OutputOptions(subtype, OutputPolicy(overwrite, skip_existing), plot,
                            format or "wav", first_piece)
        read = InputOptions(mel_layout, mel_scale, convention, mel_stats)
        items, outputs = _plan(inputs, output, read, out, shard, format)
        check_checkpoint(checkpoint, settings)
    request = VocoderRequest(checkpoint, device, precision, engine, sigma, seed,
                             denoiser_strength, batch_size, max_frames, batch_frames)
    # On a terminal the status says what happens: torch starting, the model loading.
    with interrupts_to_exit(), errors_to_exit(settings, os_errors=False), \
            StepStatus(quiet) as status:
        job = _synthesis_job(settings, shard, status, request, read, out, fail_fast)
        status("reading the inputs")  # until the bar appears, with its total
        with ItemProgress(0 if quiet else len(items), "synth", settings, notes=not quiet,
                          audio=True, status=status) as progress:
            summary = job.run(items, outputs, progress)
    end_of_job(summary, quiet)
    failed = all_ranks_sum(summary.failed, shard)
    raise typer.Exit(EXIT_INPUT_FAILED if failed else EXIT_OK)


@dataclass(frozen=True)
class VocoderRequest:
    """The vocoder synth's flags ask for, made once torch is up (:func:`_synthesis_job`): the
    checkpoint; the device, precision and engine it runs on; the noise (sigma, seed) and
    denoiser strength, which choose the engine and whether the denoiser is loaded; and the
    batch sizes (None: the device's defaults)."""

    checkpoint: str
    device: str = "auto"
    precision: str = "auto"
    engine: str = "auto"
    sigma: float = 0.6
    seed: int | None = None
    denoiser_strength: float = 0.0
    batch_size: int = 8
    max_frames: int | None = None
    batch_frames: int | None = None


def _plan(inputs: list[str], output: str | None, read: InputOptions, out: OutputOptions,
          shard: Shard, fmt: str | None) -> tuple[list[Item], list[Path | None]]:
    """The inputs, where each one's audio goes, and this process's share of them; a bad
    --mel-from (or --mel-stats without it) fails here too, before torch is imported."""
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

    if read.mel_layout not in MEL_LAYOUTS or read.mel_scale not in MEL_SCALES:
        raise UsageError(f"--mel-layout takes {', '.join(MEL_LAYOUTS)}; "
                         f"--mel-scale takes {', '.join(MEL_SCALES)}")
    items = without_own_outputs(discover(inputs, MEL_SUFFIXES + AUDIO_SUFFIXES), output,
                                ".wav", AUDIO_SUFFIXES)
    outputs = plan_outputs(items, output, ".wav")
    for target in outputs:
        output_format(target if target is not None else "-", out.subtype)
    if fmt is not None and (fmt not in STREAM_FORMATS or any(t is not None for t in outputs)):
        raise UsageError(f"--format {fmt}: it sets standard output's format (-o -), one of "
                         f"{', '.join(STREAM_FORMATS)}; files take theirs from the extension")
    if fmt == "flac" and out.subtype not in ("PCM_16", "PCM_24"):
        raise UsageError(f"--format flac: FLAC stores PCM_16 or PCM_24, not {out.subtype}")
    refuse_binary_to_terminal(outputs, "binary audio", ".wav")
    refuse_overwriting_inputs(items, outputs)
    planned = take_shard(items, outputs, shard)
    _check_convention(read)
    return planned


def _check_convention(read: InputOptions) -> None:
    """A bad --mel-from (or --mel-stats without it) fails before torch is imported."""
    if read.convention is None:
        if read.mel_stats is not None:
            raise UsageError("--mel-stats goes with --mel-from (the convention it normalises)")
        return
    from ..features.conventions import resolve_convention

    resolve_convention(read.convention)


def _synthesis_job(settings: Settings, shard: Shard, status: StepStatus, request: VocoderRequest,
                   read: InputOptions, out: OutputOptions, fail_fast: bool) -> SynthesisJob:
    """The vocoder for the device and precision asked for, and the job around it; each step
    that takes seconds (torch starting, the checkpoint read and prepared) told to ``status``."""
    status("starting torch")
    from ..engines.devices import pick_device
    from ..engines.select import SigmaPolicy, choose_engine
    from ..jobs.core import synthesis_job
    from ..synthesis.plans import BatchOptions
    from ..synthesis.synthesizer import SynthesisOptions, return_freed_memory_promptly
    from ..vocoder import open_model_file

    return_freed_memory_promptly()  # memory that does not grow with the input's length
    options = SynthesisOptions(sigma=request.sigma, seed=request.seed,
                               denoiser_strength=request.denoiser_strength)
    device = request.device
    if device == "auto" and shard.world > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    torch_device = pick_device(device)
    # A download first, with its own bar; then the status again while the model is prepared.
    status("reading the checkpoint")
    model_file = open_model_file(request.checkpoint, torch_device, settings=settings,
                                 progress=DownloadBar(status=status))
    choice = choose_engine(model_file.source, torch_device, request.precision, request.engine,
                           SigmaPolicy.of(request.sigma))
    status(f"loading {model_file.path.name} ({choice.first.describe()})")
    vocoder = model_file.vocoder(choice, denoise=request.denoiser_strength > 0,
                                 cache_dir=settings.compile_cache)
    batching = BatchOptions.for_device(torch_device, vocoder.config,
                                       batch_size=request.batch_size,
                                       max_frames=request.max_frames,
                                       batch_frames=request.batch_frames)
    if out.plot:
        from ..analysis.plot import require_matplotlib

        require_matplotlib()
    # Standard input and output as streams (None where this process has none).
    return synthesis_job(vocoder, options, batching, inputs=read, output=out,
                         fail_fast=fail_fast, streams=standard_streams())
