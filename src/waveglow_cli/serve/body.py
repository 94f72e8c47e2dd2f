"""Reading a request's body as it arrives, within one server-wide memory budget.

Every body being received and parsed holds a :class:`BodyClaim` on the server's
:class:`BodyBudget` (``--max-body-memory-mb``), grown before each chunk is taken in: a binary
body (``.npy``/``.pt``) three times its bytes (kept whole, joined, then decoded into a float32
mel), a JSON body 4 bytes per number read so far plus what converting its chunk at hand
takes (:mod:`.jsonmel` converts it as it comes; the text is not kept).  A claim that
does not fit is refused at once: 503 with ``Retry-After`` while other bodies hold the budget,
413 if that one body could never fit.  The claim is released when the body is parsed, and
also when the client leaves or the request is cut (``finally``), and glibc is then asked to
return the freed heap to the system (``malloc_trim``), at most once a second: freed small
blocks otherwise stay resident after the clients are gone.

Parsing runs in the thread pool, a chunk at a time, so the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from .jsonmel import SLICE_BYTES, MelJsonReader
from .protocol import (
    Limits,
    RequestError,
    RequestTooLarge,
    ServerBusy,
    SynthesisRequest,
    binary_mel,
    is_json,
    json_request,
    may_be_json,
    parse_params,
)

BINARY_FACTOR = 3            # a binary body: its chunks, joined, decoded (float32 <= float64)
# A JSON chunk while it is converted: itself and two copies of its text, and its numbers (at
# most one per 2 bytes, 4 bytes each: 2 bytes per byte) ...
JSON_CHUNK_FACTOR = 5
# ... and, per byte of the slice converted at once, the list of the numbers' texts (a bytes
# object of ~36 bytes per 2 bytes of "0,"), their float64 and float32 values.
JSON_SLICE_FACTOR = 30
SNIFF_BYTES = 64             # what decides JSON or binary when the type does not say
TRIM_AFTER_BYTES = 32 << 20  # released since the last malloc_trim before another is worth it
TRIM_IDLE_BYTES = 4 << 20    # the same once no body is being read
TRIM_INTERVAL_S = 1.0


@dataclass
class BodyBudget:
    """The bytes all bodies being read may hold together (see the module's text).  Used from
    the event loop only."""

    limit: int
    on_change: Callable[[int], None] | None = None  # told the bytes in use (a metric)
    in_use: int = 0
    released_since_trim: int = 0
    last_trim: float = -TRIM_INTERVAL_S
    trim_pending: bool = False

    def claim(self) -> BodyClaim:
        return BodyClaim(self)

    def _changed(self, amount: int) -> None:
        self.in_use += amount
        if self.on_change is not None:
            self.on_change(self.in_use)

    def _released(self, amount: int) -> None:
        self._changed(-amount)
        self.released_since_trim += amount
        # Trim after much was freed, or once no body is being read (all of it is free now).
        if self.trim_pending or self.released_since_trim < (
                TRIM_IDLE_BYTES if self.in_use == 0 else TRIM_AFTER_BYTES):
            return
        loop = asyncio.get_running_loop()
        self.trim_pending = True
        wait = self.last_trim + TRIM_INTERVAL_S - time.monotonic()
        loop.call_later(max(0.0, wait), self._trim, loop)

    def _trim(self, loop: asyncio.AbstractEventLoop) -> None:
        self.trim_pending, self.released_since_trim = False, 0
        self.last_trim = time.monotonic()
        # In the pool: trimming a large heap takes milliseconds.
        loop.run_in_executor(None, trim_freed_memory)


@dataclass
class BodyClaim:
    """One body's share of the budget: grows with the body, released once."""

    budget: BodyBudget
    held: int = 0

    def ensure(self, total: int) -> None:
        """Hold at least ``total`` bytes; :class:`ServerBusy` (503) if the budget is spent,
        :class:`RequestTooLarge` (413) if ``total`` is more than the whole budget."""
        if total <= self.held:
            return
        budget = self.budget
        if total > budget.limit:
            raise RequestTooLarge(f"this body needs more than the {_mib(budget.limit)} MiB "
                                  "this server reads bodies in (--max-body-memory-mb)")
        if budget.in_use + total - self.held > budget.limit:
            raise ServerBusy(f"the server is reading as many bodies as its memory for them "
                             f"allows ({_mib(budget.limit)} MiB, --max-body-memory-mb); "
                             "retry later")
        budget._changed(total - self.held)
        self.held = total

    def release(self) -> None:
        held, self.held = self.held, 0
        if held:
            self.budget._released(held)


def _mib(size: int) -> str:
    return f"{size / 2**20:g}"


async def read_request(request: Request, limits: Limits, budget: BodyBudget
                       ) -> SynthesisRequest:
    """The request's mel and parameters, read as the body arrives (see the module's text).
    Raises :class:`RequestError` (400/413/503) and starlette's ``ClientDisconnect``."""
    content_type = request.headers.get("content-type")
    declared = _declared_length(request.headers.get("content-length"))
    limit = limits.body_bytes(json_body=may_be_json(content_type))
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"body of {declared} bytes is larger than this server's limit "
                              f"of {limit} bytes")
    claim = budget.claim()
    reader = _BodyReader(content_type, limits, claim, declared)
    try:
        async for chunk in request.stream():
            if chunk:
                await reader.add(chunk)
        return await reader.finish(request.query_params)
    finally:
        claim.release()


