"""``waveglow train``: maximum-likelihood training and fine-tuning of WaveGlow.

The objective is NVIDIA's ``WaveGlowLoss`` (:func:`waveglow_cli.model.waveglow_loss`) on random
segments of audio, with the mel computed on the fly by :func:`waveglow_cli.mel.mel_spectrogram`,
exactly as ``waveglow mel`` and copy synthesis compute it.  Semantics follow NVIDIA's
``train.py``/``mel2samp.py`` (random segment per file, zero-padded when the file is shorter,
Adam, constant learning rate); the code is our own.

Determinism and resume.  Which file and which segment each batch element gets is a pure
function of (seed, step, rank, position in the batch): file order is a seeded permutation per
epoch of the training files and each segment's offset comes from a generator seeded by its
position in that stream.  Nothing about the data depends on earlier steps, on worker processes
or on timing, so a resumed run (same weights, same Adam state, same step) sees exactly the
batches an uninterrupted run sees, and on the CPU produces the same losses bit for bit.

A run folder holds::

    run.json                         the run's settings (what --resume falls back to)
    metrics.jsonl                    one JSON object per logged step
    step_000100.safetensors          weights in our checkpoint format (usable by synth)
    step_000100.state.pt             optimizer, step and RNG states (plain tensors/dicts)

Under ``torchrun`` every process trains on its own share of each step's batches
(DistributedDataParallel, gloo on the CPU, nccl on CUDA); rank 0 alone writes files.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import random
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio_io import AUDIO_SUFFIXES, atomic_write, prepare_audio, read_audio
from .errors import AudioFileError, InputFileError, UsageError, WaveGlowError, printable
from .fileio import remove_stale_parts, write_json
from .mel import MelConfig, mel_spectrogram
from .model import WaveGlow, WaveGlowConfig, waveglow_loss
from .settings import Shard

STATE_FORMAT = "waveglow-cli-train-state"
STATE_VERSION = 1
CHECKPOINT_RE = re.compile(r"^step_(\d+)\.safetensors$")
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# metrics.jsonl key -> TensorBoard scalar tag
TENSORBOARD_TAGS = {"loss": "train/loss", "val_loss": "val/loss", "lr": "train/lr",
                    "grad_norm": "train/grad_norm", "segments_per_s": "train/segments_per_s"}
MAX_SKIP_NOTES = 20
MAX_FP16_OVERFLOWS = 20  # consecutive non-finite fp16 losses skipped before training stops

# Options a resumed run takes from run.json unless they are given again on the command line.
RESUMABLE = ("data", "val", "segment_length", "batch_size", "lr", "lr_schedule", "lr_min",
             "warmup_steps", "sigma", "grad_clip", "seed",
             "checkpoint_every", "keep", "val_every", "log_every", "precision", "max_steps",
             "tensorboard")
ARCHITECTURE = ("n_channels", "n_layers", "n_flows", "n_group", "n_early_every", "n_early_size",
                "n_mel_channels", "sample_rate")


class TrainingError(WaveGlowError):
    """Training stopped (a non-finite loss, no usable data, an unreadable run folder)."""


class TrainingInterrupted(TrainingError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; exit 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopRequests:
    """Turns SIGINT (Ctrl-C) and SIGTERM (a scheduler's pre-emption) into a request that the
    step loop honours between steps, so the run stops on a complete optimizer update with a
    checkpoint instead of dying half-way.  A second Ctrl-C interrupts at once.  Only the
    main thread can install handlers; elsewhere (training called from a worker thread) the
    signals keep their default behaviour."""

    def __init__(self, on_request: Callable[[str], None]) -> None:
        self.signum: int | None = None
        self._on_request = on_request
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            # None: the previous handler was installed outside Python and cannot be put back
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            self._on_request(f"{signal.Signals(signum).name}: stopping after this step and "
                             "saving a checkpoint" + (" (Ctrl-C again to stop at once)"
                                                      if signum == signal.SIGINT else ""))

    def requested(self, dist: Shard, device: torch.device) -> int | None:
        """The signal that asked to stop, agreed by all ranks (any rank's request stops all)."""
        if dist.world == 1:
            return self.signum
        import torch.distributed as torch_dist

        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        return int(flag.item()) or None


def _ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers share the terminal's process group: without this, Ctrl-C would kill
    them while the main process is still finishing its step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class TrainOptions:
    """What ``waveglow train`` was asked to do.  ``explicit`` names the options given on the
    command line (the others are defaults, which --resume replaces with the run's values)."""

    data: list[str]
    run_dir: Path
    val: str | None = None
    segment_length: int = 16000
    batch_size: int = 12
    max_steps: int = 100_000
    lr: float = 1e-4
    lr_schedule: str = "constant"   # or "cosine": from lr down to lr_min at max_steps
    lr_min: float = 0.0
    warmup_steps: int = 0           # linear warm-up from lr / warmup_steps to lr
    sigma: float = 1.0
    grad_clip: float | None = None
    checkpoint_every: int = 1000
    keep: int = 5
    val_every: int | None = None
    log_every: int = 1
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    seed: int | None = None
    init_from: str | None = None
    resume: bool = False
    quiet: bool = False
    tensorboard: bool = False       # also log the metrics as TensorBoard scalars
    n_channels: int = 256
    n_layers: int = 8
    n_flows: int = 12
    n_group: int = 8
    n_early_every: int = 4
    n_early_size: int = 2
    n_mel_channels: int = 80
    sample_rate: int = 22050
    explicit: frozenset[str] = field(default_factory=frozenset)

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer update number ``step`` (1-based): a linear warm-up
        over ``warmup_steps``, then ``lr`` (constant) or a cosine from ``lr`` at the end of the
        warm-up to ``lr_min`` at ``max_steps``.  A function of the step alone, so a resumed run
        continues the same schedule."""
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        span = max(self.max_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * progress))

    def architecture(self) -> WaveGlowConfig:
        return WaveGlowConfig(n_mel_channels=self.n_mel_channels, n_flows=self.n_flows,
                              n_group=self.n_group, n_early_every=self.n_early_every,
                              n_early_size=self.n_early_size, n_layers=self.n_layers,
                              n_channels=self.n_channels)

    def check(self) -> None:
        problems = []
        for name in ("segment_length", "batch_size", "max_steps", "checkpoint_every", "keep",
                     "log_every", "sample_rate"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1")
        if self.val_every is not None and self.val_every < 1:
            problems.append("--val-every must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append("--lr must be a positive number")
        if self.lr_schedule not in ("constant", "cosine"):
            problems.append(f"--lr-schedule {self.lr_schedule!r}: use constant or cosine")
        if not (0 <= self.lr_min <= self.lr):
            problems.append("--lr-min must be between 0 and --lr")
        if self.warmup_steps < 0:
            problems.append("--warmup-steps must be >= 0")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            problems.append("--sigma must be a positive number")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append("--grad-clip must be > 0")
        if self.workers is not None and self.workers < 0:
            problems.append("--workers must be >= 0")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"--precision {self.precision!r}: use auto, fp32, bf16 or fp16")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            problems.append("--tensorboard needs the tensorboard package: "
                            "pip install 'waveglow-cli[tensorboard]'")
        if problems:
            raise UsageError("; ".join(problems))


# ---------------------------------------------------------------------------------------------
# The run folder


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in ``run_dir`` (weights and state both present), sorted."""
    steps = []
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            match = CHECKPOINT_RE.match(path.name)
            if match and state_path(run_dir, int(match.group(1))).is_file():
                steps.append(int(match.group(1)))
    return sorted(steps)


def model_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"step_{step:06d}.safetensors"


def state_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"step_{step:06d}.state.pt"


def _rng_state() -> dict[str, Any]:
    """RNG states as plain tensors and numbers (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# ---------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class AudioFile:
    path: Path
    samples: int          # length at the training sample rate (estimated from the header)


def read_file_list(list_path: Path) -> list[Path]:
    """Paths from a list file: one per line; '#' comments and blank lines ignored; anything
    after a '|' dropped (Tacotron 2 filelists are ``path|transcript``).  Relative paths are
    taken relative to the list's folder, else to the current folder."""
    try:
        text = list_path.read_text("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{list_path}: neither a folder, an audio file nor a text file list") \
            from None
    except OSError as e:
        raise UsageError(f"{list_path}: cannot read the file list ({e.strerror or e})") from None
    paths = []
    for line in text.splitlines():
        line = line.split("|", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        if not path.is_absolute():
            beside = list_path.parent / path
            path = beside if beside.exists() or not path.exists() else path
        paths.append(path)
    return paths


def collect_files(specs: Sequence[str]) -> list[Path]:
    """Audio files from folders (recursive), single audio files and file lists, each once."""
    found: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("."))
            if not files:
                raise UsageError(f"{spec}: folder holds no audio files "
                                 f"({'/'.join(AUDIO_SUFFIXES)})")
            found += files
        elif path.is_file():
            found += [path] if path.suffix.lower() in AUDIO_SUFFIXES else read_file_list(path)
        else:
            raise UsageError(f"{spec}: no such file or folder")
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(str(path.resolve()), path)
    return list(unique.values())


def probe(paths: Sequence[Path], mel_config: MelConfig, min_samples: int
          ) -> tuple[list[AudioFile], list[str], list[str]]:
    """(usable files, skip messages, other notes).  Reads headers only; a file that fails
    later, while training, is skipped then."""
    import soundfile as sf

    usable, skipped = [], []
    resampled: dict[int, int] = {}
    multichannel = 0
    for path in paths:
        try:
            if not path.is_file():
                raise AudioFileError(path, "no such file")
            if path.stat().st_size == 0:
                raise AudioFileError(path, "file is empty")
            try:
                info = sf.info(str(path))
            except Exception:  # noqa: BLE001 - let read_audio name the reason
                read_audio(path)
                raise AudioFileError(path, "not a readable audio file") from None
            if info.frames <= 0:
                raise AudioFileError(path, "audio has zero samples")
            n = info.frames if info.samplerate == mel_config.sample_rate else int(
                info.frames * mel_config.sample_rate / info.samplerate)
            if n < min_samples:
                raise AudioFileError(path, f"too short: {n} samples at {mel_config.sample_rate} "
                                           f"Hz, fewer than {min_samples} (one STFT window)")
        except (InputFileError, OSError) as e:
            skipped.append(f"skipped {e}" if isinstance(e, InputFileError)
                           else f"skipped {path}: {e}")
            continue
        if info.samplerate != mel_config.sample_rate:
            resampled[info.samplerate] = resampled.get(info.samplerate, 0) + 1
        if info.channels > 1:
            multichannel += 1
        usable.append(AudioFile(path, n))
    notes = [f"{count} file(s) at {rate} Hz are resampled to {mel_config.sample_rate} Hz"
             for rate, count in sorted(resampled.items())]
    if multichannel:
        notes.append(f"{multichannel} multi-channel file(s) are averaged to mono")
    return usable, skipped, notes


def load_mono(path: Path, sample_rate: int) -> np.ndarray:
    """The file as mono float32 at ``sample_rate``: read, downmixed and resampled as
    ``waveglow mel`` does."""
    samples, rate = read_audio(path)
    mono, _ = prepare_audio(samples, rate, sample_rate, str(path))
    return mono


def take_segment(mono: np.ndarray, length: int, start: int) -> np.ndarray:
    """``length`` samples from ``start``; a shorter file is zero-padded at the end (mel2samp)."""
    if mono.size >= length:
        return mono[start:start + length]
    return np.pad(mono, (0, length - mono.size))


class SegmentDataset(torch.utils.data.Dataset):
    """Item ``i`` of an endless, seeded stream of (mel, audio) training segments.

    Stream position ``i`` lies in epoch ``i // N`` at place ``i % N`` of that epoch's seeded
    permutation of the N files; the segment's offset is drawn from a generator seeded by
    (seed, i).  A file that cannot be read (or is too short) when its turn comes is noted,
    remembered, and replaced by the next file of the same permutation."""

    def __init__(self, files: Sequence[AudioFile], mel_config: MelConfig, segment_length: int,
                 seed: int, min_samples: int, note: Callable[[str], None] | None = None) -> None:
        self.files = list(files)
        self.mel_config = mel_config
        self.segment_length = segment_length
        self.seed = seed
        self.min_samples = min_samples
        self.note = note or (lambda text: print(printable(f"note: {text}"), file=sys.stderr))
        self.bad: set[int] = set()

    def __len__(self) -> int:  # the stream is endless; this is one epoch
        return len(self.files)

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a handful of small arrays per dataset
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.files))

    def file_index(self, i: int, attempt: int = 0) -> int:
        n = len(self.files)
        return int(self.permutation(i // n)[(i % n + attempt) % n])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        for attempt in range(len(self.files)):
            index = self.file_index(i, attempt)
            if index in self.bad:
                continue
            try:
                mono = load_mono(self.files[index].path, self.mel_config.sample_rate)
                if mono.size < self.min_samples:
                    raise AudioFileError(self.files[index].path,
                                         f"too short: {mono.size} samples")
            except (WaveGlowError, OSError) as e:
                self.bad.add(index)
                self.note(f"skipped {e} (from now on)")
                continue
            rng = np.random.default_rng([self.seed, 1, i, attempt])
            start = int(rng.integers(0, max(mono.size - self.segment_length, 0) + 1))
            return self.example(take_segment(mono, self.segment_length, start))
        raise TrainingError("none of the training files can be read any more")

    def example(self, segment: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        audio = torch.from_numpy(np.ascontiguousarray(segment, dtype=np.float32))
        return mel_spectrogram(audio, self.mel_config)[0], audio


class StepBatches(torch.utils.data.Sampler):
    """The stream positions of each step's batch for one rank: step ``s`` (1-based) of rank
    ``r`` out of ``W`` takes positions ``((s - 1) W + r) B ... + B - 1``."""

    def __init__(self, first_step: int, last_step: int, batch_size: int, rank: int,
                 world: int) -> None:
        self.first_step, self.last_step = first_step, last_step
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step + 1)

    def __iter__(self) -> Iterator[list[int]]:
        b = self.batch_size
        for step in range(self.first_step, self.last_step + 1):
            start = ((step - 1) * self.world + self.rank) * b
            yield list(range(start, start + b))


def _collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([m for m, _ in items]), torch.stack([a for _, a in items])


def split_validation(files: list[AudioFile], val: str | None, seed: int, mel_config: MelConfig,
                     min_samples: int) -> tuple[list[AudioFile], list[AudioFile], list[str]]:
    """(training files, validation files, notes) for ``--val`` (a fraction or files)."""
    if val is None:
        return files, [], []
    try:
        fraction: float | None = float(val)
    except ValueError:
        fraction = None
    if fraction is not None and not Path(val).exists():
        if not 0 < fraction < 1:
            raise UsageError(f"--val {val}: a fraction must lie strictly between 0 and 1")
        n_val = max(1, round(fraction * len(files)))
        if n_val >= len(files):
            raise UsageError(f"--val {val} leaves no training files ({len(files)} usable)")
        chosen = set(np.random.default_rng([seed, 2]).permutation(len(files))[:n_val].tolist())
        return ([f for i, f in enumerate(files) if i not in chosen],
                [f for i, f in enumerate(files) if i in chosen], [])
    val_files, skipped, notes = probe(collect_files([val]), mel_config, min_samples)
    notes = notes + [f"validation: {text}" for text in skipped]
    val_keys = {str(f.path.resolve()) for f in val_files}
    train = [f for f in files if str(f.path.resolve()) not in val_keys]
    if len(train) < len(files):
        notes.append(f"{len(files) - len(train)} validation file(s) are also in DATA; they are "
                     "left out of training")
    if not val_files:
        raise UsageError(f"--val {val}: no usable validation files")
    return train, val_files, notes


def validation_set(files: Sequence[AudioFile], dataset: SegmentDataset,
                   note: Callable[[str], None]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One fixed segment per validation file: the middle ``segment_length`` samples."""
    examples = []
    for f in files:
        try:
            mono = load_mono(f.path, dataset.mel_config.sample_rate)
        except (WaveGlowError, OSError) as e:
            note(f"validation: skipped {e}")
            continue
        start = max(mono.size - dataset.segment_length, 0) // 2
        examples.append(dataset.example(take_segment(mono, dataset.segment_length, start)))
    return examples


# ---------------------------------------------------------------------------------------------
# Processes and devices


def pick_training_device(name: str, dist: Shard) -> torch.device:
    from .synthesis import pick_device

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{dist.local_rank % torch.cuda.device_count()}")
        return torch.device("cpu")
    device = pick_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{dist.local_rank % torch.cuda.device_count()}")
    return device


def pick_amp(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: float32).

    ``auto`` means mixed precision on CUDA only.  On a CPU, bf16 is opt-in: with native bf16
    matmuls (AMX, AVX512-BF16) it trains 1.4-1.7x faster here (the master weights, the
    optimizer and the loss stay float32); fp16 autocast is not offered on CPUs."""
    if device.type != "cuda":
        if precision == "bf16" and device.type == "cpu":
            return torch.bfloat16
        if precision in ("bf16", "fp16"):
            raise UsageError(f"--precision {precision} needs CUDA; on {device.type} training "
                             "runs in fp32" + (" or bf16" if device.type == "cpu" else ""))
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ---------------------------------------------------------------------------------------------
# Progress and metrics


class Reporter:
    """Notes on stderr, the rich progress line (on a terminal), metrics.jsonl; rank 0 only."""

    def __init__(self, enabled: bool, quiet: bool, total: int, first: int) -> None:
        from rich.console import Console

        self.enabled, self.quiet = enabled, quiet
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.progress = None
        self.metrics_file = None
        self.tensorboard: Any = None
        if enabled and not quiet and self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.progress = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                                     TextColumn("{task.description}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=self.console)
            self.task = self.progress.add_task("", total=total, completed=first)
            self.progress.start()

    def note(self, text: str) -> None:
        if self.enabled and not self.quiet:
            self.console.out(printable(f"note: {text}"))  # file names: escape controls

    def line(self, text: str) -> None:
        if self.enabled and not self.quiet:
            self.console.out(printable(text))

    def open_metrics(self, path: Path) -> None:
        if self.enabled:
            self.metrics_file = path.open("a", encoding="utf-8")

    def open_tensorboard(self, log_dir: Path, resume_step: int | None) -> None:
        """Scalars under ``log_dir``; on resume, events after the checkpoint's step (logged
        by the run that was stopped) are purged, as metrics.jsonl is truncated."""
        if self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(
                str(log_dir), purge_step=None if resume_step is None else resume_step + 1)

    def metrics(self, record: dict[str, Any]) -> None:
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps(record) + "\n")
            self.metrics_file.flush()
        if self.tensorboard is not None:
            for key, tag in TENSORBOARD_TAGS.items():
                if isinstance(record.get(key), (int, float)):
                    self.tensorboard.add_scalar(tag, record[key], record["step"])

    def update(self, step: int, loss: float, rate: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step,
                                 description=f"loss {loss:+.5f}  {rate:.1f} segments/s")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the records of steps <= ``last_step`` (a resumed run writes the rest again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text("utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    text = "".join(f"{line}\n" for line in kept)
    atomic_write(path, lambda tmp: tmp.write_text(text, "utf-8"), overwrite=True)


# ---------------------------------------------------------------------------------------------
# Setting a run up


def _merge_resumed(options: TrainOptions, saved: dict[str, Any]) -> TrainOptions:
    """Options not given again on the command line come from the run being resumed."""
    values: dict[str, Any] = {}
    for name in RESUMABLE + ARCHITECTURE:
        if name not in options.explicit and name in saved.get("options", {}):
            values[name] = saved["options"][name]
    if "init_from" not in options.explicit and saved.get("init_from"):
        values["init_from"] = saved["init_from"]  # a fine-tune stopped before its 1st checkpoint
    actual = {**saved.get("options", {}), **saved.get("architecture", {}),
              "sample_rate": saved.get("mel", {}).get("sample_rate")}
    changed = sorted(name for name in ARCHITECTURE if name in options.explicit
                     and actual.get(name) not in (None, getattr(options, name)))
    if changed:
        raise UsageError("the architecture of a resumed run cannot change (--"
                         + ", --".join(n.replace("_", "-") for n in changed) + ")")
    return dataclasses.replace(options, **values)


@dataclass
class Setup:
    model: WaveGlow
    mel_config: MelConfig
    start_step: int
    state: dict[str, Any] | None
    source: str


def build_model(options: TrainOptions, run_dir: Path, resume_step: int | None,
                report: Reporter) -> Setup:
    from .checkpoint import read_checkpoint

    if resume_step is not None:
        checkpoint = read_checkpoint(model_path(run_dir, resume_step))
        state = torch.load(state_path(run_dir, resume_step), map_location="cpu",
                           weights_only=True)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise TrainingError(f"{state_path(run_dir, resume_step)}: not a training state file")
        model = WaveGlow(checkpoint.config)
        model.load_state_dict(checkpoint.state_dict, strict=True)
        mel_config = MelConfig.from_dict({**(checkpoint.mel or {}),
                                          "sample_rate": checkpoint.sample_rate})
        return Setup(model, mel_config, int(state["step"]), state,
                     f"resumed from {model_path(run_dir, resume_step)}")
    if options.init_from is not None:
        from .api import mel_config_for, registry_entry_for
        from .registry import ensure_checkpoint
        from .settings import Settings

        settings = Settings.from_env()
        checkpoint = read_checkpoint(ensure_checkpoint(options.init_from, settings))
        model = WaveGlow(checkpoint.config)
        model.load_state_dict(checkpoint.state_dict, strict=True)
        mel_config = mel_config_for(checkpoint, registry_entry_for(options.init_from, settings))
        return Setup(model, mel_config, 0, None, f"fine-tuning {options.init_from}")
    config = options.architecture()
    torch.manual_seed(options.seed)
    model = WaveGlow(config)
    mel_config = MelConfig(sample_rate=options.sample_rate, n_mels=config.n_mel_channels,
                           hop_length=config.hop_length,
                           fmax=min(8000.0, options.sample_rate / 2))
    return Setup(model, mel_config, 0, None, "a fresh model")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# The loop


def train(options: TrainOptions) -> Path | None:
    """Run (or resume) training; returns the last checkpoint written (None if none)."""
    dist = Shard.from_env()
    initialised = False
    if dist.world > 1:
        import torch.distributed as torch_dist

        device = pick_training_device(options.device, dist)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        initialised = True
    finished = False
    try:
        last = _train(options, dist)
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


def _train(options: TrainOptions, dist: Shard) -> Path | None:
    run_dir = Path(options.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"-o {run_dir}: exists and is not a folder")
    saved: dict[str, Any] = {}
    steps = checkpoint_steps(run_dir)
    run_file = run_dir / RUN_FILE
    if options.resume:
        if run_file.is_file():
            try:
                saved = json.loads(run_file.read_text("utf-8"))
            except (OSError, ValueError) as e:
                raise TrainingError(f"{run_file}: unreadable ({e})") from None
            options = _merge_resumed(options, saved)
    elif steps or (run_dir / METRICS_FILE).exists():
        raise UsageError(f"-o {run_dir}: holds a training run already; pass --resume to "
                         "continue it, or choose another folder")
    if dist.world > 1:  # every rank has looked at the folder before rank 0 writes to it
        import torch.distributed as torch_dist

        torch_dist.barrier()
    if not options.data:
        raise UsageError("DATA is required (a folder of audio files or a file list)")
    if options.seed is None:
        seed = secrets.randbelow(2**31)
        if dist.world > 1:  # every rank must use the same seed: rank 0's
            import torch.distributed as torch_dist

            shared = [seed]
            torch_dist.broadcast_object_list(shared, src=0)
            seed = int(shared[0])
        options = dataclasses.replace(options, seed=seed)
    options.check()
    resume_step = steps[-1] if options.resume and steps else None

    device = pick_training_device(options.device, dist)
    amp_dtype = pick_amp(options.precision, device)
    report = Reporter(dist.main, options.quiet, options.max_steps, resume_step or 0)
    try:
        return _run(options, dist, run_dir, saved, resume_step, device, amp_dtype, report)
    finally:
        report.close()


def _run(options: TrainOptions, dist: Shard, run_dir: Path, saved: dict[str, Any],
         resume_step: int | None, device: torch.device, amp_dtype: torch.dtype | None,
         report: Reporter) -> Path | None:
    if options.resume and resume_step is None:
        report.note(f"{run_dir}: no checkpoint to resume from; starting from step 0")
    if resume_step is not None and saved.get("world_size", dist.world) != dist.world:
        report.note(f"the run was trained by {saved['world_size']} process(es), now by "
                    f"{dist.world}: the data order from here on differs from an uninterrupted run")
    if resume_step is not None and "init_from" in options.explicit:
        report.note(f"--from {options.init_from} ignored: resuming from step {resume_step}")
    if options.init_from is not None or resume_step is not None:
        given = sorted(n for n in ARCHITECTURE if n in options.explicit)
        if given and resume_step is None:
            raise UsageError("the architecture comes from --from; drop --"
                             + ", --".join(n.replace("_", "-") for n in given))
    _seed_everything(options.seed)
    setup = build_model(options, run_dir, resume_step, report)
    model, mel_config = setup.model, setup.mel_config
    config = model.config
    if mel_config.hop_length != config.hop_length or mel_config.n_mels != config.n_mel_channels:
        raise UsageError(f"mel settings (hop {mel_config.hop_length}, {mel_config.n_mels} mels) "
                         f"do not fit the model (hop {config.hop_length}, "
                         f"{config.n_mel_channels} mels)")
    min_samples = mel_config.n_fft
    if options.segment_length < min_samples:
        raise UsageError(f"--segment-length {options.segment_length} is shorter than one STFT "
                         f"window ({min_samples} samples)")

    # -- data
    files, skipped, notes = probe(collect_files(options.data), mel_config, min_samples)
    for text in skipped[:MAX_SKIP_NOTES]:
        report.note(text)
    if len(skipped) > MAX_SKIP_NOTES:
        report.note(f"... and {len(skipped) - MAX_SKIP_NOTES} more files skipped")
    if not files:
        raise UsageError(f"no usable training audio in {', '.join(options.data)} "
                         f"({len(skipped)} file(s) skipped)")
    files, val_files, val_notes = split_validation(files, options.val, options.seed, mel_config,
                                                   min_samples)
    for text in notes + val_notes:
        report.note(text)
    dataset = SegmentDataset(files, mel_config, options.segment_length, options.seed,
                             min_samples)
    val_examples = validation_set(val_files, dataset, report.note)
    val_every = options.val_every or options.checkpoint_every
    seconds = sum(f.samples for f in files) / mel_config.sample_rate
    report.note(f"{setup.source}: {sum(p.numel() for p in model.parameters()):,} parameters; "
                f"training on {len(files)} files ({seconds / 60:.1f} min)"
                + (f", validating on {len(val_examples)}" if val_examples else "")
                + f"; {dist.world} process(es) on {device}; seed {options.seed}")

    # -- model, optimizer, state
    model.to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step = setup.start_step
    if setup.state is not None:
        optimizer.load_state_dict(setup.state["optimizer"])  # the step loop sets the rate
        if setup.state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(setup.state["scaler"])
        _set_rng_state(setup.state["rng"])
    net: torch.nn.Module = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index]
                                      if device.type == "cuda" else None)

    # -- files (rank 0)
    last_saved = model_path(run_dir, resume_step) if resume_step is not None else None
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(run_dir)  # half-written files of a killed run (dead pid only)
        record = {"options": {**{name: getattr(options, name) for name in RESUMABLE},
                              # the model's own (from --from or the checkpoint), not the
                              # flags' defaults
                              **{name: getattr(config, name) for name in ARCHITECTURE
                                 if name != "sample_rate"},
                              "sample_rate": mel_config.sample_rate},
                  "init_from": (str(Path(options.init_from).expanduser().resolve())
                                if options.init_from and Path(options.init_from).expanduser()
                                .exists() else options.init_from),
                  "architecture": config.to_dict(),
                  "mel": mel_config.to_dict(), "world_size": dist.world}
        record["options"]["data"] = [str(Path(p).expanduser().resolve()) for p in options.data]
        if options.val is not None and Path(options.val).exists():
            record["options"]["val"] = str(Path(options.val).expanduser().resolve())
        write_json(run_dir / RUN_FILE, record)
        truncate_metrics(run_dir / METRICS_FILE, step)
        report.open_metrics(run_dir / METRICS_FILE)
        if options.tensorboard:
            report.open_tensorboard(run_dir / TENSORBOARD_DIR, resume_step)

    if step >= options.max_steps:
        report.note(f"already at step {step} (--max-steps {options.max_steps}); nothing to do")
        return last_saved

    workers = options.workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(4, max(1, (os.cpu_count() or 1) // dist.world))
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(step + 1, options.max_steps, options.batch_size,
                                           dist.rank, dist.world),
        num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
        worker_init_fn=_ignore_interrupts if workers else None)

    def save(at: int) -> Path:
        nonlocal last_saved
        if dist.main:
            save_checkpoint_set(run_dir, at, model, optimizer, scaler, mel_config, options.keep)
        last_saved = model_path(run_dir, at)
        return last_saved

    with StopRequests(report.note) as stop:
        interval_loss, interval_steps, interval_start = 0.0, 0, time.perf_counter()
        overflows = 0
        for mel, audio in loader:
            step += 1
            mel = mel.to(device, non_blocking=True)
            audio = audio.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                z, log_s, log_det = net(mel, audio)
            loss = waveglow_loss(z.float(), [s.float() for s in log_s],
                                 [d.float() for d in log_det], options.sigma)
            value = _mean_over_ranks(loss.detach(), dist)
            if not math.isfinite(value):
                report.metrics({"step": step, "loss": None,
                                "error": f"non-finite loss ({value})"})
                overflows += 1
                if scaler.is_enabled() and overflows < MAX_FP16_OVERFLOWS:
                    # fp16 overflow in the forward pass: skip the update, as the scaler would,
                    # and lower the scale
                    scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
                    continue
                raise TrainingError(_diverged(f"the loss is {value}", step, last_saved))
            overflows = 0
            lr = options.learning_rate(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                model.parameters(), options.grad_clip if options.grad_clip else math.inf))
            if not math.isfinite(grad_norm) and not scaler.is_enabled():
                report.metrics({"step": step, "loss": value,
                                "error": f"non-finite gradient norm ({grad_norm})"})
                raise TrainingError(_diverged(f"the gradient norm is {grad_norm}", step,
                                              last_saved))
            scaler.step(optimizer)
            scaler.update()

            interval_loss += value
            interval_steps += 1
            validate = bool(val_examples) and (step % val_every == 0
                                               or step == options.max_steps)
            # A stop request (agreed by all ranks) makes this step a logged checkpoint.
            signum = stop.requested(dist, device)
            stopping = signum is not None and step < options.max_steps
            checkpoint = (step % options.checkpoint_every == 0 or step == options.max_steps
                          or stopping)
            if step % options.log_every == 0 or validate or checkpoint:
                elapsed = time.perf_counter() - interval_start
                rate = interval_steps * options.batch_size * dist.world / max(elapsed, 1e-9)
                record = {"step": step, "loss": interval_loss / interval_steps,
                          "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
                          "lr": lr, "segments_per_s": rate,
                          "audio_seconds_per_s": rate * options.segment_length
                          / mel_config.sample_rate}
                if validate:
                    record["val_loss"] = evaluate(model, val_examples, options, device,
                                                  amp_dtype, dist)
                report.metrics(record)
                report.update(step, record["loss"], rate)
                interval_loss, interval_steps, interval_start = 0.0, 0, time.perf_counter()
                if checkpoint:
                    path = save(step)
                    report.line(f"step {step}/{options.max_steps}  loss {record['loss']:+.6f}"
                                + (f"  val_loss {record['val_loss']:+.6f}" if validate else "")
                                + f"  {rate:.1f} segments/s  saved {path}")
            if stopping:
                raise TrainingInterrupted(
                    f"stopped at step {step} by {signal.Signals(signum).name}; saved "
                    f"{last_saved}; continue with: waveglow train -o {run_dir} --resume",
                    signum)
    return last_saved


def _mean_over_ranks(value: torch.Tensor, dist: Shard) -> float:
    if dist.world == 1:
        return float(value)
    import torch.distributed as torch_dist

    total = value.detach().float().clone().reshape(1)
    torch_dist.all_reduce(total)
    return float(total) / dist.world


def _diverged(what: str, step: int, last_saved: Path | None) -> str:
    kept = (f"the last good checkpoint is {last_saved}; continue from it with --resume "
            "(perhaps with a lower --lr or with --grad-clip)" if last_saved is not None
            else "no checkpoint had been written yet")
    return f"training stopped at step {step}: {what}; {kept}"


@torch.no_grad()
def evaluate(model: WaveGlow, examples: list[tuple[torch.Tensor, torch.Tensor]],
             options: TrainOptions, device: torch.device, amp_dtype: torch.dtype | None,
             dist: Shard) -> float:
    """Mean loss over the validation segments (each rank takes every W-th; summed over ranks)."""
    model.eval()
    total, count = 0.0, 0
    mine = examples[dist.rank::dist.world]
    for start in range(0, len(mine), options.batch_size):
        chunk = mine[start:start + options.batch_size]
        mel, audio = _collate(chunk)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            z, log_s, log_det = model(mel.to(device), audio.to(device))
        loss = waveglow_loss(z.float(), [s.float() for s in log_s],
                             [d.float() for d in log_det], options.sigma)
        total += float(loss) * len(chunk)
        count += len(chunk)
    model.train()
    if dist.world > 1:
        import torch.distributed as torch_dist

        sums = torch.tensor([total, float(count)], dtype=torch.float64,
                            device=device if device.type == "cuda" else "cpu")
        torch_dist.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    return total / max(count, 1)


def save_checkpoint_set(run_dir: Path, step: int, model: WaveGlow, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, mel_config: MelConfig, keep: int) -> Path:
    """Write the training state, then the weights (both atomically), then drop all but the
    newest ``keep`` checkpoints.  The weights file appearing last marks a complete set."""
    from .checkpoint import save_checkpoint

    state = {"format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
             "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict() if scaler.is_enabled() else None,
             "rng": _rng_state()}
    atomic_write(state_path(run_dir, step), lambda tmp: torch.save(state, tmp), overwrite=True)
    model.refresh_inverses()  # the inverses follow the weights (they are not saved)
    target = save_checkpoint(model_path(run_dir, step), model,
                             sample_rate=mel_config.sample_rate, mel=mel_config.to_dict(),
                             extra={"step": str(step), "trained_by": "waveglow train"})
    for old in checkpoint_steps(run_dir)[:-keep]:
        model_path(run_dir, old).unlink(missing_ok=True)
        state_path(run_dir, old).unlink(missing_ok=True)
    return target


__all__ = ["TrainOptions", "TrainingError", "train", "collect_files", "probe",
           "SegmentDataset", "StepBatches", "checkpoint_steps", "model_path", "state_path"]
