"""Running the app on uvicorn: a socket bound by us (so ``--port 0`` works and the port is
known), a line once the server accepts connections, and uvicorn's own graceful shutdown on
SIGTERM/SIGINT (stop accepting, finish the requests in flight, then the app's lifespan ends
the synthesis worker)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette

from ..errors import WaveGlowError


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
    """uvicorn's server, telling ``on_ready`` when it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self.on_ready()


def run_server(app: Starlette, sock: socket.socket, on_ready: Callable[[], None], *,
               log_level: str = "warning") -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT, then shut down gracefully.  uvicorn
    re-raises the signal once it has finished, for the previous handler: the caller sets it."""
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on",
                            server_header=False, timeout_keep_alive=5)
    _Server(config, on_ready).run(sockets=[sock])
