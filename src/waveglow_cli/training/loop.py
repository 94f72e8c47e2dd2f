"""The training loop: maximum likelihood (NVIDIA's ``WaveGlowLoss``, see
:func:`waveglow_cli.model.waveglow_loss`) on random segments of audio, with the mel computed on
the fly exactly as ``waveglow mel`` computes it; Adam; one checkpoint set every N steps.

Under ``torchrun`` every process trains on its own share of each step's batches
(DistributedDataParallel, gloo on the CPU, nccl on CUDA); rank 0 alone writes files.  The data
order depends only on (seed, step, rank), so a resumed run sees the batches an uninterrupted
run sees and, on the CPU, produces the same losses bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError, TrainingInterrupted, UsageError
from ..features.mel import MelConfig
from ..fileio import remove_stale_parts
from ..model.waveglow import WaveGlow, waveglow_loss
from ..settings import Settings, Shard
from .data import StepBatches, TrainingData, collate, prepare_data
from .options import TrainOptions, merge_resumed
from .report import Reporter
from .rundir import (
    METRICS_FILE,
    RUN_FILE,
    TENSORBOARD_DIR,
    checkpoint_steps,
    model_path,
    read_run_file,
    refuse_unusable_run_dir,
    run_record,
    save_checkpoint_set,
    seed_everything,
    set_rng_state,
    state_path,
    truncate_metrics,
    write_run_file,
)
from .setup import ModelStart, pick_amp, pick_training_device, start_model
from .stop import StopRequests, ignore_interrupts

MAX_FP16_OVERFLOWS = 20  # consecutive non-finite fp16 losses skipped before training stops


def train(options: TrainOptions, *, settings: Settings, shard: Shard) -> Path | None:
    """Run (or resume) training; returns the last checkpoint written (None if none).
    ``settings`` serve --from (the registry, the cache); ``shard`` is this process's place
    under torchrun (a process group is set up for the run when there are several)."""
    initialised = False
    if shard.world > 1:
        import torch.distributed as torch_dist

        device = pick_training_device(options.device, shard)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        initialised = True
    finished = False
    try:
        last = _train(options, settings, shard)
        finished = True
        return last
    finally:
        if initialised:
            import torch.distributed as torch_dist

            if torch_dist.is_initialized():
                if finished:
                    # Leave together: a rank that tears its gloo connections down while
                    # rank 0 is still writing the last checkpoint can abort the other
                    # ("terminate called without an active exception").
                    torch_dist.barrier()
                torch_dist.destroy_process_group()


def _barrier(shard: Shard) -> None:
    if shard.world > 1:
        import torch.distributed as torch_dist

        torch_dist.barrier()


def _shared_seed(shard: Shard) -> int:
    """A random seed, the same on every rank (rank 0's)."""
    seed = secrets.randbelow(2**31)
    if shard.world > 1:
        import torch.distributed as torch_dist

        shared = [seed]
        torch_dist.broadcast_object_list(shared, src=0)
        seed = int(shared[0])
    return seed


def _mean_over_ranks(value: torch.Tensor, shard: Shard) -> float:
    if shard.world == 1:
        return float(value)
    import torch.distributed as torch_dist

    total = value.detach().float().clone().reshape(1)
    torch_dist.all_reduce(total)
    return float(total) / shard.world


def _train(options: TrainOptions, settings: Settings, shard: Shard) -> Path | None:
    """Settle the options (run.json on --resume, the seed), then run."""
    run_dir = Path(options.run_dir)
    refuse_unusable_run_dir(run_dir, options.resume)
    steps = checkpoint_steps(run_dir)
    saved: dict[str, Any] = {}
    if options.resume:
        saved = read_run_file(run_dir)
        if saved:
            options = merge_resumed(options, saved)
    _barrier(shard)  # every rank has looked at the folder before rank 0 writes to it
    if not options.data and options.resume and not saved:
        if not steps:
            raise UsageError(f"no run to resume in {run_dir} (no {RUN_FILE}, no checkpoint); "
                             f"start one with: waveglow train DATA -o {run_dir}")
        raise UsageError(f"{run_dir} has no {RUN_FILE} to take DATA from; give DATA again "
                         "to resume")
    if not options.data:
        raise UsageError("DATA is required (a folder of audio files or a file list)")
    if options.seed is None:
        options = dataclasses.replace(options, seed=_shared_seed(shard))
    options.check()
    resume_step = steps[-1] if options.resume and steps else None

    device = pick_training_device(options.device, shard)
    amp_dtype = pick_amp(options.precision, device)
    report = Reporter(shard.main, options.quiet, options.max_steps, resume_step or 0)
    try:
        run = _start(options, settings, shard, saved, resume_step, device, amp_dtype, report)
        if run.step >= options.max_steps:
            report.note(f"already at step {run.step} (--max-steps {options.max_steps}); "
                        "nothing to do")
            return run.last_saved
        return _loop(run)
    finally:
        report.close()


@dataclass
class LogInterval:
    """The steps since the last metrics record: their summed loss and when they began."""

    loss: float = 0.0
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)


