"""Read torch's two checkpoint containers ourselves, without ``torch.load``.

``torch.load`` does more than unpickle.  For a legacy file it first tries the torch<=0.3 *tar*
container and extracts members unfiltered (a hard link can chmod any file, a FIFO hangs), and
it compares each pickled module's source with the live class and may write a ``.patch`` file;
for a zip that looks like TorchScript it hands the file to ``torch.jit.load``, which compiles
code from it.  None of that is reachable from here:

* **legacy** (pre-1.6, ``_use_new_zipfile_serialization=False``): magic number, protocol
  version and system info (three small pickles), the main pickle, the pickled list of storage
  keys, then per key an 8-byte little-endian element count and the raw bytes.  Every length is
  checked against what is left of the file before anything is allocated.
* **zip** (1.6+): ``<archive>/data.pkl`` and one stored (uncompressed, 64-byte aligned) record
  ``<archive>/data/<key>`` per storage.  Record sizes and offsets come from the zip directory
  and local headers and are checked against the file; tensors are views of the memory-mapped
  file (copy-on-write, so the file itself can never change), read once when the model copies
  them.
* the torch<=0.3 tar container is refused outright (no published WaveGlow uses it).

Every pickle goes through :class:`waveglow_cli.checkpoints.safe_pickle.SafeUnpickler`.
"""

from __future__ import annotations

import mmap
import struct
import zipfile
from typing import Any, BinaryIO

import torch

from ..errors import ContainerError, RefusedPickle
from .safe_pickle import BoundedReader, StorageRef, StorageType, check_structure, load

# torch.serialization's constants for the legacy stream.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

TAR_REFUSAL = ("tar archive: the torch<=0.3 container is not supported "
               "(no published WaveGlow uses it)")


def is_tar_header(block: bytes) -> bool:
    """Whether ``block`` (a file's first 512 bytes) is a tar header: the POSIX/GNU magic, or
    a valid header checksum (the old v7 format has no magic)."""
    if len(block) < 512:
        return False
    if block[257:262] == b"ustar":
        return True
    field = block[148:156].replace(b"\x00", b" ").strip()
    if not field or any(c not in b"01234567" for c in field):
        return False
    stored = int(field, 8)
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:512])
    return stored == unsigned


def read_torch_file(f: BinaryIO, kind: str) -> tuple[Any, str]:
    """Unpickle the torch file open as ``f`` ('torch-zip' or 'torch-legacy').

    Returns the object (tensors are checked views of the file's bytes) and the container
    name ('zip' or 'legacy').  Raises :class:`ContainerError`, ``EOFError`` for a file that
    ends early, :class:`~waveglow_cli.errors.UnsafeGlobal` /
    :class:`~waveglow_cli.errors.RefusedPickle` for a pickle we will not run."""
    # Copy-on-write: the mapping is writable (torch.frombuffer wants that) but nothing written
    # to it ever reaches the file.
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    if is_tar_header(mm[:512]):
        raise ContainerError(TAR_REFUSAL)
    if kind == "torch-zip":
        obj = _read_zip(f, mm)
        container = "zip"
    else:
        obj = _read_legacy(f, mm)
        container = "legacy"
    check_structure(obj)
    return obj, container


def _storage_type(pid: tuple[Any, ...], length: int) -> StorageType:
    if len(pid) != length or not isinstance(pid[1], StorageType):
        raise RefusedPickle(f"malformed storage reference {str(pid)[:60]!r}")
    return pid[1]


def _element_size(dtype: torch.dtype) -> int:
    return dtype.itemsize


def _file_bytes(mm: mmap.mmap, offset: int, nbytes: int) -> torch.Tensor:
    """``nbytes`` bytes of the file at ``offset`` as a uint8 tensor: a view of the mapping
    where it is aligned (torch aligns zip records to 64 bytes), an aligned copy otherwise."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    view = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=offset)
    return view if offset % 64 == 0 else view.clone()


def _read_bytes(f: BinaryIO, offset: int, nbytes: int) -> torch.Tensor:
    """``nbytes`` bytes of the file at ``offset``, read into a fresh (aligned) tensor: the
    legacy stream packs storages unaligned right after each other, and reading them once
    costs less time and memory than touching them through the mapping and copying."""
    out = torch.empty(nbytes, dtype=torch.uint8)
    if nbytes:
        f.seek(offset)
        if f.readinto(out.numpy()) != nbytes:  # type: ignore[attr-defined]
            raise EOFError("storage data ends early")
    return out


# ---------------------------------------------------------------------------------------------
# zip


def _read_zip(f: BinaryIO, mm: mmap.mmap) -> Any:
    size = len(mm)
    try:
        archive = zipfile.ZipFile(f)
    except zipfile.BadZipFile as e:
        raise ContainerError(f"corrupt zip-format torch file ({e})") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in infos):
        # torch.load would hand this to torch.jit.load, which compiles code from the file.
        raise ContainerError("a TorchScript archive, not a checkpoint (it carries code; "
                             "not supported)")
    pickles = [name for name in infos if name.endswith("data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise ContainerError("zip file without exactly one torch data.pkl (not a torch "
                             "checkpoint)")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = infos.get(prefix + "byteorder")
    if byteorder is not None and bytes(_record(mm, byteorder, size)).strip() not in (b"little",):
        raise ContainerError("a big-endian checkpoint (not supported)")

    def record(info: zipfile.ZipInfo) -> memoryview:
        return _record(mm, info, size)

    def storage(pid: tuple[Any, ...]) -> StorageRef:
        # ('storage', storage_type, key, location, numel)
        storage_type = _storage_type(pid, 5)
        key, numel = pid[2], pid[4]
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise RefusedPickle("malformed storage reference")
        nbytes = numel * _element_size(storage_type.dtype)
        if key not in cache:
            info = infos.get(f"{prefix}data/{key}")
            if info is None:
                raise ContainerError(f"storage {key[:40]!r} has no data record in the zip")
            start = _record_start(mm, info, size)
            if nbytes > info.file_size:
                raise ContainerError(f"storage {key[:40]!r} declares {nbytes} bytes but its "
                                     f"record holds {info.file_size}")
            cache[key] = StorageRef(storage_type.dtype, nbytes, _file_bytes(mm, start, nbytes))
        ref = cache[key]
        if ref.nbytes != nbytes:
            raise RefusedPickle(f"storage {key[:40]!r} declared with two sizes")
        return ref if ref.dtype == storage_type.dtype else StorageRef(
            storage_type.dtype, nbytes, base=ref)

    cache: dict[str, StorageRef] = {}
    data_pkl = infos[pickles[0]]
    start = _record_start(mm, data_pkl, size)
    return load(BoundedReader(mm, start, start + data_pkl.file_size), storage)


def _record_start(mm: mmap.mmap, info: zipfile.ZipInfo, size: int) -> int:
    """Where a stored member's bytes begin, after checking it is stored, unencrypted and
    inside the file (torch writes every record uncompressed)."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise ContainerError(f"zip member {info.filename[:60]!r} is compressed or encrypted "
                             "(torch never writes that)")
    offset = info.header_offset
    header = mm[offset:offset + 30]
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise ContainerError(f"corrupt zip member {info.filename[:60]!r} (bad local header)")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = offset + 30 + name_len + extra_len
    if start + info.file_size > size or info.compress_size != info.file_size:
        raise ContainerError(f"zip member {info.filename[:60]!r} ends past the end of the "
                             "file (truncated download?)")
    return int(start)


