"""Dynamic batching across requests: one worker thread owns the model.

Requests wait in a bounded queue.  The worker takes the oldest, waits up to ``max_wait``
from its arrival for others (at most ``max_batch`` in all), and synthesises those with the
same sigma and denoiser strength in one :meth:`Synthesizer.stream` call.  Each request's
noise seed and piece plan are its own, and the synthesizer's masked batching is exact, so its
audio is what it would be alone: bit for bit ``waveglow synth``'s when its pieces go through
forward passes of their own (alone, or with ``batch_size`` 1 as on the CPU), to float
rounding when they share them with other requests' pieces.  Each event is handed to its
request's asyncio queue on the event loop's thread (``call_soon_threadsafe``): the worker
never touches the loop's objects.

A request whose client left is put in ``cancelled``: taken off the queue if it still waits,
and skipped by the synthesizer before every further batch if it runs.  Any exception out of
a synthesis call fails that call's requests only; the worker goes on with the next.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..synthesis.plans import BatchOptions
from ..synthesis.synthesizer import SynthesisOptions, Synthesizer
from .metrics import ServerMetrics

# What a request's queue receives: (an audio block, or the exception that failed it; last?).
Delivery = tuple["np.ndarray | BaseException", bool]
# (sigma, denoiser strength) -> a synthesizer with those options and the server's batching.
SynthesizerFactory = Callable[[SynthesisOptions, BatchOptions], Synthesizer]


@dataclass(eq=False)
class Job:
    """One request's synthesis: its mel, options and the queue its audio goes to."""

    key: str                    # unique within the server ("r17"); the user's key only seeds
    mel: np.ndarray
    sigma: float
    denoiser_strength: float
    seed: int                   # the noise seed (synthesis.item_seed of the user's seed, key)
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Delivery] = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.monotonic)

    @property
    def group(self) -> tuple[float, float]:
        return self.sigma, self.denoiser_strength

    def deliver(self, block: np.ndarray | BaseException, done: bool) -> None:
        """Hand one event to the request (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (block, done))
        except RuntimeError:  # the loop is closed: nobody waits for this request any more
            pass


@dataclass(frozen=True)
class BatcherOptions:
    """How the worker batches requests (``waveglow serve``'s --max-batch, --max-wait-ms and
    --queue, checked here)."""

    max_batch: int = 16         # requests per synthesis call
    max_wait: float = 0.010     # seconds the oldest waiting request waits for company
    queue: int = 256            # requests that may wait; more are refused (503)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue < 1 or not self.max_wait >= 0:
            raise ValueError("max_batch and queue must be >= 1 and max_wait >= 0")


class Batcher:
    """The queue and the worker thread around one model (see the module's text)."""

    def __init__(self, synthesizer: SynthesizerFactory, batch: BatchOptions,
                 options: BatcherOptions, metrics: ServerMetrics) -> None:
        self.synthesizer, self.batch, self.options = synthesizer, batch, options
        self.metrics = metrics
        self.cancelled: set[str] = set()  # read by the synthesizer before every batch
        self._running: set[str] = set()   # keys of the synthesis call under way
        self._waiting: deque[Job] = deque()
        self._lock = threading.Condition()
        self._stopping = False
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    # -- the event loop's side ----------------------------------------------------------------

    def new_key(self) -> str:
        return f"r{next(self._ids)}"

    def submit(self, job: Job) -> bool:
        """Queue a request; False when the queue is full (or the server is stopping)."""
        with self._lock:
            if self._stopping or len(self._waiting) >= self.options.queue:
                return False
            self._waiting.append(job)
            self.metrics.queue_depth.set(len(self._waiting))
            self._lock.notify()
        return True

    def cancel(self, job: Job) -> None:
        """The client is gone: drop the request if it waits, else stop computing it."""
        with self._lock:
            if job in self._waiting:
                self._waiting.remove(job)
                self.metrics.queue_depth.set(len(self._waiting))
            elif job.key in self._running:
                self.cancelled.add(job.key)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="waveglow-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, let the worker finish what it holds, and wait for it."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the worker thread ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                return
            try:
                for group in _groups(jobs):
                    self.metrics.batch_size.observe(len(group))
                    self._synthesize(group)
            finally:
                with self._lock:
                    self._running = set()
                    self.cancelled.difference_update(job.key for job in jobs)

    def _take(self) -> list[Job]:
        """The next requests to synthesise together; [] once stopping with none waiting."""
        with self._lock:
            while not self._waiting and not self._stopping:
                self._lock.wait()
            if not self._waiting:
                return []
            deadline = self._waiting[0].arrived + self.options.max_wait
            while len(self._waiting) < self.options.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0 or not self._waiting:
                    break
                self._lock.wait(left)
            count = min(self.options.max_batch, len(self._waiting))
            jobs = [self._waiting.popleft() for _ in range(count)]
            self._running = {job.key for job in jobs}
            self.metrics.queue_depth.set(len(self._waiting))
            return jobs

    def _synthesize(self, jobs: list[Job]) -> None:
        """One synthesis call for requests of the same options; every request ends with a
        last event, an error if the call raised."""
        sigma, strength = jobs[0].group
        open_jobs = {job.key: job for job in jobs}
        try:
            synthesizer = self.synthesizer(
                SynthesisOptions(sigma=sigma, denoiser_strength=strength), self.batch)
            events = synthesizer.stream([(job.key, job.mel) for job in jobs], self.cancelled,
                                        seeds={job.key: job.seed for job in jobs})
            for key, block, done in events:
                job = open_jobs.get(key)
                if job is None:
                    continue
                job.deliver(block, done)
                if done:
                    del open_jobs[key]
        except Exception as e:  # noqa: BLE001 - fails these requests, never the worker
            self.metrics.failures.inc()
            for job in open_jobs.values():
                job.deliver(e, True)


def _groups(jobs: list[Job]) -> Iterator[list[Job]]:
    """Requests of equal (sigma, denoiser strength), in order of first arrival."""
    groups: dict[tuple[float, float], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    yield from groups.values()
