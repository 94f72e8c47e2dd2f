"""A pickle reader for untrusted checkpoints: it builds data and nothing else.

NVIDIA's ``train.py`` pickles whole modules (``glow.WaveGlow``, ``torch.nn.Conv1d``, the
weight-norm hook ...).  Torch's ``weights_only`` loader refuses those, and the ordinary loader
would import NVIDIA's code and run whatever a file names.  Here every module class a WaveGlow
pickle can name is mapped onto :class:`InertObject`, which only records its pickled state; the
few real callables allowed are plain containers and our own checked tensor rebuilders.  Any
other global is refused with :class:`UnsafeGlobal`, before it is imported.

An allow-list of globals is not enough on its own: pickle's opcodes can also *mutate* what
they are given and *allocate* what they are told.  :class:`SafeUnpickler` is therefore the
pure-Python unpickler with its own copy of the opcode table (the C unpickler cannot override a
single opcode; the global table is never touched), in which

* object state (BUILD, ``__setstate__``) is only ever applied to :class:`InertObject`
  stand-ins, never to a function, a class or any other object (a pickle could otherwise rename
  ``torch._utils._rebuild_tensor_v2`` for the rest of the process);
* NEWOBJ/INST/OBJ instantiate stand-ins only; APPEND/SETITEM/ADDITEMS fill only plain lists,
  dicts and sets;
* every allocation is bounded by the bytes actually in the file: reads past the end fail
  before anything is allocated, ``bytearray`` is only made from bytes, the elements copied by
  allow-listed calls (``list(x)``, ``tuple(x)`` ...) are counted against a budget proportional
  to the pickle's length, and tensors are views of storages whose bytes are in the file, with
  sizes, strides and offsets checked (no stride 0 on a dimension longer than one, no
  overlapping elements, nothing out of bounds);
* tuple nesting (the one structure Python hashes recursively while unpickling) is bounded, and
  :func:`check_structure` bounds nesting and refuses cycles in the finished object, so nothing
  downstream can hit a RecursionError.

Pickles here are small (tensor bytes live outside them), so the pure-Python unpickler costs
milliseconds.  The containers around the pickle (torch's legacy stream and zip archive) are
parsed by :mod:`waveglow_cli.checkpoints.torch_container`, never by ``torch.load``.
"""

from __future__ import annotations

import collections
import io
import mmap
import pickle
import struct
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..errors import RefusedPickle, UnsafeGlobal

# Deepest nesting of containers accepted.  A pickled NVIDIA WaveGlow is about 12 levels deep
# (dict > module > __dict__ > _modules > ModuleList > ... > weight-norm hook).
MAX_DEPTH = 100


