"""Every main path of the CLI against the plain eager baseline, in one run: the regression guard.

    python benchmarks/paths.py [--models 256 demo] [--repeats N] [--json OUT.json]
                               [--workdir DIR] [--quick] [--precision P] [--engine E]
                               [--threads N]

Two models: NVIDIA's 256-channel layout with random weights (``waveglow_cli.analysis.bench.random_model``
saved as a plain state dict, as ``compare.py`` does) and the bundled ``demo``.  For each, in
every repeat, in turn (so a busy machine slows every contender alike):

* the baseline: ``benchmarks/baseline.py``'s model (NVIDIA glow.py's arithmetic, channels-first
  Conv1d, float32, eager) with the same weights, loaded once in this process, inference only,
  on the same mels: the 10 s mel, then each mel of the folder;
* ``file``: ``waveglow synth m10.npy -o out.wav -c CKPT`` (default options), start to exit;
* ``folder``: ``waveglow synth mels/ -o wavs/ -c CKPT``, mixed lengths (2 to 12.5 s, 30 s in all);
* ``stdout``: ``waveglow synth m10.npy -o - -c CKPT --seed 1 > file``: first byte, first audio
  (the first byte after the WAV header) and exit; its bytes are compared once with
  ``-o f.wav --first-piece 32 --seed 1`` (they must be equal);
* ``serve x4``: ``waveglow serve -c CKPT`` on 127.0.0.1 (started once, warmed up by one short
  request), 4 concurrent clients each posting the 10 s mel (``serve_load.py``'s client): time
  to the last byte of all four, and the median first audio; its baseline is 4 x the 10 s one;
* ``mel``: ``waveglow mel clip.wav -o clip.npy -c CKPT`` of a 10 s clip (``examples/``' speech,
  repeated); its baseline is Tacotron 2's log mel computed in process with plain ``torch.stft``
  (centred, periodic Hann, magnitude, Slaney filters, log of clamp 1e-5), so the ratio is
  mostly the command's start-up.

Each row: median seconds, seconds of audio, x real time, baseline seconds for the same audio
and the ratio (baseline seconds / path seconds: above 1 is faster than the baseline).  Repeats:
``--repeats``, else 1 for the 256-channel model (one eager 10 s run is 30-40 s on a 2-core CPU)
and 3 for demo.  ``--quick``: demo only, 1 s mels (a smoke test, not a measurement).  A
Markdown table (machine, torch, date) goes to stdout, then the JSON (to ``--json`` if given,
else stdout); progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import baseline  # noqa: E402
import serve_load  # noqa: E402
from compare import cpu_model, timed  # noqa: E402

from waveglow_cli.analysis.bench import Reference, baseline_reference, random_model, synthetic_mel
from waveglow_cli.features.mel import MelConfig, mel_filterbank  # noqa: E402
from waveglow_cli.model.waveglow import WaveGlow  # noqa: E402

SEED = 1
SIGMA = 0.6  # synth's and serve's default
CLIENTS = 4
COMMANDS = {  # what each path runs (CKPT: the model's checkpoint; plus --precision/--engine)
    "file": "waveglow synth m10.npy -o out.wav -c CKPT",
    "folder": "waveglow synth mels/ -o wavs/ -c CKPT",
    "stdout": f"waveglow synth m10.npy -o - -c CKPT --seed {SEED} > stdout.wav",
    f"serve x{CLIENTS}": f"waveglow serve -c CKPT; {CLIENTS} concurrent POSTs of m10.npy",
    "mel": "waveglow mel clip.wav -o clip.npy -c CKPT",
}


@dataclass(frozen=True)
class Sizes:
    """Seconds of audio each path makes."""

    single: float = 10.0
    folder: tuple[float, ...] = (2.0, 3.5, 5.0, 7.0, 12.5)
    clip: float = 10.0


QUICK = Sizes(single=1.0, folder=(0.5, 1.0), clip=1.0)


@dataclass
class Model:
    """One model under test: its checkpoint for the CLI and the baseline with its weights."""

    name: str
    checkpoint: str
    described: str
    reference: Reference
    n_mels: int
    noise_shape: Callable[[int, int], tuple[int, int, int]]  # WaveGlowConfig.noise_shape
    hop: int
    rate: int = 22050


@dataclass
class Times:
    """Each path's seconds per repeat, and what else was measured."""

    runs: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, name: str, seconds: float, **more: float) -> None:
        self.runs.setdefault(name, []).append(seconds)
        for key, value in more.items():
            self.extra.setdefault(name, {}).setdefault(key, []).append(value)


