"""The measuring half of ``scripts/device_check.sh``: every figure of the GPU check.

    python scripts/device_check.py run --out OUT [--device cuda] [--short] [--compile]
        [--tests-json F] [--install-json F]

writes ``OUT/device_check.json`` with these sections (each has ``status`` ok/failed/skipped,
``seconds`` and, when it failed, ``error``; a failed section does not stop the others):

* ``environment``: machine, torch, CUDA, date, command;
* ``install`` and ``tests``: what the shell script recorded (wheels installed or skipped; the
  test suite's result on the device);
* ``bench``: ``waveglow bench``'s measurement (:func:`waveglow_cli.analysis.bench.run_bench`) of the
  256-channel model, batch 16 x 10 s, at fp32/fp16/bf16 for each engine, with
  ``benchmarks/baseline.py`` (NVIDIA glow.py's arithmetic) timed in the same run on the same
  mels and noise;
* ``folder``: 100 ten-second mels end to end (load, synthesise, write WAVs) in fresh
  processes: the compiled engine with a cold compile cache, then warm, and ``waveglow synth``
  as it is today (the eager model);
* ``long_utterance``: one 10-minute mel, wall time and peak GPU memory, per engine;
* ``snr_trained``: fp16/bf16 against fp32 with the same noise on the trained ``demo`` weights
  (copy synthesis of the held-out clips), per engine;
* ``targets``: the GPU targets (docs/benchmarks.md, "GPU"), each with the figure it was judged on.

``--short`` (with ``--device cpu``: the test suite's dry run) uses a tiny model and tiny sizes
so every section is exercised in seconds; ``--compile`` there also compiles (slow on a CPU).
The ``folder`` subcommand is the child process the folder section starts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from waveglow_cli.analysis.bench import (
    BenchOptions,
    baseline_reference,
    random_model,
    run_bench,
    synthetic_mel,
)
from waveglow_cli.checkpoints.reader import read_checkpoint  # noqa: E402
from waveglow_cli.engines.devices import precision_name  # noqa: E402
from waveglow_cli.engines.select import SigmaPolicy, build_engine, choose_engine  # noqa: E402
from waveglow_cli.model.waveglow import WaveGlowConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FULL = dict(config=WaveGlowConfig(), batch=16, seconds=10.0, repeats=3, folder_items=100,
            folder_seconds=10.0, long_seconds=600.0, snr_frames=None, snr_clips=None)
SHORT = dict(config=WaveGlowConfig(n_flows=4, n_early_every=2, n_layers=2, n_channels=8),
             batch=2, seconds=0.25, repeats=1, folder_items=3, folder_seconds=0.25,
             long_seconds=6.0, snr_frames=12, snr_clips=1)
TARGETS = {"samples_per_second": 20e6, "speedup_vs_baseline": 3.3, "folder_fraction": 0.5,
           "long_memory_mib": 4096, "snr_db": 30.0}


def log(message: str) -> None:
    print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {message}", flush=True)


def section(name: str, results: dict, work) -> None:
    """Run one section; its figures or its error go into ``results[name]``."""
    log(f"== {name}")
    start = time.perf_counter()
    try:
        record = work()
        record.setdefault("status", "ok")
    except Exception as e:  # noqa: BLE001 - one failed section must not lose the others
        traceback.print_exc()
        record = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
    record["seconds"] = time.perf_counter() - start
    results[name] = record
    log(f"== {name}: {record['status']} in {record['seconds']:.1f} s")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    record = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "command": " ".join(sys.argv), "python": sys.version.split()[0],
              "platform": platform.platform(), "torch": torch.__version__,
              "cuda": torch.version.cuda, "device": str(device), "short": args.short,
              "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(device_name=props.name, device_memory_mib=props.total_memory / 2**20,
                      multiprocessors=props.multi_processor_count)
    else:
        from waveglow_cli.analysis.bench import device_name

        record["device_name"] = device_name(device)
    return record


def engines_for(args: argparse.Namespace, precision: str) -> list[str]:
    """The engines measured at ``precision``: the eager model, the GPU engine, and compiled
    in reduced precision.  The dry run (--short) keeps to what is quick on a CPU: one eager
    run (fp16/bf16 Conv1d is emulated there, minutes) and no compiling unless --compile."""
    if args.short:
        return ["eager", "gpu"] if precision == "fp32" else \
            ["gpu"] + (["compiled"] if args.compile else [])
    return ["eager", "gpu"] + (["compiled"] if precision != "fp32" else [])


def make_engine(args: argparse.Namespace, model, device: torch.device, dtype: torch.dtype,
                kind: str, cache: Path):
    """The engine ``kind`` chosen and built from a copy of ``model`` (the eager engine casts and moves the
    module it is given, and the next engine must fold float32 weights); the dry run pads to
    small buckets (fp16/bf16 products are emulated on most CPUs, so padding a few frames to
    4096 rows would take minutes)."""
    import copy

    float32 = copy.deepcopy(model)
    engine = build_engine(choose_engine(float32, device, precision_name(dtype), kind).first,
                          float32, cache)
    if args.short and hasattr(engine, "buckets"):
        engine.buckets = (512, 1024, 2048)
    return engine


def bench(args: argparse.Namespace, size: dict, cache: Path) -> dict:
    """Every precision and engine on the same random model; the baseline once per precision
    (beside the first engine), every engine's speed-up computed against that run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline", ROOT / "benchmarks" / "baseline.py")
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    model = random_model(size["config"])
    device = torch.device(args.device)
    options = BenchOptions(batch_size=size["batch"], seconds=size["seconds"],
                           repeats=size["repeats"], peak_seconds=0.2 if args.short else 1.0)
    runs = []
    for precision, dtype in DTYPES.items():
        base = None
        for kind in engines_for(args, precision):
            log(f"bench {precision} {kind}")
            engine = make_engine(args, model, device, dtype, kind, cache)
            reference = baseline_reference(baseline.build, model, device, dtype) \
                if base is None else None
            result = run_bench(engine, 22050, options, "random 256-channel model"
                               if not args.short else "random tiny model", reference)
            result["engine"] = kind
            base = result.get("baseline", base)
            result["speedup_vs_baseline"] = base["seconds_per_run"] / result["seconds_per_run"]
            runs.append(result)
            log(f"  {result['samples_per_second'] / 1e6:.3f} M samples/s, "
                f"{result['speedup_vs_baseline']:.2f}x baseline, first run "
                f"{result['first_run_seconds']:.1f} s")
            del engine
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"runs": runs}


