"""From mels to audio with a loaded model: noise, device placement, sanity of the output.

Noise for an item depends only on (seed, the item's key) and is drawn on the CPU in float32
in the layout :meth:`WaveGlow.infer` takes, so it is the same whatever the device, batch or
order.  Without a seed the noise is fresh randomness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .model import WaveGlow


@dataclass(frozen=True)
class SynthesisOptions:
    sigma: float = 0.6              # NVIDIA's recommended inference sigma (README: -s 0.6)
    seed: int | None = None
    denoiser_strength: float = 0.0  # the reference inference.py's default: no denoising

    def __post_init__(self) -> None:
        if not self.sigma >= 0:
            raise ValueError(f"sigma={self.sigma} must be >= 0")
        if not self.denoiser_strength >= 0:
            raise ValueError(f"denoiser_strength={self.denoiser_strength} must be >= 0")


def item_seed(seed: int, key: str) -> int:
    """A 63-bit seed from (seed, key): stable across runs, platforms and Python versions."""
    digest = hashlib.sha256(f"waveglow-noise:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def item_noise(model: WaveGlow, frames: int, seed: int | None, key: str) -> torch.Tensor:
    """Standard-normal noise (1, G, T) for one item, on the CPU."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(item_seed(seed, key))
    return torch.randn(model.noise_shape(1, frames), generator=generator)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA, then MPS, then CPU; explicit names are checked for availability."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} "
                             "CUDA device(s) exist")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' requested but MPS is not available")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


@torch.inference_mode()
def synthesize(model: WaveGlow, mel: np.ndarray | torch.Tensor, options: SynthesisOptions,
               key: str = "",
               denoiser: Callable[[torch.Tensor, float], torch.Tensor] | None = None) -> np.ndarray:
    """One (n_mels, frames) mel -> float32 audio of frames * hop samples (not clipped)."""
    param = next(model.parameters())
    mel_t = torch.as_tensor(mel, dtype=torch.float32).to(param.device, param.dtype).unsqueeze(0)
    z = item_noise(model, mel_t.size(2), options.seed, key)
    audio = model.infer(mel_t, sigma=options.sigma, z=z)
    if denoiser is not None and options.denoiser_strength > 0:
        audio = denoiser(audio.float(), options.denoiser_strength)
    return audio[0].float().cpu().numpy()