def load_model(name: str, work: Path) -> Model:
    """The model ``name`` (256 or demo), its checkpoint on disk and the baseline loaded."""
    if name == "256":
        model = random_model()
        checkpoint = work / "random_256ch_state_dict.pt"
        if not checkpoint.exists():
            torch.save(model.state_dict(), checkpoint)
        return _as_model(name, str(checkpoint),
                         "random 256-channel NVIDIA layout (plain state dict)", model)
    from waveglow_cli.checkpoints.cache import ensure_checkpoint
    from waveglow_cli.checkpoints.reader import read_checkpoint
    from waveglow_cli.settings import Settings

    path = ensure_checkpoint("demo", Settings.from_env({**os.environ, "WAVEGLOW_OFFLINE": "1"}))
    loaded = read_checkpoint(path)
    return _as_model(name, "demo", f"demo (bundled {path.name})", loaded.build_model(),
                     loaded.sample_rate)


def _as_model(name: str, checkpoint: str, described: str, model: WaveGlow,
              rate: int = 22050) -> Model:
    config = model.config
    reference = baseline_reference(baseline.build, model, torch.device("cpu"), torch.float32)
    return Model(name, checkpoint, described, reference, config.n_mel_channels,
                 config.noise_shape, config.hop_length, rate)


def frames_of(seconds: float, model: Model) -> int:
    return max(1, round(seconds * model.rate / model.hop))


def write_inputs(model: Model, sizes: Sizes, work: Path) -> dict[str, Path]:
    """m10.npy, mels/ (mixed lengths) and clip.wav in ``work``."""
    single = work / "m10.npy"
    np.save(single, synthetic_mel(model.n_mels, frames_of(sizes.single, model)))
    folder = work / "mels"
    folder.mkdir(exist_ok=True)
    for i, seconds in enumerate(sizes.folder):
        np.save(folder / f"m{i}_{seconds:g}s.npy",
                synthetic_mel(model.n_mels, frames_of(seconds, model), seed=i + 1))
    clip = work / "clip.wav"
    soundfile.write(clip, speech_clip(sizes.clip, model.rate), model.rate)
    return {"single": single, "folder": folder, "clip": clip}


def speech_clip(seconds: float, rate: int) -> np.ndarray:
    """``seconds`` of the repository's example speech, repeated (a harmonic sweep without it)."""
    examples = sorted((HERE.parent / "examples").glob("*.flac"))
    parts = [soundfile.read(p, dtype="float32")[0] for p in examples
             if soundfile.info(p).samplerate == rate]
    n = round(seconds * rate)
    if parts:
        return np.resize(np.concatenate(parts), n).astype(np.float32)
    t = np.arange(n) / rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    return (0.1 * sum(np.sin(k * phase) / k for k in range(1, 20))).astype(np.float32)


def torch_stft_mel(audio: torch.Tensor, filters: torch.Tensor, config: MelConfig) -> torch.Tensor:
    """Tacotron 2's log mel with plain torch: the mel baseline."""
    window = torch.hann_window(config.win_length, periodic=True)
    spectrum = torch.stft(audio, config.n_fft, config.hop_length, config.win_length, window,
                          center=True, pad_mode="reflect", return_complex=True).abs()
    return torch.log(torch.clamp(filters @ spectrum, min=1e-5))


def time_baselines(model: Model, mels: list[torch.Tensor], clip: torch.Tensor, times: Times
                   ) -> None:
    """One repeat of the baseline: the 10 s mel, the folder's mels, the clip's mel."""
    seconds = []
    for index, mel in enumerate(mels):
        z = torch.randn(model.noise_shape(1, mel.shape[-1]),
                        generator=torch.Generator().manual_seed(index))
        start = time.perf_counter()
        model.reference(mel[None], z, SIGMA)
        seconds.append(time.perf_counter() - start)
    times.add("single", seconds[0])
    times.add("folder", sum(seconds[1:]))
    config = MelConfig()
    filters = mel_filterbank(config)
    start = time.perf_counter()
    torch_stft_mel(clip, filters, config)
    times.add("mel", time.perf_counter() - start)


def waveglow(*args: object) -> list[str]:
    return [sys.executable, "-m", "waveglow_cli", *map(str, args)]


def time_stream(command: list[str], env: dict[str, str], out: Path) -> dict[str, float]:
    """Run ``command`` (``synth ... -o -``) with standard output into ``out``: seconds to the
    first byte, to the first audio (after the WAV header) and to exit."""
    start = time.perf_counter()
    first_byte = first_audio = math.nan
    head = b""  # the bytes up to the first audio
    with open(out, "wb") as sink, tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env)
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):  # type: ignore[attr-defined]
            now = time.perf_counter() - start
            if math.isnan(first_byte):
                first_byte = now
            if math.isnan(first_audio):
                head += chunk
                offset = serve_load.wav_audio_offset(head)
                if offset is not None and len(head) > offset:
                    first_audio = now
            sink.write(chunk)
        code = proc.wait()
        total = time.perf_counter() - start
        if code != 0:
            errors.seek(0)
            raise SystemExit(f"{' '.join(command)} failed ({code}):\n{errors.read().decode()}")
    return {"total": total, "first_byte": first_byte, "first_audio": first_audio}


