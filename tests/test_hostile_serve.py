"""``waveglow serve`` under hostile clients: a real server on 127.0.0.1 and raw-socket
clients that send oversized or stalled bodies, hold idle and half-sent connections, run the
server out of file descriptors, and trickle a body while it is told to stop.

Bounds are generous and waits bounded (no timing asserts beyond "within the timeout plus a
wide slack"): the CI machine has two slow cores.  Three servers for the module: ``roomy``
(default timeouts, a 4 MiB body budget; SIGTERM'd by the last test), ``tight`` (1-2 s
timeouts, 24 connections) and ``fd_limited`` (64 file descriptors)."""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from test_serve import HOP, N_MELS, Server, make_mel, metric, npy_bytes, synthesize  # noqa: E402

SLACK_S = 15.0            # beyond a configured timeout, for a slow, shared machine
WAIT_S = 60.0             # any bounded wait for an answer
ROOMY_FRAMES = 150_000    # roomy's --max-frames-per-request
ROOMY_BUDGET_MB = 4       # roomy's --max-body-memory-mb
GRACEFUL_S = 2.0          # roomy's --graceful-timeout
HEADER_S, BODY_S = 1.0, 2.0  # tight's --header-timeout and --body-timeout
TIGHT_CONNECTIONS = 24
NOFILE = 64               # fd_limited's RLIMIT_NOFILE


class LimitedServer(Server):
    """A ``waveglow serve`` subprocess started with ``nofile`` file descriptors at most."""

    def __init__(self, checkpoint: Path, *args: str, nofile: int) -> None:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        super().__init__(checkpoint, *args, preexec_fn=limit)


