"""``waveglow train``: the command line over :func:`waveglow_cli.training.train`.

The flags become a :class:`~waveglow_cli.training.TrainOptions`; the environment (settings,
the torchrun shard) is read here, never by the training library.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..settings import Shard
from .common import errors_to_exit, load_settings

if TYPE_CHECKING:
    from ..training.options import TrainOptions

# Flags that make up the model's architecture (WaveGlowConfig fields of the same names).
ARCHITECTURE_FLAGS = ("n_channels", "n_layers", "n_flows", "n_group", "n_early_every",
                      "n_early_size", "n_mel_channels")


def given_on_command_line(ctx: typer.Context) -> frozenset[str]:
    """Names of the options given on the command line (typer vendors click, so compare the
    parameter source by name); the others are defaults that --resume may replace."""
    return frozenset(name for name in ctx.params if getattr(
        ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP"))


def options_from_flags(params: dict[str, Any], explicit: frozenset[str]) -> TrainOptions:
    """The TrainOptions the flags ask for (``params``: the command's parameters by name)."""
    from ..model.waveglow import WaveGlowConfig
    from ..training.options import TrainOptions

    flags = dict(params)
    model = WaveGlowConfig(**{name: flags.pop(name) for name in ARCHITECTURE_FLAGS})
    data, run_dir = flags.pop("data"), flags.pop("output")
    return TrainOptions(data=list(data or []), run_dir=run_dir, model=model, explicit=explicit,
                        **flags)


# The options, declared here so that the command's signature reads as a list of them.
Data = Annotated[list[str] | None, typer.Argument(
    metavar="DATA",
    help="Training audio: folders (searched recursively), audio files, or text file lists "
         "(one path per line; 'path|text' filelists work). Optional with --resume.",
    show_default=False)]
Output = Annotated[Path, typer.Option(
    "-o", "--output", metavar="RUN_DIR",
    help="Run folder: checkpoints, metrics.jsonl, run.json.",
    show_default=False)]
Val = Annotated[str | None, typer.Option(
    help="Held-out data: a fraction of DATA (e.g. 0.05) or a folder/file list.")]
MaxSteps = Annotated[int, typer.Option(help="Train up to this step (optimizer updates).")]
BatchSize = Annotated[int, typer.Option(help="Segments per step and process.")]
SegmentLength = Annotated[int, typer.Option(
    help="Samples per training segment (shorter files are zero-padded).")]
Lr = Annotated[float, typer.Option("--lr", help="Adam learning rate.")]
LrSchedule = Annotated[str, typer.Option(
    help="constant, or cosine (from --lr down to --lr-min at --max-steps).")]
LrMin = Annotated[float, typer.Option(help="Final learning rate of the cosine schedule.")]
WarmupSteps = Annotated[int, typer.Option(
    help="Raise the learning rate linearly over the first N steps.")]
Sigma = Annotated[float, typer.Option(help="Sigma of the Gaussian in the loss.")]
GradClip = Annotated[float | None, typer.Option(
    help="Clip the gradient norm to this value (default: no clipping).")]
CheckpointEvery = Annotated[int, typer.Option(help="Write a checkpoint every N steps.")]
Keep = Annotated[int, typer.Option(help="Keep the newest K checkpoints.")]
ValEvery = Annotated[int | None, typer.Option(
    help="Validate every N steps (default: at each checkpoint).")]
LogEvery = Annotated[int, typer.Option(
    help="Write a metrics.jsonl record every N steps (mean loss over them).")]
Device = Annotated[str, typer.Option(
    help="auto (CUDA: this process's LOCAL_RANK GPU, else CPU), cpu, cuda, cuda:N, mps.")]
Precision = Annotated[str, typer.Option(
    help="auto (bf16 on CUDA where supported, else fp16 with a grad scaler; fp32 on CPU), "
         "fp32, bf16 or fp16.")]
Workers = Annotated[int | None, typer.Option(
    help="Data loader processes (default: 0 on CPU, up to 4 on CUDA).")]
Seed = Annotated[int | None, typer.Option(
    help="Seed for the initial weights and the data order (default: random, recorded).")]
InitFrom = Annotated[str | None, typer.Option(
    "--from", help="Fine-tune this checkpoint (registry name or file); the architecture "
                   "and mel settings come from it.")]
Resume = Annotated[bool, typer.Option(
    help="Continue the run in -o from its latest checkpoint (same step, optimizer, data "
         "order).", show_default=False)]
NChannels = Annotated[int, typer.Option(help="WN channels (fresh model).")]
NLayers = Annotated[int, typer.Option(help="WN layers per flow (fresh model).")]
NFlows = Annotated[int, typer.Option(help="Flows (fresh model).")]
NGroup = Annotated[int, typer.Option(help="Samples per group (fresh model).")]
NEarlyEvery = Annotated[int, typer.Option(help="Early output every N flows.")]
NEarlySize = Annotated[int, typer.Option(help="Channels per early output.")]
NMelChannels = Annotated[int, typer.Option(help="Mel channels (fresh model).")]
SampleRate = Annotated[int, typer.Option(help="Sample rate (fresh model).")]
Tensorboard = Annotated[bool, typer.Option(
    help="Also log the metrics as TensorBoard scalars in RUN_DIR/tensorboard (needs the "
         "tensorboard package).", show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress line or notes.")]


def train(
    ctx: typer.Context,
    data: Data = None,
    output: Output = ...,  # type: ignore[assignment]
    val: Val = None,
    max_steps: MaxSteps = 100_000,
    batch_size: BatchSize = 12,
    segment_length: SegmentLength = 16000,
    lr: Lr = 1e-4,
    lr_schedule: LrSchedule = "constant",
    lr_min: LrMin = 0.0,
    warmup_steps: WarmupSteps = 0,
    sigma: Sigma = 1.0,
    grad_clip: GradClip = None,
    checkpoint_every: CheckpointEvery = 1000,
    keep: Keep = 5,
    val_every: ValEvery = None,
    log_every: LogEvery = 1,
    device: Device = "auto",
    precision: Precision = "auto",
    workers: Workers = None,
    seed: Seed = None,
    init_from: InitFrom = None,
    resume: Resume = False,
    n_channels: NChannels = 256,
    n_layers: NLayers = 8,
    n_flows: NFlows = 12,
    n_group: NGroup = 8,
    n_early_every: NEarlyEvery = 4,
    n_early_size: NEarlySize = 2,
    n_mel_channels: NMelChannels = 80,
    sample_rate: SampleRate = 22050,
    tensorboard: Tensorboard = False,
    quiet: Quiet = False,
) -> None:
    """Train WaveGlow by maximum likelihood, or fine-tune a checkpoint (--from).

    Several processes or GPUs: run it under torchrun."""
    from ..errors import TrainingInterrupted
    from ..training.loop import train as run_training

    settings = load_settings()
    with errors_to_exit(settings):
        shard = Shard.from_env()
        options = options_from_flags(ctx.params, given_on_command_line(ctx))
        try:
            last = run_training(options, settings=settings, shard=shard)
        except TrainingInterrupted as e:
            if shard.rank != 0:  # every rank stopped at the same step; one says so
                raise typer.Exit(e.exit_code) from None
            raise
    if last is not None and shard.rank == 0:
        typer.echo(str(last))
