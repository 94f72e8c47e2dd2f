"""The Python API: ``load_vocoder(name_or_path)`` gives a callable vocoder with a likelihood.

    from waveglow_cli import load_vocoder, mel_spectrogram
    vocoder = load_vocoder("universal", device="cuda")
    audio = vocoder(mel, sigma=0.6)          # (n_mels, F) or (B, n_mels, F), tensor or numpy
    scores = vocoder.score(audio)            # exact log-likelihood of audio under the model
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .mel import MelConfig, mel_spectrogram
from .model import WaveGlow, waveglow_loss
from .synthesis import BatchOptions, SynthesisOptions, Synthesizer, pick_device


@dataclass(frozen=True)
class Score:
    """Likelihood of one waveform under the model (sigma = 1, as in training).

    ``loss`` is exactly NVIDIA's WaveGlowLoss (what train.py prints): the negative
    log-likelihood per sample *without* the Gaussian normalising constant.  ``nll_nats_per_sample``
    adds it (0.5 log(2 pi sigma^2) per sample), giving the true negative log-density of the
    waveform (continuous, so it can be negative); ``bits_per_sample`` is the same in bits."""

    loss: float
    nll_nats_per_sample: float
    bits_per_sample: float
    samples: int

    def as_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "nll_nats_per_sample": self.nll_nats_per_sample,
                "bits_per_sample": self.bits_per_sample, "samples": self.samples}


class Vocoder:
    """A loaded WaveGlow with its mel settings: mel -> audio, and audio -> likelihood."""

    def __init__(self, model: WaveGlow, mel_config: MelConfig, sample_rate: int,
                 batch: BatchOptions | None = None) -> None:
        self.model = model
        self.mel_config = mel_config
        self.sample_rate = sample_rate
        self.batch = batch or BatchOptions()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, mel: torch.Tensor | np.ndarray, sigma: float = 0.6,
                 seed: int | None = None) -> torch.Tensor:
        """(n_mels, F) -> (F * hop,) audio, or (B, n_mels, F) -> (B, F * hop), float32 on the CPU.

        A batch is synthesised with exact masking, so each row equals its unbatched result."""
        mel_t = torch.as_tensor(mel, dtype=torch.float32)
        single = mel_t.dim() == 2
        batch = mel_t[None] if single else mel_t
        if batch.dim() != 3 or batch.size(1) != self.model.config.n_mel_channels:
            raise ValueError(f"mel of shape {tuple(mel_t.shape)}; expected (n_mels, frames) or "
                             f"(batch, n_mels, frames) with n_mels={self.model.config.n_mel_channels}")
        runner = Synthesizer(self.model, SynthesisOptions(sigma=sigma, seed=seed), self.batch)
        items = [(str(i), batch[i].numpy()) for i in range(batch.size(0))]
        results = dict(runner.run(items))
        rows = []
        for key, _ in items:
            if isinstance(results[key], Exception):
                raise results[key]
            rows.append(torch.from_numpy(results[key]))
        out = torch.stack(rows)
        return out[0] if single else out

    def mel(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The Tacotron 2 mel this vocoder expects, of (S,) or (B, S) audio at its sample rate."""
        return mel_spectrogram(audio, self.mel_config)

    @torch.inference_mode()
    def score(self, audio: torch.Tensor | np.ndarray, sigma: float = 1.0) -> Score:
        """Likelihood of one (S,) waveform at the vocoder's sample rate (see :class:`Score`)."""
        audio_t = torch.as_tensor(audio, dtype=torch.float32).reshape(-1)
        mel = mel_spectrogram(audio_t, self.mel_config)
        param = next(self.model.parameters())
        z, log_s, log_det = self.model(mel.to(param.device, param.dtype),
                                       audio_t[None].to(param.device, param.dtype))
        z = z.float()
        log_s = [t.float() for t in log_s]
        log_det = [t.float() for t in log_det]
        loss = float(waveglow_loss(z, log_s, log_det, sigma))
        nats = loss + 0.5 * math.log(2 * math.pi * sigma * sigma)
        return Score(loss, nats, nats / math.log(2), int(z.numel()))


def load_vocoder(checkpoint: str = "universal", device: str | torch.device = "auto",
                 dtype: torch.dtype = torch.float32) -> Vocoder:
    """Load a checkpoint by registry name or path (fetching a registry checkpoint on first use
    unless offline) and return a :class:`Vocoder` on ``device`` ('auto': CUDA, MPS, CPU)."""
    from .api import open_checkpoint
    from .settings import Settings

    torch_device = pick_device(device) if isinstance(device, str) else device
    loaded = open_checkpoint(checkpoint, torch_device, Settings.from_env(), dtype=dtype)
    return Vocoder(loaded.model, loaded.mel_config, loaded.sample_rate)
