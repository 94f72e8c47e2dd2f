"""The server's connections under hostile clients: how many, how long each may take, and how
they end.

uvicorn alone closes a connection only after a response (``timeout_keep_alive``): one that
never finishes its request head, or sends its body a byte at a time, is kept forever (800 of
800 were still open after 60 s), its ``limit_concurrency`` answers 503 only once a request
head has arrived, and a graceful shutdown waits for every body still arriving.  Here:

* :class:`Listener` accepts connections itself: beyond ``max_connections`` (lowered to fit
  the open-file limit) a connection is answered 503 at once and closed; an accept that fails
  (EMFILE: out of file descriptors) pauses accepting for ``ACCEPT_BACKOFF_S`` and is logged
  as one line, at most once a minute, where asyncio logged a traceback for every try (70 MB
  of log in 35 s).
* :class:`GuardedProtocol` (uvicorn's h11 protocol) knows where each connection is: waiting
  for a request head (``header_timeout`` from the connection or the last response, whole),
  receiving a body (cut with 408 once idle for ``body_timeout``, or slower than
  ``min_body_rate`` over any such span), or sending an answer the client does not read
  (closed once it took less than ``min_body_rate`` bytes/s of it over such a span).
  :func:`watch` checks them all a few times a second.
* A request refused before its body was read (413, 503) half-closes the connection and reads
  the rest away for up to ``LINGER_S``, so the client, still sending, reads the answer rather
  than a connection reset.
* On shutdown, bodies still arriving are answered 503 and closed at once; responses in flight
  go on (see :mod:`.server` for the deadline).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("uvicorn.error")

READ_CHUNK_BYTES = 64 * 1024   # one socket read (asyncio's default, 256 KiB, per connection)
LINGER_S = 5.0                 # reading away the rest of a refused body
REFUSAL_LINGER_S = 1.0         # the same for a connection over the limit
MAX_REFUSING = 64              # connections over the limit being answered at once
ACCEPT_BATCH = 64              # accepts per wake-up of the listening socket
ACCEPT_BACKOFF_S = 0.5         # pause after a failed accept (no descriptors left)
LOG_INTERVAL_S = 60.0          # a repeated warning is written at most this often
FD_HEADROOM = 16               # descriptors kept for the server's own files


@dataclass(frozen=True)
class ConnectionLimits:
    """``waveglow serve``'s connection options."""

    max_connections: int = 512     # served at once; more are answered 503 and closed
    header_timeout: float = 10.0   # seconds for a whole request head (and idle keep-alive)
    body_timeout: float = 30.0     # seconds a body (or a client reading its answer) may stall
    graceful_timeout: float = 30.0  # seconds shutdown waits for responses in flight
    min_body_rate: int = 1024      # bytes/s a body must average over each body_timeout

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("--max-connections must be >= 1")
        if not (self.header_timeout > 0 and self.body_timeout > 0
                and self.graceful_timeout >= 0 and self.min_body_rate >= 0):
            raise ValueError("--header-timeout and --body-timeout must be > 0, "
                             "--graceful-timeout >= 0")

    @property
    def tick(self) -> float:
        """How often :func:`watch` looks at the connections."""
        return max(0.05, min(0.5, self.header_timeout / 4, self.body_timeout / 4))