class InertObject:
    """Stand-in for a pickled object of an allowed class: keeps the state, runs nothing."""

    type_name = "object"
    init_args: tuple[Any, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.init_args = args
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        # pickle's BUILD: a dict, or (dict, slots) for classes with __slots__.
        if isinstance(state, tuple) and len(state) == 2:
            first, second = state
            if (first is None or isinstance(first, dict)) and (
                    second is None or isinstance(second, dict)):
                state = {**(first or {}), **(second or {})}
        if isinstance(state, dict):
            # Only plain string keys become attributes: a state cannot shadow the class's own
            # names (type_name, init_args, dunders), so the stand-in keeps saying what it is.
            self.__dict__.update({k: v for k, v in state.items()
                                  if isinstance(k, str) and not k.startswith("__")
                                  and k not in ("type_name", "init_args")})
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<inert {type(self).type_name}>"


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


class _NumpyDtype(InertObject):
    """``numpy.dtype(...)`` as pickled: the name now, the byte order later by BUILD.  Kept as a
    stand-in (BUILD only ever touches stand-ins) and turned into a real dtype by
    :func:`_numpy_scalar`, the one place that uses it."""

    type_name = "numpy.dtype"

    def to_dtype(self) -> Any:
        import numpy as np

        name = self.init_args[0] if self.init_args else None
        if not isinstance(name, str) or len(name) > 8:
            raise RefusedPickle("numpy.dtype with an unusable name")
        dtype = np.dtype(name)
        if dtype.kind not in "biufc":  # numbers only: no objects, strings or records
            raise UnsafeGlobal("numpy.dtype")
        state = self.__dict__.get("_state")
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            dtype = dtype.newbyteorder(state[1])
        return dtype


def _numpy_dtype(*args: Any) -> _NumpyDtype:
    return _NumpyDtype(*args)


def _numpy_scalar(dtype: Any, data: Any = b"") -> Any:
    import numpy as np

    if not isinstance(dtype, _NumpyDtype) or not isinstance(data, (bytes, str)):
        raise UnsafeGlobal("numpy.core.multiarray.scalar")
    real = dtype.to_dtype()
    if isinstance(data, str):  # protocol 0-2 pickles of Python 2 era carry latin-1 text
        data = data.encode("latin-1")
    if len(data) != real.itemsize:
        raise RefusedPickle(f"numpy scalar with {len(data)} bytes for a {real.itemsize}-byte dtype")
    return np.frombuffer(data, dtype=real)[0].item()


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor for protocol-0/1 pickles, limited to our stand-ins."""
    if not (isinstance(cls, type) and issubclass(cls, InertObject)) or base is not object:
        raise UnsafeGlobal("copyreg._reconstructor")
    return cls.__new__(cls)


def _no_backend(*args: Any) -> None:
    """torch<=1.0 modules pickled their THNN backend object; it carries nothing we need."""
    return None


def _bytearray(*args: Any) -> bytearray:
    """``bytearray`` as pickles use it: from bytes (or text and an encoding), never a size."""
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if (len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], str)
            and args[1].lower().replace("_", "-") in ("latin-1", "latin1", "ascii", "utf-8")):
        return bytearray(args[0], args[1])
    raise RefusedPickle("bytearray(...) not made from bytes (a pickle may not ask for an "
                        "allocation of a given size)")


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """How protocol-2 pickles spell ``bytes``: ``_codecs.encode(text, 'latin1')``."""
    if (not isinstance(text, str) or not isinstance(encoding, str)
            or encoding.lower().replace("_", "-") not in ("latin-1", "latin1", "utf-8", "ascii")):
        raise UnsafeGlobal("_codecs.encode")
    return text.encode(encoding)


# ---------------------------------------------------------------------------------------------
# Storages and tensors


class StorageType:
    """What a pickle's ``torch.FloatStorage`` (or ``torch.cuda.FloatStorage``) names: a dtype."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
    "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_STORAGE_TYPES = {name: StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()}


class StorageRef:
    """A storage the pickle declares: ``nbytes`` bytes of ``dtype`` elements.

    Its bytes are a 1-D uint8 tensor (``data``: a view of the memory-mapped file, or a copy
    read once), given at creation (zip) or by :meth:`fill` once the pickle is read (the legacy
    stream stores the bytes after the pickle).  Tensors made before that are empty tensors
    set onto the bytes in place when they arrive, so whatever holds them sees the data.  A
    legacy storage *view* is a byte range ``start`` of another storage (``base``)."""

    __slots__ = ("base", "data", "dtype", "nbytes", "pending", "start")

    def __init__(self, dtype: torch.dtype, nbytes: int, data: torch.Tensor | None = None,
                 base: StorageRef | None = None, start: int = 0) -> None:
        self.dtype, self.nbytes, self.data = dtype, nbytes, data
        self.base, self.start = base, start
        self.pending: list[tuple[torch.Tensor, int, tuple[int, ...], tuple[int, ...]]] = []

    def root(self) -> tuple[StorageRef, int]:
        """The storage holding the bytes, and this one's byte offset in it."""
        return (self, 0) if self.base is None else (self.base, self.start)

    def fill(self, data: torch.Tensor) -> None:
        """Give a legacy storage its bytes (exactly ``nbytes`` of them, storage offset 0)."""
        if data.numel() != self.nbytes:
            raise RefusedPickle("storage data does not match its declared size")
        self.data = data
        for tensor, offset, size, stride in self.pending:
            tensor.set_(data.untyped_storage(), offset, size, stride)
        self.pending.clear()

    def __repr__(self) -> str:
        return f"<storage {self.dtype}, {self.nbytes} bytes>"


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > 16:
        raise RefusedPickle(f"tensor {what} is not a short tuple of integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RefusedPickle(f"tensor {what} is not a tuple of integers")
    return tuple(value)


def _itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize


def checked_view(storage: Any, offset: Any, size: Any, stride: Any,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """The tensor a pickle describes, as a view of ``storage``, after checking that every
    element lies inside the storage, no two elements share memory and no stride is 0 on a
    dimension longer than one (which would multiply one stored number into gigabytes)."""
    if not isinstance(storage, StorageRef):
        raise RefusedPickle("tensor rebuilt from something that is not a storage in the file")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise RefusedPickle("tensor size and stride differ in length")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise RefusedPickle("tensor storage offset is not a non-negative integer")
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise RefusedPickle("tensor with a negative size or stride")
    dtype = dtype or storage.dtype
    itemsize = _itemsize(dtype)
    root, start = storage.root()
    if start % itemsize:
        raise RefusedPickle("storage view not aligned to its element size")
    numel = storage.nbytes // itemsize
    if 0 in size:
        if offset > numel:
            raise RefusedPickle("tensor storage offset beyond its storage")
        return torch.empty(size, dtype=dtype)
    dims = sorted((st, sz) for sz, st in zip(size, stride) if sz > 1)
    extent = 0  # the last element's index, relative to the first
    for st, sz in dims:
        if st <= extent:  # stride 0, or elements of this dimension overlap the previous ones
            raise RefusedPickle(f"tensor with overlapping or stride-0 dimensions (size "
                                f"{size}, stride {stride}): it would repeat stored numbers")
        extent += (sz - 1) * st
    if offset + extent >= numel:
        raise RefusedPickle(f"tensor (size {size}, offset {offset}) lies beyond its storage of "
                            f"{numel} elements")
    tensor = torch.empty(0, dtype=dtype)
    offset += start // itemsize
    if root.data is None:
        root.pending.append((tensor, offset, size, stride))
        return tensor
    return tensor.set_(root.data.untyped_storage(), offset, size, stride)


def _no_hooks(hooks: Any) -> None:
    if hooks not in (None, {}) and not (isinstance(hooks, dict) and not hooks):
        raise RefusedPickle("tensor with backward hooks")


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> torch.Tensor:
    return checked_view(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> torch.Tensor:
    _no_hooks(backward_hooks)
    return checked_view(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any,
                       metadata: Any = None) -> torch.Tensor:
    _no_hooks(backward_hooks)
    if not isinstance(dtype, torch.dtype) or dtype not in _STORAGE_DTYPES.values():
        raise RefusedPickle("tensor of an unsupported dtype")
    return checked_view(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = True, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    """A Parameter is kept as the plain tensor (nothing here trains)."""
    if not isinstance(data, torch.Tensor):
        raise RefusedPickle("parameter without tensor data")
    _no_hooks(backward_hooks)
    return data


def _parameter(data: Any = None, requires_grad: bool = True) -> Any:
    """torch 0.4 pickled Parameters as Parameter(data, requires_grad); keep the plain tensor."""
    if data is not None and not isinstance(data, torch.Tensor):
        raise UnsafeGlobal("torch.nn.parameter.Parameter")
    return data


def _real_callables() -> dict[str, Any]:
    table: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set, "builtins.frozenset": frozenset,
        "builtins.dict": dict, "builtins.list": list, "builtins.tuple": tuple,
        "builtins.slice": slice, "builtins.bytearray": _bytearray,
        "copyreg._reconstructor": _reconstructor,
        "_codecs.encode": _codecs_encode,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.nn.backends.thnn._get_thnn_function_backend": _no_backend,
        "torch.nn.parameter.Parameter": _parameter,
        "numpy.core.multiarray.scalar": _numpy_scalar,
        "numpy._core.multiarray.scalar": _numpy_scalar,
        "numpy.dtype": _numpy_dtype,
        # torch's own rebuilders are never called: ours build checked views of file bytes.
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    }
    for dtype_name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8",
                       "int8", "int16", "bool", "float", "half", "double", "long", "int"):
        table[f"torch.{dtype_name}"] = getattr(torch, dtype_name)
    # Python 2 era pickles spell builtins as __builtin__.
    for key in [k for k in table if k.startswith("builtins.")]:
        table["__builtin__." + key.split(".", 1)[1]] = table[key]
    return table


_REAL_CALLABLES: dict[str, Any] = _real_callables()
# What REDUCE may call: the callables above (by identity) and our stand-in classes.
_CALLABLE_IDS = frozenset(id(v) for v in _REAL_CALLABLES.values() if callable(v))


# ---------------------------------------------------------------------------------------------
# The unpickler


class BoundedReader:
    """``buffer[start:end]`` (bytes, or an mmap read up to its end) as a file for the
    unpickler.  Reads are C calls that return at most what is there (a pickle that declares
    more simply ends early), so a declared length never allocates more than the file holds."""

    def __init__(self, buffer: Any, start: int = 0, end: int | None = None) -> None:
        end = len(buffer) if end is None else end
        if isinstance(buffer, mmap.mmap) and end == len(buffer):
            buffer.seek(start)
            self._file: Any = buffer
            self._base = 0
        else:
            data = buffer if (start, end) == (0, len(buffer)) else buffer[start:end]
            self._file = io.BytesIO(bytes(data))
            self._base = start
        self.end = end
        self.read = self._file.read
        self.readline = self._file.readline

    @property
    def pos(self) -> int:
        return int(self._base + self._file.tell())

    def tell(self) -> int:
        return self.pos

    def remaining(self) -> int:
        return self.end - self.pos


_Dispatch = dict[int, Callable[..., None]]
_BASE: _Dispatch = pickle._Unpickler.dispatch
_PLAIN_SETS = (set,)


class SafeUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with a checked copy of its opcode table (see module doc).

    ``persistent_load`` resolves torch's persistent ids ('storage', ...) to
    :class:`StorageRef` (given by the container reader); 'module' ids (legacy files record
    each module class with its source for a consistency check) become the stand-in, their
    source never looked at."""

    dispatch: ClassVar[_Dispatch] = dict(_BASE)

    # The pure-Python unpickler's internals that the opcodes below use.  typeshed's
    # ``_Unpickler`` declares only its public methods; these are annotations alone (no class
    # attributes are made): load() sets the first five on the instance, pop_mark is the base
    # class's method.
    stack: list[Any]
    append: Callable[[Any], None]
    read: Callable[[int], bytes]
    readline: Callable[[], bytes]
    _unframer: Any
    pop_mark: Callable[[], list[Any]]

    def __init__(self, reader: BoundedReader,
                 storage: Callable[[tuple[Any, ...]], StorageRef] | None = None) -> None:
        super().__init__(reader, encoding="utf-8")  # what torch.load decodes Python 2 str with
        self._reader = reader
        self._storage = storage
        # Elements that allow-listed calls may copy (list(x), tuple(x) ...), so repeated copies
        # of one large list cannot grow quadratically: a million, plus four per byte of what is
        # left to read (up to 4 MiB of it; a WaveGlow pickle copies a few thousand).
        self._budget = (1 << 20) + 4 * min(reader.remaining(), 1 << 22)
        self._tuple_heights: dict[int, tuple[Any, int]] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if module in ("torch", "torch.cuda") and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        if full in _REAL_CALLABLES:
            return _REAL_CALLABLES[full]
        if full in _INERT_CLASSES:
            return _STAND_INS[full]
        # The name is the file's text: one printable line in the message, whatever it holds.
        raise UnsafeGlobal(full[:200] if full.isprintable() else ascii(full[:200]))

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] in ("module", b"module"):
            if len(pid) < 2 or not (isinstance(pid[1], type) and issubclass(pid[1], InertObject)):
                raise RefusedPickle("persistent module id without an allowed class")
            return pid[1]
        if isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage") and self._storage:
            return self._storage(pid)
        raise RefusedPickle(f"unsupported persistent id {str(pid)[:40]!r}")

    # -- helpers ----------------------------------------------------------------------------

    def _charge(self, args: tuple[Any, ...]) -> None:
        for arg in args:
            if isinstance(arg, (list, tuple, dict, set, frozenset, str, bytes, bytearray)):
                self._budget -= len(arg)
        if self._budget < 0:
            raise RefusedPickle("the pickle copies more data than it holds (an allocation bomb)")

    def _track_tuple(self, value: Any) -> Any:
        if isinstance(value, tuple):
            heights, height = self._tuple_heights, 1
            for item in value:
                if isinstance(item, tuple) and (entry := heights.get(id(item))) is not None:
                    height = max(height, entry[1] + 1)
            if height > MAX_DEPTH:
                raise RefusedPickle(f"nesting too deep (more than {MAX_DEPTH} levels)")
            # The tuple is kept alive with its height, so that its id stays its own.
            self._tuple_heights[id(value)] = (value, height)
        return value

    # -- opcodes ----------------------------------------------------------------------------

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is collections.OrderedDict and isinstance(state, dict):
            # A state_dict() is an OrderedDict instance carrying '_metadata' (torch's version
            # record): plain instance attributes, none shadowing the class's own names.
            for key, value in state.items():
                if not isinstance(key, str) or hasattr(collections.OrderedDict, key):
                    raise RefusedPickle(f"the pickle sets {str(key)[:40]!r} on an OrderedDict")
                inst.__dict__[key] = value
            return
        if not isinstance(inst, InertObject):
            what = getattr(inst, "__qualname__", None) or type(inst).__name__
            raise RefusedPickle(f"the pickle sets the state of {what!s:.60} (only pickled "
                                "module objects may carry state)")
        # The class's method, never one an earlier state put into the instance's __dict__.
        type(inst).__setstate__(inst, state)
    dispatch[pickle.BUILD[0]] = load_build

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(args, tuple):
            raise RefusedPickle("REDUCE with arguments that are not a tuple")
        if id(func) not in _CALLABLE_IDS and not (
                isinstance(func, type) and issubclass(func, InertObject)):
            raise RefusedPickle(f"the pickle calls {str(func)[:60]!r}, which is not an "
                                "allowed callable")
        self._charge(args)
        self.stack[-1] = self._track_tuple(func(*args))
    dispatch[pickle.REDUCE[0]] = load_reduce

    def _new_stand_in(self, cls: Any, args: Any) -> None:
        if not (isinstance(cls, type) and issubclass(cls, InertObject)):
            raise RefusedPickle(f"the pickle instantiates {str(cls)[:60]!r} directly "
                                "(only pickled module objects may be)")
        self.append(cls(*args) if args else cls.__new__(cls))

    def load_newobj(self) -> None:
        self.stack.pop()  # __new__'s arguments: a stand-in records its state instead
        cls = self.stack.pop()
        self._new_stand_in(cls, ())
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        self.stack.pop()
        self.stack.pop()
        cls = self.stack.pop()
        self._new_stand_in(cls, ())
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        self._new_stand_in(self.find_class(module, name), tuple(self.pop_mark()))
    dispatch[pickle.INST[0]] = load_inst

    def load_obj(self) -> None:
        args = self.pop_mark()
        if not args:
            raise RefusedPickle("OBJ without a class")
        self._new_stand_in(args.pop(0), tuple(args))
    dispatch[pickle.OBJ[0]] = load_obj

    def _ext(self) -> None:
        raise RefusedPickle("the pickle uses the copyreg extension registry")
    dispatch[pickle.EXT1[0]] = _ext
    dispatch[pickle.EXT2[0]] = _ext
    dispatch[pickle.EXT4[0]] = _ext

    def _target(self, kinds: tuple[type, ...], what: str) -> Any:
        target = self.stack[-1]
        if type(target) not in kinds:
            raise RefusedPickle(f"the pickle {what} a {type(target).__name__!s:.40} "
                                "(only plain containers may be filled)")
        return target

    def load_append(self) -> None:
        value = self.stack.pop()
        self._target((list,), "appends to").append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._target((list,), "appends to").extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._target((dict, collections.OrderedDict), "sets items of")[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._target((dict, collections.OrderedDict), "sets items of")
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self) -> None:
        items = self.pop_mark()
        self._target(_PLAIN_SETS, "adds items to").update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_tuple(self) -> None:
        items = self.pop_mark()  # first: it replaces self.stack and self.append
        self.append(self._track_tuple(tuple(items)))
    dispatch[pickle.TUPLE[0]] = load_tuple

    def load_tuple1(self) -> None:
        self.stack[-1] = self._track_tuple((self.stack[-1],))
    dispatch[pickle.TUPLE1[0]] = load_tuple1

    def load_tuple2(self) -> None:
        self.stack[-2:] = [self._track_tuple((self.stack[-2], self.stack[-1]))]
    dispatch[pickle.TUPLE2[0]] = load_tuple2

    def load_tuple3(self) -> None:
        self.stack[-3:] = [self._track_tuple((self.stack[-3], self.stack[-2], self.stack[-1]))]
    dispatch[pickle.TUPLE3[0]] = load_tuple3

    def load_bytearray8(self) -> None:
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self._reader.remaining() + (self._current_frame_left()):
            raise EOFError("BYTEARRAY8 longer than the rest of the file (truncated or hostile)")
        self.append(bytearray(self.read(length)))
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def _current_frame_left(self) -> int:
        frame = getattr(self._unframer, "current_frame", None)
        return len(frame.getbuffer()) - frame.tell() if frame is not None else 0

    def load_next_buffer(self) -> None:
        raise RefusedPickle("the pickle asks for out-of-band buffers")
    dispatch[pickle.NEXT_BUFFER[0]] = load_next_buffer


def load(reader: BoundedReader,
         storage: Callable[[tuple[Any, ...]], StorageRef] | None = None) -> Any:
    """Unpickle one pickle from ``reader`` (which is left just past it)."""
    return SafeUnpickler(reader, storage).load()


def loads(data: bytes) -> Any:
    """Unpickle ``data`` (no persistent ids allowed)."""
    return load(BoundedReader(data))


def check_structure(obj: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a reference cycle or nesting deeper than ``max_depth`` in an unpickled object,
    without recursing (what follows may then walk it recursively)."""
    containers = (list, tuple, dict, set, frozenset, InertObject)
    done: set[int] = set()
    active: set[int] = set()
    # Iterative depth-first walk: (object, depth, children iterator or None)
    stack: list[tuple[Any, int, Any]] = [(obj, 1, None)]
    while stack:
        node, depth, children = stack[-1]
        if children is None:
            if depth > max_depth:
                raise RefusedPickle(f"nesting too deep (more than {max_depth} levels)")
            active.add(id(node))
            if isinstance(node, dict):
                items: Any = [*node.keys(), *node.values()]
            elif isinstance(node, InertObject):
                items = list(node.__dict__.values())
            else:
                items = list(node)
            children = iter([c for c in items if isinstance(c, containers)])
            stack[-1] = (node, depth, children)
        child = next(children, None)
        if child is None:
            stack.pop()
            active.discard(id(node))
            done.add(id(node))
            continue
        if id(child) in active:
            what = (f"a pickled {type(child).type_name}" if isinstance(child, InertObject)
                    else f"a {type(child).__name__}")
            raise RefusedPickle(f"{what} contains itself (a reference cycle)")
        if id(child) not in done:
            stack.append((child, depth + 1, None))
