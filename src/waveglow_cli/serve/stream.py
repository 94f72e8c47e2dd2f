"""The answer to one synthesis request: its audio sent as the worker makes it.

The status is decided by the first event: an error before any audio is a JSON error (422 for
a synthesis failure such as NaN audio, 500 for anything unexpected); audio starts a ``200``
whose body is the WAV header (it states the exact length, known from the mel) and then each
block as it arrives, chunked.  A failure after that can no longer change the status: the
connection is closed before the end of the chunked body, which every HTTP client reports as
an incomplete response.  FLAC is encoded whole once all the audio is there.

While it waits, the response also listens for the client's disconnect (``http.disconnect``
from ``receive``): a client that leaves has its request taken off the queue, or its further
pieces skipped by the worker.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from ..audio.out import StreamEncoder, encode_audio, finalize_audio
from ..errors import InputFileError, WaveGlowError
from .batcher import Batcher, Delivery, Job
from .metrics import ServerMetrics
from .protocol import AudioParams

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CLIENT_GONE = 499  # nginx's code for "the client closed the connection": for the metrics only
AUDIO_NAME = "audio"  # what errors about the synthesised audio call it


def error_response(status: int, reason: str, *, close: bool = False,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": reason}`` with ``status``; ``close`` ends the connection afterwards (a body
    refused unread cannot be followed by another request on it)."""
    extra = dict(headers or {})
    if close:
        extra["connection"] = "close"
    return JSONResponse({"error": reason}, status_code=status, headers=extra)


def failure(error: BaseException) -> tuple[int, str]:
    """The status and reason for a request whose synthesis failed."""
    if isinstance(error, InputFileError):
        return 422, error.reason
    if isinstance(error, (WaveGlowError, ValueError)):  # this input cannot be synthesised
        return 422, f"synthesis failed: {error}" if not isinstance(error, WaveGlowError) \
            else str(error)
    if isinstance(error, MemoryError):
        return 503, f"out of memory ({error}); retry later or send a shorter mel"
    return 500, f"synthesis failed ({type(error).__name__}: {error})"


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the body was read already: nothing else comes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class AudioStream:
    """An ASGI response for a queued :class:`Job` (see the module's text)."""

    def __init__(self, batcher: Batcher, metrics: ServerMetrics, job: Job, params: AudioParams,
                 sample_rate: int, samples: int) -> None:
        self.batcher, self.metrics, self.job, self.params = batcher, metrics, job, params
        self.sample_rate, self.samples = sample_rate, samples
        self.finished = False  # the worker has sent this request's last event

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.ensure_future(_disconnected(receive))
        self.metrics.in_flight.inc()
        status = CLIENT_GONE
        try:
            status = await self._answer(send, gone)
        finally:
            gone.cancel()
            self.metrics.in_flight.dec()
            if not self.finished:
                self.batcher.cancel(self.job)
            self.metrics.answered(status)

    async def _next(self, gone: asyncio.Future[None]) -> Delivery | None:
        """The request's next event (noting when it is the last); None once the client has
        gone."""
        events = self.job.events
        if events.empty():
            getter = asyncio.ensure_future(events.get())
            waiting: set[asyncio.Future[Any]] = {getter, gone}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                return None
            event = getter.result()
        else:
            event = events.get_nowait()
        self.finished = event[1]
        return event

    async def _answer(self, send: Send, gone: asyncio.Future[None]) -> int:
        first = await self._next(gone)
        if first is None:
            return CLIENT_GONE
        block, done = first
        if isinstance(block, BaseException):
            return await self._fail(send, block)
        if self.params.format == "flac":
            return await self._whole(send, gone, block, done)
        encoder = StreamEncoder(self.params.format, self.sample_rate, self.params.subtype,
                                self.samples)
        try:
            data = encoder.header() + encoder.encode(block, AUDIO_NAME)
        except Exception as e:  # noqa: BLE001 - NaN audio: nothing sent yet, say so
            return await self._fail(send, e)
        await send({"type": "http.response.start", "status": 200, "headers": self._headers()})
        await send({"type": "http.response.body", "body": data, "more_body": True})
        self.metrics.first_byte.observe(time.monotonic() - self.job.arrived)
        while not done:
            event = await self._next(gone)
            if event is None:
                return CLIENT_GONE
            block, done = event
            if isinstance(block, BaseException):
                return 500  # after the first byte: end the connection mid-body (see above)
            try:
                data = encoder.encode(block, AUDIO_NAME)
            except Exception:  # noqa: BLE001 - the same: the status is sent already
                return 500
            if data:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            if gone.done():
                return CLIENT_GONE
        await send({"type": "http.response.body", "body": encoder.trailer(), "more_body": False})
        self._done()
        return 200

    async def _whole(self, send: Send, gone: asyncio.Future[None], block: np.ndarray,
                     done: bool) -> int:
        """FLAC: all the audio, then one encoded body (errors are JSON until then)."""
        blocks = [block]
        while not done:
            event = await self._next(gone)
            if event is None:
                return CLIENT_GONE
            item, done = event
            if isinstance(item, BaseException):
                return await self._fail(send, item)
            blocks.append(item)
        try:
            data = await run_in_threadpool(self._flac, blocks)
        except Exception as e:  # noqa: BLE001 - NaN audio
            return await self._fail(send, e)
        headers = [*self._headers(), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self.metrics.first_byte.observe(time.monotonic() - self.job.arrived)
        await send({"type": "http.response.body", "body": data, "more_body": False})
        self._done()
        return 200

    def _flac(self, blocks: list[np.ndarray]) -> bytes:
        audio = finalize_audio(np.concatenate(blocks), AUDIO_NAME, self.params.subtype)
        return encode_audio(audio, self.sample_rate, self.params.subtype, "FLAC")

    async def _fail(self, send: Send, error: BaseException) -> int:
        status, reason = failure(error)
        body = json.dumps({"error": reason}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        if status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return status

    def _headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", self.params.content_type.encode()),
                (b"x-sample-rate", str(self.sample_rate).encode()),
                (b"x-audio-samples", str(self.samples).encode()),
                (b"cache-control", b"no-store")]

    def _done(self) -> None:
        self.metrics.latency.observe(time.monotonic() - self.job.arrived)
        self.metrics.audio_seconds.inc(self.samples / self.sample_rate)
