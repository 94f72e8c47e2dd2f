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
    """What a download reports to.  Every method is optional on the object passed in."""

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        """A transfer (re)starts: ``total`` bytes expected (None: unknown), ``completed`` done."""

    def update(self, advance: int) -> None:
        """``advance`` more bytes arrived."""

    def finish(self) -> None:
        """No more transfers for now."""

    def note(self, text: str) -> None:
        """A one-line message for the user (a retry, a fallback to another URL)."""


class NullProgress:
    """Reports nothing."""

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        pass

    def update(self, advance: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class ProgressReporter:
    """Calls whichever of start/update/finish/note ``target`` has; a bare callable gets
    ``update``'s byte counts; ``None`` gets nothing."""

    def __init__(self, target: Any) -> None:
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


__all__ = ["Progress", "NullProgress", "ProgressReporter", "StatusCallback", "report_step"]
