"""The documented Python API: load_vocoder, calling it, scoring with it."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY


@pytest.fixture(scope="module")
def vocoder(tiny_checkpoint):
    from waveglow_cli import load_vocoder

    return load_vocoder(str(tiny_checkpoint), device="cpu")


def test_call_batched_or_not_tensor_or_numpy(vocoder, tiny_reference):
    from waveglow_cli import mel_spectrogram  # the documented import works

    assert mel_spectrogram(torch.zeros(600)).shape == (1, 80, 3)

    mels = torch.randn(3, TINY["n_mel_channels"], 11)
    mels[2, :, 6:] = 0  # a shorter item padded by hand is still just an 11-frame mel
    batched = vocoder(mels, sigma=0.0)
    assert batched.shape == (3, 11 * 256)
    for i in range(3):
        alone = vocoder(mels[i].numpy(), sigma=0.0)
        assert torch.allclose(batched[i], alone, atol=1e-5)
        with torch.no_grad():
            expected = tiny_reference.infer(mels[i:i + 1], sigma=0.0)[0]
        assert torch.allclose(alone, expected, atol=1e-4)
    assert vocoder.sample_rate == 22050
    with pytest.raises(ValueError, match="n_mels=4"):
        vocoder(torch.randn(5, 7))


def test_score_is_nvidias_loss_plus_the_gaussian_constant(vocoder, tiny_reference):
    """Against the reference written out: forward, then WaveGlowLoss's formula."""
    from waveglow_cli.mel import MelConfig, mel_spectrogram

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
    # louder noise is less likely under the model
    assert vocoder.score(10 * audio).loss > score.loss
