"""Engines: the implementations of WaveGlow inference, behind one interface.

An :class:`Engine` maps (B, M, F) float32 CPU mels and (B, G, T) float32 CPU noise to audio.
Which one runs is decided once, when a checkpoint is opened for a device and precision
(:meth:`Checkpoint.engine <waveglow_cli.checkpoint.Checkpoint.engine>`); nothing global decides
it later.  Today there are three:

* :class:`EagerEngine`: the :class:`~waveglow_cli.model.WaveGlow` module itself, on any device
  and dtype (float32 is the exact path, compared against NVIDIA's reference);
* :class:`~waveglow_cli.fastpath.FastWaveGlow`: bfloat16 on the CPU in (time, channels) layout,
  folded from the float32 weights;
* :class:`~waveglow_cli.gpu_engine.GpuEngine`: packed rows of matrix products for a GPU
  (fp16/bf16/fp32, float32 coupling and 1x1 inverses), optionally ``torch.compile``d with a
  persistent cache and bucketed shapes.  Taken only when asked for (``kind``) until a GPU has
  measured it against the eager model.

All three run the same reverse-flow skeleton (:func:`waveglow_cli.model.reverse_flows`).  This
module also holds the device and precision policy of the command line (``--device``,
``--precision``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .fastpath import FastWaveGlow, onednn_available
from .model import FlowProgress, WaveGlow, WaveGlowConfig


@runtime_checkable
class Engine(Protocol):
    """WaveGlow inference on one device in one precision."""

    config: WaveGlowConfig
    device: torch.device
    dtype: torch.dtype

    def infer(self, mel: Tensor, sigma: float, z: Tensor, lengths: Tensor | None = None,
              progress: FlowProgress | None = None) -> Tensor:
        """(B, M, F) float32 CPU natural-log mel and (B, G, T) float32 CPU standard-normal
        noise -> (B, F * hop) audio (any device and dtype).  ``lengths`` (B,) in frames masks
        each item's padding so it equals its unbatched synthesis (None: no padding).
        ``progress``, where given, is told the fraction of the pass done, increasing and
        ending at 1 (:data:`~waveglow_cli.model.FlowProgress`): after each flow where the
        engine runs them one by one, once at the end where it runs whole (ONNX).  It is
        passed only when a caller wants it, so an engine written without it still runs."""
        ...


class EagerEngine:
    """The :class:`~waveglow_cli.model.WaveGlow` module as an :class:`Engine`, on the device and
    in the dtype of its parameters."""

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


def as_engine(model: Engine | WaveGlow) -> Engine:
    """``model`` as an :class:`Engine`: an engine is returned as it is; a bfloat16 WaveGlow on
    the CPU becomes a fast path folded from its current (bfloat16) weights, any other WaveGlow
    an :class:`EagerEngine`.  (A checkpoint's :meth:`~waveglow_cli.checkpoint.Checkpoint.engine`
    folds the fast path from the float32 weights instead, which is more accurate.)"""
    if not isinstance(model, WaveGlow):
        return model
    param = next(model.parameters())
    if param.device.type == "cpu" and param.dtype == torch.bfloat16:
        return FastWaveGlow(model)
    return EagerEngine(model)


#: The engines one can ask for by name (``synth``/``serve``/``bench --engine``): ``auto`` is
#: the default choice below; ``eager`` the model itself; ``packed`` the CPU fast path (rows of
#: matrix products, float32 or bfloat16); ``gpu`` the packed-row engine for any device;
#: ``compiled`` the same with ``torch.compile``.
ENGINE_KINDS = ("auto", "eager", "packed", "gpu", "compiled")


def engine_from_float32(model: WaveGlow, device: str | torch.device, dtype: torch.dtype,
                        kind: str = "auto", cache_dir: Path | None = None) -> Engine:
    """The engine for ``model`` (float32 weights, on the CPU) on ``device`` in ``dtype``,
    chosen here once.  ``auto``: on the CPU, float32 and bfloat16 are the packed fast path
    (:class:`~waveglow_cli.fastpath.FastWaveGlow`, folded from the float32 weights, so its 1x1
    inverses stay float32; in float32 it equals the model to float rounding and measured 1.7x
    its speed on the 256-channel model, see ``docs/benchmarks.md``); anything else is the
    model itself, cast and moved (the GPU engine is not the default until a GPU has measured
    it).  ``packed`` is the fast path (CPU only); ``gpu`` and ``compiled`` are
    :class:`~waveglow_cli.gpu_engine.GpuEngine` (on any device), the latter with
    ``torch.compile`` and its cache under ``cache_dir``; ``eager`` is always the model."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine {kind!r}; use {', '.join(ENGINE_KINDS)}")
    if kind in ("gpu", "compiled"):
        from .gpu_engine import GpuEngine

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


# ---------------------------------------------------------------------------------------------
# Device and precision policy


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


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AMX or AVX512-BF16) and oneDNN
    can run the fast path's fused products; elsewhere bf16 would be emulated and slower."""
    import torch.cpu

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except RuntimeError:
        native = False
    return native and onednn_available(torch.bfloat16)


def pick_dtype(precision: str, device: torch.device, sigma: float | None = None) -> torch.dtype:
    """The compute dtype for ``--precision``.

    ``auto`` is bf16 (the CPU fast path, about 4x faster) on a CPU with native bf16 matrix
    products when noise is sampled (``sigma`` > 0): its rounding sits about 40-50 dB below the
    signal, far under the sampled noise itself.  Everywhere else ``auto`` is float32, and always
    at ``sigma`` 0, the deterministic mode that is compared against NVIDIA's reference: float32
    matches it to float rounding, reduced precision cannot.  GPUs stay float32 under ``auto``
    until their reduced-precision quality and speed are measured here; fp16/bf16 are taken on
    any device when asked for."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision == "auto":
        if device.type == "cpu" and sigma is not None and sigma > 0 and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if precision not in table:
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    return table[precision]


__all__ = ["Engine", "EagerEngine", "ENGINE_KINDS", "as_engine", "engine_from_float32",
           "pick_device", "pick_dtype", "cpu_has_fast_bf16"]
