"""``waveglow serve``: the real server in a subprocess on 127.0.0.1, real HTTP
requests (http.client, in threads), no mocks.  Two servers for the whole module (each start
pays the torch import): one with room for batching, one with a queue of one."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from conftest import run_cli  # noqa: E402

N_MELS = 4
HOP = 256
MAX_FRAMES = 6000  # the main server's --max-frames-per-request


class Server:
    """A ``waveglow serve`` subprocess; its stderr is drained (and kept) by a thread."""

    def __init__(self, checkpoint: Path, *args: str, preexec_fn=None) -> None:
        env = {**os.environ, "WAVEGLOW_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "waveglow_cli", "serve", "-c", str(checkpoint), "--port", "0",
             "--device", "cpu", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=env, text=True, preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.ready.wait(120):
            self.stop()
            raise AssertionError(f"server did not start: {self.lines}")

    def _drain(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.lines.append(line)
            if line.startswith("serving ") and " on http://127.0.0.1:" in line:
                self.port = int(line.rsplit(":", 1)[1])
                self.ready.set()
        self.ready.set()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 120
            ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def synthesize(port: int, mel: np.ndarray | None = None, *, body: bytes | None = None,
               content_type: str = "application/octet-stream", **query: object
               ) -> tuple[int, dict[str, str], bytes]:
    if body is None:
        body = npy_bytes(mel)
    path = "/v1/synthesize" + (f"?{urlencode(query)}" if query else "")
    return request(port, "POST", path, body, {"content-type": content_type})


def npy_bytes(mel: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, mel)
    return buffer.getvalue()


def make_mel(frames: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((N_MELS, frames)) * 0.5 - 5
            ).astype(np.float32)


def wav_floats(data: bytes) -> np.ndarray:
    import soundfile as sf

    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 22050
    return audio


def metric(port: int, name: str) -> float:
    status, _, body = request(port, "GET", "/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    """Room for batching: a 50 ms window, 16 per batch, frames limited for the 413 tests."""
    srv = Server(tiny_checkpoint, "--max-wait-ms", "50", "--max-frames-per-request",
                 str(MAX_FRAMES))
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def narrow(tiny_checkpoint):
    """One request at a time and one waiting: the 503 and shutdown tests."""
    srv = Server(tiny_checkpoint, "--queue", "1", "--max-batch", "1", "--max-wait-ms", "0")
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------
# Starting, describing


def test_startup_errors_are_one_line(tiny_checkpoint, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "-c", tiny_checkpoint, "--port", port, "--device", "cpu")
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]
    result = run_cli("serve", "-c", "no-such-checkpoint", "--port", "0")
    assert result.returncode == 2 and len(result.stderr.decode().splitlines()) == 1
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = run_cli("serve", "-c", tmp_path / "bad.pt", "--port", "0", "--device", "cpu")
    assert result.returncode == 1
    [line] = result.stderr.decode().splitlines()
    assert line.startswith("error: ") and "bad.pt" in line



def test_health_models_and_metrics(server, tiny_checkpoint):
    status, headers, body = request(server.port, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, _, body = request(server.port, "GET", "/v1/models")
    [model] = json.loads(body)["models"]
    assert model["name"] == str(tiny_checkpoint)
    assert model["sample_rate"] == 22050 and model["mel"]["n_mels"] == N_MELS
    import hashlib

    assert model["sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert model["max_frames_per_request"] == MAX_FRAMES
    status, headers, body = request(server.port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    for name in ("waveglow_requests_total", "waveglow_request_seconds_bucket",
                 "waveglow_first_byte_seconds_bucket", "waveglow_batch_size_bucket",
                 "waveglow_queue_depth", "waveglow_audio_seconds_total"):
        assert name in text
    assert request(server.port, "GET", "/nowhere")[0] == 404


# ---------------------------------------------------------------------------------------------
# Exactness


def _timed_post(port: int, mel: np.ndarray, query: str) -> tuple[bytes, float, float]:
    """(the body, seconds to its first bytes, seconds to its end)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.monotonic()
    conn.request("POST", f"/v1/synthesize?{query}", body=npy_bytes(mel),
                 headers={"content-type": "application/octet-stream"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type") == "audio/wav"
    assert response.getheader("transfer-encoding") == "chunked"
    first = response.read1(65536)
    first_at = time.monotonic() - start
    rest = response.read()
    conn.close()
    return first + rest, first_at, time.monotonic() - start


def test_a_request_streams_the_bytes_synth_writes(server, tiny_checkpoint, tmp_path):
    """seed + key: the noise of `waveglow synth KEY --seed S`; a request is byte for byte
    synth's file, and a long one's first bytes come well before its last."""
    mel = make_mel(150, seed=1)
    np.save(tmp_path / "utt.npy", mel)
    result = run_cli("synth", tmp_path / "utt.npy", "-c", tiny_checkpoint, "--device", "cpu",
                     "--seed", "5", "-o", tmp_path / "utt.wav", "-q")
    assert result.returncode == 0, result.stderr
    body, _, _ = _timed_post(server.port, mel, "seed=5&key=utt.npy")
    assert body == (tmp_path / "utt.wav").read_bytes()
    body, first_at, last_at = _timed_post(server.port, make_mel(MAX_FRAMES, seed=9), "seed=1")
    assert len(body) == 44 + 2 * MAX_FRAMES * HOP
    assert first_at < last_at / 4, (first_at, last_at)


def test_a_json_body_equals_the_npy_body(server):
    mel = make_mel(300, seed=2)
    status, _, from_npy = synthesize(server.port, mel, seed=9, key="a/b.npy")
    assert status == 200
    body = json.dumps({"mel": mel.tolist(), "seed": 9, "key": "a/b.npy"}).encode()
    status, headers, from_json = synthesize(server.port, body=body,
                                            content_type="application/json")
    assert status == 200 and headers["content-type"] == "audio/wav"
    assert from_json == from_npy
    # Clients that declare no type, or urllib's default form type, are read by content.
    for declared in ("", "application/x-www-form-urlencoded"):
        status, _, answer = synthesize(server.port, body=body, content_type=declared)
        assert status == 200 and answer == from_npy, (declared, answer[:200])
    # Another key, another noise; no seed, fresh noise each time.
    assert synthesize(server.port, mel, seed=9, key="a/c.npy")[2] != from_npy
    assert synthesize(server.port, mel)[2] != synthesize(server.port, mel)[2]


def test_concurrent_requests_each_equal_their_lone_result(server):
    """16 requests of different lengths (two with another sigma) at once: taken together,
    each one's audio is what it is alone (on the CPU one piece per forward pass: bit for bit)."""
    lengths = [20, 150, 35, 96, 60, 24, 110, 90, 130, 45, 70, 32, 140, 66, 28, 120]
    mels = [make_mel(n, seed=100 + i) for i, n in enumerate(lengths)]
    sigmas = [0.6] * 14 + [0.4, 0.4]
    lone = [synthesize(server.port, mel, seed=3, key=f"u{i}", sigma=s)
            for i, (mel, s) in enumerate(zip(mels, sigmas))]
    assert all(status == 200 for status, _, _ in lone)
    calls_before = metric(server.port, "waveglow_batch_size_count")
    results: list = [None] * len(mels)
    barrier = threading.Barrier(len(mels))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = synthesize(server.port, mels[i], seed=3, key=f"u{i}", sigma=sigmas[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(mels))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, ((status, _, body), (_, _, alone)) in enumerate(zip(results, lone)):
        assert status == 200 and len(body) == 44 + 2 * lengths[i] * HOP
        assert body == alone, i
    calls = metric(server.port, "waveglow_batch_size_count") - calls_before
    assert calls < len(mels)  # some requests were synthesised together


def test_formats(server):
    mel = make_mel(200, seed=4)
    _, _, wav = synthesize(server.port, mel, seed=1, key="f")
    status, headers, raw = synthesize(server.port, mel, seed=1, key="f", format="raw")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert headers["x-sample-rate"] == "22050" and headers["x-audio-samples"] == str(200 * HOP)
    assert raw == wav[44:]
    status, headers, flac = synthesize(server.port, mel, seed=1, key="f", format="flac")
    assert status == 200 and headers["content-type"] == "audio/flac" and flac[:4] == b"fLaC"
    # libsndfile rounds to integers differently for FLAC than for WAV: within one step.
    np.testing.assert_allclose(wav_floats(flac), wav_floats(wav), atol=1.01 / 32768, rtol=0)
    status, _, pcm24 = synthesize(server.port, mel, seed=1, key="f", subtype="PCM_24")
    assert status == 200 and len(pcm24) == 44 + 3 * 200 * HOP


# ---------------------------------------------------------------------------------------------
# Refusals


def _json(mel: object, **fields: object) -> bytes:
    return json.dumps({"mel": mel, **fields}).encode()


GOOD = make_mel(20).tolist()


REFUSALS = [
    (b"this is not a mel", "application/octet-stream", {}, 400, "not a mel spectrogram"),
    (b"<html><body>hi</body></html>", "application/octet-stream", {}, 400, "HTML"),
    (b"", "application/octet-stream", {}, 400, "empty body"),
    (npy_bytes(make_mel(20)[:3]), "application/octet-stream", {}, 400, "channels"),
    (npy_bytes(np.full((N_MELS, 20), np.nan, np.float32)), "application/octet-stream", {}, 400,
     "NaN"),
    (_json([[1.0, 2.0]] * 3), "application/json", {}, 400, "channels"),
    (b'{"mel": [[1, NaN], [1, 2], [1, 2], [1, 2]]}', "application/json", {}, 400, "NaN"),
    (_json([[1, "a"]] * N_MELS), "application/json", {}, 400, "numbers"),
    (_json([[1, 2], [1], [1, 2], [1, 2]]), "application/json", {}, 400, "rows"),
    (b'{"mel": [[1, 2]', "application/json", {}, 400, "not valid JSON"),
    (_json(GOOD, sgima=1), "application/json", {}, 400, "unknown field 'sgima'"),
    (_json(GOOD), "application/json", {"sigma": "-1"}, 400, "sigma"),
    (_json(GOOD), "application/json", {"sigma": "loud"}, 400, "sigma must be a number"),
    (_json(GOOD, sigma="nan"), "application/json", {}, 400, "sigma"),
    (_json(GOOD), "application/json", {"format": "mp3"}, 400, "format"),
    (_json(GOOD), "application/json", {"format": "flac", "subtype": "FLOAT"}, 400, "flac"),
    (_json(GOOD), "application/json", {"subtype": "PCM_8"}, 400, "subtype"),
    (_json(GOOD, seed=1.5), "application/json", {}, 400, "seed must be an integer"),
    (_json(GOOD, key=7), "application/json", {}, 400, "key must be a string"),
    (_json(GOOD), "application/json", {"volume": "11"}, 400, "unknown parameter 'volume'"),
    # Noise scaled beyond float32: NaN audio, refused before any audio is sent.
    (_json(GOOD), "application/json", {"sigma": "1e38"}, 422, "NaN"),
]


@pytest.mark.parametrize("body, content_type, query, status, words", REFUSALS,
                         ids=[f"{i}-{r[4].split()[0]}" for i, r in enumerate(REFUSALS)])
def test_bad_requests_get_a_json_error_naming_the_reason(server, body, content_type, query,
                                                         status, words):
    got, headers, answer = synthesize(server.port, body=body, content_type=content_type,
                                      **query)
    assert got == status, answer
    assert headers["content-type"] == "application/json"
    assert words in json.loads(answer)["error"]


def test_too_large_gets_413(server):
    status, _, body = synthesize(server.port, make_mel(MAX_FRAMES + 1))
    assert status == 413 and "frames" in json.loads(body)["error"]
    # A declared length over the limit is refused before the body is read.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/synthesize")
    conn.putheader("content-type", "application/octet-stream")
    conn.putheader("content-length", str(10**10))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    conn.close()
    # A chunked body declares no length: counted while read.
    limit = N_MELS * MAX_FRAMES * 8 + 64 * 1024
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = (b"\0" * 65536 for _ in range(limit // 65536 + 2))
    try:
        conn.request("POST", "/v1/synthesize", body=chunks, encode_chunked=True,
                     headers={"content-type": "application/octet-stream"})
        response = conn.getresponse()
        assert response.status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while the body was still coming
    conn.close()
    assert request(server.port, "GET", "/health")[0] == 200


# ---------------------------------------------------------------------------------------------
# Clients that leave, a full queue, shutdown


def test_a_client_that_leaves_mid_stream_does_not_hurt_the_server(server):
    body = npy_bytes(make_mel(MAX_FRAMES, seed=5))
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/octet-stream\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
    mel = make_mel(120, seed=6)
    status, _, audio = synthesize(server.port, mel, seed=2, key="after")
    assert status == 200 and len(audio) == 44 + 2 * 120 * HOP
    deadline = time.monotonic() + 30
    while metric(server.port, 'waveglow_requests_total{status="499"}') < 2:
        assert time.monotonic() < deadline, "the server did not notice the clients leaving"
        time.sleep(0.1)


def _open_request(port: int, mel: np.ndarray) -> socket.socket:
    """A synthesis request sent on a raw socket (closing it is a client that leaves)."""
    body = npy_bytes(mel)
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(b"POST /v1/synthesize HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/octet-stream\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def _wait_for(port: int, name: str, value: float) -> None:
    deadline = time.monotonic() + 60
    while metric(port, name) != value:
        assert time.monotonic() < deadline, f"{name} never became {value}"
        time.sleep(0.02)


def test_a_full_queue_gets_503_and_clients_that_leave_are_dropped(narrow):
    """--queue 1 --max-batch 1: one request synthesised, one waiting, the next refused with
    Retry-After.  Clients that leave, waiting or in flight, free their places."""
    running = _open_request(narrow.port, make_mel(20000, seed=7))
    assert running.recv(12) == b"HTTP/1.1 200"  # the worker holds it
    waiting = _open_request(narrow.port, make_mel(50))
    _wait_for(narrow.port, "waveglow_queue_depth", 1)
    status, headers, body = synthesize(narrow.port, make_mel(50))
    assert status == 503 and headers["retry-after"].isdigit()
    assert "queue" in json.loads(body)["error"]
    waiting.close()
    _wait_for(narrow.port, "waveglow_queue_depth", 0)
    running.close()
    _wait_for(narrow.port, 'waveglow_requests_total{status="499"}', 2)
    status, _, audio = synthesize(narrow.port, make_mel(40))
    assert status == 200 and len(audio) == 44 + 2 * 40 * HOP


def test_sigterm_finishes_the_request_in_flight_and_exits_0(narrow):
    mel = make_mel(8000, seed=8)
    conn = http.client.HTTPConnection("127.0.0.1", narrow.port, timeout=120)
    conn.request("POST", "/v1/synthesize", body=npy_bytes(mel),
                 headers={"content-type": "application/octet-stream"})
    response = conn.getresponse()
    assert response.status == 200
    head = response.read1(44)
    narrow.proc.send_signal(signal.SIGTERM)
    data = head + response.read()
    conn.close()
    assert len(data) == 44 + 2 * 8000 * HOP
    assert narrow.proc.wait(60) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", narrow.port), timeout=5).close()


# ---------------------------------------------------------------------------------------------
# The protocol alone (no server)


def test_the_protocol_parses_both_bodies_alike():
    from waveglow_cli.serve.protocol import (
        AudioParams,
        Limits,
        RequestError,
        RequestTooLarge,
        parse_params,
        parse_request,
    )
    from waveglow_cli.synthesis.noise import item_seed

    limits = Limits(n_mels=N_MELS, max_frames=100)
    mel = make_mel(30)
    a = parse_request(npy_bytes(mel), "application/octet-stream", {"seed": "4"}, limits)
    b = parse_request(_json(mel.tolist(), seed=4), "application/json", {}, limits)
    np.testing.assert_array_equal(a.mel, b.mel)
    assert a.params == b.params == AudioParams(seed=4) and a.frames == 30
    assert a.params.noise_seed() == item_seed(4, "")
    with pytest.raises(RequestError, match="looks like \\(frames, n_mels\\)"):
        parse_request(_json(mel.T.tolist()), None, {}, limits)  # no content type: sniffed
    assert parse_params({"format": "FLAC", "subtype": "pcm_24"}).format == "flac"
    with pytest.raises(RequestTooLarge):
        parse_request(npy_bytes(make_mel(101)), None, {}, limits)
    assert limits.body_bytes(json_body=False) < limits.body_bytes(json_body=True)