def write_mels(folder: Path, count: int, frames: int, n_mels: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        np.save(folder / f"utt{i:03d}.npy", synthetic_mel(n_mels, frames, seed=i))


def folder_child(args: argparse.Namespace) -> None:
    """One end-to-end run of a folder, as ``waveglow synth DIR -o OUT`` runs it, with the
    engine asked for; one JSON line on stdout."""
    started = time.perf_counter()
    from waveglow_cli.jobs.core import MEL_SUFFIXES, discover, plan_outputs, synthesis_job
    from waveglow_cli.jobs.options import OutputOptions
    from waveglow_cli.settings import Settings
    from waveglow_cli.synthesis.plans import BatchOptions
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions
    from waveglow_cli.vocoder import load_vocoder

    settings = Settings(home=Path(args.home), registry_file=None, offline=True, mirror=None,
                        debug=True)
    device = torch.device(args.device)
    vocoder = load_vocoder(args.checkpoint, "cpu", precision="fp32", settings=settings)
    model = read_checkpoint(vocoder.path).build_model()
    pick = choose_engine(model, device, args.precision, args.engine, SigmaPolicy.SAMPLING).first
    vocoder = vocoder.with_engine(build_engine(pick, model, Path(args.cache)))
    batch = BatchOptions.for_device(device, vocoder.engine.config)
    job = synthesis_job(vocoder, SynthesisOptions(sigma=0.6, seed=1), batch,
                        output=OutputOptions(first_piece=0))
    items = discover([args.mels], MEL_SUFFIXES)
    outputs = plan_outputs(items, args.output, ".wav")
    loaded = time.perf_counter()
    summary = job.run(items, outputs)
    synchronize(device)
    done = time.perf_counter()
    print(json.dumps({"items": len(items), "failed": summary.failed,
                      "audio_seconds": summary.seconds, "load_seconds": loaded - started,
                      "run_seconds": done - loaded, "process_seconds": done - started}))


def run_child(command: list[str], timeout: float) -> dict:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    sys.stdout.write(done.stderr[-3000:])
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... exited {done.returncode}: "
                           f"{done.stderr.strip()[-500:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    record = json.loads(lines[-1]) if lines else {}
    record["wall_seconds"] = wall
    return record


def folder(args: argparse.Namespace, size: dict, work: Path, cache: Path) -> dict:
    """100 ten-second mels: the compiled engine cold (empty cache) and warm, in fresh
    processes, and ``waveglow synth`` as it is (eager), all end to end.  Runs first, so its
    cold run finds ``cache`` empty; the later sections reuse what it compiled."""
    from waveglow_cli.checkpoints.reader import save_checkpoint

    config = size["config"]
    checkpoint = save_checkpoint(work / "model.safetensors", random_model(config))
    frames = round(size["folder_seconds"] * 22050 / config.hop_length)
    mels = work / "mels"
    write_mels(mels, size["folder_items"], frames, config.n_mel_channels)
    kind = "compiled" if (not args.short or args.compile) else "gpu"
    precision = "fp32" if args.device == "cpu" else "fp16"
    record: dict = {"items": size["folder_items"], "seconds_each": frames * 256 / 22050,
                    "engine": kind, "precision": precision}
    for name in ("cold", "warm"):
        log(f"folder {kind} {precision} {name} cache")
        record[name] = run_child(
            [sys.executable, __file__, "folder", "--checkpoint", str(checkpoint), "--mels",
             str(mels), "--output", str(work / f"out-{name}"), "--device", args.device,
             "--precision", precision, "--engine", kind, "--cache", str(cache), "--home",
             str(work / "home")], timeout=900)
    log(f"folder: waveglow synth (eager, {precision})")
    record["synth_cli_eager"] = run_child(
        [sys.executable, "-m", "waveglow_cli", "synth", str(mels), "-o", str(work / "out-cli"),
         "-c", str(checkpoint), "--device", args.device, "--precision", precision, "--seed",
         "1", "--quiet"], timeout=900)
    samples = size["folder_items"] * frames * config.hop_length
    for name in ("cold", "warm", "synth_cli_eager"):
        r = record[name]
        r["samples_per_second_end_to_end"] = samples / r["wall_seconds"]
    record["compile_cost_seconds"] = record["cold"]["wall_seconds"] - record["warm"]["wall_seconds"]
    return record


def long_utterance(args: argparse.Namespace, size: dict, cache: Path) -> dict:
    """One long mel through synthesis (pieces with context, as synth runs it): wall time and
    peak memory per engine."""
    from waveglow_cli.synthesis.plans import BatchOptions
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer

    config = size["config"]
    device = torch.device(args.device)
    model = random_model(config)
    frames = round(size["long_seconds"] * 22050 / config.hop_length)
    mel = synthetic_mel(config.n_mel_channels, frames, seed=5)
    precision = "fp32" if device.type == "cpu" else "fp16"
    record: dict = {"seconds_of_audio": frames * config.hop_length / 22050,
                    "precision": precision, "runs": {}}
    kinds = ["eager", "gpu"] + (["compiled"] if not args.short or args.compile else [])
    for kind in kinds:
        log(f"long utterance {kind} {precision}")
        engine = make_engine(args, model, device, DTYPES[precision], kind, cache)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        synthesizer = Synthesizer(engine, SynthesisOptions(sigma=0.6, seed=1),
                                  BatchOptions.for_device(device, config))
        start = time.perf_counter()
        samples = sum(len(block) for _, block, _ in synthesizer.stream([("long", mel)]))
        synchronize(device)
        wall = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        record["runs"][kind] = {"wall_seconds": wall, "samples": samples,
                                "peak_gpu_memory_mib": peak,
                                "x_real_time": record["seconds_of_audio"] / wall}
        del engine, synthesizer
    return record


def snr_trained(args: argparse.Namespace, size: dict, cache: Path, home: Path) -> dict:
    """fp16/bf16 against fp32 with the same noise, on the trained demo weights: copy synthesis
    of the held-out clips (shortened in --short)."""
    from waveglow_cli.analysis.quality import snr_db
    from waveglow_cli.audio.io import prepare_audio, read_audio
    from waveglow_cli.features.mel import mel_spectrogram
    from waveglow_cli.settings import Settings
    from waveglow_cli.synthesis.plans import BatchOptions
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer
    from waveglow_cli.vocoder import load_vocoder

    settings = Settings(home=home, registry_file=None, offline=True, mirror=None, debug=True)
    vocoder = load_vocoder("demo", "cpu", torch.float32, settings=settings)
    device = torch.device(args.device)
    clips = sorted((ROOT / "tests" / "data" / "heldout_speech").glob("*.flac"))
    clips = clips[:size["snr_clips"]] if size["snr_clips"] else clips
    mels = []
    for path in clips:
        samples, rate = read_audio(path)
        audio = prepare_audio(samples, rate, vocoder.sample_rate, str(path))[0]
        mel = mel_spectrogram(audio, vocoder.mel_config)[0].numpy()
        mels.append((path.name, mel[:, :size["snr_frames"]] if size["snr_frames"] else mel))
    options = SynthesisOptions(sigma=0.6, seed=0)
    model = vocoder.model  # float32 (the loaded vocoder keeps its weights in its engine)
    exact = make_engine(args, model, device, torch.float32, "gpu" if args.short else "eager",
                        cache)
    reference = dict(Synthesizer(exact, options, BatchOptions()).run(mels))
    record: dict = {"checkpoint": "demo (trained, bundled)", "clips": [n for n, _ in mels],
                    "sigma": 0.6, "reference": "fp32 " + ("gpu" if args.short else "eager"),
                    "snr_db": {}}
    for precision in ("fp16", "bf16"):
        for kind in engines_for(args, precision):
            log(f"snr {precision} {kind}")
            engine = make_engine(args, model, device, DTYPES[precision], kind, cache)
            out = dict(Synthesizer(engine, options, BatchOptions()).run(mels))
            values = [snr_db(reference[name], out[name]) for name, _ in mels]
            record["snr_db"][f"{precision}/{kind}"] = {"min": min(values),
                                                      "mean": statistics.mean(values)}
    return record


def targets(results: dict) -> dict:
    """The GPU targets, judged on this run's figures (None where a section failed)."""
    judged: dict = {}
    runs = results.get("bench", {}).get("runs", [])
    if runs:
        best = max(runs, key=lambda r: r["samples_per_second"])
        judged["steady_state"] = {
            "best": f"{best['precision']}/{best['engine']}",
            "samples_per_second": best["samples_per_second"],
            "speedup_vs_baseline": best["speedup_vs_baseline"],
            "met": best["samples_per_second"] >= TARGETS["samples_per_second"]
            and best["speedup_vs_baseline"] >= TARGETS["speedup_vs_baseline"]}
        folder_run = results.get("folder", {}).get("warm")
        if folder_run:
            fraction = folder_run["samples_per_second_end_to_end"] / best["samples_per_second"]
            judged["folder_warm_fraction_of_steady"] = {
                "fraction": fraction, "met": fraction >= TARGETS["folder_fraction"]}
    long_runs = results.get("long_utterance", {}).get("runs", {})
    peaks = {k: r["peak_gpu_memory_mib"] for k, r in long_runs.items()
             if r.get("peak_gpu_memory_mib") is not None}
    if peaks:
        judged["long_utterance_memory"] = {
            "peak_mib": peaks, "met": min(peaks.values()) <= TARGETS["long_memory_mib"]}
    snrs = results.get("snr_trained", {}).get("snr_db", {})
    if snrs:
        judged["reduced_precision_snr"] = {
            k: {"min_db": v["min"], "met": v["min"] >= TARGETS["snr_db"]} for k, v in snrs.items()}
    return judged


def run(args: argparse.Namespace) -> int:
    import tempfile

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = SHORT if args.short else FULL
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="wg-device-check-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "compile-cache"
    results: dict = {}
    section("environment", results, lambda: environment(args))
    for name, path in (("install", args.install_json), ("tests", args.tests_json)):
        if path and Path(path).is_file():
            results[name] = json.loads(Path(path).read_text())
        else:
            results[name] = {"status": "skipped", "seconds": 0.0}
    section("folder", results, lambda: folder(args, size, work, cache))
    section("bench", results, lambda: bench(args, size, cache))
    section("long_utterance", results, lambda: long_utterance(args, size, cache))
    section("snr_trained", results, lambda: snr_trained(args, size, cache, work / "home"))
    results["targets"] = targets(results)
    (out / "device_check.json").write_text(json.dumps(results, indent=1, default=str))
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("status") == "failed"]
    log(f"wrote {out / 'device_check.json'}; failed sections: {failed or 'none'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("run")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--short", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--tests-json")
    p.add_argument("--install-json")
    p.add_argument("--work", help="a scratch folder (default: a new temporary one)")
    f = commands.add_parser("folder")
    for name in ("--checkpoint", "--mels", "--output", "--device", "--precision", "--engine",
                 "--cache", "--home"):
        f.add_argument(name, required=True)
    args = parser.parse_args(argv)
    if args.command == "folder":
        folder_child(args)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
