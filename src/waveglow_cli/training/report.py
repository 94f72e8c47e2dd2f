"""What a run tells the user: notes on stderr, the progress line on a terminal, the
metrics.jsonl records and (with --tensorboard) TensorBoard scalars; rank 0 only."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, TextIO

from ..errors import TrainingError, printable
from ..fileio import describe_os_error, file_kind

# metrics.jsonl key -> TensorBoard scalar tag
TENSORBOARD_TAGS = {"loss": "train/loss", "val_loss": "val/loss", "lr": "train/lr",
                    "grad_norm": "train/grad_norm", "segments_per_s": "train/segments_per_s"}


class Reporter:
    """Notes on stderr, the rich progress line (on a terminal), metrics.jsonl; rank 0 only."""

    def __init__(self, enabled: bool, quiet: bool, total: int, first: int) -> None:
        from rich.console import Console

        self.enabled, self.quiet = enabled, quiet
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.progress = None
        self.metrics_file: TextIO | None = None
        self.tensorboard: Any = None
        if enabled and not quiet and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

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
        """Append to ``path``: never through a link planted under its name (O_NOFOLLOW), never
        waiting for a reader of a FIFO (O_NONBLOCK), and only to a regular file, checked by
        ``fstat`` of what was opened (a device would swallow the records)."""
        if not self.enabled:
            return
        flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as e:
            raise TrainingError(f"{path}: cannot write metrics file ({describe_os_error(e)})"
                                ) from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise TrainingError(f"{path}: cannot write metrics file (is {file_kind(mode)}, "
                                "not a regular file)")
        os.set_blocking(fd, True)
        self.metrics_file = os.fdopen(fd, "a", encoding="utf-8")

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
