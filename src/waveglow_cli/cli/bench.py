"""``waveglow bench``: synthesis speed on synthetic mels (see :mod:`waveglow_cli.bench`)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import DeviceOption, DownloadBar, errors_to_exit, load_settings


def bench(
    checkpoint: Annotated[str | None, typer.Option(
        "-c", "--checkpoint", help="Checkpoint file or registry name (default: a random "
                                   "full-size 256-channel model; works offline).")] = None,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(
        help="auto (as in synth: the bf16 fast path on a CPU with native bf16, else fp32), "
             "fp32, fp16 or bf16.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Utterances per forward pass.", min=1)] = 1,
    seconds: Annotated[float, typer.Option(help="Length of each synthetic utterance.",
                                           min=0.01)] = 10.0,
    repeats: Annotated[int, typer.Option(help="Timed runs (the median is reported).", min=1)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Synthesis speed on synthetic mels: samples/s, x real time, peak memory, and the fraction
    of the device's matmul peak (measured in the same run)."""
    import json

    from ..bench import RANDOM_CHECKPOINT, BenchOptions, random_engine, run_bench
    from ..engine import pick_device, pick_dtype
    from ..vocoder import load_vocoder

    settings = load_settings()
    with errors_to_exit(settings, os_errors=False):
        options = BenchOptions(batch_size=batch_size, seconds=seconds, repeats=repeats)
        torch_device = pick_device(device)
        dtype = pick_dtype(precision, torch_device, options.sigma)
        if checkpoint is None:
            engine, name, rate = random_engine(torch_device, dtype), RANDOM_CHECKPOINT, 22050
        else:
            vocoder = load_vocoder(checkpoint, torch_device, dtype, settings=settings,
                                   progress=DownloadBar())
            engine, name, rate = vocoder.engine, checkpoint, vocoder.sample_rate
        result = run_bench(engine, rate, options, name)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['checkpoint']} on {result['device_name']} ({result['device']}, "
               f"{result['precision']}, {result['path']}, {result['threads']} threads)")
    typer.echo(f"batch {result['batch_size']} x {result['seconds']:.2f} s: "
               f"{result['seconds_per_run']:.3f} s per run (median of {result['repeats']})")
    typer.echo(f"{result['samples_per_second'] / 1e3:,.1f} k samples/s, "
               f"{result['x_real_time']:.2f}x real time")
    typer.echo(f"{result['flops_per_sample'] / 1e6:.1f} MFLOP/sample -> "
               f"{result['achieved_tflops']:.3f} TFLOP/s = {100 * result['fraction_of_peak']:.1f}% "
               f"of the measured {result['precision']} matmul peak "
               f"({result['matmul_peak_tflops']:.3f} TFLOP/s)")
    typer.echo(f"peak memory {result['peak_memory_mib']:,.0f} MiB ({result['memory_kind']})")
