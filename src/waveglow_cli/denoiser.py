"""NVIDIA's WaveGlow denoiser: remove the model's bias spectrum from its output.

The bias is the STFT magnitude (n_fft 1024, hop 256, win 1024, Hann) of the first frame of
what the model produces for an all-zero mel at sigma 0.  It is computed once per model and
device; denoising subtracts ``strength`` times it from every frame's magnitude, clamps at 0
and inverts with the original phase, keeping the length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .mel import STFT, bias_spectrum
from .model import WaveGlow

BIAS_FRAMES = 88  # the reference's all-zero mel: (1, n_mels, 88)


class Denoiser:
    def __init__(self, bias_spec: Tensor, stft: STFT) -> None:
        self.bias_spec = bias_spec
        self.stft = stft

    @classmethod
    @torch.inference_mode()
    def for_model(cls, model: WaveGlow) -> Denoiser:
        param = next(model.parameters())
        mel = torch.zeros(1, model.config.n_mel_channels, BIAS_FRAMES, device=param.device,
                          dtype=param.dtype)
        z = torch.zeros(model.noise_shape(1, BIAS_FRAMES))
        bias_audio = model.infer(mel, sigma=0.0, z=z).float()
        stft = STFT(n_fft=1024, hop_length=256, win_length=1024).to(param.device)
        return cls(bias_spectrum(bias_audio, stft), stft)

    def __call__(self, audio: Tensor, strength: float) -> Tensor:
        """(B, S) or (S,) audio -> the same shape, float32, bias removed."""
        return self.stft.denoise(audio.float(), self.bias_spec, strength)
