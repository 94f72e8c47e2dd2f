"""Engines: the implementations of WaveGlow inference, behind one interface.

An :class:`Engine` maps (B, M, F) float32 CPU mels and (B, G, T) float32 CPU noise to audio.
Which one runs is decided once, when a checkpoint is opened for a device and precision
(:meth:`Checkpoint.engine <waveglow_cli.checkpoints.reader.Checkpoint.engine>`); nothing global decides
it later.  Today there are three:

* :class:`EagerEngine`: the :class:`~waveglow_cli.model.waveglow.WaveGlow` module itself, on any device
  and dtype (float32 is the exact path, compared against NVIDIA's reference);
* :class:`~waveglow_cli.engines.packed.FastWaveGlow`: bfloat16 on the CPU in (time, channels) layout,
  folded from the float32 weights;
* :class:`~waveglow_cli.engines.gpu.GpuEngine`: packed rows of matrix products for a GPU
  (fp16/bf16/fp32, float32 coupling and 1x1 inverses), optionally ``torch.compile``d with a
  persistent cache and bucketed shapes.  Taken only when asked for (``kind``) until a GPU has
  measured it against the eager model.

All three run the same reverse-flow skeleton (:func:`waveglow_cli.model.waveglow.reverse_flows`).  This
module also holds the device and precision policy of the command line (``--device``,
``--precision``)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints.reader import Checkpoint
from ..model.waveglow import WaveGlow
from .base import EagerEngine, Engine
from .packed import FastWaveGlow

#: The engines one can ask for by name (``synth``/``serve``/``bench --engine``): ``auto`` is
#: the default choice below; ``eager`` the model itself; ``packed`` the CPU fast path (rows of
#: matrix products, float32 or bfloat16); ``gpu`` the packed-row engine for any device;
#: ``compiled`` the same with ``torch.compile``.
ENGINE_KINDS = ("auto", "eager", "packed", "gpu", "compiled")


def as_engine(model: Engine | WaveGlow) -> Engine:
    """``model`` as an :class:`Engine`: an engine is returned as it is; a bfloat16 WaveGlow on
    the CPU becomes a fast path folded from its current (bfloat16) weights, any other WaveGlow
    an :class:`EagerEngine`.  (A checkpoint's :meth:`~waveglow_cli.checkpoints.reader.Checkpoint.engine`
    folds the fast path from the float32 weights instead, which is more accurate.)"""
    if not isinstance(model, WaveGlow):
        return model
    param = next(model.parameters())
    if param.device.type == "cpu" and param.dtype == torch.bfloat16:
        return FastWaveGlow(model)
    return EagerEngine(model)


def select_engine(checkpoint: Checkpoint, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32, kind: str = "auto",
                  cache_dir: Path | None = None) -> Engine:
    """The inference engine for ``checkpoint`` on ``device`` in ``dtype``, chosen once, here:
    built from its float32 weights (so every 1x1 inverse is made in float32), then as
    :func:`engine_from_float32` chooses."""
    return engine_from_float32(checkpoint.build_model(), device, dtype, kind, cache_dir)


def engine_from_float32(model: WaveGlow, device: str | torch.device, dtype: torch.dtype,
                        kind: str = "auto", cache_dir: Path | None = None) -> Engine:
    """The engine for ``model`` (float32 weights, on the CPU) on ``device`` in ``dtype``,
    chosen here once.  ``auto``: on the CPU, float32 and bfloat16 are the packed fast path
    (:class:`~waveglow_cli.engines.packed.FastWaveGlow`, folded from the float32 weights, so its 1x1
    inverses stay float32; in float32 it equals the model to float rounding and measured 1.7x
    its speed on the 256-channel model, see ``docs/benchmarks.md``); anything else is the
    model itself, cast and moved (the GPU engine is not the default until a GPU has measured
    it).  ``packed`` is the fast path (CPU only); ``gpu`` and ``compiled`` are
    :class:`~waveglow_cli.engines.gpu.GpuEngine` (on any device), the latter with
    ``torch.compile`` and its cache under ``cache_dir``; ``eager`` is always the model."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine {kind!r}; use {', '.join(ENGINE_KINDS)}")
    if kind in ("gpu", "compiled"):
        from .gpu import GpuEngine

        return GpuEngine(model, device, dtype, compile=kind == "compiled", cache_dir=cache_dir)
    on_cpu = torch.device(device).type == "cpu"
    config = model.config
    packable = dtype in (torch.float32, torch.bfloat16) and config.hop_length % config.n_group == 0
    if kind == "packed" and not (on_cpu and packable):
        raise ValueError("the packed engine runs on the CPU in fp32 or bf16, for a hop of whole "
                         "groups; use --engine eager or gpu for this one")
    if kind in ("auto", "packed") and on_cpu and packable:
        return FastWaveGlow(model, dtype=dtype)
    return EagerEngine(model.to(device=device, dtype=dtype))
