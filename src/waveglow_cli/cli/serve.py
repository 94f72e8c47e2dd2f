"""``waveglow serve``: declare the options, bind the port, load the vocoder, run the HTTP
server (:mod:`waveglow_cli.serve`) until SIGTERM/SIGINT."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import UsageError
from .common import (
    DEFAULT_CHECKPOINT,
    CheckpointOption,
    DeviceOption,
    DownloadBar,
    EngineOption,
    PrecisionOption,
    check_checkpoint,
    errors_to_exit,
    load_settings,
    stderr_console,
)

Host = Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")]
Port = Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one (printed).",
                                   min=0, max=65535)]
MaxBatch = Annotated[int, typer.Option(help="Requests synthesised together at most.", min=1)]
MaxWaitMs = Annotated[float, typer.Option(
    help="How long the oldest waiting request waits for others to batch with (ms).", min=0.0)]
Queue = Annotated[int, typer.Option(
    help="Requests that may wait for synthesis; beyond, 503 with Retry-After.", min=1)]
MaxFramesPerRequest = Annotated[int | None, typer.Option(
    help="Longest mel accepted (frames); longer ones get 413. Default: ten minutes of audio.",
    min=1, show_default=False)]
MaxConnections = Annotated[int, typer.Option(
    help="Connections served at once (lowered to fit ulimit -n); more get 503 and are closed.",
    min=1)]
HeaderTimeout = Annotated[float, typer.Option(
    help="Seconds a client has for a whole request head (and an idle keep-alive connection).",
    min=0.001)]
BodyTimeout = Annotated[float, typer.Option(
    help="Seconds a request body may stall (or a client stop reading its answer) before the "
         "connection is cut; a body slower than 1 KiB/s over that long is cut too.",
    min=0.001)]
GracefulTimeout = Annotated[float, typer.Option(
    help="On SIGTERM, seconds the requests being synthesised have to finish (bodies still "
         "arriving are cut at once).", min=0.0)]
MaxBodyMemoryMb = Annotated[float, typer.Option(
    help="MiB all request bodies being received and parsed may hold together; beyond, 503 "
         "with Retry-After.", min=1.0)]


def serve(
    checkpoint: CheckpointOption = DEFAULT_CHECKPOINT,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    engine: EngineOption = "auto",
    max_batch: MaxBatch = 16,
    max_wait_ms: MaxWaitMs = 10.0,
    queue: Queue = 256,
    max_frames_per_request: MaxFramesPerRequest = None,
    max_connections: MaxConnections = 512,
    header_timeout: HeaderTimeout = 10.0,
    body_timeout: BodyTimeout = 30.0,
    graceful_timeout: GracefulTimeout = 30.0,
    max_body_memory_mb: MaxBodyMemoryMb = 256.0,
) -> None:
    """Serve synthesis over HTTP (a mel in, audio streamed out).

    POST /v1/synthesize; GET /health, /v1/models, /metrics. SIGTERM finishes the requests in
    flight, then exits 0."""
    import signal

    settings = load_settings()
    with errors_to_exit(settings):
        check_checkpoint(checkpoint, settings)
        try:
            from ..serve.connections import ConnectionLimits
            from ..serve.server import bind_socket, run_server, url_of
        except ImportError as e:
            raise UsageError(f"waveglow serve needs the serve extra ({e.name} is missing): "
                             "pip install 'waveglow-exact[serve]'") from None
        sock = bind_socket(host, port)  # a port in use fails before torch is imported
        from ..engines.devices import pick_device
        from ..serve.app import ServeOptions, create_app, serving_vocoder
        from ..synthesis.synthesizer import return_freed_memory_promptly
        from ..vocoder import open_model_file

        options = ServeOptions(checkpoint, max_batch=max_batch, max_wait_ms=max_wait_ms,
                               queue=queue, max_frames_per_request=max_frames_per_request,
                               max_body_memory=int(max_body_memory_mb * 2**20))
        limits = ConnectionLimits(max_connections, header_timeout, body_timeout,
                                  graceful_timeout)
        return_freed_memory_promptly()
        torch_device = pick_device(device)
        model_file = open_model_file(checkpoint, torch_device, settings=settings,
                                     progress=DownloadBar())
        vocoder = serving_vocoder(model_file, torch_device, precision, engine,
                                  settings.compile_cache)
        app = create_app(vocoder, options)
    line = f"serving {checkpoint} on {url_of(host, sock)}"
    # uvicorn re-raises SIGTERM for this handler once it has shut down gracefully: exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    run_server(app, sock, lambda: stderr_console().out(line), limits=limits)
