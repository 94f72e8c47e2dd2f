"""The documented Python API: load_vocoder, calling it, scoring with it."""

from __future__ import annotations

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


def test_one_loader_engine_settings_and_the_fast_path(tiny_checkpoint, vocoder, tmp_path):
    """load_vocoder is the one loader: device positionally, settings passed in (nothing read
    from the environment), the engine chosen once; scoring a bf16 CPU vocoder (whose fast path
    holds no module) uses a float32 model, so it equals the float32 score."""
    from waveglow_cli import load_vocoder
    from waveglow_cli.engines.base import EagerEngine
    from waveglow_cli.engines.packed import FastWaveGlow
    from waveglow_cli.settings import Settings

    settings = Settings.from_env({"WAVEGLOW_HOME": str(tmp_path), "WAVEGLOW_OFFLINE": "1"})
    exact = load_vocoder(str(tiny_checkpoint), "cpu", settings=settings)
    assert isinstance(exact.engine, FastWaveGlow)  # float32 on a CPU: the packed fast path
    eager = load_vocoder(str(tiny_checkpoint), "cpu", settings=settings, engine="eager")
    assert isinstance(eager.engine, EagerEngine) and eager.engine.model is eager.model
    mel = torch.randn(TINY["n_mel_channels"], 9, generator=torch.Generator().manual_seed(3)) - 4
    assert torch.allclose(exact(mel, sigma=0.6, seed=1), eager(mel, sigma=0.6, seed=1), atol=1e-5)
    assert exact.device == torch.device("cpu") and exact.dtype == torch.float32
    assert exact.config.n_mel_channels == TINY["n_mel_channels"] == exact.mel_config.n_mels
    assert exact.denoiser is None
    audio = 0.1 * torch.randn(3000, generator=torch.Generator().manual_seed(2))
    assert torch.equal(exact.mel(audio), vocoder.mel(audio))

    fast = load_vocoder(str(tiny_checkpoint), "cpu", precision="bf16", settings=settings,
                        denoise=True)
    assert fast.dtype == torch.bfloat16 and fast.denoiser is not None
    assert fast.score(audio) == exact.score(audio)
    assert fast(torch.zeros(TINY["n_mel_channels"], 5), sigma=0.0).shape == (5 * 256,)
