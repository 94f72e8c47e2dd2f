"""What a batch job's items end as: the item itself, the policy for an output that exists
(:class:`OutputPolicy`), each item's :class:`ItemResult`, the job's :class:`Summary`, and where
a job reports as it goes (:class:`JobProgress`).  The loops that make these are in
:mod:`waveglow_cli.jobs.core`, which re-exports every name here.

An item ends in one of four states:

* ``written``: its output was made;
* ``exists``: its output existed already and was kept, under the default policy (neither
  ``--overwrite`` nor ``--skip-existing``).  Nothing was wrong with the input, so it is not a
  failure (a rerun of a finished job fails nothing), but it is counted apart, so that a front
  end can say once that the outputs are not fresh and how to replace them;
* ``skipped``: its output existed and ``--skip-existing`` asked to keep it (a resume: quiet);
* ``failed``: its input could not be read or made into an output (a named error).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ..errors import OutputExistsError, UsageError
from ..fileio import refuse_non_regular


@dataclass(frozen=True)
class Item:
    source: Path | None   # None: standard input
    key: str              # relative path: names outputs and seeds the noise
    found: bool = False   # found by searching a folder (not named on the command line)

    @property
    def display(self) -> str:
        return "<stdin>" if self.source is None else str(self.source)


Status = Literal["written", "exists", "skipped", "failed"]
#: What becomes of an item whose output exists and is kept.
Kept = Literal["exists", "skipped"]


# ---------------------------------------------------------------------------------------------
# The exists/overwrite policy


@dataclass(frozen=True)
class OutputPolicy:
    """What to do with an output that exists: keep it and say so (the default), replace it
    (``overwrite``), or keep it quietly (``skip_existing``, a resume)."""

    overwrite: bool = False
    skip_existing: bool = False

    def __post_init__(self) -> None:
        if self.overwrite and self.skip_existing:
            raise UsageError("--overwrite and --skip-existing exclude each other")

    def existing(self, target: Path | None, inputs: set[Path]) -> Kept | None:
        """None: make the item (its output does not exist, or is to be replaced); else the
        state of an item whose existing output is kept.  An output that is one of ``inputs``
        (resolved paths) is a :class:`UsageError`.

        An early check that saves the work for a file that exists: the claim itself is taken
        when the file is published (:func:`fileio.atomic_write`; see :meth:`settles`)."""
        if target is None:
            return None
        if target.resolve() in inputs:
            raise UsageError(f"{target}: refusing to overwrite an input file")
        refuse_non_regular(target)
        if self.overwrite or not os.path.lexists(target):
            return None
        return "skipped" if self.skip_existing else "exists"

    def settles(self, error: BaseException) -> Kept | None:
        """The state of an item whose output another process created while this run worked
        on it (its file was kept: :class:`OutputExistsError` when publishing), as if it had
        existed from the start; None for any other error (the item failed)."""
        if not isinstance(error, OutputExistsError) or self.overwrite:
            return None
        return "skipped" if self.skip_existing else "exists"


def input_paths(items: Iterable[Item]) -> set[Path]:
    return {item.source.resolve() for item in items if item.source is not None}


# ---------------------------------------------------------------------------------------------
# Results and progress


@dataclass(frozen=True)
class ItemResult:
    item: Item
    target: Path | None            # None: standard output
    status: Status
    error: BaseException | None = None
    samples: int = 0               # audio samples written (synthesis jobs)


@dataclass
class Summary:
    """Per-item results of a job, in the order they ended."""

    results: list[ItemResult] = field(default_factory=list)
    sample_rate: int | None = None
    seconds: float = 0.0           # seconds of audio written, summed in the order written
    stopped: bool = False          # fail-fast ended the job at its first failure
    interrupted: int | None = None  # the signal (2 SIGINT, 15 SIGTERM) that ended the job early

    def add(self, result: ItemResult) -> None:
        self.results.append(result)
        if self.sample_rate:
            self.seconds += result.samples / self.sample_rate

    def _count(self, status: Status) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def written(self) -> int:
        return self._count("written")

    @property
    def existing(self) -> int:
        """Items whose output existed and was kept under the default policy."""
        return self._count("exists")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def failed(self) -> int:
        return self._count("failed")

    def existing_targets(self) -> list[Path]:
        """The outputs that existed and were kept under the default policy, in order."""
        return [r.target for r in self.results if r.status == "exists" and r.target is not None]

    def line(self, with_seconds: bool = True) -> str:
        """``written W, exist E, skipped S, failed F (X.X s of audio)``, as the CLI prints it
        (every count, always in this order, so a script can read it)."""
        seconds = self.seconds if with_seconds else 0.0
        return (f"written {self.written}, exist {self.existing}, skipped {self.skipped}, "
                f"failed {self.failed}" + (f" ({seconds:.1f} s of audio)" if seconds else ""))


class JobProgress(Protocol):
    """Where a job reports as it goes (a front end's progress bar and message lines).

    ``advance``, ``note`` and ``failed`` are what every job reports.  A synthesis job also
    reports its audio (``expect``, ``produced``), so that progress can move within one long
    file, even within one forward pass; a class that subclasses this protocol (or
    :class:`SilentProgress`) inherits those two as no-ops where it has no use for them."""

    def advance(self, seconds: float | None = None) -> None:
        """One more item ended; ``seconds``: audio written so far (synthesis)."""

    def note(self, text: str) -> None:
        """Something worth knowing about an input (resampled, channels averaged ...)."""

    def failed(self, error: BaseException) -> None:
        """An item failed (the job goes on unless it is fail-fast)."""

    def expect(self, seconds: float) -> None:
        """This much more audio is to come: each window's mels, as soon as the reading thread
        has opened them (the total is known before the first audio).  Default: nothing."""
        return None

    def produced(self, seconds: float) -> None:
        """Audio synthesised so far in the job, in seconds, increasing; told after each flow
        of each forward pass (see :class:`waveglow_cli.model.waveglow.FlowProgress`).
        Default: nothing."""
        return None


class SilentProgress(JobProgress):
    """Reports nothing (for library use); failures are still in the :class:`Summary`."""

    def advance(self, seconds: float | None = None) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def failed(self, error: BaseException) -> None:
        pass
