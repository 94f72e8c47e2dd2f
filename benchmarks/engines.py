"""Every candidate CPU engine against the plain eager baseline, in one run: the measurements that
``--precision auto`` / ``--engine auto`` choose from on a CPU (``docs/benchmarks.md``).

    python benchmarks/engines.py [--checkpoint PLAIN_STATE_DICT.pt] [--seconds 3] [--repeats 2]
                                 [--only packed-fp32 onnxruntime ...] [--json OUT.json]

Without ``--checkpoint``: NVIDIA's 256-channel layout with random weights
(``waveglow_cli.analysis.bench.random_model``).  Each candidate gets the same mel and noise at sigma 0,
one warm-up call on a short slice (the compile or export happens there and is reported apart),
then ``--repeats`` timed calls of ``infer`` in this process, interleaved with the baseline so a
busy machine slows all alike.  Candidates:

* ``baseline``: ``benchmarks/baseline.py`` (glow.py's arithmetic, channels-first ``Conv1d``);
* ``eager``: our :class:`~waveglow_cli.engines.base.EagerEngine` (the model itself);
* ``packed-fp32`` / ``packed-fp32-mm``: :class:`~waveglow_cli.engines.packed.FastWaveGlow` in float32
  with oneDNN's fused products / with plain ``torch.mm``;
* ``onednn-jit``: the baseline traced, frozen and ``torch.jit.optimize_for_inference``d (oneDNN
  prepacked convolutions);
* ``inductor``: the baseline's ``infer`` under ``torch.compile`` (inductor's C++ backend; its
  cache in a temporary folder);
* ``onnxruntime``: ``waveglow export`` of the model (made once, outside the timing), run by
  :class:`~waveglow_cli.engines.onnx.OnnxEngine`;
* ``packed-bf16``: the fast path in bfloat16 (sampling only; reported with its SNR);

and the table gives seconds (median), the speed against the baseline, and the largest
difference from the baseline's audio (float32 candidates must stay within 1e-4 of it)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import baseline  # noqa: E402
from compare import cpu_model  # noqa: E402

from waveglow_cli.analysis.bench import baseline_reference, random_model, synthetic_mel  # noqa: E402
from waveglow_cli.analysis.quality import snr_db  # noqa: E402
from waveglow_cli.checkpoints.reader import Checkpoint  # noqa: E402
from waveglow_cli.engines.base import EagerEngine  # noqa: E402
from waveglow_cli.engines.devices import cpu_has_fast_bf16
from waveglow_cli.engines.packed import FastWaveGlow  # noqa: E402
from waveglow_cli.model.waveglow import WaveGlow  # noqa: E402

Infer = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def _jit_onednn(model: WaveGlow, mel: torch.Tensor, z: torch.Tensor) -> Infer:
    reference = baseline.build({k: v.detach().float() for k, v in model.state_dict().items()})
    reference.requires_grad_(False)
    reference.prepare()  # its inverses again, from weights that no longer require grad

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = reference

        def forward(self, mel: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            return self.inner.infer(mel, 0.0, z=z)

    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(Wrapped().eval(), (mel, z), check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def infer(m: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        with torch.no_grad():
            return frozen(m, noise * sigma if sigma else noise * 0)

    return infer


def _inductor(model: WaveGlow, cache: Path) -> Infer:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    reference = baseline.build({k: v.detach().float() for k, v in model.state_dict().items()})
    compiled = torch.compile(reference.infer, dynamic=False)

    def infer(mel: torch.Tensor, z: torch.Tensor, sigma: float) -> torch.Tensor:
        with torch.no_grad():  # not inference_mode: inductor refuses inference tensors
            return compiled(mel, sigma, z=z)

    return infer


def _onnxruntime(model: WaveGlow, folder: Path) -> Infer:
    from waveglow_cli.engines.onnx import OnnxEngine
    from waveglow_cli.features.mel import MelConfig
    from waveglow_cli.jobs.export import export_checkpoint

    checkpoint = Checkpoint(model.config, {k: v.detach() for k, v in model.state_dict().items()})
    path = folder / "model.onnx"
    export_checkpoint(checkpoint, path, MelConfig(n_mels=model.config.n_mel_channels))
    engine = OnnxEngine(path)
    return lambda mel, z, sigma: engine.infer(mel, sigma, z)


def candidates(model: WaveGlow, mel: torch.Tensor, z: torch.Tensor, folder: Path,
               only: list[str] | None) -> dict[str, Callable[[], Infer]]:
    """name -> a builder of its ``infer(mel, z, sigma)`` (built lazily: some take minutes)."""
    def engine_infer(engine: object) -> Infer:
        return lambda m, noise, sigma: engine.infer(m, sigma, noise)  # type: ignore[attr-defined]

    table: dict[str, Callable[[], Infer]] = {
        "baseline": lambda: baseline_reference(baseline.build, model, torch.device("cpu"),
                                               torch.float32),
        "eager": lambda: engine_infer(EagerEngine(model)),
        "packed-fp32": lambda: engine_infer(FastWaveGlow(model, torch.float32)),
        "packed-fp32-mm": lambda: engine_infer(FastWaveGlow(model, torch.float32,
                                                            use_onednn=False)),
        "onednn-jit": lambda: _jit_onednn(model, mel[:, :, :16], z[:, :, :16 * 32]),
        "onnxruntime": lambda: _onnxruntime(model, folder),
    }
    if cpu_has_fast_bf16():
        table["packed-bf16"] = lambda: engine_infer(FastWaveGlow(model, torch.bfloat16))
    # last: a failed compile can leave torch's dispatcher in a state the others trip on
    table["inductor"] = lambda: _inductor(model, folder)
    return {k: v for k, v in table.items() if only is None or k in only or k == "baseline"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="plain state dict (default: random 256-channel)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="candidates to run (the baseline always runs)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    if args.checkpoint is None:
        model = random_model()
    else:
        from waveglow_cli.checkpoints.reader import read_checkpoint

        model = read_checkpoint(args.checkpoint).build_model()
    config = model.config
    frames = round(args.seconds * 22050 / config.hop_length)
    mel = torch.from_numpy(synthetic_mel(config.n_mel_channels, frames))[None]
    z = torch.randn(config.noise_shape(1, frames), generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        built: dict[str, Infer] = {}
        setup: dict[str, float] = {}
        for name, make in candidates(model, mel, z, Path(tmp), args.only).items():
            start = time.perf_counter()
            try:
                infer = make()
                infer(mel[:, :, :32], z[:, :, :32 * config.hop_length // config.n_group], 0.0)
            except Exception as e:  # noqa: BLE001 - a candidate that cannot run is reported
                print(f"{name}: cannot run here ({type(e).__name__}: {str(e)[:200]})",
                      file=sys.stderr)
                continue
            built[name], setup[name] = infer, time.perf_counter() - start
            print(f"{name}: ready in {setup[name]:.1f} s", file=sys.stderr)
        times: dict[str, list[float]] = {name: [] for name in built}
        audio: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):
            for name, infer in built.items():
                start = time.perf_counter()
                audio[name] = infer(mel, z, 0.0).float().reshape(-1)
                times[name].append(time.perf_counter() - start)
                print(f"{name}: {times[name][-1]:.2f} s", file=sys.stderr)
    base = statistics.median(times["baseline"])
    rows = []
    for name in built:
        median = statistics.median(times[name])
        diff = float((audio[name] - audio["baseline"]).abs().max())
        rows.append({"engine": name, "seconds": median, "vs_baseline": base / median,
                     "setup_seconds": setup[name], "max_abs_diff": diff,
                     "snr_db": snr_db(audio["baseline"], audio[name]) if diff else None})
    print(f"Machine: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.seconds} s of mel, "
          f"sigma 0, median of {args.repeats}\n")
    print("| engine | s | vs baseline | setup s | max abs diff vs baseline |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['seconds']:.2f} | {r['vs_baseline']:.2f}x | "
              f"{r['setup_seconds']:.1f} | {r['max_abs_diff']:.2e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
