"""The GPU engine (packed rows, float32 coupling, optional torch.compile): equal to the eager
model in float32 on every device present, close in fp16/bf16, bucketed shapes that pad
exactly, and a persistent compile cache.  Tiny models; one inductor compile on the CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import reference_glow as R
import torch
from conftest import available_devices, engine_of, run_cli

from waveglow_cli.analysis.bench import random_model, synthetic_mel
from waveglow_cli.analysis.quality import snr_db
from waveglow_cli.checkpoints.reader import infer_config, normalize_state_dict
from waveglow_cli.engines.base import EagerEngine, Engine
from waveglow_cli.engines.gpu import GpuEngine, bucket_rows
from waveglow_cli.engines.packed import FastWaveGlow
from waveglow_cli.engines.select import ENGINE_KINDS
from waveglow_cli.model.waveglow import WaveGlow, WaveGlowConfig
from waveglow_cli.synthesis.plans import BatchOptions
from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer

ROOT = Path(__file__).resolve().parents[1]
TINY = WaveGlowConfig(n_mel_channels=6, n_flows=8, n_group=8, n_early_every=4, n_early_size=2,
                      n_layers=4, n_channels=16)
SMALL_BUCKETS = (512, 1024, 2048, 4096)
# Measured on the tiny model (2026-11-30, CPU): bf16 45 dB, fp16 62 dB against float32.
REDUCED_SNR_DB = {torch.bfloat16: 38.0, torch.float16: 50.0}


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=3, end_scale=0.3)


def batch_of(config: WaveGlowConfig, frames: list[int], seed: int = 0):
    mel = torch.zeros(len(frames), config.n_mel_channels, max(frames))
    for b, f in enumerate(frames):
        mel[b, :, :f] = torch.from_numpy(synthetic_mel(config.n_mel_channels, f, seed=seed + b))
    _, groups, steps = config.noise_shape(len(frames), max(frames))
    z = torch.randn((len(frames), groups, steps), generator=torch.Generator().manual_seed(seed))
    return mel, z, torch.tensor(frames)


def assert_items_close(expected, got, lengths, hop, tolerance):
    expected, got = expected.float().cpu(), got.float().cpu()
    for b, f in enumerate(lengths.tolist()):
        n = f * hop
        scale = max(1.0, float(expected[b, :n].abs().max()))
        assert float((got[b, :n] - expected[b, :n]).abs().max()) <= tolerance * scale, b
        assert not got[b, n:].any()  # beyond an item's length: zeros


def from_reference(ref, old: bool) -> WaveGlow:
    sd = normalize_state_dict(ref.state_dict())
    ours = WaveGlow(infer_config(sd, {"alternate_halves": old}))
    ours.load_state_dict(sd)
    return ours.eval()


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("layout", R.LAYOUTS)
@pytest.mark.parametrize("old", [False, True], ids=["glow", "glow_old"])
def test_float32_equals_the_eager_model(reference_models, exact_float32, device, layout, old):
    """NVIDIA's layouts (and glow_old's halves): a padded batch through the GPU engine equals
    the eager model's masked batch, item by item, to 1e-4 (float rounding: only the order of
    the sums differs)."""
    ours = from_reference(reference_models[(layout, old)], old)
    mel, z, lengths = batch_of(ours.config, [14, 9, 5])
    eager = EagerEngine(ours.to(device)).infer(mel, 0.7, z, lengths)
    engine = GpuEngine(ours, device, torch.float32, buckets=SMALL_BUCKETS)
    assert isinstance(engine, Engine) and engine.device.type == device
    got = engine.infer(mel, 0.7, z, lengths)
    assert got.device.type == device and got.dtype == torch.float32
    assert_items_close(eager, got, lengths, ours.config.hop_length, 1e-4)


def test_a_hop_of_partial_groups_equals_the_eager_model():
    """A hop that is not a whole number of groups (20 samples, groups of 8) has no
    conditioning row per frame: the shared row upsampler makes it sample by sample and
    regroups, and the GPU engine still equals the eager model on every item's samples."""
    config = WaveGlowConfig(n_mel_channels=6, n_flows=8, n_group=8, n_early_every=4,
                            n_early_size=2, n_layers=4, n_channels=16, hop_length=20,
                            upsample_kernel=64)
    model = random_model(config, seed=1)
    frames = [14, 9, 5]
    mel, z, lengths = batch_of(config, frames)
    with torch.inference_mode():
        eager = EagerEngine(model).infer(mel, 0.7, z, lengths)
    got = GpuEngine(model, "cpu", torch.float32, buckets=SMALL_BUCKETS).infer(mel, 0.7, z,
                                                                               lengths)
    for b, f in enumerate(frames):
        n = f * config.hop_length // config.n_group * config.n_group  # whole groups only
        scale = max(1.0, float(eager[b, :n].abs().max()))
        assert float((got[b, :n] - eager[b, :n]).abs().max()) <= 1e-4 * scale, b
        assert not got[b, n:].any()


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_reduced_precision_snr(model, device, dtype):
    """fp16/bf16 products with a float32 coupling, 1x1 inverses and skip sum: measured as SNR
    against the float32 model with the same noise."""
    mel, z, lengths = batch_of(TINY, [17, 9])
    with torch.inference_mode():
        expected = model.infer(mel, 0.7, z=z, lengths=lengths)
    engine = GpuEngine(model, device, dtype, buckets=SMALL_BUCKETS)
    assert engine.flows[0].inverse_t.dtype == torch.float32
    assert engine.flows[0].layers[0].taps[0].dtype == dtype
    got = engine.infer(mel, 0.7, z, lengths).cpu()
    for b, f in enumerate(lengths.tolist()):
        assert snr_db(expected[b, :f * 256], got[b, :f * 256]) >= REDUCED_SNR_DB[dtype]


