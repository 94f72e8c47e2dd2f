"""``waveglow bench``: synthesis speed on synthetic mels (see
:mod:`waveglow_cli.analysis.bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    DeviceOption,
    DownloadBar,
    EngineOption,
    StepStatus,
    errors_to_exit,
    load_settings,
)

if TYPE_CHECKING:
    from ..progress import StatusCallback
    from ..settings import Settings


def _load_baseline(path: Path) -> Any:
    """``benchmarks/baseline.py`` (or a file like it) as a module: it is no part of the
    package, so it is loaded from the file named."""
    import importlib.util

    from ..errors import UsageError

    spec = importlib.util.spec_from_file_location("waveglow_bench_baseline", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise UsageError(f"--baseline {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "build", None)):
        raise UsageError(f"--baseline {path}: has no build(state_dict) function")
    return module


def _float32_model(checkpoint: str | None, settings: Settings, status: StatusCallback
                   ) -> tuple[Any, str, int]:
    """(float32 model on the CPU, its name, sample rate): a random full-size model, or the
    checkpoint's weights read as ``synth`` reads them."""
    from ..analysis.bench import RANDOM_CHECKPOINT, random_model

    if checkpoint is None:
        status("building a random 256-channel model")
        return random_model(), RANDOM_CHECKPOINT, 22050
    from ..checkpoints.cache import ensure_checkpoint
    from ..checkpoints.reader import read_checkpoint

    path = ensure_checkpoint(checkpoint, settings, DownloadBar())  # its bar ends before ours
    status(f"reading {path.name}")
    loaded = read_checkpoint(path)
    return loaded.build_model(), checkpoint, loaded.sample_rate


def bench(
    checkpoint: Annotated[str | None, typer.Option(
        "-c", "--checkpoint", help="Checkpoint file or registry name (default: a random "
                                   "full-size 256-channel model; works offline).")] = None,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(
        help="auto (as in synth: the bf16 fast path on a CPU with native bf16, else fp32), "
             "fp32, fp16 or bf16.")] = "auto",
    engine: EngineOption = "auto",
    baseline: Annotated[Path | None, typer.Option(
        help="Also time this reference implementation (benchmarks/baseline.py) on the same "
             "mels and noise in the same run: speed-up and SNR against it.")] = None,
    batch_size: Annotated[int, typer.Option(help="Utterances per forward pass.", min=1)] = 1,
    seconds: Annotated[float, typer.Option(help="Length of each synthetic utterance.",
                                           min=0.01)] = 10.0,
    repeats: Annotated[int, typer.Option(help="Timed runs (the median is reported).", min=1)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Synthesis speed on synthetic mels.

    Samples/s, x real time, peak memory, and the fraction of the device's matmul peak
    (measured in the same run)."""
    import json

    from ..analysis.bench import BenchOptions, baseline_reference, run_bench
    from ..engines.devices import pick_device
    from ..engines.select import SigmaPolicy, build_engine, choose_engine

    settings = load_settings()
    # On a terminal a status line says what runs (minutes, for the default model); the
    # result alone goes to standard output.
    with errors_to_exit(settings, os_errors=False), StepStatus() as status:
        options = BenchOptions(batch_size=batch_size, seconds=seconds, repeats=repeats)
        torch_device = pick_device(device)
        module = _load_baseline(baseline) if baseline is not None else None
        model, name, rate = _float32_model(checkpoint, settings, status)
        pick = choose_engine(model, torch_device, precision, engine,
                             SigmaPolicy.of(options.sigma)).first
        assert pick.dtype is not None  # weights, not an exported file
        if module is not None:
            status(f"loading the reference ({baseline})")
        reference = None if module is None else \
            baseline_reference(module.build, model, torch_device, pick.dtype)
        status(f"preparing {pick.describe()}")
        chosen = build_engine(pick, model, settings.compile_cache)
        result = run_bench(chosen, rate, options, name, reference, status)
        result["engine"] = engine
    if as_json:
        typer.echo(json.dumps(result))
        return
    _print(result)


def _print(result: dict) -> None:
    typer.echo(f"{result['checkpoint']} on {result['device_name']} ({result['device']}, "
               f"{result['precision']}, {result['path']}, {result['threads']} threads)")
    typer.echo(f"batch {result['batch_size']} x {result['seconds']:.2f} s: "
               f"{result['seconds_per_run']:.3f} s per run (median of {result['repeats']}; "
               f"first run {result['first_run_seconds'] or 0:.3f} s)")
    typer.echo(f"{result['samples_per_second'] / 1e3:,.1f} k samples/s, "
               f"{result['x_real_time']:.2f}x real time")
    typer.echo(f"{result['flops_per_sample'] / 1e6:.1f} MFLOP/sample -> "
               f"{result['achieved_tflops']:.3f} TFLOP/s = {100 * result['fraction_of_peak']:.1f}% "
               f"of the measured {result['precision']} matmul peak "
               f"({result['matmul_peak_tflops']:.3f} TFLOP/s)")
    typer.echo(f"peak memory {result['peak_memory_mib']:,.0f} MiB ({result['memory_kind']})")
    base = result.get("baseline")
    if base:
        typer.echo(f"baseline: {base['seconds_per_run']:.3f} s per run, "
                   f"{base['samples_per_second'] / 1e3:,.1f} k samples/s; ours is "
                   f"{base['speedup']:.2f}x; SNR ours vs baseline "
                   f"{base['snr_db_ours_vs_baseline']:.1f} dB")
