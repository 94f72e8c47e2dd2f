"""The CPU fast path (time, channels) layout: agreement with the exact model, exact masking and
batching, and ``waveglow bench``.  Tiny models only; nothing here is timed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch
from conftest import engine_of, run_cli

from waveglow_cli.analysis.bench import random_model, synthetic_mel
from waveglow_cli.analysis.quality import snr_db
from waveglow_cli.checkpoints.reader import Checkpoint
from waveglow_cli.engines.base import EagerEngine, Engine
from waveglow_cli.engines.packed import FastWaveGlow
from waveglow_cli.engines.select import as_engine
from waveglow_cli.model.waveglow import WaveGlowConfig
from waveglow_cli.synthesis.plans import BatchOptions
from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer, synthesize

TINY = WaveGlowConfig(n_mel_channels=6, n_flows=8, n_group=8, n_early_every=4, n_early_size=2,
                      n_layers=4, n_channels=16)
# bf16 products with float32 coupling on the tiny model measure about 75 dB against float32;
# the full-size random model about 50 dB (docs/benchmarks.md).  The bound leaves room.
BF16_SNR_DB = 40.0
BACKENDS = [True, False]  # oneDNN fused products, plain torch.mm fallback


@pytest.fixture(scope="module")
def model():
    return random_model(TINY, seed=3, end_scale=0.3)


@pytest.fixture(scope="module")
def inputs():
    frames = [37, 23, 9]
    mel = torch.zeros(3, TINY.n_mel_channels, max(frames))
    for b, f in enumerate(frames):
        mel[b, :, :f] = torch.from_numpy(synthetic_mel(TINY.n_mel_channels, f, seed=b))
    z = torch.randn((3, TINY.n_group, max(frames) * 256 // TINY.n_group),
                    generator=torch.Generator().manual_seed(0))
    return mel, z, torch.tensor(frames)


def _onednn_ok(flag: bool, dtype: torch.dtype) -> None:
    from waveglow_cli.engines.packed import onednn_available

    if flag and not onednn_available(dtype):
        pytest.skip("oneDNN fused linear not available in this torch build")


@pytest.mark.parametrize("use_onednn", BACKENDS)
def test_bf16_fast_path_agrees_with_float32_model(model, inputs, use_onednn):
    _onednn_ok(use_onednn, torch.bfloat16)
    mel, z, _ = inputs
    with torch.inference_mode():
        expected = model.infer(mel, 0.7, z=z)
    fast = FastWaveGlow(model, torch.bfloat16, use_onednn=use_onednn).infer(mel, 0.7, z=z)
    assert fast.dtype == torch.float32 and fast.shape == expected.shape
    assert snr_db(expected, fast) >= BF16_SNR_DB


@pytest.mark.parametrize("use_onednn", BACKENDS)
def test_float32_fast_path_is_the_same_function(model, inputs, use_onednn):
    """In float32 only the summation order differs from the model (folded skip/end, one
    product per layer): agreement to float rounding proves the algebra."""
    _onednn_ok(use_onednn, torch.float32)
    mel, z, lengths = inputs
    with torch.inference_mode():
        expected = model.infer(mel, 0.7, z=z, lengths=lengths)
    fast = FastWaveGlow(model, torch.float32, use_onednn=use_onednn).infer(mel, 0.7, z=z,
                                                                          lengths=lengths)
    for b, f in enumerate(lengths.tolist()):
        n = f * 256
        scale = float(expected[b, :n].abs().max())
        assert float((fast[b, :n] - expected[b, :n]).abs().max()) <= 1e-5 * max(1.0, scale)
        assert not fast[b, n:].any()  # padding is zero


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_padded_batch_equals_single_items(model, inputs, dtype, tolerance):
    """Masking: each item of a padded batch is what the fast path gives it alone (bf16: within
    its own rounding; the products see different neighbours' rows but the same values)."""
    mel, z, lengths = inputs
    fast = FastWaveGlow(model, dtype)
    batched = fast.infer(mel, 0.7, z=z, lengths=lengths)
    for b, f in enumerate(lengths.tolist()):
        steps = f * 256 // TINY.n_group
        alone = fast.infer(mel[b:b + 1, :, :f], 0.7, z=z[b:b + 1, :, :steps])[0]
        scale = float(alone.abs().max())
        assert float((batched[b, :f * 256] - alone).abs().max()) <= tolerance * scale
        if dtype == torch.bfloat16:
            assert snr_db(alone, batched[b, :f * 256]) >= 60


def test_item_groups_do_not_change_the_result(model, inputs):
    """Items are packed into groups of at most max_rows rows (a memory bound): scheduling only."""
    mel, z, lengths = inputs
    reference = FastWaveGlow(model, torch.float32).infer(mel, 0.7, z=z, lengths=lengths)
    for max_rows in (300, 1):
        out = FastWaveGlow(model, torch.float32, max_rows=max_rows).infer(mel, 0.7, z=z,
                                                                          lengths=lengths)
        assert float((out - reference).abs().max()) <= 1e-5 * float(reference.abs().max())


def test_glow_old_semantics(inputs):
    """alternate_halves (glow_old.py): odd flows transform the first half."""
    config = WaveGlowConfig(**{**TINY.to_dict(), "alternate_halves": True})
    old = random_model(config, seed=5, end_scale=0.3)
    mel, z, _ = inputs
    with torch.inference_mode():
        expected = old.infer(mel, 0.7, z=z)
    assert float((FastWaveGlow(old, torch.float32).infer(mel, 0.7, z=z) - expected).abs().max()
                 ) <= 1e-5 * float(expected.abs().max())


def test_checkpoint_engine_is_the_fast_path_for_bf16_on_cpu(model, inputs):
    """A checkpoint opened for bf16 on the CPU gets the fast path, chosen once and folded from
    its float32 weights (float32 1x1 inverses); synthesis with it is close to float32 synthesis,
    batched or not."""
    checkpoint = Checkpoint(TINY, {k: v.clone() for k, v in model.state_dict().items()})
    fast = engine_of(checkpoint, "cpu", torch.bfloat16)
    assert isinstance(fast, FastWaveGlow) and isinstance(fast, Engine)
    assert fast.device == torch.device("cpu") and fast.dtype == torch.bfloat16
    assert fast.flows[0].inverse_t.dtype == torch.float32
    exact = engine_of(checkpoint, "cpu", torch.float32)  # float32: the fast path's layout too
    assert isinstance(exact, FastWaveGlow) and exact.dtype == torch.float32
    assert isinstance(engine_of(checkpoint, "cpu", torch.float32, "eager"), EagerEngine)
    mel, _, lengths = inputs
    items = [(f"m{b}", mel[b, :, :f].numpy()) for b, f in enumerate(lengths.tolist())]
    options = SynthesisOptions(sigma=0.6, seed=4)
    exact = dict(Synthesizer(model, options).run(items))
    for batch_size in (1, 3):
        runner = Synthesizer(fast, options, BatchOptions(batch_size=batch_size))
        assert runner.engine is fast  # used as it is: not re-chosen per call
        fast_out = dict(runner.run(items))
        for key, audio in exact.items():
            assert fast_out[key].shape == audio.shape
            assert snr_db(torch.from_numpy(audio), torch.from_numpy(fast_out[key])) >= BF16_SNR_DB


def test_an_engine_folded_after_a_weight_change_has_the_new_weights(model):
    """An engine holds the weights it was made from; one made after the weights changed (a bf16
    model wrapped anew, or a checkpoint of the new weights) synthesises with the new ones."""
    bf16 = Checkpoint(TINY, {k: v.clone() for k, v in model.state_dict().items()}
                      ).build_model("cpu", torch.bfloat16)
    first = as_engine(bf16)
    assert isinstance(first, FastWaveGlow)
    other = random_model(TINY, seed=9)
    bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in other.state_dict().items()})
    mel = torch.from_numpy(synthetic_mel(TINY.n_mel_channels, 12))
    with torch.inference_mode():
        expected = torch.from_numpy(other.infer(mel[None], 0.0)[0].numpy())
    for engine in (bf16, engine_of(Checkpoint(TINY, other.state_dict()), "cpu", torch.bfloat16)):
        audio = synthesize(engine, mel, SynthesisOptions(sigma=0.0))
        assert snr_db(expected, torch.from_numpy(audio)) >= 30
    stale = synthesize(first, mel, SynthesisOptions(sigma=0.0))
    assert snr_db(expected, torch.from_numpy(stale)) < 10


