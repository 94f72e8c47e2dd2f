"""The server's Prometheus metrics, in a registry of its own (not prometheus-client's global
one: two apps in one process, as in tests, must not share or collide on counters)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: from a few milliseconds (a short mel on a GPU) to minutes (ten minutes of audio on
# a CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class ServerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("waveglow_requests", "Synthesis requests answered, by HTTP "
                                "status", ["status"], registry=r)
        self.latency = Histogram("waveglow_request_seconds", "From the request's arrival to "
                                 "its last byte", buckets=LATENCY_BUCKETS, registry=r)
        self.first_byte = Histogram("waveglow_first_byte_seconds", "From the request's arrival "
                                    "to its first byte of audio", buckets=LATENCY_BUCKETS,
                                    registry=r)
        self.batch_size = Histogram("waveglow_batch_size", "Requests synthesised together in "
                                    "one batch", buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("waveglow_queue_depth", "Requests waiting for the synthesis "
                                 "worker", registry=r)
        self.in_flight = Gauge("waveglow_requests_in_flight", "Requests being synthesised or "
                               "streamed", registry=r)
        self.audio_seconds = Counter("waveglow_audio_seconds", "Seconds of audio sent",
                                     registry=r)
        self.body_memory = Gauge("waveglow_body_memory_bytes", "Bytes held by request bodies "
                                 "being received and parsed (--max-body-memory-mb)",
                                 registry=r)
        self.failures = Counter("waveglow_worker_failures", "Batches whose synthesis raised "
                                "(their requests failed; the worker went on)", registry=r)

    def answered(self, status: int) -> None:
        self.requests.labels(status=str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
