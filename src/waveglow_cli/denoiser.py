"""NVIDIA's WaveGlow denoiser: remove the model's bias spectrum from its output.

The bias is the STFT magnitude (n_fft 1024, hop 256, win 1024, Hann) of the first frame of
what the model produces for an all-zero mel at sigma 0.  It is computed once per model and
device; denoising subtracts ``strength`` times it from every frame's magnitude, clamps at 0
and inverts with the original phase, keeping the length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .engine import EagerEngine, Engine
from .mel import STFT, bias_spectrum
from .model import WaveGlow

BIAS_FRAMES = 88  # the reference's all-zero mel: (1, n_mels, 88)


class Denoiser:
    def __init__(self, bias_spec: Tensor, stft: STFT) -> None:
        self.bias_spec = bias_spec
        self.stft = stft

    @classmethod
    def for_model(cls, model: WaveGlow) -> Denoiser:
        """The denoiser of ``model`` run as it is (eagerly, on its device in its dtype)."""
        return cls.for_engine(EagerEngine(model))

    @classmethod
    @torch.inference_mode()
    def for_engine(cls, engine: Engine) -> Denoiser:
        """The denoiser of what ``engine`` synthesises (its bias on its device).  For an
        :class:`~waveglow_cli.engine.EagerEngine` this is :meth:`for_model` of its model."""
        mel = torch.zeros(1, engine.config.n_mel_channels, BIAS_FRAMES)
        z = torch.zeros(engine.config.noise_shape(1, BIAS_FRAMES))
        bias_audio = engine.infer(mel, 0.0, z).float()
        stft = STFT(n_fft=1024, hop_length=256, win_length=1024).to(engine.device)
        return cls(bias_spectrum(bias_audio, stft), stft)

    def __call__(self, audio: Tensor, strength: float) -> Tensor:
        """(B, S) or (S,) audio -> the same shape, float32, bias removed."""
        return self.stft.denoise(audio.float(), self.bias_spec, strength)
