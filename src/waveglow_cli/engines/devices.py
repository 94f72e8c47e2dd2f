"""Devices and precisions by name (``--device``, ``--precision``): which device a name means,
which compute type a precision names, and which kind of device the selection table
(:mod:`waveglow_cli.engines.select`, where ``auto`` is decided) sees."""

from __future__ import annotations

import torch

from .packed import onednn_available


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


#: The compute types one can ask for by name (``--precision``; ``auto`` is the selection
#: table's, :data:`waveglow_cli.engines.select.AUTO_PRECISION`).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16,
                                      "bf16": torch.bfloat16}


def precision_name(dtype: torch.dtype) -> str:
    """``fp32``, ``fp16`` or ``bf16`` for a compute type (torch's own name for any other)."""
    names = {value: name for name, value in PRECISIONS.items()}
    return names.get(dtype, str(dtype).replace("torch.", ""))


def device_kind(device: torch.device) -> str:
    """The kind of device the selection table distinguishes: ``cpu-bf16`` (a CPU that
    multiplies bfloat16 matrices natively, :func:`cpu_has_fast_bf16`), ``cpu``, ``cuda`` or
    ``mps``."""
    if device.type == "cpu":
        return "cpu-bf16" if cpu_has_fast_bf16() else "cpu"
    return device.type
