"""The one engine choice: which engine runs a model, on which device, in which compute type.

:func:`choose_engine` maps (the source: a checkpoint's float32 weights or an exported ONNX file;
the device; the precision asked for, ``auto`` included; the engine asked for, ``auto``
included; the sigma policy: sampled noise, the exact sigma 0, or either) to an
:class:`EngineChoice`: a decision, nothing built yet, read off the tables below.
:func:`build_engine` then realises one of its picks.  Every engine in the package is chosen
here, once, as uvicorn's ``Config.load()`` resolves its implementations once: the loader
(:func:`waveglow_cli.vocoder.load_vocoder`) and a vocoder's precision switch, ``synth``,
``serve`` (through its vocoder), ``bench`` and the device check.

What ``auto`` means (precision and engine both ``auto``):

==============================  ===============  ==============  =================================
source, device                  sampled noise    sigma 0         why
==============================  ===============  ==============  =================================
weights, CPU with native bf16   packed bf16      packed fp32     bf16 products about 4x faster;
                                                                 their rounding sits 40-50 dB
                                                                 under the signal, far below
                                                                 sampled noise; sigma 0 is
                                                                 compared against NVIDIA's
                                                                 reference, which only float32
                                                                 matches
weights, CPU without            packed fp32      packed fp32     bf16 would be emulated: slower
weights, CUDA or MPS            eager fp32       eager fp32      until a GPU has measured reduced
                                                                 precision and the gpu engine
                                                                 against the model here
ONNX file, any device           onnxruntime      onnxruntime     its precision was fixed at export
==============================  ===============  ==============  =================================

A precision asked for applies to both kinds of noise; an engine asked for replaces the table's
kind.  The packed engine needs a hop of whole groups of samples: where the weights' is not,
``auto`` is the eager model and ``packed`` is refused.  For an exported file the precision and
engine asked for do not apply (they are still checked as names).

The engines: :class:`~waveglow_cli.engines.base.EagerEngine` (the
:class:`~waveglow_cli.model.waveglow.WaveGlow` module itself, any device and dtype; float32 is
the exact path), :class:`~waveglow_cli.engines.packed.FastWaveGlow` (``packed``: rows of matrix
products on the CPU, fp32 or bf16, folded from the float32 weights so its 1x1 inverses stay
float32), :class:`~waveglow_cli.engines.gpu.GpuEngine` (``gpu``, and ``compiled`` with
``torch.compile``) and :class:`~waveglow_cli.engines.onnx.OnnxEngine` (``onnx``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from ..checkpoints.reader import Checkpoint
from ..model.waveglow import WaveGlow, WaveGlowConfig
from .base import EagerEngine, Engine
from .devices import PRECISIONS, device_kind, precision_name
from .onnx import OnnxSource
from .packed import FastWaveGlow

#: The engines one can ask for by name (``synth``/``serve``/``bench --engine``): ``auto`` is
#: the table's choice; ``eager`` the model itself; ``packed`` the CPU fast path (rows of matrix
#: products, float32 or bfloat16); ``gpu`` the packed-row engine for any device; ``compiled``
#: the same with ``torch.compile``.
ENGINE_KINDS = ("auto", "eager", "packed", "gpu", "compiled")

#: The precisions one can ask for by name (``--precision``).
PRECISION_NAMES = ("auto", *PRECISIONS)

#: What an engine is made from: a checkpoint (its float32 weights; the table reads only its
#: architecture, so one whose tensors an engine now holds will do), a float32 WaveGlow module,
#: or an exported ONNX file.
ModelSource = Checkpoint | WaveGlow | OnnxSource


class SigmaPolicy(Enum):
    """The noise the requests to an engine bring, as far as it is known when it is chosen."""

    SAMPLING = "sampling"  # sigma > 0: noise is drawn and scaled
    EXACT = "exact"        # sigma 0: deterministic, compared against NVIDIA's reference
    EITHER = "either"      # not known (the library, a server): decided per request

    @classmethod
    def of(cls, sigma: float) -> SigmaPolicy:
        """The policy of a run whose every request has this ``sigma`` (``synth``'s)."""
        return cls.EXACT if sigma == 0 else cls.SAMPLING


@dataclass(frozen=True)
class AutoPrecision:
    """A row of :data:`AUTO_PRECISION`: the compute type for sampled noise and for sigma 0."""

    sampling: torch.dtype
    exact: torch.dtype


#: ``--precision auto``, per kind of device (:func:`~waveglow_cli.engines.devices.device_kind`).
AUTO_PRECISION: dict[str, AutoPrecision] = {
    # Native bf16 products (AMX, AVX512-BF16): about 4x faster, rounding 40-50 dB under the
    # signal, far below sampled noise.  Sigma 0 is compared against NVIDIA's reference:
    # float32 matches it to float rounding, reduced precision cannot.
    "cpu-bf16": AutoPrecision(sampling=torch.bfloat16, exact=torch.float32),
    # Elsewhere bf16 is emulated, slower than float32.
    "cpu": AutoPrecision(sampling=torch.float32, exact=torch.float32),
    # Float32 until reduced precision's quality and speed are measured on a GPU here.
    "cuda": AutoPrecision(sampling=torch.float32, exact=torch.float32),
    "mps": AutoPrecision(sampling=torch.float32, exact=torch.float32),
}

#: ``--engine auto``, per device type and compute type.
AUTO_ENGINE: dict[str, dict[torch.dtype, str]] = {
    # The packed fast path: in float32 it equals the model to float rounding at 1.7x its
    # speed (256 channels, docs/benchmarks.md); in bf16 it is folded from the float32 weights,
    # so its 1x1 inverses stay float32.  Its rows run fp32 and bf16 only.
    "cpu": {torch.float32: "packed", torch.bfloat16: "packed", torch.float16: "eager"},
    # The model itself until a GPU has measured the gpu engine against it.
    "cuda": {torch.float32: "eager", torch.bfloat16: "eager", torch.float16: "eager"},
    "mps": {torch.float32: "eager", torch.bfloat16: "eager", torch.float16: "eager"},
}


@dataclass(frozen=True)
class EnginePick:
    """One engine the table chose: its kind (``eager``, ``packed``, ``gpu``, ``compiled`` or
    ``onnx``), compute type (None for an exported file: its own) and device."""

    kind: str
    dtype: torch.dtype | None
    device: torch.device

    def describe(self) -> str:
        """In words, for a status line: 'the bf16 packed engine on cpu'."""
        if self.dtype is None:
            return f"onnxruntime on {self.device} (the file's precision)"
        return f"the {precision_name(self.dtype)} {self.kind} engine on {self.device}"


@dataclass(frozen=True)
class EngineChoice:
    """The table's decision for a source: the engine for sampled noise and the one for sigma
    0 (often the same pick), and the policy they were chosen for.  Nothing is built: the
    :attr:`first` is built at once by whoever loads (:func:`build_engine`); the other, where
    it differs, when a request first needs it."""

    sampling: EnginePick
    exact: EnginePick
    policy: SigmaPolicy = SigmaPolicy.EITHER

    @property
    def first(self) -> EnginePick:
        """The pick built at once: the exact one where only sigma 0 is expected, else the one
        for sampled noise (the default of the library and of a server: sigma 0.6)."""
        return self.exact if self.policy is SigmaPolicy.EXACT else self.sampling

    def for_sigma(self, sigma: float) -> EnginePick:
        """The pick that synthesises at ``sigma``."""
        return self.exact if sigma == 0 else self.sampling


def choose_engine(source: ModelSource, device: str | torch.device, precision: str = "auto",
                  engine: str = "auto", sigma: SigmaPolicy = SigmaPolicy.EITHER
                  ) -> EngineChoice:
    """The engines for ``source`` on ``device``, from the tables of this module (see its
    doc): ``precision`` is ``auto``, ``fp32``, ``fp16`` or ``bf16``; ``engine`` one of
    :data:`ENGINE_KINDS`; ``sigma`` the noise the requests bring.  Raises ValueError for an
    unknown name or an engine that cannot run the request (``packed`` off the CPU, in fp16,
    or for a hop of partial groups)."""
    device = torch.device(device)
    if precision not in PRECISION_NAMES:
        raise ValueError(f"unknown precision {precision!r}; use {', '.join(PRECISION_NAMES)}")
    if engine not in ENGINE_KINDS:
        raise ValueError(f"unknown engine {engine!r}; use {', '.join(ENGINE_KINDS)}")
    if isinstance(source, OnnxSource):  # onnxruntime runs the graph, in the file's precision
        onnx = EnginePick("onnx", None, device)
        return EngineChoice(onnx, onnx, sigma)
    if device.type not in AUTO_ENGINE:
        raise ValueError(f"unsupported device {device}; use cpu, cuda or mps")
    if precision == "auto":
        row = AUTO_PRECISION[device_kind(device)]
        sampling, exact = row.sampling, row.exact
    else:
        sampling = exact = PRECISIONS[precision]
    return EngineChoice(_pick(source.config, device, sampling, engine),
                        _pick(source.config, device, exact, engine), sigma)


def _pick(config: WaveGlowConfig, device: torch.device, dtype: torch.dtype,
          engine: str) -> EnginePick:
    kind = AUTO_ENGINE[device.type][dtype] if engine == "auto" else engine
    packs = (device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
             and config.hop_length % config.n_group == 0)
    if kind == "packed" and not packs:
        if engine == "packed":
            raise ValueError("the packed engine runs on the CPU in fp32 or bf16, for a hop of "
                             "whole groups; use --engine eager or gpu for this one")
        kind = "eager"  # the packed rows need whole groups of samples per frame
    return EnginePick(kind, dtype, device)


def build_engine(pick: EnginePick, source: WaveGlow | OnnxSource,
                 cache_dir: Path | None = None) -> Engine:
    """Realise ``pick``: from a float32 WaveGlow on the CPU (the packed and GPU engines are
    built from its weights; the eager engine is the module itself, cast and moved, so pass a
    copy where the float32 module must stay), or, for ``onnx``, by opening the exported file
    on the pick's device.  ``cache_dir`` holds ``compiled``'s compiled code."""
    if pick.kind == "onnx" or isinstance(source, OnnxSource):
        if pick.kind != "onnx" or not isinstance(source, OnnxSource):
            raise ValueError(f"a {pick.kind} pick cannot be built from {type(source).__name__}")
        from .onnx import OnnxEngine

        return OnnxEngine(source.path, pick.device)
    assert pick.dtype is not None  # every pick for weights has one
    if pick.kind in ("gpu", "compiled"):
        from .gpu import GpuEngine

        return GpuEngine(source, pick.device, pick.dtype, compile=pick.kind == "compiled",
                         cache_dir=cache_dir)
    if pick.kind == "packed":
        return FastWaveGlow(source, dtype=pick.dtype)
    return EagerEngine(source.to(device=pick.device, dtype=pick.dtype))


def as_engine(model: Engine | WaveGlow) -> Engine:
    """``model`` as an :class:`Engine` (what
    :class:`~waveglow_cli.synthesis.synthesizer.Synthesizer` accepts): an engine is returned as it
    is, a WaveGlow module is run as it is (eager), in its own dtype on its own device, except a
    bfloat16 one on the CPU, where eager bfloat16
    is emulated: that takes the table's engine for bf16 on the CPU (the packed fast path,
    folded from these bfloat16 weights; a checkpoint's engines fold it from float32, which
    is more accurate)."""
    if not isinstance(model, WaveGlow):
        return model
    param = next(model.parameters())
    if param.device.type == "cpu" and param.dtype == torch.bfloat16:
        return build_engine(choose_engine(model, param.device, "bf16").first, model)
    return EagerEngine(model)


__all__ = [
    "AUTO_ENGINE",
    "AUTO_PRECISION",
    "ENGINE_KINDS",
    "PRECISION_NAMES",
    "EngineChoice",
    "EnginePick",
    "ModelSource",
    "SigmaPolicy",
    "as_engine",
    "build_engine",
    "choose_engine",
]