class Server:
    """``waveglow serve -c CKPT`` for all repeats (``serve_load.py``'s start and client)."""

    def __init__(self, checkpoint: str, extra: list[str], n_mels: int) -> None:
        options = argparse.Namespace(checkpoint=checkpoint, device="auto", max_batch=16,
                                     max_wait_ms=10.0)
        self.proc, self.port = serve_load.start_server(options, extra)
        warm = serve_load.one_request("127.0.0.1", self.port, synthetic_mel(n_mels, 32), 0)
        if not warm.ok:
            self.close()
            raise SystemExit(f"waveglow serve -c {checkpoint}: warm-up request failed "
                             f"(HTTP {warm.status})")

    def time_clients(self, mel: np.ndarray) -> dict[str, float]:
        results, wall = serve_load.load_phase("127.0.0.1", self.port, [mel] * CLIENTS, CLIENTS,
                                              1, time.monotonic() + 3600)
        bad = [s for s in results.samples if not s.ok]
        if bad:
            raise SystemExit(f"serve: {len(bad)} of {CLIENTS} requests failed "
                             f"(HTTP {[s.status for s in bad]})")
        return {"total": wall,
                "first_audio": statistics.median(s.first_audio for s in results.samples)}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def one_repeat(model: Model, inputs: dict[str, Path], extra: list[str], server: Server,
               work: Path, times: Times) -> None:
    """Every path once, in turn."""
    env = {**os.environ, "WAVEGLOW_OFFLINE": "1"}
    ckpt = ["-c", model.checkpoint, *extra]
    out, wavs = work / "out.wav", work / "wavs"
    out.unlink(missing_ok=True)
    times.add("file", timed(waveglow("synth", inputs["single"], "-o", out, *ckpt), env))
    shutil.rmtree(wavs, ignore_errors=True)
    times.add("folder", timed(waveglow("synth", inputs["folder"], "-o", wavs, *ckpt), env))
    stream = time_stream(waveglow("synth", inputs["single"], "-o", "-", "--seed", SEED, *ckpt),
                         env, work / "stdout.wav")
    times.add("stdout", stream["total"], first_byte=stream["first_byte"],
              first_audio=stream["first_audio"])
    served = server.time_clients(np.load(inputs["single"]))
    times.add(f"serve x{CLIENTS}", served["total"], first_audio=served["first_audio"])
    mel_out = work / "clip.npy"
    mel_out.unlink(missing_ok=True)
    times.add("mel", timed(waveglow("mel", inputs["clip"], "-o", mel_out,
                                    "-c", model.checkpoint), env))


def stream_equals_file(model: Model, single: Path, extra: list[str], work: Path) -> bool:
    """Whether the last ``-o -`` bytes equal ``-o f.wav --first-piece 32`` (same seed)."""
    whole = work / "first_piece_32.wav"
    whole.unlink(missing_ok=True)
    timed(waveglow("synth", single, "-o", whole, "--first-piece", 32, "--seed", SEED,
                   "-c", model.checkpoint, *extra), {**os.environ, "WAVEGLOW_OFFLINE": "1"})
    return whole.read_bytes() == (work / "stdout.wav").read_bytes()


def bench_model(name: str, sizes: Sizes, repeats: int, extra: list[str], work: Path) -> dict:
    """Every path of one model, ``repeats`` times interleaved with the baseline."""
    work.mkdir(parents=True, exist_ok=True)
    print(f"{name}: loading the model and the baseline", file=sys.stderr)
    model = load_model(name, work)
    inputs = write_inputs(model, sizes, work)
    mels = [torch.from_numpy(np.load(inputs["single"]))]
    mels += [torch.from_numpy(np.load(p)) for p in sorted(inputs["folder"].glob("*.npy"))]
    clip = torch.from_numpy(soundfile.read(inputs["clip"], dtype="float32")[0])
    model.reference(mels[0][None, :, :16], torch.randn(model.noise_shape(1, 16)), SIGMA)  # warm
    ours, base = Times(), Times()
    server = Server(model.checkpoint, extra, model.n_mels)
    try:
        for repeat in range(repeats):
            time_baselines(model, mels, clip, base)
            one_repeat(model, inputs, extra, server, work, ours)
            print(f"{name} repeat {repeat + 1}/{repeats}: baseline {sizes.single:g} s mel "
                  f"{base.runs['single'][-1]:.2f} s; "
                  + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in ours.runs.items()),
                  file=sys.stderr)
    finally:
        server.close()
    equal = stream_equals_file(model, inputs["single"], extra, work)
    return summarise(model, sizes, ours, base, equal)


