"""One HTTP(S) transfer into a ``.partial`` file, resumed across cuts.  Knows HTTP, not sources.

:func:`transfer` brings ``<dest>.partial`` to the complete body of one URL:

* a cut connection is resumed with an HTTP ``Range`` request (bounded retries with back-off,
  connect and read timeouts); the resumed bytes are appended only when the server answers
  ``206`` with the ``Content-Range`` asked for, otherwise the transfer restarts from zero;
* an HTML page instead of the file is answered when it is Google Drive's confirmation page
  (see :mod:`waveglow_cli.checkpoints.gdrive`), in the same session;
* the bytes are bounded (:class:`~waveglow_cli.settings.DownloadLimits`): the published size,
  else ``max_bytes`` (counted after any ``Content-Encoding`` is decoded; a larger
  ``Content-Length`` is refused before the body is read), and a transfer slower than
  ``min_rate`` over ``rate_window`` seconds or longer than ``deadline`` is given up.

A failure that makes this URL useless raises :class:`~waveglow_cli.errors.SourceFailed` (the
caller tries the next source); the transfer's own signals (:class:`TransferCut`,
:class:`TransferRestart`) never leave it.  ``<partial>.json`` records which URL the partial
bytes came from, so that a later run resumes them only from the same URL.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from ..errors import (
    ChecksumMismatchError,
    OutputWriteError,
    SourceFailed,
    SourceRefused,
    TransferCut,
    TransferRestart,
)
from ..fileio import file_kind, new_file_mode, open_checked, read_capped, remove_files, replace_file
from ..progress import ProgressReporter
from ..settings import DownloadLimits
from .gdrive import confirmation_request

if TYPE_CHECKING:  # requests is imported when a download starts, not with the CLI
    import requests

_HTML_LIMIT = 1 << 20           # read at most this much of an HTML page
_MAX_INTERSTITIALS = 3          # confirmation pages followed per source


@dataclass(frozen=True)
class RetryPolicy:
    connect_timeout: float = 10.0    # seconds to open a connection
    read_timeout: float = 30.0       # seconds without a byte before giving up on a read
    retries: int = 5                 # consecutive resumptions without progress, per source
    max_attempts: int = 50           # requests per source, all causes together
    backoff: float = 0.5             # first wait before a retry; doubles each time
    max_backoff: float = 8.0
    chunk_size: int = 1 << 20       # read1() hands over at most this much at a time

    def wait(self, failures: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** max(0, failures - 1)))


def state_path(partial: Path) -> Path:
    """The bookkeeping beside a partial download: which URL its bytes came from."""
    return partial.with_name(partial.name + ".json")



def _describe(error: BaseException) -> str:
    import requests

    if isinstance(error, requests.exceptions.ConnectTimeout):
        return "timed out connecting"
    if isinstance(error, (requests.exceptions.ReadTimeout, TimeoutError)):
        return "timed out waiting for data"
    if isinstance(error, requests.exceptions.ConnectionError):
        text = str(error)
        if "refused" in text.lower():
            return "connection refused"
        if "resolve" in text.lower() or "name or service" in text.lower():
            return "cannot resolve the host name"
        return f"connection error ({text[:160]})"
    return str(error)[:200] or type(error).__name__


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes START-END/TOTAL`` (or ``bytes */TOTAL``) -> (start, end, total); Nones if absent."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (int(start) if start else None, int(end) if end else None,
            int(total) if total and total != "*" else None)


def _is_html(response: requests.Response) -> bool:
    kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    disposition = response.headers.get("Content-Disposition", "").lower()
    return kind in ("text/html", "application/xhtml+xml") and "attachment" not in disposition


class _Pace:
    """Gives up on a transfer that is too slow: fewer than ``min_rate * rate_window`` bytes in a
    window of ``rate_window`` seconds, or (with a ``deadline``) not done in time.  The read
    timeout only notices a silent server; this notices one that trickles a byte at a time."""

    def __init__(self, limits: DownloadLimits, url: str, started: float) -> None:
        self.limits, self.url, self.started = limits, url, started
        self.window_start = time.monotonic()
        self.window_bytes = 0

    def check_deadline(self) -> None:
        deadline = self.limits.deadline
        if deadline and time.monotonic() - self.started > deadline:
            raise SourceFailed(f"download too slow: {self.url} did not finish within "
                                f"{deadline:g} s (WAVEGLOW_DOWNLOAD_DEADLINE)")

    def feed(self, count: int) -> None:
        """``count`` more bytes arrived."""
        self.window_bytes += count
        now = time.monotonic()
        self.check_deadline()
        elapsed = now - self.window_start
        if elapsed < self.limits.rate_window:
            return
        if self.limits.min_rate and self.window_bytes < self.limits.min_rate * elapsed:
            raise SourceFailed(
                f"download too slow: {self.window_bytes} bytes in the last {elapsed:.0f} s from "
                f"{self.url} (less than {self.limits.min_rate} bytes/s, "
                "WAVEGLOW_DOWNLOAD_MIN_RATE)")
        self.window_start, self.window_bytes = now, 0


def _read_text(response: requests.Response, pace: _Pace | None = None) -> str:
    data = b""
    for block in response.iter_content(1 << 15):
        data += block
        if pace is not None:
            pace.feed(len(block))
        if len(data) >= _HTML_LIMIT:
            break
    return data[:_HTML_LIMIT].decode(response.encoding or "utf-8", errors="replace")


def _too_big(url: str, cap: int, announced: int | None = None) -> SourceRefused:
    what = (f"announces {announced:,} bytes, more than" if announced is not None
            else "sent more than")
    return SourceRefused(f"refused: {url} {what} the {cap:,} bytes accepted for a file whose size "
                    "is not published (WAVEGLOW_MAX_DOWNLOAD_BYTES); nothing was kept in the "
                    "cache")


def _iter_body(response: requests.Response, chunk_size: int) -> Iterator[bytes]:
    """The body as it arrives.  ``read1`` hands over every byte received before a cut (a
    buffered read could drop them); any read failure becomes :class:`TransferCut`."""
    import requests

    raw = response.raw
    read1 = getattr(raw, "read1", None)
    try:
        if read1 is not None:
            while data := read1(chunk_size, decode_content=True):
                yield data
        else:  # urllib3 < 2
            yield from raw.stream(chunk_size, decode_content=True)
    except (requests.exceptions.RequestException, OSError, ValueError) as e:
        raise TransferCut(_describe(e)) from None
    except Exception as e:
        if type(e).__module__.split(".")[0] in ("urllib3", "http"):
            raise TransferCut("connection broken") from None
        raise


_STATE_BYTES = 1 << 16  # {"url": ...}: a URL is far shorter


def _read_state(state_file: Path) -> dict[str, Any]:
    """A partial download's bookkeeping ({"url": ...}); {} when absent or damaged (a FIFO or
    device under its name included: opened non-blocking, read only if a small regular file)."""
    try:
        fd, st = open_checked(state_file)
    except OSError:
        return {}
    try:
        raw = read_capped(fd, _STATE_BYTES) if stat.S_ISREG(st.st_mode) else None
        state = json.loads(raw) if raw is not None else None
    except (OSError, ValueError, RecursionError):
        return {}
    finally:
        os.close(fd)
    return state if isinstance(state, dict) else {}


def _drop_planted(partial: Path) -> None:
    """Remove a partial download that is no regular file (a link, a FIFO, a device): it holds
    no bytes of ours, and writing to it would go through the link or wait on the FIFO."""
    try:
        if not stat.S_ISREG(os.lstat(partial).st_mode):
            os.unlink(partial)
    except (FileNotFoundError, IsADirectoryError):
        pass


# How the partial file is opened: written from zero, or appended to (a resumed transfer).
_Mode = Literal["wb", "ab"]


def _open_partial(partial: Path, mode: _Mode) -> BinaryIO:
    """``partial`` opened to write from zero ('wb') or to append ('ab'): never through a link
    (O_NOFOLLOW), never waiting on a FIFO (O_NONBLOCK), and only if what was opened is a
    regular file."""
    flags = (os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "ab" else os.O_TRUNC)
             | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0))
    fd = os.open(partial, flags, new_file_mode())
    mode_bits = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode_bits):
        os.close(fd)
        raise OutputWriteError(partial, f"is {file_kind(mode_bits)}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode)


def _check_status(status: int) -> None:
    """A status other than 200/206 (a 416 with bytes to resume is handled before) makes this
    source useless."""
    if status >= 500:
        raise SourceFailed(f"HTTP {status} (server error)")
    if status >= 400:
        raise SourceFailed(f"HTTP {status}" + (" (not found)" if status in (404, 410) else ""))
    if status not in (200, 206):
        raise SourceFailed(f"unexpected HTTP {status}")


@dataclass(frozen=True)
class _Request:
    """Where one transfer sends its requests, and what it must accept."""

    session: requests.Session
    url: str                        # the source's URL (before any confirmation page)
    partial: Path
    expect_total: int | None        # the published size
    cap: int                        # the most bytes accepted
    label: str
    progress: ProgressReporter
    policy: RetryPolicy
    limits: DownloadLimits


class _Transfer:
    """The state of one transfer across its requests: what the server said the file is (its
    total size and validator, for ``If-Range``), the request to send next (after a Drive
    confirmation page), and how many attempts, restarts and confirmation pages there were."""

    def __init__(self, request: _Request) -> None:
        self.r = request
        self.state_file = state_path(request.partial)
        self.request_url = request.url
        self.params: dict[str, str] | None = None  # a confirmation form's fields, once answered
        self.validator: str | None = None     # strong ETag / Last-Modified, for If-Range
        self.known_total: int | None = None
        # This source delivered something (then cuts are retried, not the next source).
        self.received_any = False
        self.stalls = self.attempts = self.hops = 0
        self.got = 0                          # bytes received by the current request

    def run(self) -> str:
        """Bring the partial file to the complete body; returns the URL finally used."""
        r = self.r
        state = _read_state(self.state_file)
        _drop_planted(r.partial)
        if r.partial.exists() and (state.get("url") != r.url
                                   or r.partial.stat().st_size > r.cap):
            # From another source (its bytes may differ), or beyond the cap.
            remove_files(r.partial)
        replace_file(self.state_file, json.dumps({"url": r.url}).encode("utf-8"))
        started = time.monotonic()
        while True:
            self.attempts += 1
            if self.attempts > r.policy.max_attempts:
                raise SourceFailed(f"gave up after {r.policy.max_attempts} requests")
            pace = _Pace(r.limits, r.url, started)
            pace.check_deadline()
            self.got = 0
            try:
                if (final_url := self._attempt(pace)) is not None:
                    return final_url
            except TransferRestart as e:
                self._restart(e)
            except TransferCut as e:
                self._resume_later(e)
            except (ChecksumMismatchError, SourceRefused):
                remove_files(r.partial, self.state_file)
                raise

    def _attempt(self, pace: _Pace) -> str | None:
        """One request: the final URL when the file is complete, None to send the next one
        (a confirmation page was answered)."""
        have = self.r.partial.stat().st_size if self.r.partial.exists() else 0
        with self._get(have) as response:
            status = response.status_code
            if status == 416 and have:
                _, _, total = _content_range(response.headers.get("Content-Range"))
                if total is not None and total == have and self.r.expect_total in (None, have):
                    return response.url  # a previous run already received everything
                raise TransferRestart("the server refused the Range request (416)")
            _check_status(status)
            if _is_html(response):
                self._answer_confirmation(response, pace)
                return None
            mode, have = self._body_start(response, have)
            self.r.progress.start(self.r.label, self.known_total, have)
            self._receive(response, mode, have, pace)
            done = have + self.got
            if self.known_total is None or done == self.known_total:
                return response.url
            if done > self.known_total:
                raise TransferRestart(f"received {done} bytes, more than the "
                                      f"{self.known_total} announced")
            raise TransferCut("connection closed early")

    def _get(self, have: int) -> requests.Response:
        """The next request, asking for the bytes after the ``have`` already received."""
        import requests

        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            if self.validator:
                headers["If-Range"] = self.validator
        try:
            return self.r.session.get(
                self.request_url, params=self.params, headers=headers, stream=True,
                timeout=(self.r.policy.connect_timeout, self.r.policy.read_timeout))
        except requests.exceptions.RequestException as e:
            raise TransferCut(_describe(e)) from None

    def _answer_confirmation(self, response: requests.Response, pace: _Pace) -> None:
        self.hops += 1
        if self.hops > _MAX_INTERSTITIALS:
            raise SourceFailed("confirmation pages kept coming; giving up")
        self.request_url, self.params = confirmation_request(_read_text(response, pace),
                                                             response)
        self.received_any = True
        self.r.progress.note(f"{self.r.label}: answering a download confirmation page")

    def _body_start(self, response: requests.Response, have: int) -> tuple[_Mode, int]:
        """(file mode, bytes kept) for the body that follows: appended to the ``have`` bytes
        for a 206 that continues them, else written from zero.  The size it announces is
        checked against the published size and the cap before a byte is read."""
        r = self.r
        if response.status_code == 206:
            start, _, total = _content_range(response.headers.get("Content-Range"))
            if start != have or (self.known_total is not None and total is not None
                                 and total != self.known_total):
                raise TransferRestart(f"the server answered the Range request for byte {have} "
                                      f"with {response.headers.get('Content-Range')!r}")
            mode: _Mode = "ab"
        else:
            mode, have = "wb", 0
            encoded = response.headers.get("Content-Encoding", "identity").lower() \
                not in ("", "identity")
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() and not encoded else None
            etag = response.headers.get("ETag", "")
            self.validator = (etag if etag and not etag.startswith("W/")
                              else response.headers.get("Last-Modified"))
        if total is not None:
            self.known_total = total
        if r.expect_total is not None and self.known_total is not None \
                and self.known_total != r.expect_total:
            raise ChecksumMismatchError(r.label, r.url, "size", r.expect_total, self.known_total,
                                        "(size the server announced); nothing was kept in the "
                                        "cache")
        if self.known_total is not None and self.known_total > r.cap:
            raise _too_big(r.url, r.cap, self.known_total)  # refused before the body is read
        return mode, have

    def _receive(self, response: requests.Response, mode: _Mode, have: int, pace: _Pace) -> None:
        r = self.r
        with _open_partial(r.partial, mode) as out:
            # Counted after decoding: a gzip body cannot expand past the cap either.
            for block in _iter_body(response, r.policy.chunk_size):
                if have + self.got + len(block) > r.cap:
                    if r.expect_total is not None:
                        raise ChecksumMismatchError(r.label, r.url, "size", r.expect_total,
                                                    f"more than {r.expect_total}")
                    raise _too_big(r.url, r.cap)
                out.write(block)
                self.got += len(block)
                self.received_any = True
                r.progress.update(len(block))
                pace.feed(len(block))

    def _restart(self, reason: TransferRestart) -> None:
        remove_files(self.r.partial)
        self.validator = self.known_total = None
        self.stalls += 1
        self.r.progress.note(f"{self.r.label}: {reason}; starting again from the beginning")
        if self.stalls > self.r.policy.retries:
            raise SourceFailed(f"gave up after {self.stalls} restarts ({reason})") from None

    def _resume_later(self, cut: TransferCut) -> None:
        """Wait before resuming a cut transfer (longer after each cut without progress)."""
        r = self.r
        if not self.received_any:
            raise SourceFailed(str(cut)) from None  # never delivered anything: next source
        self.stalls = 0 if self.got else self.stalls + 1
        if self.stalls > r.policy.retries:
            raise SourceFailed(f"gave up after {r.policy.retries} retries ({cut})") from None
        wait = r.policy.wait(self.stalls or 1)
        now = r.partial.stat().st_size if r.partial.exists() else 0
        of = f" of {self.known_total:,}" if self.known_total else ""
        r.progress.note(f"{r.label}: {cut} after {now:,}{of} bytes; resuming in {wait:g} s")
        time.sleep(wait)


DEFAULT_LIMITS = DownloadLimits()  # frozen: safe to share as a default


def transfer(session: requests.Session, url: str, partial: Path, expect_total: int | None,
             label: str, progress: ProgressReporter, policy: RetryPolicy,
             limits: DownloadLimits = DEFAULT_LIMITS, cap: int | None = None) -> str:
    """Bring ``partial`` to the complete body of ``url``; returns the URL finally used.

    At most ``expect_total`` bytes (the published size) are accepted, else at most ``cap``
    (default ``limits.max_bytes``)."""
    if cap is None:
        cap = expect_total if expect_total is not None else limits.max_bytes
    return _Transfer(_Request(session, url, partial, expect_total, cap, label, progress,
                              policy, limits)).run()


__all__ = ["RetryPolicy", "state_path", "transfer"]
