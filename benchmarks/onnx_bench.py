"""onnxruntime on the CPU against our torch CPU engine, on the bundled demo model: 10 s of mel,
batch 1, the same noise, 5 timed calls of ``engine.infer`` after a warm-up.

    waveglow export demo -o demo.onnx && waveglow export demo -o demo16.onnx --dtype fp16
    python benchmarks/onnx_bench.py [--t1] [--fast32] [--bf16]    # in that folder

``--t1``: one thread for every engine.  Results: docs/benchmarks.md."""
import statistics
import sys
import time

import numpy as np
import onnxruntime
import torch

from waveglow_cli.engines.onnx import OnnxEngine
from waveglow_cli.settings import Settings
from waveglow_cli.vocoder import load_vocoder

s = Settings.from_env({"WAVEGLOW_OFFLINE": "1"})
frames = int(np.ceil(10 * 22050 / 256))
g = torch.Generator().manual_seed(0)
mel = (torch.randn(1, 80, frames, generator=g) * 2 - 5).clamp(-11.5, 2)
z = torch.randn(1, 8, frames * 32, generator=g)
T1 = "--t1" in sys.argv
if T1: torch.set_num_threads(1)
engines = {"torch fp32 (EagerEngine)": load_vocoder("demo", "cpu", precision="fp32", settings=s).engine,
           "onnxruntime fp32": OnnxEngine("demo.onnx", threads=1 if T1 else None),
           "onnxruntime fp16": OnnxEngine("demo16.onnx", threads=1 if T1 else None)}
if "--fast32" in sys.argv:
    from waveglow_cli.checkpoints.cache import ensure_checkpoint
    from waveglow_cli.checkpoints.reader import read_checkpoint
    from waveglow_cli.engines.packed import FastWaveGlow
    engines["torch fast path fp32 (FastWaveGlow)"] = FastWaveGlow(read_checkpoint(ensure_checkpoint("demo", s)).build_model(), torch.float32)
if "--bf16" in sys.argv:
    engines["torch bf16 fast path (emulated here)"] = load_vocoder("demo", "cpu", precision="bf16", settings=s).engine
repeats = 5
out = {}
for name, e in engines.items():
    e.infer(mel[:, :, :64], 0.6, z[:, :, :64 * 32])  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); a = e.infer(mel, 0.6, z); times.append(time.perf_counter() - t)
    out[name] = a.float()
    med = statistics.median(times)
    print(f"{name:38s} median {med:6.2f} s  min {min(times):6.2f} s  ({10/med:5.2f}x real time)  runs {[round(t,2) for t in times]}")
ref = out["torch fp32 (EagerEngine)"]
for name, a in out.items():
    print(name, "max abs diff vs torch fp32", float((a - ref).abs().max()))
print("torch threads", torch.get_num_threads(), "ort", onnxruntime.__version__, "torch", torch.__version__)
