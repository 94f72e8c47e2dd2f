"""Library entry points that tie resolution, loading and devices together."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .checkpoint import Checkpoint, read_checkpoint
from .model import WaveGlow
from .registry import resolve_checkpoint
from .settings import Settings

Denoise = Callable[[torch.Tensor, float], torch.Tensor]


def open_checkpoint(spec: str, device: torch.device, settings: Settings,
                    with_denoiser: bool = False) -> tuple[WaveGlow, Checkpoint, Denoise | None]:
    """Resolve ``spec`` (path or registry name), load it safely, build the model on ``device``,
    and (if asked) the denoiser for it."""
    checkpoint = read_checkpoint(resolve_checkpoint(spec, settings))
    model = checkpoint.build_model(device)
    denoiser = None
    if with_denoiser:
        from .denoiser import Denoiser

        denoiser = Denoiser.for_model(model)
    return model, checkpoint, denoiser
