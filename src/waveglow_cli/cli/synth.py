"""``waveglow synth``: declare the options, load the vocoder, run the synthesis job
(:class:`waveglow_cli.jobs.SynthesisJob`), print its summary and exit with its status."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from ..settings import Shard
from .common import (DEFAULT_CHECKPOINT, EXIT_INPUT_FAILED, EXIT_OK, CheckpointOption,
                     DeviceOption, DownloadBar, ItemProgress, OverwriteOption, PrecisionOption,
                     QuietOption, SkipExistingOption, check_checkpoint, end_of_job,
                     errors_to_exit, interrupts_to_exit, load_settings,
                     refuse_binary_to_terminal)

if TYPE_CHECKING:
    from ..jobs import Item, OutputPolicy, SynthesisJob
    from ..model import WaveGlowConfig
    from ..settings import Settings

Inputs = Annotated[list[str], typer.Argument( metavar="INPUT",
    help="Mel files (.npy/.pt, natural log), audio files (copy synthesis), folders of them "
         "(recursive), or - for stdin.", show_default=False)]
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
FailFast = Annotated[bool, typer.Option(help="Stop at the first failed input.")]
Plot = Annotated[bool, typer.Option(
    "--plot", help="Also write <stem>.png (input mel and output waveform) beside each output; "
                   "needs the [plot] extra.")]


def synth(
    inputs: Inputs,
    output: Output = None,
    checkpoint: CheckpointOption = DEFAULT_CHECKPOINT,
    sigma: Sigma = 0.6,
    seed: Seed = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    subtype: Subtype = "PCM_16",
    denoiser_strength: DenoiserStrength = 0.0,
    batch_size: BatchSize = 8,
    max_frames: MaxFrames = None,
    batch_frames: BatchFrames = None,
    mel_layout: MelLayout = "auto",
    mel_scale: MelScale = "ln",
    overwrite: OverwriteOption = False,
    skip_existing: SkipExistingOption = False,
    fail_fast: FailFast = False,
    quiet: QuietOption = False,
    plot: Plot = False,
) -> None:
    """Vocode mel spectrograms (or audio files, by copy synthesis) into audio."""
    from ..jobs import OutputPolicy, all_ranks_sum

    settings, shard = load_settings(), Shard.from_env()
    with errors_to_exit(settings, os_errors=False):  # all before torch is imported
        policy = OutputPolicy(overwrite, skip_existing)
        items, outputs = _plan(inputs, output, subtype, mel_layout, mel_scale, shard)
        check_checkpoint(checkpoint, settings)
    with interrupts_to_exit(), errors_to_exit(settings, os_errors=False):
        job = _synthesis_job(
            settings, shard, policy, checkpoint=checkpoint, sigma=sigma, seed=seed,
            device=device, precision=precision, subtype=subtype,
            denoiser_strength=denoiser_strength, batch_size=batch_size, max_frames=max_frames,
            batch_frames=batch_frames, mel_layout=mel_layout, mel_scale=mel_scale,
            fail_fast=fail_fast, plot=plot)
        with ItemProgress(0 if quiet else len(items), "synth", settings, notes=not quiet,
                          audio=True) as progress:
            summary = job.run(items, outputs, progress)
    end_of_job(summary, quiet)
    failed = all_ranks_sum(summary.failed, shard)
    raise typer.Exit(EXIT_INPUT_FAILED if failed else EXIT_OK)


def _plan(inputs: list[str], output: str | None, subtype: str, mel_layout: str,
          mel_scale: str, shard: Shard) -> tuple[list[Item], list[Path | None]]:
    """The inputs, where each one's audio goes, and this process's share of them."""
    from ..audio_io import AUDIO_SUFFIXES, MEL_LAYOUTS, MEL_SCALES, output_format
    from ..jobs import (MEL_SUFFIXES, discover, plan_outputs, refuse_overwriting_inputs,
                        take_shard, without_own_outputs)

    if mel_layout not in MEL_LAYOUTS or mel_scale not in MEL_SCALES:
        raise UsageError(f"--mel-layout takes {', '.join(MEL_LAYOUTS)}; "
                         f"--mel-scale takes {', '.join(MEL_SCALES)}")
    items = without_own_outputs(discover(inputs, MEL_SUFFIXES + AUDIO_SUFFIXES), output,
                                ".wav", AUDIO_SUFFIXES)
    outputs = plan_outputs(items, output, ".wav")
    for target in outputs:
        output_format(target if target is not None else "-", subtype)
    refuse_binary_to_terminal(outputs, "binary audio", ".wav")
    refuse_overwriting_inputs(items, outputs)
    return take_shard(items, outputs, shard)


def _synthesis_job(settings: Settings, shard: Shard, policy: OutputPolicy, *, checkpoint: str,
                   sigma: float, seed: int | None, device: str, precision: str, subtype: str,
                   denoiser_strength: float, batch_size: int, max_frames: int | None,
                   batch_frames: int | None, mel_layout: str, mel_scale: str, fail_fast: bool,
                   plot: bool) -> SynthesisJob:
    """The vocoder for the device and precision asked for, and the job around it."""
    from ..jobs import synthesis_job
    from ..engine import pick_device, pick_dtype
    from ..synthesis import BatchOptions, SynthesisOptions
    from ..synthesis import return_freed_memory_promptly
    from ..vocoder import load_vocoder

    return_freed_memory_promptly()  # memory that does not grow with the input's length
    options = SynthesisOptions(sigma=sigma, seed=seed, denoiser_strength=denoiser_strength)
    if device == "auto" and shard.world > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{shard.local_rank % torch.cuda.device_count()}"
    torch_device = pick_device(device)
    vocoder = load_vocoder(checkpoint, torch_device, pick_dtype(precision, torch_device, sigma),
                           settings=settings, denoise=denoiser_strength > 0,
                           progress=DownloadBar())
    max_frames, batch_frames = _piece_defaults(max_frames, batch_frames, torch_device,
                                               vocoder.config)
    batching = BatchOptions(batch_size=batch_size, max_frames=max_frames,
                            batch_frames=batch_frames)
    _check_max_frames(max_frames, vocoder.config)
    if plot:
        from ..plot import require_matplotlib

        require_matplotlib()
    # Standard input and output as streams (None where this process has none).
    return synthesis_job(vocoder, options, batching, subtype=subtype, policy=policy,
                         fail_fast=fail_fast, mel_layout=mel_layout, mel_scale=mel_scale,
                         plot=plot, stdin=getattr(sys.stdin, "buffer", None),
                         stdout=getattr(sys.stdout, "buffer", None))


def _piece_defaults(max_frames: int | None, batch_frames: int | None, device: object,
                    config: WaveGlowConfig) -> tuple[int, int]:
    """--max-frames and --batch-frames when not given.  On the CPU one piece of 1024 frames at
    a time: the upsampled mel alone is M x hop floats per frame (80 KiB at 80 mels), so a
    GPU-sized batch (16384 frames) would take gigabytes of RAM.  Never below 4 context margins,
    so a model with a wide receptive field still has room for the piece itself."""
    from ..synthesis import context_margin

    on_cpu = getattr(device, "type", "cpu") == "cpu"
    if max_frames is None:
        max_frames = max(1024 if on_cpu else 2048, 4 * context_margin(config))
    if batch_frames is None:
        batch_frames = max_frames if on_cpu else max(16384, max_frames)
    return max_frames, batch_frames


def _check_max_frames(max_frames: int, config: WaveGlowConfig) -> None:
    """A long input is cut into pieces of ``max_frames`` that carry the model's context margin
    on both sides; a limit below 3 margins leaves no room for the piece itself."""
    from ..synthesis import context_margin

    if config.hop_length % config.n_group:
        return  # such a model is synthesised whole; --max-frames does not apply
    margin = context_margin(config)
    if max_frames < 3 * margin:
        raise UsageError(f"--max-frames {max_frames} is too small for this checkpoint: the "
                         f"minimum is {3 * margin} frames (3 x its {margin}-frame context "
                         "margin)")