@dataclass
class Run:
    """Everything the step loop works with, and where it stands."""

    options: TrainOptions
    shard: Shard
    run_dir: Path
    device: torch.device
    amp_dtype: torch.dtype | None
    model: WaveGlow
    net: torch.nn.Module            # the model, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    mel_config: MelConfig
    data: TrainingData
    report: Reporter
    step: int
    last_saved: Path | None
    overflows: int = 0              # consecutive fp16 overflows skipped
    interval: LogInterval = field(default_factory=LogInterval)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def save(self) -> Path:
        """A checkpoint set of this step (written by rank 0)."""
        if self.shard.main:
            save_checkpoint_set(self.run_dir, self.step, self.model, self.optimizer, self.scaler,
                                self.mel_config, self.options.keep)
        self.last_saved = model_path(self.run_dir, self.step)
        return self.last_saved


@dataclass(frozen=True)
class StepResult:
    loss: float          # mean over ranks
    grad_norm: float     # before clipping
    lr: float


def _start_notes(options: TrainOptions, shard: Shard, run_dir: Path, saved: dict[str, Any],
                 resume_step: int | None, report: Reporter) -> None:
    """Notes (and one refusal) about how the run starts, before the model is built."""
    if options.resume and resume_step is None:
        report.note(f"{run_dir}: no checkpoint to resume from; starting from step 0")
    if resume_step is not None and saved.get("world_size", shard.world) != shard.world:
        report.note(f"the run was trained by {saved['world_size']} process(es), now by "
                    f"{shard.world}: the data order from here on differs from an "
                    "uninterrupted run")
    if resume_step is not None and "init_from" in options.explicit:
        report.note(f"--from {options.init_from} ignored: resuming from step {resume_step}")
    if options.init_from is not None and resume_step is None:
        options.refuse_architecture_flags()


def _start(options: TrainOptions, settings: Settings, shard: Shard, saved: dict[str, Any],
           resume_step: int | None, device: torch.device, amp_dtype: torch.dtype | None,
           report: Reporter) -> Run:
    """The model, the data, the optimizer and the run folder of a run about to step."""
    _start_notes(options, shard, Path(options.run_dir), saved, resume_step, report)
    seed_everything(options.run_seed())
    start = start_model(options, Path(options.run_dir), resume_step, settings)
    start.check_mel_fits()
    min_samples = start.mel_config.n_fft
    if options.segment_length < min_samples:
        raise UsageError(f"--segment-length {options.segment_length} is shorter than one STFT "
                         f"window ({min_samples} samples)")
    data = prepare_data(options, start.mel_config, min_samples, report.note)
    report.note(f"{start.source}: {sum(p.numel() for p in start.model.parameters()):,} "
                f"parameters; training on {len(data.files)} files ({data.seconds() / 60:.1f} "
                "min)" + (f", validating on {len(data.validation)}" if data.validation else "")
                + f"; {shard.world} process(es) on {device}; seed {options.seed}")
    run = _build_run(options, shard, device, amp_dtype, start, data, report, resume_step)
    if shard.main:
        _open_run_files(run, resume_step)
    return run


