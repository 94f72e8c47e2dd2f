"""The engine protocol: WaveGlow inference on one device in one precision, and the
eager model as an engine."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..model.waveglow import FlowProgress, WaveGlow, WaveGlowConfig


@runtime_checkable
class Engine(Protocol):
    """WaveGlow inference on one device in one precision."""

    config: WaveGlowConfig
    device: torch.device
    dtype: torch.dtype

    def infer(self, mel: Tensor, sigma: float, z: Tensor, lengths: Tensor | None = None, *,
              progress: FlowProgress | None = None) -> Tensor:
        """(B, M, F) float32 CPU natural-log mel and (B, G, T) float32 CPU standard-normal
        noise -> (B, F * hop) audio (any device and dtype).  ``lengths`` (B,) in frames masks
        each item's padding so it equals its unbatched synthesis (None: no padding).
        ``progress``, where given, is told the fraction of the pass done, increasing and
        ending at 1 (:data:`~waveglow_cli.model.waveglow.FlowProgress`): after each flow where the
        engine runs them one by one, once at the end where it runs whole (ONNX).  It is
        passed only when a caller wants it, so an engine written without it still runs, and
        by keyword (the packed engines take a ``generator`` in its place)."""
        ...


class EagerEngine:
    """The :class:`~waveglow_cli.model.waveglow.WaveGlow` module as an :class:`Engine`, on the
    device and in the dtype of its parameters."""

    def __init__(self, model: WaveGlow) -> None:
        self.model = model
        self.config = model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    @torch.inference_mode()
    def infer(self, mel: Tensor, sigma: float, z: Tensor, lengths: Tensor | None = None,
              progress: FlowProgress | None = None) -> Tensor:
        return self.model.infer(mel.to(self.device, self.dtype), sigma=sigma, z=z,
                                lengths=lengths, progress=progress)