@pytest.fixture(scope="module")
def roomy(tiny_checkpoint):
    srv = Server(tiny_checkpoint, "--max-frames-per-request", str(ROOMY_FRAMES),
                 "--max-body-memory-mb", str(ROOMY_BUDGET_MB), "--graceful-timeout",
                 str(GRACEFUL_S), "--max-wait-ms", "0")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tight(tiny_checkpoint):
    srv = Server(tiny_checkpoint, "--header-timeout", str(HEADER_S), "--body-timeout",
                 str(BODY_S), "--max-connections", str(TIGHT_CONNECTIONS))
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def fd_limited(tiny_checkpoint):
    srv = LimitedServer(tiny_checkpoint, "--header-timeout", str(HEADER_S), "--body-timeout",
                        str(BODY_S), nofile=NOFILE)
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------
# Raw-socket clients


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0); a no-op where refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def post_head(body_length: int | None, content_type: str = "application/json") -> bytes:
    length = (f"Content-Length: {body_length}" if body_length is not None
              else "Transfer-Encoding: chunked")
    return (f"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"{length}\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def read_answer(sock: socket.socket, timeout: float = WAIT_S) -> tuple[int | None, bytes]:
    """(the status, the bytes up to the end of the head) of an answer; None if the server
    closed without one."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            if not got:
                break
            data += got
    except (ConnectionResetError, BrokenPipeError):
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return None, data
    return int(data[9:12]), data


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` s (what it sends is read away)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
    return False


def valid_json_body(frames: int = 40) -> bytes:
    return json.dumps({"mel": make_mel(frames).tolist(), "seed": 1}).encode()


def post_valid(port: int) -> tuple[int, dict[str, str], bytes]:
    return synthesize(port, body=valid_json_body(), content_type="application/json")


def eventually(condition, timeout: float = WAIT_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.05)


def served(port: int) -> bool:
    """A valid request answered 200 now (a connection cut while the server still sheds other
    clients counts as not yet)."""
    try:
        return post_valid(port)[0] == 200
    except OSError:
        return False


def zeros_json(rows: int, values_per_row: int) -> bytes:
    row = b"[" + b"0.0," * (values_per_row - 1) + b"0.0]"
    return b'{"mel": [' + b",".join([row] * rows) + b"]}"


# ---------------------------------------------------------------------------------------------
# Memory: bodies in flight


def test_concurrent_oversized_json_bodies_are_refused_early_in_bounded_memory(roomy):
    """Eight 12 MB JSON bodies of ``0.0,`` at once (each row has 5x the frames allowed):
    every one is answered 413 (frames counted as the numbers arrive) or 503 (the body budget
    is spent), and the server's peak memory grows by far less than one body parsed whole
    (json.loads held ~160 MB per body)."""
    body = zeros_json(N_MELS, 5 * ROOMY_FRAMES)
    assert len(body) > 11_000_000
    pid = roomy.proc.pid
    reset_peak(pid)
    before = memory_mb(pid)["VmRSS"]
    statuses: list[int | None] = [None] * 8

    def client(i: int) -> None:
        with socket.create_connection(("127.0.0.1", roomy.port), timeout=WAIT_S) as sock:
            sender = threading.Thread(target=_send_quietly, args=(sock, post_head(len(body))
                                                                  + body), daemon=True)
            sender.start()
            statuses[i], head = read_answer(sock)
            assert statuses[i] != 503 or b"retry-after: " in head.lower()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 2)
    assert set(statuses) <= {413, 503} and 413 in statuses, statuses
    grown = memory_mb(pid)["VmHWM"] - before
    assert grown < 200, f"server peak grew by {grown:.0f} MiB"
    eventually(lambda: metric(roomy.port, "waveglow_body_memory_bytes") == 0,
               what="the body budget is released")
    assert post_valid(roomy.port)[0] == 200


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the server answered and closed


def test_stalled_chunked_bodies_hold_the_budget_until_their_clients_leave(roomy):
    """Chunked bodies that stop mid-mel, each needing most of the 4 MiB budget: the first
    holds it while it stalls, the next three are answered 503, and so is another large body
    meanwhile; once the clients leave, the budget is free again and memory returns."""
    pid = roomy.proc.pid
    before = memory_mb(pid)["VmRSS"]
    row = b"[" + b"-5.5," * (ROOMY_FRAMES - 1) + b"-5.5]"
    stalled = b'{"mel": [' + b",".join([row] * N_MELS)  # the mel never closes
    stalled = post_head(None) + b"".join(chunk(stalled[i:i + 65536])
                                         for i in range(0, len(stalled), 65536))

    def stall() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", roomy.port), timeout=WAIT_S)
        sock.sendall(stalled)
        return sock

    clients = [stall()]
    held = 4 * N_MELS * ROOMY_FRAMES  # its numbers, float32
    _wait_until_held_settles(roomy.port, held)
    clients += [stall() for _ in range(3)]
    answers = _answers_from(clients[1:], expected=3)
    assert sorted(answers.values()) == [503, 503, 503], answers
    # A valid body needing more than the rest of the budget (its numbers alone: 90% of held).
    row = b"[" + b"-5.5," * (ROOMY_FRAMES * 9 // 10 - 1) + b"-5.5]"
    status, headers, body = synthesize(roomy.port, body=b'{"mel": [' + b",".join(
        [row] * N_MELS) + b"]}", content_type="application/json")
    assert status == 503 and headers["retry-after"].isdigit(), body
    assert "--max-body-memory-mb" in json.loads(body)["error"]
    assert metric(roomy.port, "waveglow_body_memory_bytes") <= ROOMY_BUDGET_MB * 2**20
    for sock in clients:
        sock.close()
    eventually(lambda: metric(roomy.port, "waveglow_body_memory_bytes") == 0,
               what="the clients' bodies are released")
    assert post_valid(roomy.port)[0] == 200
    assert memory_mb(pid)["VmRSS"] - before < 64


def _wait_until_held_settles(port: int, held: int) -> None:
    """Until the bytes held by bodies are at least ``held`` and stay put for a second (the
    stalled body is read to its end)."""
    seen, since = -1.0, time.monotonic()
    deadline = since + WAIT_S
    while True:
        now_held = metric(port, "waveglow_body_memory_bytes")
        if now_held != seen:
            seen, since = now_held, time.monotonic()
        elif seen >= held and time.monotonic() - since >= 1.0:
            return
        assert time.monotonic() < deadline, f"body memory {seen} never settled at >= {held}"
        time.sleep(0.1)


def _answers_from(clients: list[socket.socket], expected: int) -> dict[int, int | None]:
    """{index: status} of the first ``expected`` clients answered (bounded wait)."""
    answers: dict[int, int | None] = {}
    deadline = time.monotonic() + WAIT_S
    while len(answers) < expected and time.monotonic() < deadline:
        for i, sock in enumerate(clients):
            if i in answers:
                continue
            sock.settimeout(0.05)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                data = b""
            answers[i] = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else None
    return answers


# ---------------------------------------------------------------------------------------------
# Connections: timeouts and the limit


def _trickle(sock: socket.socket, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            sock.sendall(b"0")
        except OSError:
            return
        time.sleep(0.2)


def test_idle_half_sent_and_trickling_connections_are_closed(tight):
    """Idle connections, half-sent heads, bodies that stop and bodies that trickle a byte at
    a time are all closed by the server within the timeouts (plus slack); a request head cut
    short is told why (408)."""
    port = tight.port
    kinds = {
        "idle": b"",
        "half head": b"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\nContent-Le",
        "stalled body": post_head(1000) + b'{"mel": [[1.0, ',
        "trickling body": post_head(100_000) + b"{",
    }
    stop = threading.Event()
    opened = []
    for kind, data in kinds.items():
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
            if data:
                sock.sendall(data)
            if kind == "trickling body":
                threading.Thread(target=_trickle, args=(sock, stop), daemon=True).start()
            opened.append((kind, sock))
    try:
        for kind, sock in opened:
            limit = HEADER_S if kind in ("idle", "half head") else 2 * BODY_S
            status, head = read_answer(sock, limit + SLACK_S)
            assert status in (None, 408), (kind, head[:100])
            if status is None:
                assert head == b"", (kind, head[:100])  # closed without a word
            assert closed_by_server(sock, limit + SLACK_S), kind
            if kind == "half head":
                assert status == 408, head[:100]
    finally:
        stop.set()
        for _, sock in opened:
            sock.close()
    assert post_valid(port)[0] == 200
    assert not any("Traceback" in line for line in tight.lines)


def test_beyond_the_connection_limit_503_at_once_and_slots_free_as_idle_ones_are_cut(tight):
    """--max-connections of idle clients: the next connection is answered 503 (Retry-After)
    at once, a flood beyond the limit is closed promptly, and once the idle ones are cut by
    the header timeout a request is served."""
    port = tight.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
            for _ in range(TIGHT_CONNECTIONS)]
    flood = []
    try:
        status, headers, body = post_valid(port)
        # Normally 503; 200 if the idle ones were cut already (a very slow machine).
        assert status in (200, 503), body
        if status == 503:
            assert headers["retry-after"].isdigit()
            assert "--max-connections" in json.loads(body)["error"]
        flood = [socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
                 for _ in range(200)]
        for sock in flood:
            assert closed_by_server(sock, SLACK_S)
        for sock in idle:
            assert closed_by_server(sock, HEADER_S + SLACK_S)
    finally:
        for sock in idle + flood:
            sock.close()
    eventually(lambda: served(port), what="a request is served again")


def test_at_the_file_descriptor_limit_the_log_stays_small_and_the_server_recovers(fd_limited):
    """Started with 64 descriptors, the server lowers --max-connections to fit and refuses
    the rest with 503; with its limit lowered further while it runs, accepting fails
    (EMFILE): one line in the log, not a traceback per try, and it answers again once the
    clients leave."""
    port, pid = fd_limited.port, fd_limited.proc.pid
    assert any("--max-connections 512 lowered to" in line for line in fd_limited.lines)
    clients = [socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
               for _ in range(2 * NOFILE)]
    refused = sum(read_answer(sock, WAIT_S)[0] == 503 for sock in clients[NOFILE:])
    assert refused > 0
    for sock in clients:
        sock.close()
    eventually(lambda: served(port), what="served after the clients left")
    if hasattr(resource, "prlimit"):
        open_now = len(os.listdir(f"/proc/{pid}/fd"))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_now + 8, NOFILE))
        clients = [socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
                   for _ in range(NOFILE)]
        time.sleep(3)  # accepting fails over and over meanwhile
        for sock in clients:
            sock.close()
        eventually(lambda: served(port), what="served after EMFILE")
        assert any("cannot accept connections: Too many open files" in line
                   for line in fd_limited.lines)
    log = "".join(fd_limited.lines)
    assert "Traceback" not in log and len(log) < 4000, log[-2000:]


# ---------------------------------------------------------------------------------------------
# Shutdown (last: it stops the roomy server)


def test_sigterm_cuts_a_trickling_body_and_finishes_the_request_in_flight(roomy):
    """SIGTERM while one client trickles its body a byte at a time and another's request is
    being synthesised: the trickler is cut at once, the synthesis finishes and its answer is
    whole, and the server exits 0 within --graceful-timeout (plus slack)."""
    port = roomy.port
    trickler = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    trickler.sendall(post_head(100_000) + b"{")
    stop = threading.Event()
    threading.Thread(target=_trickle, args=(trickler, stop), daemon=True).start()
    frames = 800
    body = npy_bytes(make_mel(frames, seed=3))
    running = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    running.sendall(post_head(len(body), "application/octet-stream") + body)
    status, head = read_answer(running)
    assert status == 200
    start = time.monotonic()
    roomy.proc.send_signal(signal.SIGTERM)
    answer = head.split(b"\r\n\r\n", 1)[1]
    running.settimeout(WAIT_S)
    while got := running.recv(65536):  # shutting down: closed after the answer
        answer += got
    try:
        code = roomy.proc.wait(GRACEFUL_S + SLACK_S)
    finally:
        stop.set()
    assert code == 0 and time.monotonic() - start < GRACEFUL_S + SLACK_S
    assert len(_unchunk(answer)) == 44 + 2 * frames * HOP
    assert read_answer(trickler, 5)[0] in (None, 503)
    running.close()
    trickler.close()


def _unchunk(data: bytes) -> bytes:
    out, stream = b"", io.BytesIO(data)
    while True:
        size = int(stream.readline().strip() or b"0", 16)
        if size == 0:
            return out
        out += stream.read(size)
        stream.readline()
