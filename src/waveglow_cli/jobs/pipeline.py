"""Keeping the model busy: a job's reading and writing run on their own threads, overlapped
with synthesis, in bounded amounts.

* :class:`Ahead`: the next window of inputs is read (files opened, mels memory-mapped, audio
  turned into mels) while the current one is synthesised.  One window ahead, no more.
* :class:`WriterThread`: items are encoded and written one after another on one thread while
  the next batches run.  The synthesis side hands each item's blocks over through a
  :class:`Handoff` holding at most ``depth`` blocks, and at most ``items`` items wait for the
  writer, so memory stays bounded however fast the model is.

Both are daemon threads: an interrupted job never waits at exit for a stuck read or write.
Torch releases the GIL in its kernels, so the threads overlap with the model's work.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_END = object()  # the last of an item's blocks has been handed over


class _Raise:
    """Handed over in place of a block: the writer raises ``error`` (its item failed)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Ahead(Generic[T]):
    """``work()`` running on a daemon thread; :meth:`result` waits for it."""

    def __init__(self, work: Callable[[], T]) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(work,), daemon=True,
                         name="waveglow-read").start()

    def _run(self, work: Callable[[], T]) -> None:
        try:
            self._value = work()
        except BaseException as e:  # noqa: BLE001 - handed to the caller of result()
            self._error = e
        finally:
            self._done.set()

    def result(self) -> T:
        while not self._done.wait(0.1):  # a timed wait lets Ctrl-C through at once
            pass
        if self._error is not None:
            raise self._error
        return self._value


class Handoff:
    """One item's blocks on their way from the synthesis loop to the writer thread."""

    def __init__(self, depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.done = threading.Event()
        self.gave_up = threading.Event()   # the writer failed: it takes no more blocks
        self.value: Any = None
        self.error: BaseException | None = None

    def put(self, block: Any) -> bool:
        """Hand over a block (waiting while ``depth`` are pending); False if the writer gave
        up on this item, so the caller can stop making its audio."""
        while not self.gave_up.is_set() and not self.done.is_set():
            try:
                self._queue.put(block, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def finish(self) -> None:
        self.put(_END)

    def fail(self, error: BaseException) -> None:
        """The item failed before its end: the writer raises ``error`` inside its blocks
        (a file being written is then removed, never published)."""
        self.put(_Raise(error))

    def blocks(self) -> Iterator[Any]:
        """The writer's side: the item's blocks, in order."""
        while True:
            block = self._queue.get()
            if block is _END:
                return
            if isinstance(block, _Raise):
                raise block.error
            yield block


class WriterThread:
    """One thread that runs ``write(blocks)`` for each submitted item, in order.

    Use as a context manager: leaving it by an exception (an interrupt, a stopped job) fails
    every item still being handed over, so their files are removed, and waits briefly for the
    thread to finish them."""

    def __init__(self, items: int = 4, depth: int = 4) -> None:
        self.depth = depth
        self._tasks: queue.Queue[Any] = queue.Queue(maxsize=items)
        self._open: list[Handoff] = []
        self._thread = threading.Thread(target=self._loop, daemon=True, name="waveglow-write")
        self._thread.start()

    def submit(self, write: Callable[[Iterator[Any]], Any]) -> Handoff:
        """Queue an item (waiting while ``items`` are queued); feed its blocks through the
        returned handoff, then :meth:`Handoff.finish` or :meth:`Handoff.fail` it."""
        handoff = Handoff(self.depth)
        self._open = [h for h in self._open if not h.done.is_set()] + [handoff]
        while True:
            try:
                self._tasks.put((write, handoff), timeout=0.1)
                return handoff
            except queue.Full:
                continue

    def _loop(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            write, handoff = task
            try:
                handoff.value = write(handoff.blocks())
            except BaseException as e:  # noqa: BLE001 - the item's failure, for the job
                handoff.error = e
                handoff.gave_up.set()
            finally:
                handoff.done.set()

    def __enter__(self) -> WriterThread:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: object) -> None:
        if error is not None:
            for handoff in self._open:
                if not handoff.done.is_set():
                    handoff.gave_up.set()
                    _force(handoff, _Raise(KeyboardInterrupt()))
        _force_task(self._tasks)
        self._thread.join(timeout=10 if error is not None else None)


def _force(handoff: Handoff, item: Any) -> None:
    """Put ``item`` on the handoff even when it is full (its pending blocks are dropped)."""
    while True:
        try:
            handoff._queue.put_nowait(item)
            return
        except queue.Full:
            try:
                handoff._queue.get_nowait()
            except queue.Empty:
                pass


def _force_task(tasks: queue.Queue[Any]) -> None:
    """Tell the thread to stop after the items it has (dropping queued ones never started)."""
    while True:
        try:
            tasks.put_nowait(None)
            return
        except queue.Full:
            try:
                _, handoff = tasks.get_nowait()
                handoff.error = KeyboardInterrupt()
                handoff.done.set()
            except queue.Empty:
                pass
