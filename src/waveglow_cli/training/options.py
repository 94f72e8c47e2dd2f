"""What ``waveglow train`` was asked to do: :class:`TrainOptions`, the learning-rate schedule,
the checks of the options, and how a resumed run's options are merged with run.json."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TrainingError, UsageError
from ..model.waveglow import WaveGlowConfig

# Options a resumed run takes from run.json unless they are given again on the command line.
RESUMABLE = ("data", "val", "segment_length", "batch_size", "lr", "lr_schedule", "lr_min",
             "warmup_steps", "sigma", "grad_clip", "seed",
             "checkpoint_every", "keep", "val_every", "log_every", "precision", "max_steps",
             "tensorboard")
# The architecture flags: the WaveGlowConfig fields a fresh model takes from the command line
# (run.json records them under "options" too), and the sample rate, which is not part of the
# architecture but is fixed for a run just the same.
MODEL_FLAGS = ("n_channels", "n_layers", "n_flows", "n_group", "n_early_every", "n_early_size",
               "n_mel_channels")
ARCHITECTURE = (*MODEL_FLAGS, "sample_rate")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class TrainOptions:
    """What ``waveglow train`` was asked to do.  ``model`` is the architecture of a fresh model
    (a fine-tune or a resumed run takes the checkpoint's).  ``explicit`` names the options given
    on the command line, architecture flags by their field names (the others are defaults,
    which --resume replaces with the run's values)."""

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
    model: WaveGlowConfig = field(default_factory=WaveGlowConfig)
    sample_rate: int = 22050
    explicit: frozenset[str] = field(default_factory=frozenset)

    def run_seed(self) -> int:
        """The run's seed: given, or drawn (and recorded) by ``train`` before anything uses it."""
        if self.seed is None:
            raise TrainingError("no seed has been chosen for this run yet")
        return self.seed

    def architecture_value(self, name: str) -> Any:
        """The value of architecture flag ``name`` (a model field, or the sample rate)."""
        return self.sample_rate if name == "sample_rate" else getattr(self.model, name)

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

    def check(self) -> None:
        problems = []
        for name in ("segment_length", "batch_size", "max_steps", "checkpoint_every", "keep",
                     "log_every", "sample_rate"):
            if getattr(self, name) < 1:
                problems.append(f"{flag(name)} must be >= 1")
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
                            "pip install 'waveglow-exact[tensorboard]'")
        if problems:
            raise UsageError("; ".join(problems))

    def refuse_architecture_flags(self) -> None:
        """A fine-tune takes its architecture from --from: architecture flags are refused."""
        given = sorted(n for n in ARCHITECTURE if n in self.explicit)
        if given:
            raise UsageError("the architecture comes from --from; drop "
                             + ", ".join(flag(n) for n in given))


def merge_resumed(options: TrainOptions, saved: dict[str, Any]) -> TrainOptions:
    """Options not given again on the command line come from the run being resumed
    (``saved``: its run.json)."""
    recorded = saved.get("options", {})
    values: dict[str, Any] = {name: recorded[name] for name in (*RESUMABLE, "sample_rate")
                              if name not in options.explicit and name in recorded}
    if "init_from" not in options.explicit and saved.get("init_from"):
        values["init_from"] = saved["init_from"]  # a fine-tune stopped before its 1st checkpoint
    actual = {**recorded, **saved.get("architecture", {}),
              "sample_rate": saved.get("mel", {}).get("sample_rate")}
    changed = sorted(name for name in ARCHITECTURE if name in options.explicit
                     and actual.get(name) not in (None, options.architecture_value(name)))
    if changed:
        raise UsageError("the architecture of a resumed run cannot change ("
                         + ", ".join(flag(n) for n in changed) + ")")
    model = {name: recorded[name] for name in MODEL_FLAGS
             if name not in options.explicit and name in recorded}
    if model:
        values["model"] = dataclasses.replace(options.model, **model)
    return dataclasses.replace(options, **values)
