"""Robust HTTP(S) downloads into a cache folder.  Knows HTTP and files, nothing about checkpoints.

:func:`download` fetches one file from a list of sources, first that works:

* the body streams into ``<dest>.partial`` beside the destination (same folder, same file
  system), so the final name only ever holds a complete, verified file;
* a cut connection is resumed with an HTTP ``Range`` request (bounded retries with back-off,
  connect and read timeouts); the resumed bytes are appended only when the server answers
  ``206`` with the ``Content-Range`` asked for, otherwise the download restarts from zero;
* 404/410/other 4xx, 5xx, timeouts and connection errors before any byte arrived make it try
  the next source;
* Google Drive's large-file interstitial (an HTML page with a ``download-form``, a
  ``confirm=`` link or a ``download_warning`` cookie) is answered in the same session; a Drive
  quota or error page makes it try the next source;
* size and sha256 are verified (and an optional ``validate`` callback run) before an atomic
  :func:`os.replace` into place; on a mismatch the partial file is deleted and
  :class:`~waveglow_cli.errors.ChecksumMismatchError` says expected vs got;
* ``archive="zip"`` sources are downloaded whole, then only ``member`` is extracted (its name
  is used to find it, never as a path) and verified;
* every download is bounded (:class:`~waveglow_cli.settings.DownloadLimits`): without a
  published size at most ``max_bytes`` are accepted (counted after any ``Content-Encoding`` is
  decoded; a larger ``Content-Length`` is refused before the body is read; a zip member may
  not expand beyond it either), a transfer slower than ``min_rate`` over ``rate_window``
  seconds or longer than ``deadline`` is given up with "download too slow".

Progress goes to a :class:`Progress` object the caller passes (the CLI draws a rich bar).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urljoin, urlparse

from .errors import ChecksumMismatchError, DownloadError, WaveGlowError
from .settings import DownloadLimits

if TYPE_CHECKING:  # requests is imported when a download starts, not with the CLI
    import requests

USER_AGENT = "waveglow-cli (+https://github.com/NVIDIA/waveglow checkpoints)"
_HTML_LIMIT = 1 << 20           # read at most this much of an HTML page
_MAX_INTERSTITIALS = 3          # confirmation pages followed per source


# ---------------------------------------------------------------------------------------------
# Progress reporting (the caller decides how to show it)


class Progress(Protocol):
    """What :func:`download` reports to.  Every method is optional on the object passed in."""

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        """A transfer (re)starts: ``total`` bytes expected (None: unknown), ``completed`` done."""

    def update(self, advance: int) -> None:
        """``advance`` more bytes arrived."""

    def finish(self) -> None:
        """No more transfers for now."""

    def note(self, text: str) -> None:
        """A one-line message for the user (a retry, a fallback to another URL)."""


class NullProgress:
    """Reports nothing."""

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        pass

    def update(self, advance: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def note(self, text: str) -> None:
        pass


class _Reporter:
    """Calls whichever of start/update/finish/note ``target`` has; a bare callable gets
    ``update``'s byte counts."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def _call(self, name: str, *args: Any) -> None:
        if self.target is None:
            return
        method = getattr(self.target, name, None)
        if method is None and name == "update" and callable(self.target):
            method = self.target
        if method is not None:
            method(*args)

    def start(self, description: str, total: int | None, completed: int = 0) -> None:
        self._call("start", description, total, completed)

    def update(self, advance: int) -> None:
        self._call("update", advance)

    def finish(self) -> None:
        self._call("finish")

    def note(self, text: str) -> None:
        self._call("note", text)


_default_progress: Callable[[], Any] | None = None


def set_default_progress(factory: Callable[[], Any] | None) -> None:
    """Install what callers that pass no progress object get (the CLI installs its rich bar)."""
    global _default_progress
    _default_progress = factory


def default_progress() -> Any:
    return _default_progress() if _default_progress is not None else NullProgress()


# ---------------------------------------------------------------------------------------------
# Policy, sources, results


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
        return min(self.max_backoff, self.backoff * 2 ** max(0, failures - 1))