def test_every_engine_satisfies_the_protocol_and_eager_is_the_model(model, inputs):
    """The eager engine and the fast path are Engines; Synthesizer over the eager engine is
    bit for bit Synthesizer over the float32 model (the engine only moves the mel)."""
    eager = EagerEngine(model)
    for engine in (eager, FastWaveGlow(model, torch.float32), as_engine(model)):
        assert isinstance(engine, Engine)
        assert engine.config == TINY and engine.device == torch.device("cpu")
    assert isinstance(as_engine(model), EagerEngine) and as_engine(eager) is eager
    assert eager.dtype == torch.float32 and eager.model is model
    mel, _, lengths = inputs
    items = [(f"m{b}", mel[b, :, :f].numpy()) for b, f in enumerate(lengths.tolist())]
    options = SynthesisOptions(sigma=0.6, seed=4)
    for batch in (BatchOptions(batch_size=1), BatchOptions(batch_size=3, max_frames=30)):
        by_model = dict(Synthesizer(model, options, batch).run(items))
        by_engine = dict(Synthesizer(eager, options, batch).run(items))
        for key, audio in by_model.items():
            assert np.array_equal(audio, by_engine[key])


def test_flops_per_sample_of_the_published_model():
    assert WaveGlowConfig().flops_per_sample() == pytest.approx(20.3e6, rel=0.01)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_json(tiny_checkpoint, precision):
    r = run_cli("bench", "-c", tiny_checkpoint, "--device", "cpu", "--precision", precision,
                "--seconds", "0.3", "--repeats", "1", "--batch-size", "2", "--json")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    for key in ("samples_per_second", "x_real_time", "peak_memory_mib", "fraction_of_peak",
                "matmul_peak_tflops", "flops_per_sample", "seconds_per_run", "device",
                "precision", "batch_size", "seconds", "path"):
        assert key in result
    assert result["precision"] == precision and result["batch_size"] == 2
    assert result["samples_per_second"] > 0 and 0 < result["fraction_of_peak"]
    assert result["peak_memory_mib"] > 0
    assert "fast-cpu" in result["path"]  # both precisions: the packed CPU path


