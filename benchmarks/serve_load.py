"""Load test for ``waveglow serve``: real HTTP clients on 127.0.0.1 against sequential
``waveglow synth`` calls on the same mels.

    python benchmarks/serve_load.py [-c demo] [--clients 8] [--requests 10]
        [--min-frames 32] [--max-frames 256] [--max-seconds 120] [--device cpu]
        [--max-batch 16] [--max-wait-ms 10] [--synth-calls N] [--url http://HOST:PORT]

Starts ``waveglow serve -c CHECKPOINT --port 0`` (unless ``--url`` names a running server),
waits for ``/health``, then ``--clients`` threads each send ``--requests`` requests one after
another (a .npy mel of a length drawn uniformly from [min, max] frames, seeded), reading each
response as it streams.  Everything is bounded: requests not started within ``--max-seconds``
are not sent.  Then the same mels (the first ``--synth-calls``, default as many as requests
were sent) go through ``waveglow synth MEL -o -`` one subprocess after another (what a
pipeline without a server pays per utterance: start, load, synthesise), within the same time
bound.

Reported (one JSON object on stdout): latency p50/p99 (request sent to last byte), first-byte
p50/p99, throughput in seconds of audio per second of wall time, for the server and for
sequential synth calls, and their ratio.  The defaults suit a 2-core machine (about two
minutes); the full load is ``--clients 32 --requests 200 --max-seconds 1800``.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import io
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np


@dataclass
class Sample:
    frames: int
    latency: float
    first_byte: float
    ok: bool
    status: int = 0
    first_audio: float = float("nan")  # the first byte after the WAV header


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sample: Sample) -> None:
        with self.lock:
            self.samples.append(sample)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index], 4)


def make_mels(count: int, n_mels: int, lo: int, hi: int, seed: int) -> list[np.ndarray]:
    """Mels of mixed lengths with speech-like log magnitudes (about -11 to 0)."""
    rng = np.random.default_rng(seed)
    mels = []
    for _ in range(count):
        frames = int(rng.integers(lo, hi + 1))
        base = np.linspace(-2.0, -8.0, n_mels)[:, None]
        mels.append((base + rng.standard_normal((n_mels, frames)) * 1.2).astype(np.float32))
    return mels


def wav_audio_offset(head: bytes) -> int | None:
    """Where the samples start in a WAV stream beginning with ``head`` (after the ``data``
    chunk's header: 44 bytes for PCM, more with a ``fact`` chunk); None while ``head`` is too
    short to tell, or is no RIFF/WAVE."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    position = 12
    while position + 8 <= len(head):
        chunk, size = head[position:position + 4], struct.unpack_from("<I", head, position + 4)[0]
        if chunk == b"data":
            return position + 8
        position += 8 + size + (size & 1)
    return None


def npy(mel: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, mel)
    return buffer.getvalue()


def one_request(host: str, port: int, mel: np.ndarray, seed: int) -> Sample:
    body = npy(mel)
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=600)
    try:
        conn.request("POST", f"/v1/synthesize?seed={seed}&key=r{seed}.npy", body=body,
                     headers={"content-type": "application/octet-stream"})
        response = conn.getresponse()
        head = response.read1(65536)
        first_at = time.perf_counter() - start
        while (offset := wav_audio_offset(head)) is None or len(head) <= offset:
            more = response.read1(65536)
            if not more:
                break
            head += more
        first_audio_at = time.perf_counter() - start
        rest = response.read()
        ok = response.status == 200 and len(head) + len(rest) > 44
        return Sample(mel.shape[1], time.perf_counter() - start, first_at, ok, response.status,
                      first_audio_at)
    except (OSError, http.client.HTTPException):
        return Sample(mel.shape[1], time.perf_counter() - start, float("nan"), False)
    finally:
        conn.close()


def load_phase(host: str, port: int, mels: list[np.ndarray], clients: int, requests: int,
               deadline: float) -> tuple[Results, float]:
    results = Results()

    def client(c: int) -> None:
        for r in range(requests):
            if time.monotonic() > deadline:
                return
            index = c * requests + r
            results.add(one_request(host, port, mels[index], index))

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - start


