"""Progress of long transfers, and the steps of long commands, reported to whatever the caller
passes (the CLI draws a rich bar or status line).

There is no default: a caller that passes nothing (``None``) gets no progress reports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

#: What a long command reports its steps to: called with a short description of the step that
#: starts now ("tracing the graph", "timed run 2 of 3").  The CLI shows it as a status line on
#: a terminal (:class:`waveglow_cli.cli.common.StepStatus`); None reports nothing.
StatusCallback = Callable[[str], None]


def report_step(status: StatusCallback | None, text: str) -> None:
    """Tell ``status`` (if any) that the step ``text`` starts now."""
    if status is not None:
        status(text)


class Progress(Protocol):
    """What a download reports to.  A class that subclasses this protocol inherits a no-op for
    each method it leaves out; an object passed in need not (see :class:`ProgressReporter`,
    which calls only the methods it has, so a bare callable may stand for ``update``)."""

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        """A transfer (re)starts: ``total`` bytes expected (None: unknown), ``completed`` done."""
        return None

    def update(self, advance: int) -> None:
        """``advance`` more bytes arrived."""
        return None

    def finish(self) -> None:
        """No more transfers for now."""
        return None

    def note(self, text: str) -> None:
        """A one-line message for the user (a retry, a fallback to another URL)."""
        return None


class NullProgress(Progress):
    """Reports nothing."""


#: What a download may be given to report to: a :class:`Progress` (or an object with some of
#: its methods), a bare callable told the byte counts, or None.
ProgressTarget = Progress | Callable[[int], None] | None


class ProgressReporter:
    """Calls whichever of start/update/finish/note ``target`` has; a bare callable gets
    ``update``'s byte counts; ``None`` gets nothing."""

    def __init__(self, target: ProgressTarget) -> None:
        self.target = target

    def _call(self, name: str, *args: Any) -> None:
        if self.target is None:
            return
        method = getattr(self.target, name, None)
        if method is None and name == "update" and callable(self.target):
            method = self.target
        if method is not None:
            method(*args)

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        self._call("start", description, total, completed)

    def update(self, advance: int) -> None:
        self._call("update", advance)

    def finish(self) -> None:
        self._call("finish")

    def note(self, text: str) -> None:
        self._call("note", text)


__all__ = [
    "NullProgress",
    "Progress",
    "ProgressReporter",
    "ProgressTarget",
    "StatusCallback",
    "report_step",
]
