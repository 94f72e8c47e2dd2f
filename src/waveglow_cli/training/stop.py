"""Stopping a run cleanly: SIGINT and SIGTERM become a request the step loop honours between
steps, agreed by all ranks."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import torch

from ..settings import Shard


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

    def requested(self, shard: Shard, device: torch.device) -> int | None:
        """The signal that asked to stop, agreed by all ranks (any rank's request stops all)."""
        if shard.world == 1:
            return self.signum
        import torch.distributed as torch_dist

        flag = torch.tensor([self.signum or 0], dtype=torch.int64, device=device)
        torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MAX)
        return int(flag.item()) or None


def ignore_interrupts(worker_id: int) -> None:
    """DataLoader workers share the terminal's process group: without this, Ctrl-C would kill
    them while the main process is still finishing its step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