def synth_phase(checkpoint: str, device: str, mels: list[np.ndarray], deadline: float,
                workdir: Path) -> tuple[Results, float]:
    """``waveglow synth MEL -o -``, one call after another (first byte read from the pipe)."""
    results = Results()
    env = {**os.environ, "WAVEGLOW_OFFLINE": "1"}
    start = time.perf_counter()
    for index, mel in enumerate(mels):
        if time.monotonic() > deadline:
            break
        path = workdir / f"r{index}.npy"
        np.save(path, mel)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "waveglow_cli", "synth", str(path),
                                 "-c", checkpoint, "--device", device, "--seed", str(index),
                                 "-o", "-", "-q"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env)
        first = proc.stdout.read(1)  # type: ignore[union-attr]
        first_at = time.perf_counter() - t0
        proc.stdout.read()  # type: ignore[union-attr]
        ok = proc.wait() == 0 and bool(first)
        results.add(Sample(mel.shape[1], time.perf_counter() - t0, first_at, ok))
    return results, time.perf_counter() - start


def summary(results: Results, wall: float, sample_rate: int, hop: int) -> dict[str, object]:
    good = [s for s in results.samples if s.ok]
    audio = sum(s.frames for s in good) * hop / sample_rate
    statuses: dict[str, int] = {}
    for s in results.samples:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    return {
        "requests": len(results.samples), "ok": len(good), "statuses": statuses,
        "wall_seconds": round(wall, 3), "audio_seconds": round(audio, 3),
        "throughput_audio_s_per_s": round(audio / wall, 4) if wall > 0 else None,
        "latency_p50": percentile([s.latency for s in good], 50),
        "latency_p99": percentile([s.latency for s in good], 99),
        "first_byte_p50": percentile([s.first_byte for s in good], 50),
        "first_byte_p99": percentile([s.first_byte for s in good], 99),
        "first_audio_p50": percentile([s.first_audio for s in good], 50),
        "mean_latency": round(statistics.fmean([s.latency for s in good]), 4) if good else None,
    }


def start_server(args: argparse.Namespace, extra: Sequence[str] = ()
                 ) -> tuple[subprocess.Popen[str], int]:
    """``waveglow serve`` on a free port of 127.0.0.1 (``args``: checkpoint, device, max_batch,
    max_wait_ms; ``extra``: more options) once it listens: (process, port)."""
    env = {**os.environ, "WAVEGLOW_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "waveglow_cli", "serve", "-c", args.checkpoint, "--port", "0",
         "--device", args.device, "--max-batch", str(args.max_batch), "--max-wait-ms",
         str(args.max_wait_ms), *extra], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True, env=env)
    stderr = proc.stderr
    assert stderr is not None
    for line in stderr:
        if line.startswith("serving "):
            port = int(line.strip().rsplit(":", 1)[1])
            threading.Thread(target=stderr.read, daemon=True).start()  # keep it drained
            return proc, port
        sys.stderr.write(line)
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


def describe(host: str, port: int) -> dict[str, object]:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("GET", "/v1/models")
    [model] = json.loads(conn.getresponse().read())["models"]
    conn.close()
    return model


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-c", "--checkpoint", default="demo")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=10, help="per client")
    p.add_argument("--min-frames", type=int, default=32)
    p.add_argument("--max-frames", type=int, default=256)
    p.add_argument("--max-seconds", type=float, default=120.0,
                   help="time bound of each phase (no request starts after it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--synth-calls", type=int, default=None,
                   help="sequential synth calls (default: as many as requests sent; 0: none)")
    p.add_argument("--url", default=None, help="a running server instead of starting one")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    proc = None
    if args.url:
        parts = urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
    else:
        proc, port = start_server(args)
        host = "127.0.0.1"
    try:
        model = describe(host, port)
        total = args.clients * args.requests
        mels = make_mels(total, int(model["n_mels"]), args.min_frames, args.max_frames,
                         args.seed)
        results, wall = load_phase(host, port, mels, args.clients, args.requests,
                                   time.monotonic() + args.max_seconds)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(120)
    rate, hop = int(model["sample_rate"]), int(model["hop_length"])
    server = summary(results, wall, rate, hop)
    calls = len(results.samples) if args.synth_calls is None else args.synth_calls
    report: dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "checkpoint": args.checkpoint, "device": model["device"], "cpus": os.cpu_count(),
        "clients": args.clients, "requests_per_client": args.requests,
        "frames": [args.min_frames, args.max_frames], "server": server,
    }
    if calls > 0:
        with tempfile.TemporaryDirectory() as tmp:
            synth, synth_wall = synth_phase(args.checkpoint, args.device, mels[:calls],
                                            time.monotonic() + args.max_seconds, Path(tmp))
        report["sequential_synth"] = summary(synth, synth_wall, rate, hop)
        fast, slow = server["throughput_audio_s_per_s"], \
            report["sequential_synth"]["throughput_audio_s_per_s"]  # type: ignore[index]
        if fast and slow:
            report["throughput_ratio"] = round(fast / slow, 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