def _record(mm: mmap.mmap, info: zipfile.ZipInfo, size: int) -> memoryview:
    start = _record_start(mm, info, size)
    return memoryview(mm)[start:start + info.file_size]


# ---------------------------------------------------------------------------------------------
# legacy


def _read_legacy(f: BinaryIO, mm: mmap.mmap) -> Any:
    size = len(mm)
    reader = BoundedReader(mm)
    if load(reader) != LEGACY_MAGIC:
        raise ContainerError("not a torch checkpoint (a pickle without torch's magic number)")
    if load(reader) != LEGACY_PROTOCOL:
        raise ContainerError("unsupported legacy torch protocol version")
    load(reader)  # system info of the saving machine; the data is little-endian regardless

    # The main pickle.  Its storages' bytes come after it: tensors are made empty now and set
    # onto the bytes once they are read (StorageRef.fill).
    declared: dict[str, StorageRef] = {}

    def storage(pid: tuple[Any, ...]) -> StorageRef:
        # ('storage', storage_type, root_key, location, numel, view_metadata)
        storage_type = _storage_type(pid, 6)
        key, numel, view = pid[2], pid[4], pid[5]
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise RefusedPickle("malformed storage reference")
        nbytes = numel * _element_size(storage_type.dtype)
        if key not in declared:
            # The file must hold the bytes a storage declares: checked before anything exists.
            if nbytes > size:
                raise ContainerError(f"storage {key[:40]!r} declares {nbytes} bytes, more than "
                                     f"the whole file ({size} bytes)")
            declared[key] = StorageRef(storage_type.dtype, nbytes)
        root = declared[key]
        if view is not None:  # torch<1.? pickled views of storages: (key, offset, numel)
            if (not isinstance(view, tuple) or len(view) != 3
                    or not all(isinstance(v, int) and v >= 0 for v in view[1:])):
                raise RefusedPickle("malformed storage view")
            itemsize = _element_size(storage_type.dtype)
            start, length = view[1] * itemsize, view[2] * itemsize
            if start + length > root.nbytes:
                raise RefusedPickle("storage view beyond its storage")
            return StorageRef(storage_type.dtype, length, base=root, start=start)
        if root.nbytes != nbytes:
            raise RefusedPickle(f"storage {key[:40]!r} declared with two sizes")
        return root if root.dtype == storage_type.dtype else StorageRef(
            storage_type.dtype, nbytes, base=root)

    obj = load(reader, storage)
    keys = load(reader)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ContainerError("corrupt legacy torch file (storage key list)")

    # The storage bytes: per key, an 8-byte element count and then the raw data.
    pos = reader.pos
    filled: set[str] = set()
    for key in keys:
        if key not in declared or key in filled:
            raise ContainerError(f"corrupt legacy torch file (storage key {key[:40]!r} is "
                                 "unknown or repeated)")
        ref = declared[key]
        if pos + 8 > size:
            raise EOFError("storage data ends early")
        (count,) = struct.unpack("<q", mm[pos:pos + 8])
        if count * _element_size(ref.dtype) != ref.nbytes:
            raise ContainerError(f"storage {key[:40]!r} holds {count} elements, the pickle "
                                 f"declares {ref.nbytes // _element_size(ref.dtype)}")
        if pos + 8 + ref.nbytes > size:
            raise EOFError("storage data ends early")
        ref.fill(_read_bytes(f, pos + 8, ref.nbytes))
        filled.add(key)
        pos += 8 + ref.nbytes
    missing = set(declared) - filled
    if missing:
        raise ContainerError(f"storage {sorted(missing)[0][:40]!r} has no data in the file")
    return obj