def _build_run(options: TrainOptions, shard: Shard, device: torch.device,
               amp_dtype: torch.dtype | None, start: ModelStart, data: TrainingData,
               report: Reporter, resume_step: int | None) -> Run:
    """Move the model to the device and set the optimizer up (from the saved state on resume)."""
    model = start.model
    model.to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if start.state is not None and resume_step is not None:
        _restore_states(start.state, optimizer, scaler,
                        state_path(Path(options.run_dir), resume_step))
    net: torch.nn.Module = model
    if shard.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index]
                                      if device.type == "cuda" else None)
    run_dir = Path(options.run_dir)
    last_saved = model_path(run_dir, resume_step) if resume_step is not None else None
    return Run(options, shard, run_dir, device, amp_dtype, model, net, optimizer, scaler,
               start.mel_config, data, report, start.step, last_saved)


def _restore_states(state: dict[str, Any], optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, state_file: Path) -> None:
    """The optimizer, scaler and RNG states of a resumed run; a state that has the outline
    of ours but not content that fits (damaged, or from another model) is one line naming
    ``state_file``."""
    try:
        optimizer.load_state_dict(state["optimizer"])  # the step loop sets the rate
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise TrainingError(f"{state_file}: does not fit the model being resumed ({reason})"
                            ) from None


def _open_run_files(run: Run, resume_step: int | None) -> None:
    """Rank 0: run.json (re)written, metrics.jsonl cut back to the step resumed from and opened
    for appending, TensorBoard likewise."""
    run_dir = run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(run_dir)  # half-written files of a killed run (dead pid only)
    write_run_file(run_dir, run_record(run.options, run.model.config, run.mel_config, run.shard))
    truncate_metrics(run_dir / METRICS_FILE, run.step)
    run.report.open_metrics(run_dir / METRICS_FILE)
    if run.options.tensorboard:
        run.report.open_tensorboard(run_dir / TENSORBOARD_DIR, resume_step)


