"""The HTTP app: four routes over a loaded :class:`~waveglow_cli.vocoder.Vocoder`.

``create_app(vocoder, options)`` gives a Starlette app whose lifespan starts and stops the
synthesis worker (:mod:`.batcher`).  ``POST /v1/synthesize`` reads and checks the body as it
arrives, within the limits and the server's memory budget for bodies (:mod:`.body`, parsed
off the event loop), queues the request and answers with its audio as it is made
(:mod:`.stream`).  ``GET /health``, ``GET /v1/models`` and
``GET /metrics`` describe the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._version import package_version
from ..synthesis.plans import FIRST_PIECE_FRAMES, BatchOptions
from .batcher import Batcher, BatcherOptions, Job
from .body import BodyBudget, read_request
from .metrics import ServerMetrics
from .protocol import Limits, RequestError, default_max_frames
from .stream import AudioStream, error_response

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from ..vocoder import ModelFile, Vocoder

SECONDS_PER_REQUEST_LIMIT = 600.0  # the default --max-frames-per-request: ten minutes of audio
DEFAULT_BODY_MEMORY_BYTES = 256 * 2**20  # --max-body-memory-mb
# How long the lifespan's end waits for the worker's current piece once the requests are done
# or cut (it skips the pieces of requests whose clients are gone; a daemon thread after that).
WORKER_STOP_WAIT_S = 5.0


@dataclass(frozen=True)
class ServeOptions:
    """The server's settings (``waveglow serve``'s options)."""

    name: str                           # the checkpoint as given (-c), shown by /v1/models
    max_batch: int = 16                 # requests synthesised together
    max_wait_ms: float = 10.0           # how long the oldest waiting request waits for company
    queue: int = 256                    # requests that may wait; more get 503
    max_frames_per_request: int | None = None  # None: ten minutes of audio
    batch: BatchOptions | None = None   # None: synth's defaults for the device, front to back
    retry_after_s: int = 1              # what a 503 tells the client to wait
    max_body_memory: int = DEFAULT_BODY_MEMORY_BYTES  # bytes all bodies being read may hold

    def __post_init__(self) -> None:
        self.batcher_options()  # --max-batch, --max-wait-ms and --queue: checked there
        if self.max_body_memory < 1:
            raise ValueError("--max-body-memory-mb must be > 0")
        if self.max_frames_per_request is not None and self.max_frames_per_request < 1:
            raise ValueError("--max-frames-per-request must be >= 1")

    def batcher_options(self) -> BatcherOptions:
        """How the worker batches requests (:class:`~.batcher.BatcherOptions`, which checks
        these values)."""
        return BatcherOptions(self.max_batch, self.max_wait_ms / 1000.0, self.queue)


@dataclass
class ServerState:
    """What the routes share: the model, the worker, the limits and the metrics."""

    vocoder: Vocoder
    options: ServeOptions
    batcher: Batcher
    limits: Limits
    metrics: ServerMetrics
    samples: Callable[[int], int]  # mel frames -> samples of audio (Synthesizer.samples)
    budget: BodyBudget             # the memory for bodies being received and parsed


def batch_options(vocoder: Vocoder, options: ServeOptions) -> BatchOptions:
    """The synthesis batching: ``waveglow synth``'s for one input on this device (pieces
    growing from ``FIRST_PIECE_FRAMES``), so a request alone is synthesised exactly as synth
    synthesises that file.

    On a GPU the pieces of up to ``max_batch`` requests share each forward pass (that is what
    keeps it busy; the result equals each request alone to float rounding).  On the CPU each
    forward pass takes one piece: batching there cost more than it saved (padding, masks, and
    oneDNN preparing a transposed convolution for every new batch shape: 1.3x less throughput
    with the demo model), and one piece at a time keeps every response bit for bit its lone
    result.  The requests taken together are still interleaved piece by piece, so each gets
    its first audio early."""
    if options.batch is not None:
        return options.batch
    on_cpu = vocoder.device.type == "cpu"
    return BatchOptions.for_device(vocoder.device, vocoder.config,
                                   batch_size=1 if on_cpu else options.max_batch,
                                   first_piece=FIRST_PIECE_FRAMES)


def serving_vocoder(model_file: ModelFile, device: torch.device, precision: str = "auto",
                    engine: str = "auto", cache_dir: Path | None = None) -> Vocoder:
    """The vocoder a server runs, with NVIDIA's denoiser.  Requests bring either kind of noise,
    so the selection table chooses for both
    (:attr:`~waveglow_cli.engines.select.SigmaPolicy.EITHER`) and both engines are built
    before the first request, not during it: where ``auto`` picks bf16 for sampled noise,
    sigma 0 runs in float32, and every request equals ``synth`` with its sigma."""
    from ..engines.select import SigmaPolicy, choose_engine

    choice = choose_engine(model_file.source, device, precision, engine, SigmaPolicy.EITHER)
    vocoder = model_file.vocoder(choice, denoise=True, cache_dir=cache_dir)
    vocoder.engine_for(0.0)  # the engine for sigma 0, where it is another one
    return vocoder


def create_app(vocoder: Vocoder, options: ServeOptions) -> Starlette:
    """The server's ASGI app over a loaded vocoder (load it with ``denoise=True`` for
    ``denoiser_strength`` to be available).  Each request runs on the vocoder's engine for
    its sigma (:meth:`Vocoder.synthesizer`): where ``--precision auto`` picks a reduced
    precision for sampled noise, sigma 0 runs in float32, as ``synth`` picks per run."""
    metrics = ServerMetrics()
    config = vocoder.config
    max_frames = options.max_frames_per_request or default_max_frames(
        vocoder.sample_rate, config.hop_length, SECONDS_PER_REQUEST_LIMIT)
    batcher = Batcher(vocoder.synthesizer, batch_options(vocoder, options),
                      options.batcher_options(), metrics)
    state = ServerState(vocoder, options, batcher, Limits(config.n_mel_channels, max_frames),
                        metrics, vocoder.synthesizer().samples,
                        BodyBudget(options.max_body_memory, metrics.body_memory.set))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            # The server has finished (or, past --graceful-timeout, cut) the requests in
            # flight by now; the worker ends once idle.
            await run_in_threadpool(batcher.stop, WORKER_STOP_WAIT_S)

    async def synthesize(request: Request) -> Response | AudioStream:
        return await _synthesize(state, request)

    async def health(request: Request) -> Response:
        ok = batcher.alive
        return JSONResponse({"status": "ok" if ok else "unavailable", "model": options.name},
                            status_code=200 if ok else 503)

    async def models(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(_model_description, state))

    async def metrics_text(request: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    routes = [Route("/v1/synthesize", synthesize, methods=["POST"]),
              Route("/health", health, methods=["GET"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/metrics", metrics_text, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = state
    return app


def _model_description(state: ServerState) -> dict[str, object]:
    vocoder, config = state.vocoder, state.vocoder.config
    return {"version": package_version(), "models": [{
        "name": state.options.name,
        "sample_rate": vocoder.sample_rate,
        "mel": dataclasses.asdict(vocoder.mel_config),
        "sha256": vocoder.sha256(),
        "n_mels": config.n_mel_channels,
        "hop_length": config.hop_length,
        "device": str(vocoder.device),
        "dtype": str(vocoder.dtype).replace("torch.", ""),
        "max_frames_per_request": state.limits.max_frames,
        "max_batch": state.options.max_batch,
        "denoiser": vocoder.denoiser is not None,
    }]}


async def _synthesize(state: ServerState, request: Request) -> Response | AudioStream:
    """Read, check, queue; the response streams the audio (or says what was wrong)."""
    arrived = time.monotonic()
    retry = {"retry-after": str(state.options.retry_after_s)}
    try:
        parsed = await read_request(request, state.limits, state.budget)
    except ClientDisconnect:
        state.metrics.answered(499)
        return Response(status_code=499)  # nobody reads it
    except RequestError as e:
        state.metrics.answered(e.status)
        # The body may be unread: the connection cannot carry another request.
        return error_response(e.status, e.reason, close=True,
                              headers=retry if e.status == 503 else None)
    except MemoryError:
        state.metrics.answered(503)
        return error_response(503, "out of memory reading the request; retry later",
                              close=True, headers=retry)
    params = parsed.params
    loop = asyncio.get_running_loop()
    job = Job(state.batcher.new_key(), parsed.mel, params.sigma, params.denoiser_strength,
              params.noise_seed(), loop, arrived=arrived)
    if not state.batcher.submit(job):
        state.metrics.answered(503)
        return error_response(503, "the server is busy (its queue is full); retry later",
                              headers=retry)
    return AudioStream(state.batcher, state.metrics, job, params, state.vocoder.sample_rate,
                       state.samples(parsed.frames))
