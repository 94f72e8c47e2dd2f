"""Downloads, the checkpoint cache and `waveglow fetch/list/info/rm`, against a real HTTP server
on 127.0.0.1 started here, with injected faults (cut connections, wrong bytes, 404/500, slow
answers, a Google-Drive-like confirmation page).  Nothing else is ever contacted."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from conftest import TINY, run_cli

from waveglow_cli.checkpoints import reader as checkpoint_module
from waveglow_cli.checkpoints.cache import (
    cache_paths,
    cached_file,
    ensure_checkpoint,
    fetch_checkpoint,
    read_metadata,
)
from waveglow_cli.checkpoints.download import RetryPolicy, confirmation_request, download
from waveglow_cli.checkpoints.registry import Registry
from waveglow_cli.errors import (
    CheckpointError,
    CheckpointNotAvailableError,
    ChecksumMismatchError,
    DownloadError,
    UnknownCheckpointError,
)
from waveglow_cli.settings import Settings

FAST = RetryPolicy(connect_timeout=2.0, read_timeout=0.5, retries=3, backoff=0.01,
                   max_backoff=0.05, chunk_size=16 * 1024)
NAME = "tiny_waveglow.pt"
# The /slow route answers this late: far beyond FAST's 0.5 s read timeout, so a fetch that
# waited for it is told apart from one that timed out even on a heavily loaded machine.
SLOW_ANSWER_S = 12.0
BOMB_BYTES = 64 << 20   # what the gzip and zip bombs expand to


# ---------------------------------------------------------------------------------------------
# The fault-injecting server


class ServerState:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str | None]] = []   # (path with query, Range header)
        self.uuids: set[str] = set()
        self.lock = threading.Lock()

    def record(self, path: str, byte_range: str | None) -> None:
        with self.lock:
            self.log.append((path, byte_range))

    def requests(self, prefix: str = "/") -> list[tuple[str, str | None]]:
        with self.lock:
            return [entry for entry in self.log if entry[0].startswith(prefix)]

    def full_gets(self, prefix: str) -> int:
        return sum(1 for _, r in self.requests(prefix) if r is None)


DRIVE_FORM = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>
<body><p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="/drive/download" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}">
</form></body></html>"""

DRIVE_LINK = """<html><head><title>Google Drive - Virus scan warning</title></head><body>
<a id="uc-download-link" href="/drivelink/uc?export=download&amp;confirm=AbC1&amp;id={id}">
Download anyway</a></body></html>"""