def _batches(run: Run) -> torch.utils.data.DataLoader:
    """The batches of this rank from the step after ``run.step`` to --max-steps (worker
    processes start when it is iterated)."""
    options, device = run.options, run.device
    workers = options.workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(
            4, max(1, (os.cpu_count() or 1) // run.shard.world))
    sampler = StepBatches(run.step + 1, options.max_steps, options.batch_size, run.shard.rank,
                          run.shard.world)
    return torch.utils.data.DataLoader(
        run.data.dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", worker_init_fn=ignore_interrupts if workers else None)


def _loop(run: Run) -> Path | None:
    """Step to --max-steps (or a stop request); the last checkpoint written."""
    batches = _batches(run)
    with StopRequests(run.report.note) as stop:
        run.interval = LogInterval()
        # Iterated (workers forked) under the stop handlers, which the workers inherit.
        for mel, audio in batches:
            run.step += 1
            result = train_step(run, mel, audio)
            if result is not None:
                on_step_end(run, result, stop)
    return run.last_saved


def train_step(run: Run, mel: torch.Tensor, audio: torch.Tensor) -> StepResult | None:
    """One optimizer update on one batch; None when an fp16 overflow made it skip the update.
    A non-finite loss or gradient otherwise stops training (TrainingError)."""
    optimizer, scaler = run.optimizer, run.scaler
    mel = mel.to(run.device, non_blocking=True)
    audio = audio.to(run.device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with run.autocast():
        z, log_s, log_det = run.net(mel, audio)
    loss = waveglow_loss(z.float(), [s.float() for s in log_s],
                         [d.float() for d in log_det], run.options.sigma)
    value = _mean_over_ranks(loss.detach(), run.shard)
    if not math.isfinite(value):
        run.report.metrics({"step": run.step, "loss": None,
                            "error": f"non-finite loss ({value})"})
        run.overflows += 1
        if scaler.is_enabled() and run.overflows < MAX_FP16_OVERFLOWS:
            # fp16 overflow in the forward pass: skip the update, as the scaler would, and
            # lower the scale
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
            return None
        raise TrainingError(_diverged(f"the loss is {value}", run))
    run.overflows = 0
    lr = run.options.learning_rate(run.step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    clip = run.options.grad_clip
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(),
                                                     clip if clip else math.inf))
    if not math.isfinite(grad_norm) and not scaler.is_enabled():
        run.report.metrics({"step": run.step, "loss": value,
                            "error": f"non-finite gradient norm ({grad_norm})"})
        raise TrainingError(_diverged(f"the gradient norm is {grad_norm}", run))
    scaler.step(optimizer)
    scaler.update()
    return StepResult(value, grad_norm, lr)


def on_step_end(run: Run, result: StepResult, stop: StopRequests) -> None:
    """After an update: log, validate and checkpoint when due; honour a stop request (agreed
    by all ranks: it makes this step a logged checkpoint, then raises TrainingInterrupted)."""
    options, step = run.options, run.step
    run.interval.loss += result.loss
    run.interval.steps += 1
    val_every = options.val_every or options.checkpoint_every
    validate = bool(run.data.validation) and (step % val_every == 0 or step == options.max_steps)
    signum = stop.requested(run.shard, run.device)
    stopping = signum is not None and step < options.max_steps
    checkpoint = step % options.checkpoint_every == 0 or step == options.max_steps or stopping
    if step % options.log_every == 0 or validate or checkpoint:
        _log(run, result, validate=validate, checkpoint=checkpoint)
    if stopping and signum is not None:
        raise TrainingInterrupted(
            f"stopped at step {step} by {signal.Signals(signum).name}; saved "
            f"{run.last_saved}; continue with: waveglow train -o {run.run_dir} --resume",
            signum)


def _log(run: Run, result: StepResult, *, validate: bool, checkpoint: bool) -> None:
    """A metrics record of the steps since the last one (with the validation loss when due),
    the progress line, and the checkpoint when due."""
    options, interval = run.options, run.interval
    elapsed = time.perf_counter() - interval.start
    rate = interval.steps * options.batch_size * run.shard.world / max(elapsed, 1e-9)
    record: dict[str, Any] = {
        "step": run.step, "loss": interval.loss / interval.steps,
        "grad_norm": result.grad_norm if math.isfinite(result.grad_norm) else None,
        "lr": result.lr, "segments_per_s": rate,
        "audio_seconds_per_s": rate * options.segment_length / run.mel_config.sample_rate}
    if validate:
        record["val_loss"] = evaluate(run)
    run.report.metrics(record)
    run.report.update(run.step, record["loss"], rate)
    run.interval = LogInterval()
    if checkpoint:
        path = run.save()
        run.report.line(f"step {run.step}/{options.max_steps}  loss {record['loss']:+.6f}"
                        + (f"  val_loss {record['val_loss']:+.6f}" if validate else "")
                        + f"  {rate:.1f} segments/s  saved {path}")


def _diverged(what: str, run: Run) -> str:
    kept = (f"the last good checkpoint is {run.last_saved}; continue from it with --resume "
            "(perhaps with a lower --lr or with --grad-clip)" if run.last_saved is not None
            else "no checkpoint had been written yet")
    return f"training stopped at step {run.step}: {what}; {kept}"


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Mean loss over the validation segments (each rank takes every W-th; summed over ranks)."""
    model, shard, device = run.model, run.shard, run.device
    model.eval()
    total, count = 0.0, 0
    mine = run.data.validation[shard.rank::shard.world]
    for start in range(0, len(mine), run.options.batch_size):
        chunk = mine[start:start + run.options.batch_size]
        mel, audio = collate(chunk)
        with run.autocast():
            z, log_s, log_det = model(mel.to(device), audio.to(device))
        loss = waveglow_loss(z.float(), [s.float() for s in log_s],
                             [d.float() for d in log_det], run.options.sigma)
        total += float(loss) * len(chunk)
        count += len(chunk)
    model.train()
    if shard.world > 1:
        import torch.distributed as torch_dist

        sums = torch.tensor([total, float(count)], dtype=torch.float64,
                            device=device if device.type == "cuda" else "cpu")
        torch_dist.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    return total / max(count, 1)