def _declared_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise RequestError(f"bad Content-Length {value[:40]!r}")
    return int(value)


class _BodyReader:
    """One body: sniffed as JSON or binary from its first bytes, then parsed (JSON) or kept
    (binary) as it arrives, counted against its byte limit and the budget."""

    def __init__(self, content_type: str | None, limits: Limits, claim: BodyClaim,
                 declared: int | None) -> None:
        self.content_type, self.limits, self.claim = content_type, limits, claim
        self.declared = declared
        self.limit = limits.body_bytes(json_body=may_be_json(content_type))
        self.received = 0
        self.head = b""                      # the first bytes, until the kind is known
        self.json: MelJsonReader | None = None
        self.chunks: list[bytes] | None = None  # a binary body's bytes

    async def add(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.limit:
            raise RequestTooLarge(f"body is larger than this server's limit of {self.limit} "
                                  "bytes")
        if self.json is None and self.chunks is None:
            self.head += chunk
            if len(self.head) < SNIFF_BYTES:
                self.claim.ensure(len(self.head))
                return
            chunk, self.head = self._sniff(), b""
        await self._take(chunk)

    def _sniff(self) -> bytes:
        """Decide JSON or binary from the first bytes; those bytes, to be taken in."""
        if is_json(self.content_type, self.head[:SNIFF_BYTES]):
            self.json = MelJsonReader(self.limits.n_mels, self.limits.max_frames)
        else:
            self.chunks = []
            self.limit = self.limits.body_bytes(json_body=False)
            if max(self.received, self.declared or 0) > self.limit:
                raise RequestTooLarge(f"body is larger than this server's limit of "
                                      f"{self.limit} bytes for a binary mel")
        return self.head

    async def _take(self, chunk: bytes) -> None:
        if self.json is not None:
            reader = self.json
            self.claim.ensure(reader.held_bytes + JSON_CHUNK_FACTOR * len(chunk)
                              + JSON_SLICE_FACTOR * min(len(chunk), SLICE_BYTES))
            await run_in_threadpool(reader.feed, chunk)
        else:
            assert self.chunks is not None
            # A declared length is claimed whole at once: refused before it is sent.
            self.claim.ensure(BINARY_FACTOR * max(self.received, self.declared or 0))
            self.chunks.append(chunk)

    async def finish(self, query: Mapping[str, str]) -> SynthesisRequest:
        if self.json is None and self.chunks is None:
            self._sniff()
            if self.head:
                await self._take(self.head)
        query = dict(query)
        if self.json is not None:
            reader = self.json
            self.claim.ensure(2 * reader.held_bytes)  # and the rows stacked into one array
            mel, fields = await run_in_threadpool(reader.finish)
            self.json = None
            return await run_in_threadpool(json_request, mel, fields, query, self.limits)
        assert self.chunks is not None
        body, self.chunks = b"".join(self.chunks), None
        mel = await run_in_threadpool(binary_mel, body, self.limits)
        return SynthesisRequest(mel, parse_params(query))


def trim_freed_memory() -> bool:
    """Ask glibc to return freed heap memory to the system (``malloc_trim(0)``, every arena);
    False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:  # the running program's symbols: libc's, found without a search (no subprocess)
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return False