@dataclass(frozen=True)
class Source:
    url: str
    archive: str | None = None       # "zip": the URL serves an archive holding ``member``
    member: str | None = None


@dataclass(frozen=True)
class Downloaded:
    path: Path
    url: str
    size: int
    sha256: str


class _SourceFailed(Exception):
    """This source cannot deliver the file; try the next one."""


class _Refused(_SourceFailed):
    """This source sent (or announced) more than is allowed: its bytes are discarded, never
    kept for a resume."""


class _Cut(Exception):
    """The transfer stopped before the end; resume it."""


class _Restart(Exception):
    """The server's answer to a Range request cannot be appended; start from zero."""


# ---------------------------------------------------------------------------------------------
# Helpers


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def _state_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _unlink(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


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
            raise _SourceFailed(f"download too slow: {self.url} did not finish within "
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
            raise _SourceFailed(
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


def _too_big(url: str, cap: int, announced: int | None = None) -> _Refused:
    what = (f"announces {announced:,} bytes, more than" if announced is not None
            else "sent more than")
    return _Refused(f"refused: {url} {what} the {cap:,} bytes accepted for a file whose size "
                    "is not published (WAVEGLOW_MAX_DOWNLOAD_BYTES); nothing was kept in the "
                    "cache")


def _iter_body(response: requests.Response, chunk_size: int) -> Iterator[bytes]:
    """The body as it arrives.  ``read1`` hands over every byte received before a cut (a
    buffered read could drop them); any read failure becomes :class:`_Cut`."""
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
        raise _Cut(_describe(e)) from None
    except Exception as e:  # noqa: BLE001 - urllib3/http.client protocol errors, IncompleteRead
        if type(e).__module__.split(".")[0] in ("urllib3", "http"):
            raise _Cut("connection broken") from None
        raise


# ---------------------------------------------------------------------------------------------
# Google Drive's confirmation page


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict[str, Any]] = []
        self.links: list[str] = []
        self.title = ""
        self._in_title = False
        self._form: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "form":
            self._form = {"id": a.get("id", ""), "action": a.get("action", ""),
                          "method": a.get("method", "get").lower(), "fields": {}}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            if a.get("type", "text").lower() in ("hidden", "text"):
                self._form["fields"][a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.links.append(a["href"])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def confirmation_request(page: str, response: requests.Response
                         ) -> tuple[str, dict[str, str] | None]:
    """The request that gets past Google Drive's "can't scan this file for viruses" page:
    the ``download-form``'s action with its hidden fields (id, export, confirm, uuid, ...),
    else a ``confirm=`` link, else the ``download_warning`` cookie's token.  Raises
    :class:`_SourceFailed` for any other HTML page (Drive's quota page, a login page, ...)."""
    parser = _PageParser()
    try:
        parser.feed(page)
    except Exception:  # noqa: BLE001 - malformed HTML is just "not a confirmation page"
        pass
    here = response.url
    forms = [f for f in parser.forms if f["id"] == "download-form"] or \
            [f for f in parser.forms if "confirm" in f["fields"] and f["method"] == "get"]
    if forms:
        form = forms[0]
        target = urljoin(here, html.unescape(form["action"]) or here)
        _check_redirect(here, target)
        return target, dict(form["fields"])
    if parser.links:
        target = urljoin(here, html.unescape(parser.links[0]))
        _check_redirect(here, target)
        return target, None
    token = next((v for k, v in response.cookies.items() if k.startswith("download_warning")), None)
    if token:
        return here, {"confirm": token}
    title = " ".join(parser.title.split())
    lowered = page.lower()
    if "quota" in lowered or "too many users" in lowered:
        raise _SourceFailed("Google Drive refused the download: its download quota for this file "
                            "is exceeded (too many downloads recently); try again later")
    raise _SourceFailed(f"got an HTML page instead of the file"
                        f"{f' ({title!r})' if title else ''}: an error, login or quota page")


def _check_redirect(here: str, target: str) -> None:
    old, new = urlparse(here), urlparse(target)
    if new.scheme not in ("http", "https") or (old.scheme == "https" and new.scheme != "https"):
        raise _SourceFailed(f"refusing to follow a confirmation page to {target!r}")


# ---------------------------------------------------------------------------------------------
# One source


def _read_state(state_file: Path) -> dict[str, Any]:
    """A partial download's bookkeeping ({"url": ...}); {} when absent or damaged."""
    try:
        with open(state_file, "rb") as f:
            state = json.loads(f.read(1 << 16))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _transfer(session: requests.Session, url: str, partial: Path, expect_total: int | None,
              label: str, progress: _Reporter, policy: RetryPolicy,
              limits: DownloadLimits = DownloadLimits(), cap: int | None = None) -> str:
    """Bring ``partial`` to the complete body of ``url``; returns the URL finally used.

    At most ``expect_total`` bytes (the published size) are accepted, else at most ``cap``
    (default ``limits.max_bytes``)."""
    import requests

    if cap is None:
        cap = expect_total if expect_total is not None else limits.max_bytes
    state_file = _state_path(partial)
    state = _read_state(state_file)
    if partial.exists() and (state.get("url") != url or partial.stat().st_size > cap):
        _unlink(partial)  # from another source (its bytes may differ), or beyond the cap
    state_file.write_text(json.dumps({"url": url}), "utf-8")
    started = time.monotonic()

    request_url, params = url, None
    validator: str | None = None       # strong ETag / Last-Modified, for If-Range
    known_total: int | None = None
    received_any = False             # this source delivered something (then cuts are retried)
    stalls = attempts = hops = 0
    while True:
        attempts += 1
        if attempts > policy.max_attempts:
            raise _SourceFailed(f"gave up after {policy.max_attempts} requests")
        pace = _Pace(limits, url, started)
        pace.check_deadline()
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            if validator:
                headers["If-Range"] = validator
        got = 0
        try:
            try:
                response = session.get(request_url, params=params, headers=headers, stream=True,
                                       timeout=(policy.connect_timeout, policy.read_timeout))
            except requests.exceptions.RequestException as e:
                raise _Cut(_describe(e)) from None
            with response:
                status = response.status_code
                if status == 416 and have:
                    _, _, total = _content_range(response.headers.get("Content-Range"))
                    if total is not None and total == have and expect_total in (None, have):
                        return response.url  # a previous run already received everything
                    raise _Restart("the server refused the Range request (416)")
                if status >= 500:
                    raise _SourceFailed(f"HTTP {status} (server error)")
                if status >= 400:
                    raise _SourceFailed(f"HTTP {status}"
                                        + (" (not found)" if status in (404, 410) else ""))
                if status not in (200, 206):
                    raise _SourceFailed(f"unexpected HTTP {status}")
                if _is_html(response):
                    hops += 1
                    if hops > _MAX_INTERSTITIALS:
                        raise _SourceFailed("confirmation pages kept coming; giving up")
                    request_url, params = confirmation_request(_read_text(response, pace),
                                                               response)
                    received_any = True
                    progress.note(f"{label}: answering a download confirmation page")
                    continue
                encoded = response.headers.get("Content-Encoding", "identity").lower() \
                    not in ("", "identity")
                if status == 206:
                    start, _, total = _content_range(response.headers.get("Content-Range"))
                    if start != have or (known_total is not None and total is not None
                                         and total != known_total):
                        raise _Restart(f"the server answered the Range request for byte {have} "
                                       f"with {response.headers.get('Content-Range')!r}")
                    mode = "ab"
                else:
                    mode, have = "wb", 0
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() and not encoded else None
                    etag = response.headers.get("ETag", "")
                    validator = (etag if etag and not etag.startswith("W/")
                                 else response.headers.get("Last-Modified"))
                if total is not None:
                    known_total = total
                if expect_total is not None and known_total is not None \
                        and known_total != expect_total:
                    raise ChecksumMismatchError(label, url, "size", expect_total, known_total,
                                                "(size the server announced); nothing was kept "
                                                "in the cache")
                if known_total is not None and known_total > cap:
                    raise _too_big(url, cap, known_total)  # refused before the body is read
                progress.start(label, known_total, have)
                with open(partial, mode) as out:
                    # Counted after decoding: a gzip body cannot expand past the cap either.
                    for block in _iter_body(response, policy.chunk_size):
                        if have + got + len(block) > cap:
                            if expect_total is not None:
                                raise ChecksumMismatchError(label, url, "size", expect_total,
                                                            f"more than {expect_total}")
                            raise _too_big(url, cap)
                        out.write(block)
                        got += len(block)
                        received_any = True
                        progress.update(len(block))
                        pace.feed(len(block))
                done = have + got
                if known_total is None or done == known_total:
                    return response.url
                if done > known_total:
                    raise _Restart(f"received {done} bytes, more than the {known_total} announced")
                raise _Cut("connection closed early")
        except _Restart as e:
            _unlink(partial)
            validator = known_total = None
            stalls += 1
            progress.note(f"{label}: {e}; starting again from the beginning")
            if stalls > policy.retries:
                raise _SourceFailed(f"gave up after {stalls} restarts ({e})") from None
        except _Cut as e:
            if not received_any:
                raise _SourceFailed(str(e)) from None  # never delivered anything: next source
            stalls = 0 if got else stalls + 1
            if stalls > policy.retries:
                raise _SourceFailed(f"gave up after {policy.retries} retries ({e})") from None
            wait = policy.wait(stalls or 1)
            now = partial.stat().st_size if partial.exists() else 0
            of = f" of {known_total:,}" if known_total else ""
            progress.note(f"{label}: {e} after {now:,}{of} bytes; resuming in {wait:g} s")
            time.sleep(wait)
        except (ChecksumMismatchError, _Refused):
            _unlink(partial, state_file)
            raise


def _safe_member_name(member: str) -> str:
    parts = PurePosixPath(member.replace("\\", "/")).parts
    if not parts or member.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise _SourceFailed(f"refusing archive member name {member!r}")
    return "/".join(parts)


def extract_member(archive: Path, member: str, target: Path, expect_size: int | None = None,
                   label: str = "", *, max_bytes: int | None = None) -> None:
    """Copy one member of a zip to ``target``.  The member's name is only used to find it, never
    as a path, so an archive cannot write outside the cache; the size it claims is checked
    (against ``expect_size``, else against ``max_bytes``) and the bytes are counted while they
    are extracted, so a member cannot expand beyond what its header says."""
    wanted = _safe_member_name(member)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            info = next((i for i in infos if i.filename.lstrip("./") == wanted), None)
            if info is None and "/" not in wanted:  # one folder level deep in the archive
                found = [i for i in infos if PurePosixPath(i.filename).name == wanted]
                info = found[0] if len(found) == 1 else None
            if info is None:
                names = ", ".join(i.filename for i in infos[:8])
                raise _SourceFailed(f"the archive holds no {member!r} (it holds: {names})")
            if expect_size is not None and info.file_size != expect_size:
                raise ChecksumMismatchError(label or member, str(archive.name), "size",
                                            expect_size, info.file_size)
            if expect_size is None and max_bytes is not None and info.file_size > max_bytes:
                raise _Refused(f"refused: archive member {info.filename!r} expands to "
                               f"{info.file_size:,} bytes, more than the {max_bytes:,} accepted "
                               "for a file whose size is not published "
                               "(WAVEGLOW_MAX_DOWNLOAD_BYTES)")
            written = 0
            with zf.open(info) as src, open(target, "wb") as out:
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > info.file_size:
                        raise _SourceFailed("archive member is longer than its header says")
                    out.write(block)
    except zipfile.BadZipFile as e:
        _unlink(target)
        raise _SourceFailed(f"corrupt zip archive ({e})") from None
    except BaseException:
        _unlink(target)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _from_source(session: requests.Session, source: Source, dest: Path, size: int | None,
                 sha256: str | None, label: str, progress: _Reporter, policy: RetryPolicy,
                 validate: Callable[[Path], object] | None,
                 limits: DownloadLimits = DownloadLimits()) -> Downloaded:
    partial = partial_path(dest)
    if source.archive:
        if source.archive != "zip" or not source.member:
            raise _SourceFailed(f"unsupported archive {source.archive!r}")
        archive = dest.with_name(dest.name + ".zip.partial")
        # The zip's own size is never published (``size`` is the member's): the cap bounds it,
        # with room for a published member that is larger than the cap.
        archive_cap = limits.max_bytes if size is None else max(limits.max_bytes, 2 * size)
        url = _transfer(session, source.url, archive, None, label, progress, policy, limits,
                        archive_cap)
        try:
            extract_member(archive, source.member, partial, size, label,
                           max_bytes=limits.max_bytes)
        finally:
            _unlink(archive, _state_path(archive))
    else:
        url = _transfer(session, source.url, partial, size, label, progress, policy, limits)
    progress.finish()
    got_size = partial.stat().st_size
    if size is not None and got_size != size:
        _unlink(partial, _state_path(partial))
        raise ChecksumMismatchError(label, url, "size", size, got_size)
    digest = sha256_file(partial)
    if sha256 is not None and digest != sha256.lower():
        _unlink(partial, _state_path(partial))
        raise ChecksumMismatchError(label, url, "sha256", sha256.lower(), digest)
    if validate is not None:
        try:
            validate(partial)
        except BaseException:
            _unlink(partial, _state_path(partial))
            raise
    _fsync(partial)
    os.replace(partial, dest)
    _unlink(_state_path(partial))
    return Downloaded(dest, source.url, got_size, digest)


def download(sources: Sequence[Source | str], dest: str | os.PathLike[str], *,
             size: int | None = None, sha256: str | None = None, progress: Any = None,
             policy: RetryPolicy | None = None, session: requests.Session | None = None,
             validate: Callable[[Path], object] | None = None, label: str | None = None,
             limits: DownloadLimits | None = None) -> Downloaded:
    """Download ``dest`` from the first of ``sources`` that delivers it, verified.

    ``limits`` bounds each transfer (size without a published one, throughput, deadline);
    default :class:`~waveglow_cli.settings.DownloadLimits` (4 GiB, 4 KiB/s over 30 s).

    ``validate(partial_path)`` may raise (any :class:`WaveGlowError`) to reject the bytes; the
    next source is then tried.  Raises :class:`ChecksumMismatchError` when a source delivered
    wrong bytes and no other delivered right ones, :class:`DownloadError` otherwise."""
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    label = label or dest.name
    policy = policy or RetryPolicy()
    limits = limits or DownloadLimits()
    reporter = _Reporter(progress)
    own = session is None
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
    failures: list[str] = []
    mismatch: ChecksumMismatchError | None = None
    rejected: WaveGlowError | None = None
    items = [s if isinstance(s, Source) else Source(s) for s in sources]
    try:
        for i, source in enumerate(items):
            try:
                return _from_source(session, source, dest, size, sha256, label, reporter, policy,
                                    validate, limits)
            except ChecksumMismatchError as e:
                mismatch = mismatch or e
                failures.append(f"{source.url}: {e.kind} mismatch")
            except _SourceFailed as e:
                failures.append(f"{source.url}: {e}")
            except WaveGlowError as e:  # rejected by validate()
                rejected = rejected or e
                failures.append(f"{source.url}: downloaded file rejected ({e})")
            reporter.finish()
            for leftover in (partial_path(dest), dest.with_name(dest.name + ".zip.partial")):
                if not leftover.exists():       # nothing to resume: no bookkeeping either
                    _unlink(_state_path(leftover))
            if i + 1 < len(items):
                reporter.note(f"{label}: {failures[-1]}; trying the next URL")
    finally:
        reporter.finish()
        if own:
            session.close()
    if mismatch is not None:
        if len(failures) > 1:
            mismatch.args = (f"{mismatch.args[0]} (all URLs: {'; '.join(failures)})",)
        raise mismatch
    if not items:
        raise DownloadError(f"{label}: no URL to download it from")
    if rejected is not None and len(items) == 1:
        raise rejected
    raise DownloadError(f"{label}: download failed from every URL: " + "; ".join(failures),
                        failures)


__all__ = ["download", "Downloaded", "Source", "RetryPolicy", "Progress", "NullProgress",
           "extract_member", "sha256_file", "confirmation_request", "set_default_progress",
           "default_progress", "partial_path"]
