"""The ways the server refuses a request, each carrying its HTTP status and one line of reason
(a module of its own so that the body readers, :mod:`.jsonmel` and :mod:`.body`, and
:mod:`.protocol` share them without importing each other)."""

from __future__ import annotations

from ..errors import UsageError


class RequestError(UsageError):
    """A request the server refuses; ``status`` is the HTTP status it is answered with and
    ``reason`` the one line of its JSON error."""

    status = 400

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class RequestTooLarge(RequestError):
    """The body or the mel is larger than the server's limits (413)."""

    status = 413


class ServerBusy(RequestError):
    """The server cannot take this request now but may later (503 with ``Retry-After``):
    the memory for bodies being read is spent."""

    status = 503