def connection_capacity(requested: int) -> tuple[int, int]:
    """(connections served at once, refusals answered at once): ``requested`` lowered so that
    both fit the open-file limit beside the descriptors already open (each connection is one,
    and running out of them is what made accepting fail)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return requested, MAX_REFUSING
    if soft == resource.RLIM_INFINITY:
        return requested, MAX_REFUSING
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 64
    spare = max(2, soft - open_now - FD_HEADROOM)
    refusing = max(1, min(MAX_REFUSING, spare // 8))
    return max(1, min(requested, spare - refusing)), refusing


def raw_response(status: int, reason: str, *, retry_after_s: int | None = None) -> bytes:
    """A whole ``{"error": reason}`` response that closes the connection, for the places
    that answer outside a request cycle."""
    body = json.dumps({"error": reason}).encode()
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    if retry_after_s is not None:
        head.append(f"retry-after: {retry_after_s}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RateLimitedWarning:
    """One warning line now, then at most one per ``LOG_INTERVAL_S``, counting the others."""

    def __init__(self) -> None:
        self.last = -math.inf
        self.unsaid = 0

    def note(self, message: str, now: float) -> None:
        if now - self.last < LOG_INTERVAL_S:
            self.unsaid += 1
            return
        more = f" ({self.unsaid} more since the last such line)" if self.unsaid else ""
        logger.warning("%s%s", message, more)
        self.last, self.unsaid = now, 0


class _LingeringTransport:
    """The transport as uvicorn sees it: closing it while the request's body is still
    arriving lingers (see the module's text)."""

    def __init__(self, raw: asyncio.Transport, protocol: GuardedProtocol) -> None:
        self._raw, self._protocol = raw, protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def close(self) -> None:
        self._protocol.close_or_linger()

    def is_closing(self) -> bool:
        return self._raw.is_closing() or self._protocol.linger_until is not None


class GuardedProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with timeouts, lingering close and a shutdown that cuts
    bodies still arriving (see the module's text)."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *,
                 limits: ConnectionLimits) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        now = self.loop.time()
        self.raw: asyncio.Transport | None = None
        self.waiting_since = now        # for the next request's head
        self.head_bytes = 0             # bytes received while waiting for it
        self.body_since: float | None = None
        self.last_read = now
        self.window_start, self.window_bytes = now, 0  # the body's rate, span by span
        self.write_paused_since: float | None = None  # and how much was buffered then:
        self.write_window_start, self.write_window_bytes = now, 0  # the client's reading rate
        self.linger_until: float | None = None
        self.made = False                              # connection_made has run
        self.on_made: Callable[[], None] | None = None  # told then (Listener's count)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if isinstance(getattr(transport, "max_size", None), int):
            transport.max_size = READ_CHUNK_BYTES  # type: ignore[attr-defined]
        self.raw = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        self.made = True
        if self.on_made is not None:
            self.on_made()

    def data_received(self, data: bytes) -> None:
        if self.linger_until is not None:
            return  # the rest of a refused body: read and dropped
        now = self.loop.time()
        self.last_read = now
        self.window_bytes += len(data)
        if self.conn.their_state is h11.IDLE:
            self.head_bytes += len(data)
        super().data_received(data)
        if self.body_since is None and self.conn.their_state is h11.SEND_BODY:
            self._body_started(now)

    def _body_started(self, now: float) -> None:
        self.body_since = self.window_start = self.last_read = now
        self.window_bytes = 0

    def on_response_complete(self) -> None:
        self.waiting_since, self.head_bytes, self.body_since = self.loop.time(), 0, None
        super().on_response_complete()

    def pause_writing(self) -> None:
        self.write_paused_since = self.write_window_start = self.loop.time()
        self.write_window_bytes = self.raw.get_write_buffer_size() if self.raw else 0
        super().pause_writing()

    def resume_writing(self) -> None:
        self.write_paused_since = None
        super().resume_writing()

    # -- ending the connection ------------------------------------------------------------------

    def close_or_linger(self) -> None:
        """uvicorn closes the transport: linger if the body is still arriving."""
        raw = self.raw
        assert raw is not None
        if self.linger_until is None and not raw.is_closing() and raw.can_write_eof() \
                and self.conn.their_state is h11.SEND_BODY:
            self.linger_until = self.loop.time() + LINGER_S
            raw.write_eof()       # after the answer: the client reads it, then end of stream
            raw.resume_reading()  # flow control may have paused it
        else:
            raw.close()

    def refuse(self, status: int, reason: str, retry_after_s: int | None = None) -> None:
        """Answer the request whose body is arriving with ``status`` and close.  The app sees
        its client leave (its claim on the memory budget is released); what it sends after
        is dropped."""
        raw, cycle = self.raw, self.cycle
        assert raw is not None
        if cycle is not None and not cycle.response_started and not cycle.disconnected:
            cycle.disconnected = True
            cycle.message_event.set()
            body = json.dumps({"error": reason}).encode()
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
            if retry_after_s is not None:
                headers.append((b"retry-after", str(retry_after_s).encode()))
            answer = h11.Response(status_code=status, headers=headers,
                                  reason=HTTPStatus(status).phrase.encode())
            with suppress(h11.LocalProtocolError):
                raw.write(self.conn.send(answer)
                          + self.conn.send(h11.Data(data=body))
                          + self.conn.send(h11.EndOfMessage()))
        raw.close()

    def shutdown(self) -> None:
        """Graceful shutdown: bodies still arriving are answered 503 and closed at once,
        idle connections close, responses in flight go on (uvicorn's)."""
        raw = self.raw
        if raw is None or raw.is_closing() or self.linger_until is not None:
            if raw is not None:
                raw.close()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self.refuse(503, "the server is shutting down; retry later", 1)
        elif state is h11.IDLE and self.head_bytes and self._between_requests():
            raw.write(raw_response(503, "the server is shutting down; retry later",
                                   retry_after_s=1))
            raw.close()
        else:
            super().shutdown()

    def abort(self) -> None:
        if self.raw is not None:
            self.raw.abort()

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    # -- the watchdog's look ------------------------------------------------------------------

    def check(self, now: float) -> None:
        """Cut this connection if it went over a limit (called by :func:`watch`)."""
        raw, limits = self.raw, self.limits
        if raw is None or raw.is_closing():
            return
        if self.linger_until is not None:
            if now >= self.linger_until:
                raw.close()
            return
        if self.write_paused_since is not None and not self._reading_answer(now):
            raw.abort()  # the client stopped reading its answer (or nearly)
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._check_body(now)
        elif state is h11.IDLE and self._between_requests() \
                and now - self.waiting_since > limits.header_timeout:
            if self.head_bytes:  # part of a request came: say why it ends
                raw.write(raw_response(408, f"the request head took longer than "
                                            f"{limits.header_timeout:g} s (--header-timeout)"))
            raw.close()

    def _reading_answer(self, now: float) -> bool:
        """While the answer waits on the client: whether it took at least ``min_body_rate``
        bytes/s of it over the last ``body_timeout`` (a big answer is paused until it has read
        nearly all: being paused long is not enough to be cut)."""
        assert self.raw is not None
        span = now - self.write_window_start
        if span < self.limits.body_timeout:
            return True
        buffered = self.raw.get_write_buffer_size()
        if self.write_window_bytes - buffered < self.limits.min_body_rate * span:
            return False
        self.write_window_start, self.write_window_bytes = now, buffered
        return True

    def _check_body(self, now: float) -> None:
        limits = self.limits
        if self.body_since is None:
            self._body_started(now)
        if self.flow.read_paused:  # the app has not taken what came: not the client's delay
            self.window_start = self.last_read = now
            self.window_bytes = 0
            return
        if now - self.last_read > limits.body_timeout:
            self.refuse(408, f"no request body bytes for {limits.body_timeout:g} s "
                             "(--body-timeout)")
        elif now - self.window_start >= limits.body_timeout:
            if self.window_bytes < limits.min_body_rate * (now - self.window_start):
                self.refuse(408, f"the request body arrives slower than "
                                 f"{limits.min_body_rate} bytes/s")
            else:
                self.window_start, self.window_bytes = now, 0


async def watch(connections: set[Any], limits: ConnectionLimits) -> None:
    """Check every connection a few times a second, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(limits.tick)
        now = loop.time()
        for connection in list(connections):
            if isinstance(connection, GuardedProtocol):
                connection.check(now)


class Listener:
    """Accepts connections on a listening socket (see the module's text): at most
    ``capacity`` served (``connections`` is uvicorn's set of open ones), the rest answered
    503 and closed, lingering for at most ``refusing_limit`` of them at once."""

    def __init__(self, sock: socket.socket, protocol: Callable[[], GuardedProtocol],
                 connections: set[Any], capacity: int, refusing_limit: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.sock, self.protocol, self.connections = sock, protocol, connections
        self.capacity, self.refusing_limit, self.loop = capacity, refusing_limit, loop
        # Accepted, not yet in ``connections`` (counted until its connection_made: a burst
        # of accepts must not count a connection twice, or none).
        self.starting = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.refusing: set[asyncio.Task[None]] = set()
        self.reading = self.closed = False
        self.resume_handle: asyncio.TimerHandle | None = None
        self.busy = raw_response(503, f"the server has {capacity} connections open "
                                      "(--max-connections); retry later", retry_after_s=1)
        self.accept_failures = RateLimitedWarning()
        self.refusals = RateLimitedWarning()

    def start(self, backlog: int) -> None:
        self.sock.listen(backlog)
        self.sock.setblocking(False)
        self._resume()

    def close(self) -> None:
        """Stop accepting and close the listening socket."""
        self.closed = True
        self._pause()
        self.sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self.tasks, *self.refusing, return_exceptions=True)

    def _pause(self, resume_after: float | None = None) -> None:
        if self.reading:
            self.loop.remove_reader(self.sock.fileno())
            self.reading = False
        if self.resume_handle is not None:
            self.resume_handle.cancel()
            self.resume_handle = None
        if resume_after is not None:
            self.resume_handle = self.loop.call_later(resume_after, self._resume)

    def _resume(self) -> None:
        self.resume_handle = None
        if not self.reading and not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)
            self.reading = True

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: wait, and say so once
                self._pause(ACCEPT_BACKOFF_S)
                self.accept_failures.note(
                    f"cannot accept connections: {e.strerror or e} ({len(self.connections)} "
                    f"open); retrying every {ACCEPT_BACKOFF_S:g} s", self.loop.time())
                return
            conn.setblocking(False)
            if len(self.connections) + self.starting >= self.capacity:
                self._refuse(conn)
            else:
                self.starting += 1
                self._start(self._serve(conn), self.tasks)

    def _start(self, work: Any, tasks: set[asyncio.Task[None]]) -> None:
        task = self.loop.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _refuse(self, conn: socket.socket) -> None:
        """503 and close: lingering while few are (a flood of them must not hold descriptors
        or slow accepting: then the answer is sent as far as the socket takes it at once)."""
        self.refusals.note(f"refusing connections: {self.capacity} are open "
                           "(--max-connections)", self.loop.time())
        if len(self.refusing) < self.refusing_limit:
            self._start(self._linger_refused(conn), self.refusing)
            return
        with suppress(OSError):
            conn.send(self.busy)
        conn.close()

    async def _serve(self, conn: socket.socket) -> None:
        protocol = self.protocol()
        protocol.on_made = self._made
        try:
            await self.loop.connect_accepted_socket(lambda: protocol, conn)
        except OSError:
            conn.close()
        finally:
            if not protocol.made:
                self._made()  # never made: not in ``connections`` either

    def _made(self) -> None:
        self.starting -= 1

    async def _linger_refused(self, conn: socket.socket) -> None:
        """503 and close; what the client sends meanwhile is read away (see the module's
        text)."""
        try:
            await self.loop.sock_sendall(conn, self.busy)
            conn.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(REFUSAL_LINGER_S):
                while await self.loop.sock_recv(conn, READ_CHUNK_BYTES):
                    pass
        except (OSError, TimeoutError):
            pass
        finally:
            conn.close()
