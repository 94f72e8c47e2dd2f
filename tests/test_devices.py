"""Every exactness property, on every device present: the CPU here, and CUDA or MPS
wherever the suite runs on one (``scripts/device_check.sh`` runs it on a GPU).

Each test computes on ``device`` and compares with the CPU float32 result or NVIDIA's
reference: fp32 (TF32 off on CUDA) within 1e-4 relative to the signal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_glow as R
import torch
from conftest import TINY
from test_model import ours_from_reference, reference_draws


def _close(got: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4) -> None:
    got, expected = got.detach().float().cpu(), expected.detach().float().cpu()
    scale = max(1.0, float(expected.abs().max()))
    assert float((got - expected).abs().max()) <= tol * scale, float((got - expected).abs().max())


@pytest.mark.parametrize("layout", R.LAYOUTS)
def test_inference_matches_nvidias_reference(reference_models, layout, device):
    ref = reference_models[(layout, False)]
    ours = ours_from_reference(ref, False).to(device)
    torch.manual_seed(11)
    mel, z = torch.randn(2, 4, 9), torch.randn(ours.noise_shape(2, 9))
    with torch.no_grad():
        expected = ref.infer(mel, sigma=0.6, draw=reference_draws(z, ours.config))
        got = ours.infer(mel.to(device), sigma=0.6, z=z.to(device))
    _close(got, expected)


def test_masked_batch_equals_items_alone(reference_models, device):
    ours = ours_from_reference(reference_models[("fused", False)], False).to(device)
    torch.manual_seed(12)
    mels = [torch.randn(1, 4, n) for n in (5, 9, 3)]
    zs = [torch.randn(ours.noise_shape(1, m.size(2))) for m in mels]
    batch_mel = torch.zeros(3, 4, 9)
    batch_z = torch.zeros(ours.noise_shape(3, 9))
    for i, (m, z) in enumerate(zip(mels, zs)):
        batch_mel[i, :, :m.size(2)], batch_z[i, :, :z.size(2)] = m[0], z[0]
    with torch.no_grad():
        batched = ours.infer(batch_mel.to(device), 0.7, z=batch_z.to(device),
                             lengths=torch.tensor([5, 9, 3]).to(device))
    on_cpu = ours_from_reference(reference_models[("fused", False)], False)
    with torch.no_grad():
        for i, (m, z) in enumerate(zip(mels, zs)):
            expected = on_cpu.infer(m, 0.7, z=z)[0]  # the item alone, on the CPU
            _close(batched[i, :expected.numel()], expected)


def test_chunked_and_batched_synthesis_equals_the_cpu(tiny_checkpoint, device):
    """The Synthesizer (noise by position, pieces with margins, masked batches, streaming
    plan) on ``device`` against the CPU's whole-item synthesis."""
    from conftest import engine_of

    from waveglow_cli.checkpoints.reader import read_checkpoint
    from waveglow_cli.synthesis.plans import BatchOptions, context_margin
    from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer

    checkpoint = read_checkpoint(tiny_checkpoint)
    cpu = engine_of(checkpoint, "cpu", torch.float32)
    here = engine_of(checkpoint, device, torch.float32)
    rng = np.random.default_rng(13)
    items = [(f"{n}.npy", rng.standard_normal((TINY["n_mel_channels"], n)).astype(np.float32))
             for n in (150, 37, 90)]
    options = SynthesisOptions(sigma=0.6, seed=4)
    whole = dict(Synthesizer(cpu, options, BatchOptions(max_frames=4096)).run(items))
    margin = context_margin(checkpoint.config)
    for batch in (BatchOptions(batch_size=4, max_frames=3 * margin, batch_frames=4096),
                  BatchOptions(batch_size=4, max_frames=1024, batch_frames=4096, first_piece=8)):
        got = dict(Synthesizer(here, options, batch).run(items))
        for key, audio in whole.items():
            _close(torch.from_numpy(got[key]), torch.from_numpy(audio))


def test_denoiser_on_the_device_equals_the_cpu(tiny_checkpoint, device):
    from conftest import engine_of

    from waveglow_cli.checkpoints.reader import read_checkpoint
    from waveglow_cli.synthesis.denoiser import Denoiser

    checkpoint = read_checkpoint(tiny_checkpoint)
    cpu = Denoiser.for_engine(engine_of(checkpoint, "cpu", torch.float32))
    here = Denoiser.for_engine(engine_of(checkpoint, device, torch.float32))
    audio = 0.3 * torch.randn(1, 9000, generator=torch.Generator().manual_seed(3))
    _close(here(audio.to(device), 0.1), cpu(audio, 0.1))


def test_mel_on_the_device_equals_the_cpu(device):
    from waveglow_cli.features.mel import mel_spectrogram

    audio = 0.5 * torch.randn(2, 22050, generator=torch.Generator().manual_seed(5))
    _close(mel_spectrogram(audio.to(device)), mel_spectrogram(audio), tol=1e-4)


def test_likelihood_on_the_device_is_nvidias_loss_plus_the_gaussian_constant(
        tiny_checkpoint, tiny_reference, device):
    """``Vocoder.score`` against the reference written out: forward, then WaveGlowLoss."""
    from waveglow_cli import load_vocoder
    from waveglow_cli.features.mel import MelConfig, mel_spectrogram

    vocoder = load_vocoder(str(tiny_checkpoint), device)
    audio = 0.1 * torch.randn(5000, generator=torch.Generator().manual_seed(1))
    score = vocoder.score(audio)
    mel = mel_spectrogram(audio, MelConfig(n_mels=TINY["n_mel_channels"]))
    with torch.no_grad():
        z, log_s, log_det = tiny_reference((mel, audio[None]))
    loss = (z.pow(2).sum() / 2 - sum(t.sum() for t in log_s) - sum(log_det)) / z.numel()
    assert math.isclose(score.loss, loss.item(), rel_tol=1e-4)
    assert math.isclose(score.nll_nats_per_sample, loss.item() + 0.5 * math.log(2 * math.pi),
                        rel_tol=1e-4)
    assert math.isclose(score.bits_per_sample, score.nll_nats_per_sample / math.log(2))
    assert score.samples == 5000 // 8 * 8
    assert vocoder.score(10 * audio).loss > score.loss  # louder noise is less likely


def test_a_training_step_on_the_device_equals_the_cpu(reference_models, device):
    """Loss and gradients of one step (the training objective) on ``device`` and the CPU."""
    from waveglow_cli.model.waveglow import waveglow_loss

    results = []
    for where in (torch.device("cpu"), device):
        model = ours_from_reference(reference_models[("fused", False)], False).to(where).train()
        torch.manual_seed(6)
        mel, audio = torch.randn(2, 4, 6), 0.3 * torch.randn(2, 6 * 256)
        z, log_s, log_det = model(mel.to(where), audio.to(where))
        loss = waveglow_loss(z, log_s, log_det, 1.0)
        loss.backward()
        grads = torch.cat([p.grad.reshape(-1).cpu() for p in model.parameters()
                           if p.grad is not None])
        results.append((loss.detach().cpu(), grads))
    _close(results[1][0], results[0][0])
    _close(results[1][1], results[0][1], tol=1e-3)