@pytest.mark.parametrize("device", available_devices())
def test_padding_to_a_bucket_changes_nothing(model, device):
    """The same items padded to different buckets, packed into different passes, or alone:
    the same audio (float32: to rounding; masking makes every item see its own zeros)."""
    mel, z, lengths = batch_of(TINY, [37, 23, 9], seed=4)
    reference = GpuEngine(model, device, torch.float32, buckets=(4096,))
    out = reference.infer(mel, 0.6, z, lengths)
    assert reference.shapes == {4096}
    for buckets in ((2048, 8192), (1 << 15,), (600, 1300)):
        engine = GpuEngine(model, device, torch.float32, buckets=buckets)
        assert_items_close(out, engine.infer(mel, 0.6, z, lengths), lengths, 256, 1e-5)
        assert engine.shapes <= set(buckets)
    for b, f in enumerate(lengths.tolist()):
        steps = f * 256 // TINY.n_group
        alone = reference.infer(mel[b:b + 1, :, :f], 0.6, z[b:b + 1, :, :steps])
        assert_items_close(out[b:b + 1, :f * 256], alone, lengths[b:b + 1], 256, 1e-5)


def test_a_folder_compiles_a_bounded_number_of_shapes(model):
    """Many lengths, batched as synth batches them: every pass runs at one of the buckets, so
    a compiled engine compiles at most len(buckets) variants; the audio is the model's
    function (the float32 CPU fast path, the same function and much faster than the eager
    model on a CPU)."""
    buckets = (256, 1024, 2048)
    engine = GpuEngine(model, "cpu", torch.float32, buckets=buckets)
    generator = torch.Generator().manual_seed(7)
    frames = torch.randint(3, 60, (9,), generator=generator).tolist()
    items = [(f"m{i}", synthetic_mel(TINY.n_mel_channels, f, seed=i)) for i, f in enumerate(frames)]
    options = SynthesisOptions(sigma=0.6, seed=2)
    batch = BatchOptions(batch_size=3, max_frames=600)
    ours = dict(Synthesizer(engine, options, batch).run(items))
    exact = dict(Synthesizer(FastWaveGlow(model, torch.float32), options, batch).run(items))
    assert engine.shapes <= set(buckets) and len(engine.shapes) <= len(buckets)
    for key, audio in exact.items():
        assert float(abs(ours[key] - audio).max()) <= 1e-4 * max(1.0, float(abs(audio).max()))


def test_bucket_planning():
    assert [bucket_rows(n, (8, 32)) for n in (1, 8, 9, 32, 33, 70)] == [8, 8, 32, 32, 64, 96]
    engine = GpuEngine(random_model(TINY, seed=1), "cpu", torch.float32, buckets=(200, 400))
    pad = engine.pad
    assert pad == 8  # kernel 3, 4 layers: the widest tap reaches 8 steps
    # Items fill a pass while [pad, item, pad, item, ..., pad] fits the largest bucket.
    assert engine.passes([100, 100, 100, 500, 10]) == [[0, 1, 2], [3], [4]]
    for bad in ((), (4, 2), tuple(range(1, 10)), (0, 4)):
        with pytest.raises(ValueError, match="buckets"):
            GpuEngine(random_model(TINY, seed=1), "cpu", torch.float32, buckets=bad)