def test_bench_text_output(tiny_checkpoint):
    r = run_cli("bench", "-c", tiny_checkpoint, "--device", "cpu", "--seconds", "0.2",
                "--repeats", "1")
    assert r.returncode == 0, r.stderr.decode()
    text = r.stdout.decode()
    assert "samples/s" in text and "real time" in text and "matmul peak" in text


def test_synthetic_mel_range():
    mel = synthetic_mel(80, 50)
    assert mel.shape == (80, 50) and mel.dtype == np.float32
    assert -11.6 < mel.min() and mel.max() < 1.6


def test_auto_precision_policy_of_synth(tiny_checkpoint, tmp_path):
    """`--precision auto`: float32 at sigma 0 (the mode compared with the reference: identical
    files), the bf16 fast path when sampling on a CPU with native bf16, float32 elsewhere."""
    from waveglow_cli.engines.devices import cpu_has_fast_bf16

    mel = tmp_path / "m.npy"
    np.save(mel, synthetic_mel(4, 40, seed=1))

    def synth(name, *extra):
        out = tmp_path / f"{name}.wav"
        r = run_cli("synth", mel, "-o", out, "-c", tiny_checkpoint, "--device", "cpu",
                    "--subtype", "FLOAT", "--seed", "5", *extra)
        assert r.returncode == 0, r.stderr.decode()
        return soundfile.read(out, dtype="float32")[0]  # (float WAVs carry a dated PEAK chunk)

    assert np.array_equal(synth("auto0", "--sigma", "0"),
                          synth("fp32_0", "--sigma", "0", "--precision", "fp32"))
    sampled = synth("auto", "--sigma", "0.6")
    bf16, fp32 = (synth(p, "--sigma", "0.6", "--precision", p) for p in ("bf16", "fp32"))
    assert not np.array_equal(bf16, fp32)  # the paths differ, so the check below tells them apart
    assert np.array_equal(sampled, bf16 if cpu_has_fast_bf16() else fp32)


def test_auto_precision_is_one_table():
    """``auto`` means one thing for the library, synth, serve and bench: the table's bf16 for
    sampled noise on a CPU with native bf16 only, float32 at sigma 0 everywhere; a server
    (either kind of noise) holds both picks; an asked precision applies to both."""
    from waveglow_cli.engines.devices import cpu_has_fast_bf16
    from waveglow_cli.engines.select import SigmaPolicy, choose_engine

    model = Checkpoint(TINY, {})
    fast = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    exact = choose_engine(model, "cpu", sigma=SigmaPolicy.of(0.0))
    assert exact.first.dtype == torch.float32 and exact.first.kind == "packed"
    sampling = choose_engine(model, "cpu", sigma=SigmaPolicy.of(0.6))
    assert sampling.first.dtype == fast
    either = choose_engine(model, "cpu")
    assert (either.for_sigma(0.6).dtype, either.for_sigma(0.0).dtype) == (fast, torch.float32)
    cuda = choose_engine(model, "cuda", sigma=SigmaPolicy.SAMPLING).first
    assert (cuda.kind, cuda.dtype) == ("eager", torch.float32)
    fp16 = choose_engine(model, "cpu", "fp16")
    assert {fp16.sampling.dtype, fp16.exact.dtype} == {torch.float16}
    assert fp16.first.kind == "eager"  # the packed rows run fp32 and bf16 only
    with pytest.raises(ValueError, match="unknown precision"):
        choose_engine(model, "cpu", "fp64")
