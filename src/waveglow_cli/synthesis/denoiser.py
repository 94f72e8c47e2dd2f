"""NVIDIA's WaveGlow denoiser: remove the model's bias spectrum from its output.

The bias is the STFT magnitude (n_fft 1024, hop 256, win 1024, Hann) of the first frame of
what the model produces for an all-zero mel at sigma 0.  It is computed once per model and
device; denoising subtracts ``strength`` times it from every frame's magnitude, clamps at 0
and inverts with the original phase, keeping the length.

:class:`StreamingDenoiser` applies it to a signal that arrives in blocks, exactly."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..engines.base import EagerEngine, Engine
from ..features.mel import STFT, bias_spectrum
from ..model.waveglow import WaveGlow

Denoise = Callable[[torch.Tensor, float], torch.Tensor]

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
        :class:`~waveglow_cli.engines.base.EagerEngine` this is :meth:`for_model` of its model."""
        mel = torch.zeros(1, engine.config.n_mel_channels, BIAS_FRAMES)
        z = torch.zeros(engine.config.noise_shape(1, BIAS_FRAMES))
        bias_audio = engine.infer(mel, 0.0, z).float()
        stft = STFT(n_fft=1024, hop_length=256, win_length=1024).to(engine.device)
        return cls(bias_spectrum(bias_audio, stft), stft)

    def __call__(self, audio: Tensor, strength: float) -> Tensor:
        """(B, S) or (S,) audio -> the same shape, float32, bias removed."""
        return self.stft.denoise(audio.float(), self.bias_spec, strength)


class StreamingDenoiser:
    """The denoiser applied to a signal that arrives in blocks, equal to denoising it whole.

    The denoiser's STFT (window ``n_fft``, hop ``hop``, centred, reflect-padded at the signal's
    ends) makes each output sample depend on the input within ``n_fft`` samples of it.  A stretch
    [a, b) is therefore denoised from the input [a - context, b + context) (clipped to the
    signal), cut at multiples of the hop so the frames fall where they fall in the whole signal,
    and only [a, b) is kept: the frames that see the cut edges touch nothing kept.  Memory is one
    block plus 2 x ``context`` samples, whatever the signal's length."""

    def __init__(self, denoise: Denoise, strength: float, total: int, device: torch.device,
                 n_fft: int = 1024, hop: int = 256) -> None:
        self.denoise, self.strength, self.total, self.device = denoise, strength, total, device
        self.hop = hop
        self.context = (n_fft // hop + 1) * hop  # a multiple of the hop, more than n_fft
        self.buffer = np.zeros(0, dtype=np.float32)  # input samples [self.start, received)
        self.start = 0
        self.emitted = 0  # output samples [0, emitted) have been returned

    def push(self, block: np.ndarray) -> np.ndarray | None:
        """Add the next input samples; returns the next output samples that are now final."""
        self.buffer = np.concatenate([self.buffer, np.asarray(block, dtype=np.float32)])
        received = self.start + self.buffer.size
        if received >= self.total:
            end = self.total
        else:
            end = (received - self.context) // self.hop * self.hop
            if end <= self.emitted:
                return None
        lo = max(0, self.emitted - self.context)  # a multiple of the hop
        segment = torch.from_numpy(self.buffer[lo - self.start:]).to(self.device)
        cleaned = self.denoise(segment[None], self.strength)[0].float().cpu().numpy()
        out = cleaned[self.emitted - lo:end - lo]
        self.emitted = end
        keep = max(0, end - self.context)
        self.buffer = self.buffer[keep - self.start:].copy()
        self.start = keep
        return out