def test_engine_kinds(model):
    """On the CPU the default is the packed fast path in fp32 and bf16 (the GPU engine only
    when asked for); the model itself in other types; unknown names are refused."""
    import copy

    assert ENGINE_KINDS == ("auto", "eager", "packed", "gpu", "compiled")
    for dtype in (torch.float32, torch.bfloat16):
        for kind in ("auto", "packed"):
            chosen = engine_of(model, "cpu", dtype, kind)
            assert isinstance(chosen, FastWaveGlow) and chosen.dtype == dtype
    assert isinstance(engine_of(model, "cpu", torch.float32, "eager"), EagerEngine)
    with pytest.raises(ValueError, match="packed engine"):
        engine_of(model, "cpu", torch.float16, "packed")
    # (The eager engine casts the module it is given: a copy, so the fixture stays float32.)
    eager = engine_of(copy.deepcopy(model), "cpu", torch.bfloat16, "eager")
    assert isinstance(eager, EagerEngine) and eager.dtype == torch.bfloat16
    gpu = engine_of(model, "cpu", torch.float16, "gpu")
    assert isinstance(gpu, GpuEngine) and not gpu.compiled and gpu.dtype == torch.float16
    compiled = engine_of(model, "cpu", torch.float32, "compiled", Path("/nonexistent"))
    assert isinstance(compiled, GpuEngine) and compiled.compiled  # nothing compiled yet
    if torch.cuda.is_available():
        assert isinstance(engine_of(copy.deepcopy(model), "cuda", torch.float16),
                          EagerEngine)
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown engine"):
        engine_of(model, "cpu", torch.float32, "fastest")


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor's CPU backend needs a C++ compiler")
def test_compiled_with_inductor_on_the_cpu(tmp_path, exact_float32):
    """The one compile of the suite (about 40 s on 2 cores): the smallest model through
    torch.compile's inductor backend equals the eager model, writes its cache into the folder
    given, and a second batch of other lengths in the same bucket compiles nothing new."""
    from torch._dynamo.utils import counters

    config = WaveGlowConfig(n_mel_channels=4, n_flows=4, n_group=8, n_early_every=2,
                            n_early_size=2, n_layers=2, n_channels=8)
    small = random_model(config, seed=5, end_scale=0.3)
    cache = tmp_path / "compile-cache"
    engine = engine_of(small, "cpu", torch.float32, "compiled", cache)
    assert isinstance(engine, GpuEngine)
    engine.buckets = (1024,)  # one shape: one compile
    mel, z, lengths = batch_of(config, [20, 9])
    with torch.inference_mode():
        expected = small.infer(mel, 0.7, z=z, lengths=lengths)
    assert_items_close(expected, engine.infer(mel, 0.7, z, lengths), lengths, 256, 1e-4)
    assert (cache / "fxgraph").is_dir() and any((cache / "fxgraph").rglob("*"))
    graphs = counters["stats"]["unique_graphs"]
    mel, z, lengths = batch_of(config, [17, 5, 11], seed=3)
    with torch.inference_mode():
        expected = small.infer(mel, 0.7, z=z, lengths=lengths)
    assert_items_close(expected, engine.infer(mel, 0.7, z, lengths), lengths, 256, 1e-4)
    assert counters["stats"]["unique_graphs"] == graphs
    assert engine.shapes == {1024}


def test_bench_engine_and_baseline_in_the_same_run(tiny_checkpoint, tmp_path):
    """``waveglow bench --engine gpu --baseline benchmarks/baseline.py``: both timed on the
    same mels and noise; in float32 they agree (the SNR is float rounding)."""
    r = run_cli("bench", "-c", tiny_checkpoint, "--device", "cpu", "--precision", "fp32",
                "--engine", "gpu", "--baseline", ROOT / "benchmarks" / "baseline.py",
                "--seconds", "0.3", "--repeats", "1", "--batch-size", "2", "--json",
                env={"WAVEGLOW_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    assert result["engine"] == "gpu" and result["path"] == "gpu rows"
    assert result["first_run_seconds"] > 0
    base = result["baseline"]
    assert base["seconds_per_run"] > 0 and base["speedup"] > 0
    assert base["snr_db_ours_vs_baseline"] > 80
    bad = run_cli("bench", "-c", tiny_checkpoint, "--device", "cpu", "--engine", "nope",
                  "--seconds", "0.1", "--repeats", "1")
    assert bad.returncode == 2 and b"unknown engine" in bad.stderr


def test_synth_runs_the_engine_asked_for(tmp_path, tiny_checkpoint):
    """`synth --engine gpu` (any device) gives the eager model's audio to float rounding; an
    unknown engine is a usage error before any work."""
    import numpy as np
    import soundfile as sf

    mel = tmp_path / "m.npy"
    np.save(mel, np.random.default_rng(2).standard_normal((4, 120)).astype(np.float32) - 4)
    audio = {}
    for engine in ("auto", "gpu"):
        out = tmp_path / f"{engine}.wav"
        done = run_cli("synth", mel, "-c", tiny_checkpoint, "-o", out, "--seed", "1",
                       "--subtype", "FLOAT", "--engine", engine, "--device", "cpu",
                       "--precision", "fp32")  # (auto is bf16 on a CPU with native bf16)
        assert done.returncode == 0, done.stderr
        audio[engine] = sf.read(out, dtype="float32")[0]
    assert np.abs(audio["gpu"] - audio["auto"]).max() <= 1e-4 * max(1, np.abs(audio["auto"]).max())
    bad = run_cli("synth", mel, "-c", tiny_checkpoint, "-o", tmp_path / "x.wav", "--engine", "x")
    assert bad.returncode == 2 and "unknown engine 'x'" in bad.stderr.decode()
