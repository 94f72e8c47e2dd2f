"""``waveglow bench``: synthesis speed on synthetic mels, next to the device's own matmul peak.

Everything is measured in the same run: a warm-up, then ``repeats`` timed runs of the same
batch through :class:`~waveglow_cli.synthesis.synthesizer.Synthesizer` (exactly what
``waveglow synth`` runs, fast paths included), each ended by a device synchronisation (the audio
is copied back to the host); the median is reported.  The model's cost per output sample is
computed from its architecture
(:meth:`~waveglow_cli.model.waveglow.WaveGlowConfig.flops_per_sample`), and the device's matmul
peak in the same precision is measured with a large GEMM, so ``fraction_of_peak`` says how close
synthesis gets to what the hardware does on the easiest possible work.

The engine is the one ``synth`` would use, or one asked for (``--engine``: the eager model, the
GPU engine, or the GPU engine compiled; the first run's time, compiling included, is reported
as ``first_run_seconds``).  A reference implementation (``--baseline benchmarks/baseline.py``,
NVIDIA glow.py's arithmetic) can be timed in the same run on the same mels and noise.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._version import package_version
from ..engines.base import Engine
from ..engines.devices import precision_name
from ..engines.gpu import GpuEngine
from ..engines.packed import FastWaveGlow
from ..engines.select import as_engine
from ..model.waveglow import WaveGlow, WaveGlowConfig
from ..progress import StatusCallback, report_step

#: A reference implementation to time beside ours: (mel (B, M, F), noise (B, G, T), sigma) ->
#: audio (B, F * hop), both inputs float32 on the CPU (see ``benchmarks/baseline.py``).
Reference = Callable[[Tensor, Tensor, float], Tensor]

RANDOM_CHECKPOINT = "random 256-channel model"


@torch.no_grad()
def random_model(config: WaveGlowConfig | None = None, seed: int = 0,
                 end_scale: float = 0.1) -> WaveGlow:
    """A WaveGlow with random weights whose activations stay O(1) and output bounded.

    Every convolution gets N(0, 1 / fan_in) weights (the upsampler 0.5 / sqrt(fan_in), so a
    Tacotron-range log mel gives O(1) conditioning), biases N(0, 0.1^2), the 1x1 convolutions a
    random rotation perturbed by 0.2, and the WN end layers ``end_scale`` / sqrt(fan_in), so
    log-scales are about +-0.1 per flow (NVIDIA zero-initialises ``end``; a trained model's are
    small too).  Used by ``waveglow bench`` and ``benchmarks/`` when no checkpoint is given."""
    config = config or WaveGlowConfig()
    generator = torch.Generator().manual_seed(seed)
    model = WaveGlow(config)
    for name, p in model.named_parameters():
        if name.startswith("convinv"):
            q = torch.linalg.qr(
                torch.randn(p.shape[:2], generator=generator, dtype=torch.float64))[0]
            q = q + 0.2 * torch.randn(q.shape, generator=generator,
                                      dtype=torch.float64) / q.size(0) ** 0.5
            p.copy_(q.unsqueeze(-1))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=generator))
        else:
            if name.startswith("upsample"):  # each sample sees M channels x kernel/hop frames
                fan_in, gain = p.size(0) * max(1, config.upsample_kernel // config.hop_length), 0.5
            else:
                fan_in, gain = p.size(1) * p.size(2), 1.0
            if name.endswith("end.weight"):
                gain = end_scale
            p.copy_(gain / fan_in ** 0.5 * torch.randn(p.shape, generator=generator))
    model.eval()
    model.refresh_inverses()
    return model


def random_engine(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  config: WaveGlowConfig | None = None, seed: int = 0, kind: str = "auto",
                  cache_dir: Path | None = None) -> Engine:
    """The engine of :func:`random_model` on ``device`` in ``dtype``, chosen as for a loaded
    checkpoint by :func:`~waveglow_cli.engines.select.choose_engine` (the CPU bf16 fast path
    is folded from the float32 weights), or the ``kind`` asked for."""
    from ..engines.select import build_engine, choose_engine

    model = random_model(config, seed)
    pick = choose_engine(model, device, precision_name(dtype), kind).first
    return build_engine(pick, model, cache_dir)


def baseline_reference(build: Callable[[dict[str, Tensor]], torch.nn.Module], model: WaveGlow,
                       device: torch.device, dtype: torch.dtype) -> Reference:
    """``benchmarks/baseline.py``'s model (its ``build``) with ``model``'s weights, on
    ``device`` in ``dtype`` as NVIDIA's glow.py runs there: cast whole, each 1x1 inverse made
    in float32 from the cast weights (``prepare``, as glow.py's first call after ``.half()``)."""
    reference = build({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    reference = reference.to(device=device, dtype=dtype)
    reference.prepare()  # type: ignore[operator]

    def infer(mel: Tensor, z: Tensor, sigma: float) -> Tensor:
        with torch.inference_mode():
            return reference.infer(mel.to(device, dtype), sigma,  # type: ignore[operator]
                                   z=z.to(device))

    return infer


def synthetic_mel(n_mels: int, frames: int, seed: int = 0) -> np.ndarray:
    """A log mel in the Tacotron 2 range (about -11 to 1): a slowly moving spectral envelope,
    harmonic-like ridges and noise.  (n_mels, frames) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[None, :]
    m = np.arange(n_mels)[:, None] / max(n_mels - 1, 1)
    envelope = -4.0 - 5.0 * m + 1.5 * np.sin(2 * np.pi * (t / 173.0 + m * 1.3))
    ridges = 1.5 * np.cos(2 * np.pi * m * (6 + 2 * np.sin(t / 61.0))) ** 8
    mel = envelope + ridges + 0.5 * rng.standard_normal((n_mels, frames))
    return np.clip(mel, -11.5, 1.5).astype(np.float32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """The best of repeated large square matrix products, in FLOP/s (the device's peak in
    ``dtype`` as far as a plain ``torch.mm`` reaches it)."""
    # Grow the matrices until one product takes ~50 ms (up to 2048 on a CPU, 8192 on a GPU):
    # large enough to reach the peak where the dtype is native, and bounded in time where it is
    # emulated (bf16 on a CPU without AMX/AVX512-BF16 is ~100x slower; a fixed 2048 took
    # minutes there).
    largest = 2048 if device.type == "cpu" else 8192
    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if n >= largest or time.perf_counter() - start >= 0.05:
            break
        n *= 2
    best, deadline = float("inf"), time.perf_counter() + seconds
    runs = 0
    while runs < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
        runs += 1
    return 2 * n**3 / best


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
        except OSError:
            pass
        return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"
    return device.type


def peak_rss_mib() -> float:
    """This process's peak resident memory (the whole process: Python, model, buffers)."""
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if platform.system() != "Darwin" else peak / 2**20


@dataclass(frozen=True)
class BenchOptions:
    batch_size: int = 1
    seconds: float = 10.0
    repeats: int = 3
    warmup: int = 1
    sigma: float = 0.6
    peak_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError("batch_size and repeats must be >= 1, warmup >= 0")
        if not self.seconds > 0:
            raise ValueError(f"seconds={self.seconds} must be > 0")


def engine_path(engine: Engine) -> str:
    """How ``engine`` computes, in words (the bench's ``path``)."""
    if isinstance(engine, FastWaveGlow):
        return "fast-cpu (time, channels) matmuls"
    if isinstance(engine, GpuEngine):
        return "gpu rows (compiled)" if engine.compiled else "gpu rows"
    return "model (Conv1d)"


def _timer(device: torch.device, work: Callable[[], object],
           status: StatusCallback | None = None, what: str = "run") -> Callable[[int, int], float]:
    """``once(i, n)`` times ``work`` once, telling ``status`` it is ``what`` i of n first."""

    def once(index: int, count: int) -> float:
        report_step(status, f"{what} {index + 1} of {count}")
        _sync(device)
        start = time.perf_counter()
        work()
        _sync(device)
        return time.perf_counter() - start

    return once


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return peak_rss_mib(), "process_peak_rss"


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def run_bench(engine: Engine | WaveGlow, sample_rate: int, options: BenchOptions,
              checkpoint: str = RANDOM_CHECKPOINT, reference: Reference | None = None,
              status: StatusCallback | None = None) -> dict:
    """Time synthesis of ``batch_size`` synthetic mels of ``seconds`` each; see the module doc.
    A WaveGlow is wrapped as :class:`~waveglow_cli.synthesis.synthesizer.Synthesizer` does.  With a
    ``reference`` (:func:`baseline_reference`) it is timed in the same run on the same mels
    and noise, after ours (the same warm-up and repeats), and reported under ``baseline``
    with its time and the SNR of our audio against its.  (Its weights are on the device
    during our runs, so on a GPU our peak memory includes them.)  Each step (warm-up, run i
    of n, the matmul peak, the reference's runs) is reported to ``status`` as it starts."""
    from ..synthesis.noise import item_noise
    from ..synthesis.plans import BatchOptions
    from ..synthesis.synthesizer import SynthesisOptions, Synthesizer

    engine = as_engine(engine)
    config, device = engine.config, engine.device
    frames = max(1, round(options.seconds * sample_rate / config.hop_length))
    mels = [(f"bench{i}", synthetic_mel(config.n_mel_channels, frames, seed=i))
            for i in range(options.batch_size)]
    batching = BatchOptions(batch_size=options.batch_size,
                            batch_frames=max(BatchOptions().batch_frames,
                                             options.batch_size
                                             * min(frames, BatchOptions().max_frames)))
    synthesizer = Synthesizer(engine, SynthesisOptions(sigma=options.sigma, seed=0), batching)
    outputs: dict[str, np.ndarray] = {}

    def ours() -> None:
        for key, audio in synthesizer.run(mels):
            if isinstance(audio, Exception):
                raise audio
            outputs[key] = audio

    seconds = f"{options.batch_size} x {frames * config.hop_length / sample_rate:.1f} s"
    warm_up = _timer(device, ours, status, f"warm-up ({seconds}, not timed): run")
    timed = _timer(device, ours, status, f"timing {seconds}: run")
    _reset_peak(device)
    first = [warm_up(i, options.warmup) for i in range(options.warmup)]
    times = [timed(i, options.repeats) for i in range(options.repeats)]
    memory, memory_kind = _peak_memory(device)
    report_step(status, f"measuring the {precision_name(engine.dtype)} matmul peak "
                        f"({options.peak_seconds:g} s)")
    result = _speed_record(engine, sample_rate, options, checkpoint, frames, times)
    result.update(first_run_seconds=first[0] if first else None, peak_memory_mib=memory,
                  memory_kind=memory_kind)
    if reference is not None:
        mel = torch.stack([torch.from_numpy(m) for _, m in mels])
        z = torch.stack([item_noise(config, frames, 0, key) for key, _ in mels])
        result["baseline"] = _bench_reference(reference, mel, z, options, device, result,
                                              outputs["bench0"], status)
    return result


def _speed_record(engine: Engine, sample_rate: int, options: BenchOptions, checkpoint: str,
                  frames: int, times: list[float]) -> dict:
    config, device, dtype = engine.config, engine.device, engine.dtype
    seconds_per_run = statistics.median(times)
    samples = options.batch_size * frames * config.hop_length
    samples_per_second = samples / seconds_per_run
    flops = config.flops_per_sample()
    peak = matmul_peak(device, dtype, options.peak_seconds)
    return {
        "checkpoint": checkpoint,
        "device": str(device),
        "device_name": device_name(device),
        "precision": precision_name(dtype),
        "path": engine_path(engine),
        "threads": torch.get_num_threads(),
        "version": package_version(),  # this tool's; "torch" is torch's
        "torch": torch.__version__,
        "n_channels": config.n_channels,
        "batch_size": options.batch_size,
        "seconds": frames * config.hop_length / sample_rate,
        "sample_rate": sample_rate,
        "repeats": options.repeats,
        "seconds_per_run": seconds_per_run,
        "seconds_per_run_all": times,
        "samples_per_second": samples_per_second,
        "x_real_time": samples_per_second / sample_rate,
        "flops_per_sample": flops,
        "achieved_tflops": samples_per_second * flops / 1e12,
        "matmul_peak_tflops": peak / 1e12,
        "fraction_of_peak": samples_per_second * flops / peak,
    }


def _bench_reference(reference: Reference, mel: Tensor, z: Tensor, options: BenchOptions,
                     device: torch.device, ours: dict, our_audio: np.ndarray,
                     status: StatusCallback | None = None) -> dict:
    """Time ``reference`` on the bench's batch (after the same warm-up) and compare."""
    from .quality import snr_db

    audio: list[Tensor] = []

    def work() -> None:
        audio.append(reference(mel, z, options.sigma))

    warm_up = _timer(device, work, status, "reference (baseline) warm-up: run")
    timed = _timer(device, work, status, "timing the reference (baseline): run")
    _reset_peak(device)
    for i in range(options.warmup):
        warm_up(i, options.warmup)
    times = [timed(i, options.repeats) for i in range(options.repeats)]
    memory, memory_kind = _peak_memory(device)
    seconds_per_run = statistics.median(times)
    samples = z.numel()  # B x G x T: every item's frames x hop samples
    first = audio[-1][0].float().cpu().numpy()
    return {
        "implementation": "benchmarks/baseline.py (NVIDIA glow.py semantics, Conv1d, eager)",
        "seconds_per_run": seconds_per_run,
        "seconds_per_run_all": times,
        "samples_per_second": samples / seconds_per_run,
        "speedup": seconds_per_run / ours["seconds_per_run"],
        "snr_db_ours_vs_baseline": snr_db(first, our_audio),
        "peak_memory_mib": memory,
        "memory_kind": memory_kind,
    }
