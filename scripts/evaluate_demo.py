"""Copy-synthesis quality of a checkpoint on held-out speech, with classical references.

    python scripts/evaluate_demo.py CHECKPOINT CLIPS... [--sigma 0.6] [--seed 0] [--json OUT]

For every clip: its Tacotron 2 mel, resynthesised by the checkpoint (`--precision fp32`), and
the log-mel distance (`waveglow_cli.analysis.quality.log_mel_distance`, mean |ln mel difference|)
between the clip and the result.  Two references put the number in context:

* Griffin-Lim: the same mel inverted by librosa (slaney mel pseudo-inverse, 60 iterations);
* a wrong mel: the checkpoint fed the mel of *another* clip (what an unrelated signal scores).

It also reports, with the same noise, the SNR of the CPU bf16 fast path against fp32 (the
reduced-precision check on trained weights).  A table goes to stdout, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from waveglow_cli.analysis.quality import NATS_TO_DB, log_mel_distance, snr_db
from waveglow_cli.audio.io import prepare_audio, read_audio
from waveglow_cli.features.mel import mel_spectrogram
from waveglow_cli.settings import Settings
from waveglow_cli.synthesis.plans import BatchOptions
from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer
from waveglow_cli.vocoder import load_vocoder


def griffin_lim(mel: np.ndarray, config) -> np.ndarray:
    import librosa

    magnitude_mel = np.exp(mel.astype(np.float64))
    basis = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                                fmin=config.fmin, fmax=config.fmax)
    spectrum = np.maximum(np.linalg.pinv(basis) @ magnitude_mel, 0.0)
    return librosa.griffinlim(spectrum, n_iter=60, hop_length=config.hop_length,
                              win_length=config.win_length, window="hann",
                              random_state=0).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("clips", nargs="+", type=Path)
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-griffin-lim", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    exact = load_vocoder(args.checkpoint, "cpu", settings=settings)
    fast = load_vocoder(args.checkpoint, "cpu", torch.bfloat16, settings=settings)
    config = exact.mel_config
    clips = sorted(p for c in args.clips for p in ([c] if c.is_file() else sorted(c.rglob("*.*")))
                   if p.suffix.lower() in (".wav", ".flac", ".ogg"))
    audios = []
    for path in clips:
        samples, rate = read_audio(path)
        audios.append(prepare_audio(samples, rate, config.sample_rate, str(path))[0])
    mels = [(p.name, mel_spectrogram(a, config)[0].numpy()) for p, a in zip(clips, audios)]
    options = SynthesisOptions(sigma=args.sigma, seed=args.seed)
    out_fp32 = dict(Synthesizer(exact.engine, options, BatchOptions()).run(mels))
    out_bf16 = dict(Synthesizer(fast.engine, options, BatchOptions()).run(mels))
    wrong = dict(Synthesizer(exact.engine, options, BatchOptions()).run(
        [(name, mels[(i + 1) % len(mels)][1]) for i, (name, _) in enumerate(mels)]))
    rows = []
    for (name, mel), audio in zip(mels, audios):
        row = {"clip": name, "seconds": len(audio) / config.sample_rate,
               "vocoder": log_mel_distance(audio, out_fp32[name], config),
               "vocoder_bf16": log_mel_distance(audio, out_bf16[name], config),
               "bf16_vs_fp32_snr_db": snr_db(out_fp32[name], out_bf16[name]),
               "wrong_mel": log_mel_distance(audio, wrong[name], config)}
        if not args.no_griffin_lim:
            row["griffin_lim"] = log_mel_distance(audio, griffin_lim(mel, config), config)
        rows.append(row)
        print(f"{name:24s} " + " ".join(f"{k} {v:.3f}" for k, v in row.items()
                                          if isinstance(v, float)), file=sys.stderr)
    keys = [k for k in rows[0] if k not in ("clip",)]
    summary = {k: statistics.mean(r[k] for r in rows) for k in keys}
    summary["worst_vocoder"] = max(r["vocoder"] for r in rows)
    summary["min_bf16_vs_fp32_snr_db"] = min(r["bf16_vs_fp32_snr_db"] for r in rows)
    print(f"{len(rows)} clips, sigma {args.sigma}: log-mel distance (nats; x{NATS_TO_DB:.2f} = dB) "
          f"vocoder {summary['vocoder']:.3f} (worst {summary['worst_vocoder']:.3f}), "
          + (f"Griffin-Lim {summary['griffin_lim']:.3f}, " if "griffin_lim" in summary else "")
          + f"wrong mel {summary['wrong_mel']:.3f}; bf16 vs fp32 SNR mean "
          f"{summary['bf16_vs_fp32_snr_db']:.1f} dB, min {summary['min_bf16_vs_fp32_snr_db']:.1f} dB")
    result = {"checkpoint": args.checkpoint, "sigma": args.sigma, "seed": args.seed,
              "summary": summary, "clips": rows}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
