"""Time the plain eager baseline against ``waveglow synth`` in one run, and compare outputs.

    python benchmarks/compare.py [--checkpoint PLAIN_STATE_DICT.pt] [--seconds 10] [--repeats 3]
                                 [--precisions fp32 bf16] [--workdir DIR] [--json OUT.json]

Without ``--checkpoint`` a full-size 256-channel model (80 mels, 12 flows, 8 layers, kernel 3)
with random weights (``waveglow_cli.analysis.bench.random_model``: activations O(1), outputs bounded) is
written as a plain state dict.  A synthetic 10 s log mel is written as ``.npy``.  Then, for
each repeat, in turn (so a busy machine slows every contender alike):

* ``baseline``: ``benchmarks/baseline.py``'s model, loaded once in this process; one synthesis
  of the mel (inference only, float32, eager, channels-first Conv1d as NVIDIA's glow.py);
* ``baseline e2e``: ``python benchmarks/baseline.py CKPT MEL OUT.wav`` as a subprocess, start to
  exit (load, synthesise, write);
* ``synth PREC``: ``waveglow synth MEL -o OUT.wav -c CKPT --precision PREC`` as a subprocess,
  start to exit (the file is written when it exits).

Medians are reported, with ratios to the baseline.  Quality: with the same noise (``--seed``'s
noise for the mel's key, fed to the baseline), the SNR of each precision's output against the
baseline's, in dB.  A table goes to stdout, then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import baseline  # noqa: E402

from waveglow_cli.analysis.quality import snr_db  # noqa: E402

SEED = 1


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"
    except (OSError, subprocess.CalledProcessError):
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="plain state dict (default: random 256-channel)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--workdir", help="keep files here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the JSON result to this file")
    parser.add_argument("--no-e2e-baseline", action="store_true",
                        help="skip the baseline subprocess (saves time)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="waveglow-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    from waveglow_cli.analysis.bench import random_model, synthetic_mel
    from waveglow_cli.model.waveglow import WaveGlowConfig
    from waveglow_cli.synthesis.noise import item_noise

    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        checkpoint = work / "random_256ch_state_dict.pt"
        if not checkpoint.exists():
            torch.save(random_model().state_dict(), checkpoint)
    model = baseline.load(str(checkpoint))
    n_mels, hop, group = model.upsample.in_channels, model.upsample.stride[0], model.n_group
    rate = 22050
    frames = round(args.seconds * rate / hop)
    mel_path = work / "mel.npy"
    np.save(mel_path, synthetic_mel(n_mels, frames))
    mel = torch.from_numpy(np.load(mel_path))[None]
    # The noise `waveglow synth --seed SEED` draws for this file (its key is the file name).
    config = WaveGlowConfig(n_mel_channels=n_mels, n_group=group, hop_length=hop,
                            upsample_kernel=model.upsample.kernel_size[0])
    z = item_noise(config, frames, SEED, mel_path.name)[None]

    env = {**os.environ, "WAVEGLOW_OFFLINE": "1"}
    synth = [sys.executable, "-m", "waveglow_cli", "synth", str(mel_path), "-c", str(checkpoint),
             "--seed", str(SEED), "--sigma", str(args.sigma), "--subtype", "FLOAT",
             "--overwrite", "--quiet", "--device", "cpu"]
    e2e = [sys.executable, str(HERE / "baseline.py"), str(checkpoint), str(mel_path),
           str(work / "baseline.wav"), "--sigma", str(args.sigma)]

    model.infer(mel[:, :, :50], args.sigma)  # warm-up
    times: dict[str, list[float]] = {"baseline": []}
    if not args.no_e2e_baseline:
        times["baseline e2e"] = []
    times.update({f"synth {p}": [] for p in args.precisions})
    reference = None
    for repeat in range(args.repeats):
        start = time.perf_counter()
        audio = model.infer(mel, args.sigma, z=z)[0].numpy()
        times["baseline"].append(time.perf_counter() - start)
        reference = audio if reference is None else reference
        if not args.no_e2e_baseline:
            times["baseline e2e"].append(timed(e2e, env))
        for precision in args.precisions:
            out = work / f"synth_{precision}.wav"
            times[f"synth {precision}"].append(
                timed(synth + ["-o", str(out), "--precision", precision], env))
        print(f"repeat {repeat + 1}/{args.repeats}: "
              + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), file=sys.stderr)

    samples = frames * hop
    base = statistics.median(times["baseline"])
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        rows[name] = {"median_s": median, "all_s": values, "samples_per_s": samples / median,
                      "x_real_time": samples / median / rate,
                      "speedup_vs_baseline": base / median}
    for precision in args.precisions:
        audio, _ = soundfile.read(work / f"synth_{precision}.wav", dtype="float32")
        rows[f"synth {precision}"]["snr_db_vs_baseline"] = snr_db(reference, audio)
        rows[f"synth {precision}"]["max_abs_diff_vs_baseline"] = float(
            np.abs(audio - reference).max())
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "checkpoint": str(args.checkpoint or "random 256-channel model (plain state dict)"),
        "seconds_of_audio": samples / rate, "repeats": args.repeats, "results": rows,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }

    print(f"{result['machine']}, torch {result['torch']}, {result['threads']} threads, "
          f"{result['date']}")
    print(f"{samples / rate:.2f} s of audio, {args.repeats} repeats, medians; "
          f"checkpoint: {result['checkpoint']}")
    print(f"{'what':16s} {'seconds':>9s} {'k samples/s':>12s} {'x real time':>12s} "
          f"{'vs baseline':>12s} {'SNR dB':>8s}")
    for name, row in rows.items():
        snr = row.get("snr_db_vs_baseline")
        print(f"{name:16s} {row['median_s']:9.2f} {row['samples_per_s'] / 1e3:12.1f} "
              f"{row['x_real_time']:12.2f} {row['speedup_vs_baseline']:11.2f}x "
              f"{'' if snr is None else f'{snr:8.1f}'}")
    text = json.dumps(result)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
