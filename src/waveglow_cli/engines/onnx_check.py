"""An untrusted ONNX file, checked before onnxruntime (or any allocation) sees it.

An ONNX file is a checkpoint too: every promise :mod:`waveglow_cli.checkpoints.reader` makes holds
for it.  The bytes are read once, from the opened descriptor, up to protobuf's own 2 GiB limit;
the parsed model is then walked generically (every protobuf message it holds: the graph, model-local
functions, training graphs, nodes, attributes, subgraphs nested to any depth, sparse tensors),
so that no tensor escapes the checks wherever it is hidden:

* **nothing outside the file**: a tensor whose data lives elsewhere (``data_location``
  EXTERNAL, or any ``external_data`` entry, or a segment) names a file, or an address, for
  onnxruntime to read; a hostile model would aim it at ``~/.ssh/id_rsa`` and return its bytes as
  audio.  Fields this ``onnx`` package does not know are refused too: onnxruntime might know them;
* **memory by declaration**: a tensor may not declare more data than it stores, and all
  tensors together (sparse ones densified, as onnxruntime densifies them on loading) may not
  declare more than a small multiple of the file's size;
* **architecture by declaration**: the ``waveglow.config`` metadata sizes buffers and loops
  before the graph runs, so each field has a bound far above any published WaveGlow's, and
  the weights it implies must fit in the file (the checkpoint reader's rule).

Each failure is one :class:`~waveglow_cli.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# The checkpoint reader's rule, shared: an architecture whose weights cannot be in the file.
from ..checkpoints.reader import _minimum_weights, _weight_budget
from ..errors import CheckpointError
from ..fileio import open_checked, read_capped
from ..model.waveglow import WaveGlowConfig

#: protobuf refuses to parse a message over 2 GiB; a bigger model must keep its weights in
#: external files, which are refused anyway.
MAX_ONNX_BYTES = (2 << 30) - 1
#: Dense bytes all tensors may declare: this many times the file's size, plus the allowance.
#: A tensor's typed fields store an element in at least one byte (a varint) and it is at most 8
#: once dense (int64); our exports store raw bytes, about 1:1.
DENSE_BYTES_PER_FILE_BYTE = 2
DENSE_ALLOWANCE = 16 << 20
#: Upper bounds of the architecture an ONNX file's metadata may declare (the 256-channel
#: published model: 80 mels, 12 flows, groups of 8, 8 layers, 256 channels, kernel 3, upsampler
#: kernel 1024, hop 256).  Loops and buffers before the graph runs are sized by these.
ARCHITECTURE_LIMITS = {"n_mel_channels": 1024, "n_flows": 64, "n_group": 64,
                       "n_early_every": 1024, "n_early_size": 64, "n_layers": 16,
                       "n_channels": 4096, "kernel_size": 63, "upsample_kernel": 1 << 16,
                       "hop_length": 1 << 16}
#: A synthesis piece carries this many frames of context each side at most (the published
#: model needs 100): it sizes the default piece length.
MAX_CONTEXT_FRAMES = 1 << 14

# Bits per element of each tensor element type (TensorProto.DataType by name, so that an older
# onnx without the newest types still works); STRING is sized by its strings.
_ELEMENT_BITS = {"FLOAT": 32, "UINT8": 8, "INT8": 8, "UINT16": 16, "INT16": 16, "INT32": 32,
                 "INT64": 64, "BOOL": 8, "FLOAT16": 16, "DOUBLE": 64, "UINT32": 32,
                 "UINT64": 64, "COMPLEX64": 64, "COMPLEX128": 128, "BFLOAT16": 16,
                 "FLOAT8E4M3FN": 8, "FLOAT8E4M3FNUZ": 8, "FLOAT8E5M2": 8, "FLOAT8E5M2FNUZ": 8,
                 "UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "FLOAT8E8M0": 8, "UINT2": 2, "INT2": 2,
                 "FLOAT6E2M3": 6, "FLOAT6E3M2": 6}
# Bytes each value of a typed data field takes in memory once parsed (at least its elements'
# dense size: small types are stored one per int32, complex numbers as two values).
_TYPED_FIELD_BYTES = {"float_data": 4, "int32_data": 4, "int64_data": 8, "double_data": 8,
                      "uint64_data": 8}


def read_model_bytes(path: Path) -> bytes:
    """The file's bytes, read from the opened descriptor: a regular file (opened without
    blocking, so a FIFO cannot hang us) of at most :data:`MAX_ONNX_BYTES`."""
    fd, info = open_checked(path, lambda reason: CheckpointError(path, reason))
    try:
        if stat.S_ISDIR(info.st_mode):
            raise CheckpointError(path, "is a directory, not an ONNX model")
        if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
            raise CheckpointError(path, "not a regular file (a FIFO, device or socket)")
        if info.st_size == 0:
            raise CheckpointError(path, "file is empty (an interrupted download?)")
        if info.st_size > MAX_ONNX_BYTES:
            raise CheckpointError(path, f"refused: {info.st_size} bytes is more than a "
                                        "self-contained ONNX model can be (2 GiB)")
        data = read_capped(fd, MAX_ONNX_BYTES)  # a file growing meanwhile is still bounded
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if data is None:
        raise CheckpointError(path, "refused: it grew past 2 GiB while being read")
    return data


def _messages(root: Any, leaf: type) -> Iterator[Any]:
    """Every protobuf message under ``root`` (itself included), depth first, without recursion
    (subgraphs may nest as deep as the parser allows); messages of type ``leaf`` are yielded
    but not entered (a TensorProto holds no tensor, and listing its fields copies its data)."""
    stack = [root]
    while stack:
        message = stack.pop()
        yield message
        if isinstance(message, leaf):
            continue
        for field, value in message.ListFields():
            if field.type != field.TYPE_MESSAGE:
                continue
            if hasattr(value, "ListFields"):  # a singular message field
                stack.append(value)
            else:                             # a repeated one
                stack.extend(value)


def _element_bits(tensor: Any) -> int | None:
    """Bits per element of ``tensor``'s type; None for strings; ValueError for an undefined
    type or one unknown to us."""
    import onnx

    try:
        name = onnx.TensorProto.DataType.Name(tensor.data_type)
    except ValueError:
        name = ""
    if name == "STRING":
        return None
    if name not in _ELEMENT_BITS:
        raise ValueError(f"tensor {tensor.name!r} has an unknown element type "
                         f"({tensor.data_type})")
    return _ELEMENT_BITS[name]


def _elements(dims: Any, what: str) -> int:
    if any(d < 0 for d in dims):
        raise ValueError(f"{what} has a negative dimension ({list(dims)})")
    return math.prod(dims)


def _dense_bytes(tensor: Any) -> int:
    """Bytes ``tensor`` takes once in memory, checked against what it stores: it must be
    entirely inside the file and hold at least the data its shape declares."""
    import onnx

    what = f"tensor {tensor.name!r}" if tensor.name else "a tensor"
    if (tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data)
            or tensor.HasField("segment")):
        raise _OutsideTheFile(what)
    elements = _elements(tensor.dims, what)
    bits = _element_bits(tensor)
    if bits is None:  # strings: as many as declared, each stored in the file
        if len(tensor.string_data) < elements:
            raise ValueError(f"{what} declares {elements} strings but stores "
                             f"{len(tensor.string_data)}")
        return sum(len(s) for s in tensor.string_data)
    dense = (elements * bits + 7) // 8
    stored = len(tensor.raw_data) + sum(
        len(getattr(tensor, name)) * size for name, size in _TYPED_FIELD_BYTES.items())
    if dense > stored:
        raise ValueError(f"{what} declares {elements} elements ({dense} bytes) but stores "
                         f"{stored} bytes")
    return dense


def _has_unknown_fields(message: Any) -> bool:
    """Whether ``message`` carries fields its schema (this onnx package's) does not name."""
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
    except ImportError:  # protobuf < 4.22: the method it had instead
        return len(message.UnknownFields()) > 0
    return len(UnknownFieldSet(message)) > 0


class _OutsideTheFile(Exception):
    """A tensor keeps its data outside the model file."""


def check_model_tensors(path: Path, model: Any, file_size: int) -> None:
    """Refuse ``model`` (parsed from ``path``, ``file_size`` bytes) if any tensor anywhere in
    it is not entirely inside the file, declares more than it stores, or if all of them
    together (sparse tensors densified) declare more than the file can hold."""
    import onnx

    budget = DENSE_BYTES_PER_FILE_BYTE * file_size + DENSE_ALLOWANCE
    declared = 0
    try:
        for message in _messages(model, onnx.TensorProto):
            if _has_unknown_fields(message):
                raise ValueError(f"it has {type(message).__name__} fields this onnx package "
                                 "does not know (a newer format? upgrade onnx)")
            if isinstance(message, onnx.TensorProto):
                declared += _dense_bytes(message)
            elif isinstance(message, onnx.SparseTensorProto):
                # onnxruntime makes it dense on loading: under 1 KB can declare gigabytes.
                bits = _element_bits(message.values) or 8
                declared += (_elements(message.dims, "a sparse tensor") * bits + 7) // 8
            if declared > budget:
                raise ValueError(f"its tensors declare at least {declared} bytes once dense, "
                                 f"more than its {file_size} bytes can hold")
    except _OutsideTheFile as e:
        raise CheckpointError(path, f"refused: {e} keeps its data in external files, outside "
                                    "the model (waveglow export writes one self-contained "
                                    "file)") from None
    except ValueError as e:
        raise CheckpointError(path, f"refused: {e}") from None


class ImplausibleArchitecture(ValueError):
    """The architecture a file's metadata declares is beyond the limits (or its weights)."""


def check_architecture(values: Any) -> WaveGlowConfig:
    """The ``waveglow.config`` metadata as a :class:`WaveGlowConfig`, each field checked
    against :data:`ARCHITECTURE_LIMITS` *before* the config is built (its own checks loop over
    the flows: ``n_flows = 10**9`` took minutes and gigabytes), then its receptive field.
    :class:`ImplausibleArchitecture` for a value beyond a limit, ValueError for one the config
    refuses."""
    if not isinstance(values, Mapping):
        raise ValueError("waveglow.config is not a JSON object")
    for name, limit in ARCHITECTURE_LIMITS.items():
        value = values.get(name)
        if value is None:
            continue  # the default
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name}={value!r} is not a whole number")
        if not 0 <= value <= limit:
            raise ImplausibleArchitecture(f"{name}={value} is outside 0..{limit}")
    if not isinstance(values.get("alternate_halves", False), bool):
        raise ValueError("alternate_halves is not true or false")
    config = WaveGlowConfig.from_dict(dict(values))
    if config.context_frames() > MAX_CONTEXT_FRAMES:
        raise ImplausibleArchitecture(f"its receptive field needs {config.context_frames()} "
                                      f"frames of context, more than {MAX_CONTEXT_FRAMES}")
    return config


def check_weights_fit(config: WaveGlowConfig, max_weight_bytes: int) -> None:
    """The checkpoint reader's rule: the weights ``config`` needs at the least (one byte
    each) must fit in ``max_weight_bytes`` (see :func:`weight_budget`)."""
    if (needed := _minimum_weights(config)) > max_weight_bytes:
        raise ImplausibleArchitecture(
            f"{config.n_channels} channels, {config.n_layers} layers and {config.n_flows} "
            f"flows need at least {needed} bytes of weights, more than the file holds")


def weight_budget(path: Path) -> int:
    """The most weight bytes a file of ``path``'s size can hold (as for checkpoints)."""
    return _weight_budget(path)


__all__ = [
    "ARCHITECTURE_LIMITS",
    "MAX_CONTEXT_FRAMES",
    "MAX_ONNX_BYTES",
    "ImplausibleArchitecture",
    "check_architecture",
    "check_model_tensors",
    "check_weights_fit",
    "read_model_bytes",
    "weight_budget",
]
