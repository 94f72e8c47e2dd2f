"""A pickle reader for untrusted checkpoints: an allow-list of globals, module classes inert.

NVIDIA's ``train.py`` pickles whole modules (``glow.WaveGlow``, ``torch.nn.Conv1d``, the
weight-norm hook ...).  Torch's ``weights_only`` loader refuses those, and the ordinary loader
would import NVIDIA's code and run whatever a file names.  Here every module class a WaveGlow
pickle can name is mapped onto :class:`InertObject`, which only records its pickled state; the
few real callables allowed are torch's tensor/storage rebuilders and plain containers.  Any
other global is refused with :class:`UnsafeGlobal`, before it is imported.

We hand torch.load this module as ``pickle_module`` so that torch keeps parsing both of its
containers (the legacy pre-1.6 stream and the zip archive) while every unpickling goes
through :class:`RestrictedUnpickler`.
"""

from __future__ import annotations

import collections
import pickle
import types
from typing import Any

import torch


class UnsafeGlobal(pickle.UnpicklingError):
    """Raised for a global outside the allow-list; ``name`` is 'module.qualname'."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"global '{name}' is not allowed")


class InertObject:
    """Stand-in for a pickled object of an allowed class: keeps the state, runs nothing."""

    type_name = "object"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.init_args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        # pickle's BUILD: a dict, or (dict, slots) for classes with __slots__.
        if isinstance(state, tuple) and len(state) == 2:
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<inert {self.type_name}>"


# Modules NVIDIA's WaveGlow code lived in when pickled (train.py run from the repo root, the
# DeepLearningExamples tree, the torch.hub entry point) and the classes they may name.
_WAVEGLOW_MODULES = ("glow", "glow_old", "model", "waveglow.model", "waveglow.glow",
                     "waveglow.glow_old", "waveglow.arch", "denoiser", "waveglow.denoiser")
_WAVEGLOW_CLASSES = ("WaveGlow", "WN", "Invertible1x1Conv", "WaveGlowLoss", "Denoiser", "STFT")

_INERT_CLASSES: set[str] = {
    *(f"{m}.{c}" for m in _WAVEGLOW_MODULES for c in _WAVEGLOW_CLASSES),
    "torch.nn.modules.conv.Conv1d",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.conv.ConvTranspose1d",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.module.Module",
    "torch.nn.utils.weight_norm.WeightNorm",
    "argparse.Namespace",
}

# One InertObject subclass per allowed class name, so the name survives unpickling.
_STAND_INS: dict[str, type] = {
    name: type(name.rsplit(".", 1)[-1], (InertObject,), {"type_name": name})
    for name in _INERT_CLASSES
}


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor for protocol-0/1 pickles, limited to our stand-ins."""
    if not (isinstance(cls, type) and issubclass(cls, InertObject)) or base is not object:
        raise UnsafeGlobal("copyreg._reconstructor")
    return cls.__new__(cls)


def _numpy_scalar(dtype: Any, data: bytes = b"") -> Any:
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafeGlobal("numpy.core.multiarray.scalar")
    return np.frombuffer(data, dtype=dtype)[0].item() if data else dtype.type(0).item()


def _numpy_dtype(name: Any, *args: Any) -> Any:
    import numpy as np

    dtype = np.dtype(name)
    if dtype.hasobject:
        raise UnsafeGlobal("numpy.dtype")
    return dtype


def _no_backend(*args: Any) -> None:
    """torch<=1.0 modules pickled their THNN backend object; it carries nothing we need."""
    return None


def _parameter(data: Any = None, requires_grad: bool = True) -> Any:
    """torch 0.4 pickled Parameters as Parameter(data, requires_grad); keep the plain tensor."""
    if data is not None and not isinstance(data, torch.Tensor):
        raise UnsafeGlobal("torch.nn.parameter.Parameter")
    return data


def _real_callables() -> dict[str, Any]:
    from torch import _utils

    table: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set, "builtins.frozenset": frozenset,
        "builtins.dict": dict, "builtins.list": list, "builtins.tuple": tuple,
        "builtins.slice": slice, "builtins.bytearray": bytearray,
        "copyreg._reconstructor": _reconstructor,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.nn.backends.thnn._get_thnn_function_backend": _no_backend,
        "torch.nn.parameter.Parameter": _parameter,
        "numpy.core.multiarray.scalar": _numpy_scalar,
        "numpy._core.multiarray.scalar": _numpy_scalar,
        "numpy.dtype": _numpy_dtype,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
                 "_rebuild_parameter", "_rebuild_parameter_with_state"):
        if hasattr(_utils, name):
            table[f"torch._utils.{name}"] = getattr(_utils, name)
    for dtype_name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8",
                       "int8", "int16", "bool", "float", "half", "double", "long", "int"):
        table[f"torch.{dtype_name}"] = getattr(torch, dtype_name)
    # Python 2 era pickles spell builtins as __builtin__.
    for key in [k for k in table if k.startswith("builtins.")]:
        table["__builtin__." + key.split(".", 1)[1]] = table[key]
    return table


_REAL_CALLABLES = _real_callables()


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only allow-listed globals; module classes become inert stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full in _REAL_CALLABLES:
            return _REAL_CALLABLES[full]
        if full in _INERT_CLASSES:
            return _STAND_INS[full]
        raise UnsafeGlobal(full)


def _load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


def _loads(data: bytes, **kwargs: Any) -> Any:
    import io

    return _load(io.BytesIO(data), **kwargs)


# What torch.load needs of a pickle_module: Unpickler, load (and a __name__).
pickle_module = types.ModuleType("waveglow_cli_restricted_pickle")
pickle_module.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
pickle_module.load = _load  # type: ignore[attr-defined]
pickle_module.loads = _loads  # type: ignore[attr-defined]
pickle_module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
