"""Running the app on uvicorn: a socket bound by us (so ``--port 0`` works and the port is
known), connections accepted and watched by :mod:`.connections` (limits and timeouts), a line
once the server accepts connections, and a graceful shutdown on SIGTERM/SIGINT with a
deadline: stop accepting, cut the bodies still arriving, let the responses in flight finish
for up to ``graceful_timeout`` seconds, close what is left, then the app's lifespan ends the
synthesis worker."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE

from ..errors import WaveGlowError
from .connections import (
    ConnectionLimits,
    GuardedProtocol,
    Listener,
    connection_capacity,
    logger,
    watch,
)

# After the deadline the connections left are closed; their requests end as a client's that
# left.  This long is given to them before what still runs is cancelled.
CUT_REQUESTS_WAIT_S = 2.0


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening (uvicorn listens on it once the
    app has started); a port in use or a bad host is a one-line :class:`WaveGlowError`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise WaveGlowError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise WaveGlowError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def url_of(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server with our accepting, watching and shutdown (see the module's text),
    telling ``on_ready`` when it accepts connections."""

    def __init__(self, config: uvicorn.Config, limits: ConnectionLimits,
                 on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.limits, self.on_ready = limits, on_ready
        self.listener: Listener | None = None
        self.watchdog: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        assert sockets is not None and len(sockets) == 1
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        loop = asyncio.get_running_loop()
        capacity, refusing = connection_capacity(self.limits.max_connections)
        if capacity < self.limits.max_connections:
            logger.warning("--max-connections %d lowered to %d to fit the open-file limit "
                           "(ulimit -n)", self.limits.max_connections, capacity)

        def protocol() -> GuardedProtocol:
            return GuardedProtocol(self.config, self.server_state, self.lifespan.state, loop,
                                   limits=self.limits)

        self.listener = Listener(sockets[0], protocol, self.server_state.connections,
                                 capacity, refusing, loop)
        self.listener.start(self.config.backlog)
        self.servers = []
        self.watchdog = loop.create_task(watch(self.server_state.connections, self.limits))
        self.started = True
        if not self.should_exit:
            self.on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        assert self.listener is not None and self.watchdog is not None
        self.listener.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()
        if not await self._settled(self.limits.graceful_timeout):
            logger.warning("closing %d connection(s) still open after --graceful-timeout "
                           "%g s", len(state.connections), self.limits.graceful_timeout)
            for connection in list(state.connections):
                if isinstance(connection, GuardedProtocol):
                    connection.abort()
            if not await self._settled(CUT_REQUESTS_WAIT_S):
                for task in list(state.tasks):
                    task.cancel()
        await self.listener.wait_closed()
        self.watchdog.cancel()
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _settled(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for every connection to close and every request to end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        state = self.server_state
        while (state.connections or state.tasks) and not self.force_exit:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True


def run_server(app: Starlette, sock: socket.socket, on_ready: Callable[[], None], *,
               limits: ConnectionLimits | None = None, log_level: str = "warning") -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT, then shut down gracefully (see the
    module's text).  uvicorn re-raises the signal once it has finished, for the previous
    handler: the caller sets it."""
    limits = limits or ConnectionLimits()
    keep_alive = max(1, min(5, int(limits.header_timeout)))
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            server_header=False, timeout_keep_alive=keep_alive, ws="none")
    _Server(config, limits, on_ready).run(sockets=[sock])