def summarise(model: Model, sizes: Sizes, ours: Times, base: Times, equal: bool) -> dict:
    """Medians, x real time and ratios to the baseline, per path."""
    single = frames_of(sizes.single, model) * model.hop / model.rate
    folder = sum(frames_of(s, model) for s in sizes.folder) * model.hop / model.rate
    clip = round(sizes.clip * model.rate) / model.rate
    median = {k: statistics.median(v) for k, v in base.runs.items()}
    audio_and_base = {"file": (single, median["single"]), "folder": (folder, median["folder"]),
                      "stdout": (single, median["single"]),
                      f"serve x{CLIENTS}": (CLIENTS * single, CLIENTS * median["single"]),
                      "mel": (clip, median["mel"])}
    rows: dict[str, dict] = {}
    for path, (audio, base_s) in audio_and_base.items():
        seconds = statistics.median(ours.runs[path])
        row = {"command": COMMANDS[path], "median_s": seconds, "all_s": ours.runs[path],
               "audio_s": audio,
               "x_real_time": audio / seconds, "baseline_s": base_s,
               "vs_baseline": base_s / seconds}
        for key, values in ours.extra.get(path, {}).items():
            row[f"{key}_s"] = statistics.median(values)
        rows[path] = row
    rows["stdout"]["bytes_equal_first_piece_32"] = equal
    rows["mel"]["baseline"] = "torch.stft log mel in process (Tacotron 2's numbers)"
    return {"checkpoint": model.described, "repeats": len(ours.runs["file"]),
            "baseline_runs_s": base.runs, "paths": rows}


def notes(path: str, row: dict) -> str:
    if path == "stdout":
        return (f"first byte {row['first_byte_s']:.2f} s, first audio {row['first_audio_s']:.2f}"
                f" s; = `--first-piece 32` file: "
                f"{'yes' if row['bytes_equal_first_piece_32'] else 'NO'}")
    if path.startswith("serve"):
        return f"{CLIENTS} concurrent clients; first audio (median) {row['first_audio_s']:.2f} s"
    if path == "mel":
        return "baseline: torch.stft mel in process (the ratio is mostly start-up)"
    return ""


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}; torch {result['torch']}, {result['threads']} "
             f"threads; {result['date']}; `{result['command']}`", "",
             "| model | path | seconds (median) | audio s | x real time | baseline s | "
             "vs baseline | notes |", "|---|---|---|---|---|---|---|---|"]
    for name, model in result["models"].items():
        for path, row in model["paths"].items():
            lines.append(f"| {name} | {path} | {row['median_s']:.2f} | {row['audio_s']:.1f} | "
                         f"{row['x_real_time']:.2f} | {row['baseline_s']:.3g} | "
                         f"{row['vs_baseline']:.3g}x | {notes(path, row)} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=["256", "demo"], default=["256", "demo"])
    parser.add_argument("--repeats", type=int, default=None,
                        help="default: 1 for the 256-channel model, 3 for demo (--quick: 1)")
    parser.add_argument("--json", help="write the JSON result here (default: stdout)")
    parser.add_argument("--workdir", help="keep the files here (default: a temporary folder, "
                                          "removed after)")
    parser.add_argument("--quick", action="store_true",
                        help="demo only, 1 s mels: a smoke test, not a measurement")
    parser.add_argument("--precision", help="passed to synth and serve")
    parser.add_argument("--engine", help="passed to synth and serve")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the baseline and every command (OMP_NUM_THREADS);"
                             " default: torch's own (on a busy 2-core machine 1 is steadier)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:  # the same for the baseline here and for the commands' processes
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    models, sizes = (["demo"], QUICK) if args.quick else (args.models, Sizes())
    extra = [*(["--precision", args.precision] if args.precision else []),
             *(["--engine", args.engine] if args.engine else [])]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="wg-paths-"))
    try:
        results = {}
        for name in models:
            repeats = args.repeats or (1 if args.quick or name == "256" else 3)
            results[name] = bench_model(name, sizes, repeats, extra, work / name)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": cpu_model(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "quick": args.quick,
              "precision": args.precision or "default", "engine": args.engine or "default",
              "command": " ".join(["python", *sys.argv]), "models": results}
    print(markdown(result))
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