DRIVE_QUOTA = """<html><head><title>Google Drive - Quota exceeded</title></head><body>
<p>Sorry, you can't view or download this file at this time.</p><p>Too many users have viewed
or downloaded this file recently.</p></body></html>"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "Server"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    # -- building blocks

    def _headers(self, status: int, length: int, extra: dict[str, str] | None = None,
                 kind: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None,
              kind: str = "application/octet-stream") -> None:
        self._headers(status, len(body), extra, kind)
        self.wfile.write(body)

    def _page(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
        self._send(status, text.encode(), extra, "text/html; charset=utf-8")

    def _file(self, data: bytes, extra: dict[str, str] | None = None, pace: float = 0.0,
              honour_range: bool = True) -> None:
        """The file, honouring ``Range: bytes=N-`` with a 206 and the right Content-Range."""
        extra = {"Accept-Ranges": "bytes", "ETag": '"v1"', **(extra or {})}
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and honour_range:
            start = int(match.group(1))
            if start >= len(data):
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            body = data[start:]
            extra["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            status = 206
        else:
            body, status = data, 200
        self._headers(status, len(body), extra)
        step = 32 * 1024
        for i in range(0, len(body), step):
            self.wfile.write(body[i:i + step])
            if pace:
                self.wfile.flush()
                time.sleep(pace)

    def _cut(self, data: bytes) -> None:
        """Announce the whole file, send half of it, hang up."""
        self._headers(200, len(data), {"Accept-Ranges": "bytes", "ETag": '"v1"'})
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _endless(self, data: bytes) -> None:
        """HTTP/1.1 without Content-Length: the body lasts until the connection closes, so the
        client cannot know its size.  Stops when the client hangs up."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(data)
        zeros = bytes(1 << 16)
        sent = len(data)
        # "Endless" for a test: 64 times the cap the tests set, so that a client without a
        # cap fails the test on its outcome instead of filling the disk.
        while sent < BOMB_BYTES:
            self.wfile.write(zeros)
            sent += len(zeros)

    # -- routes

    def do_GET(self) -> None:  # noqa: C901 - one small router
        state = self.server.state
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        state.record(self.path, self.headers.get("Range"))
        parts = url.path.strip("/").split("/")
        route, name = parts[0], parts[-1]
        data = state.files.get(query.get("id", name))
        try:
            if route == "404":
                self._page(404, "<html><title>Not Found</title></html>")
            elif route == "500":
                self._page(500, "<html><title>Internal Server Error</title></html>")
            elif data is None:
                self._page(404, "<html><title>no such file</title></html>")
            elif route == "files":
                self._file(data)
            elif route == "throttle":
                self._file(data, pace=0.08)
            elif route == "cut":
                if self.headers.get("Range"):
                    self._file(data)
                else:
                    self._cut(data)
            elif route == "norange":  # cuts, then ignores Range requests (sends everything)
                if self.headers.get("Range"):
                    self._file(data, honour_range=False)
                else:
                    self._cut(data)
            elif route == "badrange":  # cuts, then answers 206 for the wrong bytes
                if self.headers.get("Range"):
                    body = data[10:]
                    self._send(206, body, {"Content-Range": f"bytes 10-{len(data) - 1}/{len(data)}"})
                else:
                    self._cut(data)
            elif route == "bad":
                wrong = bytearray(data)
                wrong[len(wrong) // 2] ^= 0xFF
                self._file(bytes(wrong))
            elif route == "slow":
                time.sleep(SLOW_ANSWER_S)
                self._file(data)
            elif route == "drive" and parts[1] == "uc":
                token = uuid.uuid4().hex
                state.uuids.add(token)
                self._page(200, DRIVE_FORM.format(id=query["id"], uuid=token))
            elif route == "drive" and parts[1] == "download":
                if query.get("confirm") == "t" and query.get("uuid") in state.uuids:
                    self._file(data, {"Content-Disposition": f'attachment; filename="{NAME}"'})
                else:
                    self._page(403, "<html><title>Forbidden</title></html>")
            elif route == "drivelink":
                if query.get("confirm") == "AbC1":
                    self._file(data, {"Content-Disposition": "attachment"})
                else:
                    self._page(200, DRIVE_LINK.format(id=query["id"]))
            elif route == "drivecookie":
                cookie = self.headers.get("Cookie") or ""
                if query.get("confirm") == "Tok9" and "download_warning_77=Tok9" in cookie:
                    self._file(data, {"Content-Disposition": "attachment"})
                else:
                    self._page(200, "<html><title>Google Drive</title><body>scan</body></html>",
                               {"Set-Cookie": "download_warning_77=Tok9; Path=/"})
            elif route == "quota":
                self._page(200, DRIVE_QUOTA)
            elif route == "endless":  # no Content-Length: a valid pickle, then zeros forever
                self._endless(data)
            elif route == "gzip":  # a small gzip body that decodes to far more (a gzip bomb)
                self._send(200, state.files["bomb.gz"], {"Content-Encoding": "gzip"})
            elif route == "trickle":  # announces the file, then sends a byte every 0.2 s
                self._headers(200, len(data))
                for i in range(len(data)):
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
            elif route == "huge":  # announces 10 GiB; refused before any body byte is read
                self._headers(200, 10 << 30)
                self.wfile.write(data[:1024])
                self.wfile.flush()
                time.sleep(3)
                self.close_connection = True
            else:
                self._page(404, "<html><title>unknown route</title></html>")
        except (BrokenPipeError, ConnectionResetError):
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that hangs up on purpose (a refused download) is no server error.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def requests(self, prefix: str = "/") -> list[tuple[str, str | None]]:
        return self.state.requests(prefix)

    def full_gets(self, prefix: str) -> int:
        return self.state.full_gets(prefix)


@pytest.fixture(scope="module")
def http_server(tiny_checkpoint):
    server = Server(("127.0.0.1", 0), Handler)
    server.state = ServerState()
    data = Path(tiny_checkpoint).read_bytes()
    server.state.files[NAME] = data
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("README.txt", "weights inside")
        zf.writestr("../escaped.pt", b"must never be written anywhere")
        zf.writestr(NAME, data)
    server.state.files["bundle.zip"] = buffer.getvalue()
    # Bombs: 64 MiB of zeros as a gzip body, and as a zip member (each about 64 KB on the wire).
    server.state.files["bomb.gz"] = gzip.compress(bytes(BOMB_BYTES), compresslevel=1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.txt", "weights inside")
        zf.writestr(NAME, bytes(BOMB_BYTES))
    server.state.files["bomb.zip"] = buffer.getvalue()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture()
def srv(http_server, monkeypatch):
    """The module's server with an empty request log; its base URL as ``srv.base``."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with http_server.state.lock:
        http_server.state.log.clear()
    http_server.base = f"http://127.0.0.1:{http_server.server_address[1]}"
    http_server.data = http_server.state.files[NAME]
    http_server.sha = hashlib.sha256(http_server.data).hexdigest()
    return http_server


def write_registry(path: Path, entries: dict[str, dict]) -> Path:
    lines = []
    for name, table in entries.items():
        lines.append(f"[{name}]")
        for key, value in table.items():
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def make_settings(tmp_path: Path, entries: dict[str, dict], offline: bool = False,
                  mirror: str | None = None) -> Settings:
    registry = write_registry(tmp_path / "registry.toml", entries)
    return Settings(home=tmp_path / "home", registry_file=registry, offline=offline,
                    mirror=mirror, debug=False)


def entry_of(settings: Settings, name: str):
    return Registry.load(settings).find(name)


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {"WAVEGLOW_HOME": str(settings.home), "WAVEGLOW_REGISTRY": str(settings.registry_file),
            "WAVEGLOW_OFFLINE": "0", "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost", **extra}


def files_under(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# Downloading


def test_download_verifies_records_and_converts(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"],
                                          "sha256": srv.sha, "size": len(srv.data)}})
    result = fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    paths = cache_paths(entry_of(s, "tiny"), s)
    assert result.action == "downloaded" and result.sha256 == srv.sha
    assert paths.original.read_bytes() == srv.data
    meta = read_metadata(entry_of(s, "tiny"), s)
    assert meta["sha256"] == srv.sha and meta["size"] == len(srv.data)
    assert meta["url"] == f"{srv.base}/files/{NAME}" and meta["downloaded_at"]
    assert "glow.WaveGlow" in meta["format"]
    # Resolution prefers the converted safetensors copy, which holds the same weights.
    assert result.path == paths.converted and paths.converted.suffix == ".safetensors"
    assert ensure_checkpoint("tiny", s) == paths.converted
    a = checkpoint_module.read_checkpoint(paths.converted)
    b = checkpoint_module.read_checkpoint(paths.original)
    assert a.config == b.config and a.source_format == "waveglow-cli safetensors"
    assert all(np.array_equal(a.state_dict[k].numpy(), b.state_dict[k].numpy())
               for k in b.state_dict)
    assert not any(n.endswith((".partial", ".partial.json")) for n in files_under(paths.folder))
    assert srv.full_gets("/files/") == 1


def test_cut_connection_is_resumed_with_range(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/cut/{NAME}"]}})
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    log = srv.requests("/cut/")
    assert log[0][1] is None
    ranges = [r for _, r in log if r is not None]
    assert ranges, log
    start = int(re.fullmatch(r"bytes=(\d+)-", ranges[0]).group(1))
    assert 0 < start <= len(srv.data) // 2       # resumed where the cut left it, not from 0
    assert len(log) == 2
    assert cache_paths(entry_of(s, "tiny"), s).original.read_bytes() == srv.data


def test_partial_from_an_earlier_run_is_resumed(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"],
                                          "sha256": srv.sha}})
    paths = cache_paths(entry_of(s, "tiny"), s)
    paths.folder.mkdir(parents=True)
    partial = paths.original.with_name(paths.original.name + ".partial")
    partial.write_bytes(srv.data[:100_000])
    partial.with_name(partial.name + ".json").write_text(
        json.dumps({"url": f"{srv.base}/files/{NAME}"}))
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert srv.requests("/files/") == [(f"/files/{NAME}", "bytes=100000-")]
    assert paths.original.read_bytes() == srv.data


@pytest.mark.parametrize("route", ["norange", "badrange"])
def test_unusable_range_answer_restarts_from_zero(srv, tmp_path, route):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/{route}/{NAME}"]}})
    entry = entry_of(s, "tiny")
    if route == "norange":  # 200 to a Range request: the full body is taken from byte 0
        fetch_checkpoint(entry, s, policy=FAST)
        assert cache_paths(entry, s).original.read_bytes() == srv.data
    else:  # 206 for other bytes than asked: never appended; cut again each time -> gives up
        with pytest.raises(DownloadError, match="restart|gave up"):
            fetch_checkpoint(entry, s, policy=FAST)
        assert cached_file(entry, s) is None
    assert any(r for _, r in srv.requests(f"/{route}/"))


def test_wrong_bytes_are_refused_and_nothing_is_kept(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/bad/{NAME}"], "sha256": srv.sha}})
    entry = entry_of(s, "tiny")
    with pytest.raises(ChecksumMismatchError) as info:
        fetch_checkpoint(entry, s, policy=FAST)
    message = str(info.value)
    wrong = bytearray(srv.data)
    wrong[len(wrong) // 2] ^= 0xFF
    assert srv.sha in message and hashlib.sha256(wrong).hexdigest() in message
    assert "nothing was kept" in message
    assert cached_file(entry, s) is None
    assert not cache_paths(entry, s).folder.exists()
    with pytest.raises(CheckpointNotAvailableError):
        ensure_checkpoint("tiny", Settings(**{**s.__dict__, "offline": True}))


def test_announced_wrong_size_is_refused_early(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"],
                                          "size": len(srv.data) + 1}})
    with pytest.raises(ChecksumMismatchError, match=f"expected {len(srv.data) + 1} bytes"):
        fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert cached_file(entry_of(s, "tiny"), s) is None


def test_not_a_waveglow_is_rejected_by_structure(srv, tmp_path):
    srv.state.files["junk.pt"] = b"\x80\x02}q\x00." + b"\x00" * 5000  # a pickle of {}, padded
    s = make_settings(tmp_path, {"junk": {"urls": [f"{srv.base}/files/junk.pt"]}})
    with pytest.raises(CheckpointError):
        fetch_checkpoint(entry_of(s, "junk"), s, policy=FAST)
    assert files_under(cache_paths(entry_of(s, "junk"), s).folder) == []


def test_pinned_sha256_is_authoritative_even_for_bytes_that_are_no_waveglow(srv, tmp_path):
    """With a published hash the bytes are what was published: kept, recorded, not converted;
    loading them later says what is wrong."""
    data = b"\x80\x02}q\x00." + b"\x00" * 5000
    srv.state.files["pinned.pt"] = data
    s = make_settings(tmp_path, {"pinned": {"urls": [f"{srv.base}/files/pinned.pt"],
                                            "sha256": hashlib.sha256(data).hexdigest()}})
    result = fetch_checkpoint(entry_of(s, "pinned"), s, policy=FAST)
    assert result.path.read_bytes() == data
    assert files_under(cache_paths(entry_of(s, "pinned"), s).folder) == ["metadata.json", "pinned.pt"]
    with pytest.raises(CheckpointError):
        checkpoint_module.read_checkpoint(result.path)


def test_404_and_500_fall_through_to_the_next_url(srv, tmp_path):
    urls = [f"{srv.base}/404/{NAME}", f"{srv.base}/500/{NAME}", f"{srv.base}/files/{NAME}"]
    s = make_settings(tmp_path, {"tiny": {"urls": urls}})
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert [p.split("/")[1] for p, _ in srv.requests()] == ["404", "500", "files"]


def test_timeout_and_refused_connection_fall_through(srv, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]   # closed when the block ends: connections are refused
    urls = [f"http://127.0.0.1:{dead}/{NAME}", f"{srv.base}/slow/{NAME}",
            f"{srv.base}/files/{NAME}"]
    s = make_settings(tmp_path, {"tiny": {"urls": urls}})
    t0 = time.monotonic()
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert time.monotonic() - t0 < SLOW_ANSWER_S - 2   # did not wait for the slow answer
    assert [p.split("/")[1] for p, _ in srv.requests()] == ["slow", "files"]


def test_every_url_failing_names_each_reason(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/404/{NAME}",
                                                   f"{srv.base}/500/{NAME}"]}})
    with pytest.raises(DownloadError) as info:
        fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert "HTTP 404" in str(info.value) and "HTTP 500" in str(info.value)
    assert len(info.value.attempts) == 2


@pytest.mark.parametrize("route", ["drive", "drivelink", "drivecookie"])
def test_google_drive_confirmation_is_answered(srv, tmp_path, route):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/{route}/uc?export=download&id={NAME}"]}})
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert cache_paths(entry_of(s, "tiny"), s).original.read_bytes() == srv.data
    log = [p for p, _ in srv.requests()]
    assert len(log) == 2
    if route == "drive":  # the form's action with every hidden field, uuid included
        query = parse_qs(urlsplit(log[1]).query)
        assert urlsplit(log[1]).path == "/drive/download"
        assert query["confirm"] == ["t"] and query["uuid"][0] in srv.state.uuids
        assert query["id"] == [NAME] and query["export"] == ["download"]


def test_drive_quota_page_is_an_error_and_falls_through(srv, tmp_path):
    s = make_settings(tmp_path, {"q": {"urls": [f"{srv.base}/quota/uc?id={NAME}"]},
                                 "tiny": {"urls": [f"{srv.base}/quota/uc?id={NAME}",
                                                   f"{srv.base}/files/{NAME}"]}})
    with pytest.raises(DownloadError, match="quota"):
        fetch_checkpoint(entry_of(s, "q"), s, policy=FAST)
    assert files_under(cache_paths(entry_of(s, "q"), s).folder) == []
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert cached_file(entry_of(s, "tiny"), s) is not None


def test_confirmation_parser_refuses_other_pages():
    class Page:
        url = "https://drive.google.com/uc?id=x"
        cookies: dict = {}

    target, fields = confirmation_request(DRIVE_FORM.format(id="x", uuid="u1"), Page())
    assert target == "https://drive.google.com/drive/download"
    assert fields == {"id": "x", "export": "download", "confirm": "t", "uuid": "u1"}
    with pytest.raises(Exception, match="HTML page"):
        confirmation_request("<html><title>Sign in</title></html>", Page())


def test_zip_archive_member_is_extracted_safely(srv, tmp_path):
    s = make_settings(tmp_path, {"bundle": {"urls": [f"{srv.base}/files/bundle.zip"],
                                            "archive": "zip", "member": NAME,
                                            "sha256": srv.sha}})
    entry = entry_of(s, "bundle")
    fetch_checkpoint(entry, s, policy=FAST)
    paths = cache_paths(entry, s)
    assert paths.original.name == NAME and paths.original.read_bytes() == srv.data
    assert not list(tmp_path.rglob("escaped.pt"))
    assert "bundle.zip" not in " ".join(files_under(paths.folder))   # the archive is not kept
    (tmp_path / "other").mkdir()
    s2 = make_settings(tmp_path / "other", {"bundle": {"urls": [f"{srv.base}/files/bundle.zip"],
                                                       "archive": "zip", "member": "absent.pt"}})
    with pytest.raises(DownloadError, match="absent.pt"):
        fetch_checkpoint(entry_of(s2, "bundle"), s2, policy=FAST)


def test_mirror_is_tried_first(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/404/{NAME}"]}},
                      mirror=f"{srv.base}/files/")
    fetch_checkpoint(entry_of(s, "tiny"), s, policy=FAST)
    assert [p for p, _ in srv.requests()] == [f"/files/{NAME}"]


def test_low_level_download_reports_progress(srv, tmp_path):
    seen: list[int] = []
    got = download([f"{srv.base}/files/{NAME}"], tmp_path / "x.pt", progress=seen.append,
                   policy=FAST)
    assert sum(seen) == len(srv.data) and got.sha256 == srv.sha


def test_progress_is_passed_in_never_installed(srv, tmp_path, capsys):
    """What ensure_checkpoint is given hears the transfer and the notes; given nothing, a
    fetch reports nothing (there is no process-wide default to fall back on)."""
    class Recorder:
        def __init__(self) -> None:
            self.received, self.notes = 0, []

        def update(self, advance: int) -> None:
            self.received += advance

        def note(self, text: str) -> None:
            self.notes.append(text)

    url = f"{srv.base}/files/{NAME}"
    s = make_settings(tmp_path, {"tiny": {"urls": [url]}, "again": {"urls": [url]}})
    seen = Recorder()
    ensure_checkpoint("tiny", s, seen)
    assert seen.received == len(srv.data)
    assert any(n.startswith("tiny: downloaded") for n in seen.notes)
    ensure_checkpoint("again", s)
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------------------------------------
# Resolution, offline, verify


def test_first_use_fetches_then_offline_needs_no_network(srv, tmp_path, monkeypatch):
    from waveglow_cli.vocoder import load_vocoder

    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"],
                                          "aliases": ["tiny-alias"]}})
    vocoder = load_vocoder("tiny-alias", "cpu", settings=s)  # not cached: fetched on first use
    assert vocoder.config.n_flows == TINY["n_flows"]
    assert len(srv.requests()) == 1

    offline = Settings(**{**s.__dict__, "offline": True})
    # Never unpickles again: the safetensors copy is what a name resolves to.
    monkeypatch.setattr(checkpoint_module, "_read_torch_pickle",
                        lambda *a: pytest.fail("unpickled a cached checkpoint"))
    assert load_vocoder("tiny", "cpu", settings=offline).config == vocoder.config
    assert fetch_checkpoint(entry_of(s, "tiny"), s).action == "cached"
    assert len(srv.requests()) == 1   # zero requests after the first download


def test_offline_without_cache_is_a_clear_error(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"]}}, offline=True)
    with pytest.raises(CheckpointNotAvailableError, match="not downloaded.*offline"):
        ensure_checkpoint("tiny", s)
    assert srv.requests() == []


def test_unknown_name_lists_close_matches(tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": ["http://127.0.0.1:9/x.pt"]}})
    with pytest.raises(UnknownCheckpointError, match="did you mean 'universal'"):
        ensure_checkpoint("univrsal", s)
    with pytest.raises(UnknownCheckpointError, match="did you mean 'ljs-v3'"):
        ensure_checkpoint("ljs_v3", s)
    with pytest.raises(UnknownCheckpointError) as info:
        ensure_checkpoint("zzzzqqq", s)
    assert "did you mean" not in str(info.value) and "tiny" in str(info.value)


def test_verify_repairs_a_corrupted_cache(srv, tmp_path, tiny_reference):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"]}})
    entry = entry_of(s, "tiny")
    fetch_checkpoint(entry, s, policy=FAST)
    paths = cache_paths(entry, s)
    # Sound cache: verified locally, no request.
    assert fetch_checkpoint(entry, s, verify=True, policy=FAST).action == "verified"
    assert len(srv.requests()) == 1
    # A damaged safetensors copy is rebuilt from the verified original, still without network.
    paths.converted.write_bytes(b"garbage")
    assert fetch_checkpoint(entry, s, verify=True, policy=FAST).action == "verified"
    checkpoint_module.read_checkpoint(paths.converted)
    assert len(srv.requests()) == 1
    # A corrupted weight in the original: it no longer matches the recorded sha256 and its
    # weights differ from the safetensors copy that still matches its record (proof that the
    # bytes changed, not the record): downloaded again.  The byte is found by content: the
    # legacy format's storage order is not fixed, and some storages (weight norm's cached
    # 'weight' attributes) are never read, so a fixed offset may change nothing we use.
    needle = tiny_reference.state_dict()["upsample.weight"].detach().numpy().tobytes()[:64]
    offset = srv.data.find(needle)
    assert offset > 0 and srv.data.find(needle, offset + 1) == -1
    corrupt = bytearray(srv.data)
    corrupt[offset + 8] ^= 0x40   # a low mantissa byte of the third weight: finite, changed
    paths.original.write_bytes(bytes(corrupt))
    result = fetch_checkpoint(entry, s, verify=True, policy=FAST)
    assert result.action == "repaired" and "sha256" in result.problem
    assert "weights differ" in result.problem
    assert paths.original.read_bytes() == srv.data
    assert len(srv.requests()) == 2


def test_registry_rejects_unsafe_names_and_members(tmp_path):
    from waveglow_cli.errors import UsageError

    for table in ({'"../x"': {"urls": ["http://127.0.0.1:9/a.pt"]}},
                  {"z": {"urls": ["http://127.0.0.1:9/a.zip"], "archive": "zip",
                         "member": "../../etc/x.pt"}}):
        s = make_settings(tmp_path, table)
        with pytest.raises(UsageError):
            Registry.load(s)


# ---------------------------------------------------------------------------------------------
# The command line (real subprocesses)


def test_cli_fetch_list_info_rm_offline(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/404/{NAME}",
                                                   f"{srv.base}/files/{NAME}"],
                                          "aliases": ["tiny_waveglow"], "description": "test"}})
    env = cli_env(s)
    r = run_cli("fetch", "tiny", env=env)
    assert r.returncode == 0, r.stderr.decode()
    paths = cache_paths(entry_of(s, "tiny"), s)
    assert r.stdout.decode().strip() == str(paths.converted)
    assert srv.sha in r.stderr.decode()                    # printed so it can be pinned
    assert srv.full_gets("/files/") == 1

    with srv.state.lock:
        srv.state.log.clear()
    assert run_cli("fetch", "tiny_waveglow", env=env).returncode == 0   # cached: no network
    r = run_cli("info", "tiny", "--json", env={**env, "WAVEGLOW_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr.decode()
    data = json.loads(r.stdout)
    assert data["sha256"] == srv.sha and data["cache_dir"] == str(paths.folder)
    assert data["architecture"]["n_flows"] == TINY["n_flows"] and data["parameters"] > 0
    assert data["mel"]["n_mels"] == TINY["n_mel_channels"] and data["sample_rate"] == 22050
    assert "glow.WaveGlow" in data["original_format"]
    assert srv.requests() == []                            # offline with a cache: zero requests

    listed = {row["name"]: row for row in json.loads(run_cli("list", "--json", env=env).stdout)}
    assert listed["tiny"]["cached"] and listed["tiny"]["recorded_sha256"] == srv.sha
    assert not listed["universal"]["cached"] and "ljs-v3" in listed
    table = run_cli("list", env=env).stdout.decode()
    assert "tiny" in table and "universal" in table

    r = run_cli("rm", "tiny", env=env)
    assert r.returncode == 0 and not paths.folder.exists()
    listed = {row["name"]: row for row in json.loads(run_cli("list", "--json", env=env).stdout)}
    assert not listed["tiny"]["cached"]
    r = run_cli("fetch", "tiny", "--offline", env=env)
    assert r.returncode == 1 and b"not downloaded" in r.stderr and b"offline" in r.stderr
    assert srv.requests() == []


def test_cli_errors_and_exit_codes(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/bad/{NAME}"], "sha256": srv.sha},
                                 "gone": {"urls": [f"{srv.base}/404/{NAME}"]}})
    env = cli_env(s)
    r = run_cli("fetch", "tinny", env=env)
    assert r.returncode == 2 and b"did you mean 'tiny'" in r.stderr
    r = run_cli("fetch", "tiny", env=env)
    assert r.returncode == 1 and b"sha256 mismatch" in r.stderr
    assert srv.sha.encode() in r.stderr and b"Traceback" not in r.stderr
    assert cached_file(entry_of(s, "tiny"), s) is None
    r = run_cli("fetch", "gone", env=env)
    assert r.returncode == 1 and b"HTTP 404" in r.stderr
    r = run_cli("fetch", "gone", "--force", "--verify", env=env)
    assert r.returncode == 2
    r = run_cli("rm", "nope-such", env=env)
    assert r.returncode == 2


def test_three_concurrent_fetches_download_once(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/throttle/{NAME}"]}})
    env = {**__import__("os").environ, **cli_env(s)}
    procs = [subprocess.Popen([sys.executable, "-m", "waveglow_cli", "fetch", "tiny"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for _ in range(3)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=60))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
    paths = cache_paths(entry_of(s, "tiny"), s)
    assert {out.decode().strip() for out, _ in outs} == {str(paths.converted)}
    assert srv.full_gets("/throttle/") == 1 and len(srv.requests("/throttle/")) == 1
    assert paths.original.read_bytes() == srv.data


def test_quick_start_fetch_then_synth(srv, tmp_path):
    """The README's quick start, with `universal` pointed at the local server."""
    s = make_settings(tmp_path, {"universal": {"urls": [f"{srv.base}/files/{NAME}"]}})
    mels = tmp_path / "mels"
    mels.mkdir()
    for i in range(2):
        np.save(mels / f"u{i}.npy",
                np.random.default_rng(i).normal(size=(TINY["n_mel_channels"], 5)).astype(np.float32))
    env = cli_env(s)
    assert run_cli("fetch", "universal", env=env).returncode == 0
    r = run_cli("synth", mels, "-o", tmp_path / "wavs", "--sigma", "0.6",
                env={**env, "WAVEGLOW_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "wavs").iterdir()) == ["u0.wav", "u1.wav"]
    assert len(srv.requests()) == 1


# ---------------------------------------------------------------------------------------------
# Every failed fetch names the way forward

WAYS = (b"-c demo", b"WAVEGLOW_MIRROR", b"-c PATH")


def test_a_failed_fetch_names_demo_mirror_and_a_local_file(srv, tmp_path):
    s = make_settings(tmp_path, {"gone": {"urls": [f"{srv.base}/404/{NAME}",
                                                   f"{srv.base}/500/{NAME}"]}})
    r = run_cli("fetch", "gone", env=cli_env(s))
    assert r.returncode == 1 and b"HTTP 404" in r.stderr and b"HTTP 500" in r.stderr
    errors = [line for line in r.stderr.decode().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == r.stderr.decode().splitlines()[-1]
    assert all(way.decode() in errors[0] for way in WAYS), r.stderr.decode()
    assert "waveglow synth MELS -c demo" in errors[0]   # fetch itself has no -c


def test_wrong_bytes_name_the_ways_forward(srv, tmp_path):
    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/bad/{NAME}"], "sha256": srv.sha}})
    r = run_cli("fetch", "tiny", env=cli_env(s))
    assert r.returncode == 1 and b"sha256 mismatch" in r.stderr
    assert all(way in r.stderr for way in WAYS), r.stderr.decode()


def test_an_offline_first_use_names_the_ways_forward_for_its_command(srv, tmp_path):
    from typer.testing import CliRunner

    from waveglow_cli.cli import app

    s = make_settings(tmp_path, {"tiny": {"urls": [f"{srv.base}/files/{NAME}"]}})
    env = {**cli_env(s), "WAVEGLOW_OFFLINE": "1"}
    mel = tmp_path / "x.npy"
    np.save(mel, np.zeros((TINY["n_mel_channels"], 5), np.float32))
    r = CliRunner().invoke(app, ["synth", str(mel), "-c", "tiny", "-o", str(tmp_path / "x.wav")],
                           env=env)
    assert r.exit_code == 1 and "offline" in r.stderr, r.stderr
    assert all(way.decode() in r.stderr for way in WAYS) and "`waveglow fetch tiny` once " \
        "online" in r.stderr and r.stderr.count("\n") == 1
    r = CliRunner().invoke(app, ["info", "tiny"], env=env)   # info takes a name, has no -c
    assert r.exit_code == 1 and "`demo` in its place" in r.stderr and "-c " not in r.stderr
    assert srv.requests() == []


def test_the_way_forward_is_on_the_library_error_too(srv, tmp_path):
    s = make_settings(tmp_path, {"gone": {"urls": [f"{srv.base}/404/{NAME}"]}})
    with pytest.raises(DownloadError) as info:
        fetch_checkpoint(entry_of(s, "gone"), s, policy=FAST)
    assert "-c demo" in str(info.value) and "WAVEGLOW_MIRROR=<base URL serving" in str(info.value)
    offline = Settings(**{**s.__dict__, "offline": True})
    with pytest.raises(CheckpointNotAvailableError, match="-c demo.*WAVEGLOW_MIRROR.*-c PATH"):
        ensure_checkpoint("gone", offline)
