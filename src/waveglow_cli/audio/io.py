"""Reading mels and audio, writing audio: files or bytes (stdin/stdout), atomically.

Every file is untrusted: the format is sniffed from the content (an HTML page saved as
``.pt`` is named as such), ``.npy`` loads without pickle and ``.pt`` with
``weights_only=True``.  Errors are :class:`MelFileError` / :class:`AudioFileError` naming the
file and the reason.
"""

from __future__ import annotations

import io
import math
import mmap
import os
import pickle
import re
import stat
import tempfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from ..errors import AudioFileError, InputFileError, MelFileError, UsageError
from ..fileio import (
    atomic_write,  # noqa: F401 - the writers' entry point, re-exported
    open_checked,
)
from ..fileio import file_kind as _file_kind
from ..fileio import size_text as _size_text

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs is Python 3.13+

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au",
                  ".w64", ".caf")


def _is_open_file(source: object) -> TypeIs[IO[bytes]]:
    """``source`` is an open binary file (anything with ``read``), not a path or bytes."""
    return hasattr(source, "read")


# ---------------------------------------------------------------------------------------------
# Sniffing


def sniff(data: bytes) -> str:
    """'npy', 'torch', 'html', 'audio' or 'unknown' from a file's first bytes."""
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    if data.startswith(b"PK\x03\x04") or data[:1] == b"\x80":
        return "torch"
    stripped = data.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<!--")):
        return "html"
    if data[:4] in (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM") or data[:3] == b"ID3" \
            or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio"
    return "unknown"


# Standard input and FIFOs have no size to check up front and may never end (``- < /dev/zero``):
# they are copied into an unlinked temporary file as they are read, at most this many bytes
# (2 GiB: a ten-hour 80-mel float32 .npy is 1 GiB).  Anything larger can be a regular file.
PIPE_LIMIT_BYTES = 2 * 1024**3
_COPY_CHUNK = 1 << 20


def spool(stream: IO[bytes], name: str, error: type[InputFileError] = InputFileError,
          limit: int = PIPE_LIMIT_BYTES) -> IO[bytes]:
    """Copy a pipe (stdin, a FIFO) into an unlinked temporary file, refusing more than
    ``limit`` bytes; returns the file, at its start (seekable, memory-mappable)."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 - returned open to the caller
    try:
        total = 0
        while True:
            chunk = stream.read(min(_COPY_CHUNK, limit + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise error(name, f"more than {_size_text(limit)} arrived through a pipe; give "
                                  "an input this large as a regular file")
            out.write(chunk)
        out.seek(0)
        return out
    except OSError as e:
        out.close()
        raise error(name, f"cannot read: {e.strerror or e}") from None
    except BaseException:
        out.close()
        raise


def open_input(source: str | os.PathLike[str], name: str,
               error: type[InputFileError] = InputFileError, *,
               pipe_limit: int = PIPE_LIMIT_BYTES) -> IO[bytes]:
    """Open an input file for reading: a regular file as it is, a FIFO (``<(cmd)``) copied
    to a temporary file with the ``pipe_limit`` cap.  Anything else (``/dev/zero``, a
    terminal, a socket, a folder) is refused.  The check is ``fstat`` of what was opened, so a
    path swapped meanwhile gains nothing; it is opened non-blocking, so a FIFO or a device does
    not block the open itself."""
    fd, info = open_checked(source, lambda reason: error(name, reason))
    try:
        mode = info.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise error(name, f"is {_file_kind(mode)}, not a regular file; give a file (or - "
                              "for standard input)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    if stat.S_ISFIFO(mode):
        # Read from the descriptor already checked (blocking again).  A writer that is
        # already waiting counts; a FIFO opened before any writer comes reads as empty.
        with f:
            return spool(f, name, error, pipe_limit)
    return f


def read_bytes(source: str | os.PathLike[str], name: str, error: type,
               limit: int | None = None) -> bytes:
    """The file's bytes (its first ``limit`` only, if given); failures as ``error(name, reason)``.
    Devices and other special files are refused (see :func:`open_input`)."""
    with open_input(source, name, error) as f:
        try:
            return f.read() if limit is None else f.read(limit)
        except OSError as e:
            raise error(name, f"cannot read: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------
# Mels


MEL_LAYOUTS = ("auto", "CT", "TC")
MEL_SCALES = ("ln", "log10", "db")


# Frames per slice when a mel is scanned for NaN/inf: about 16 MiB of float32 at 80 mels.
_SCAN_VALUES = 1 << 22


class LazyMel:
    """A checked (n_mels, frames) mel that is read a slice at a time: ``mel[:, lo:hi]`` is a
    float32 C-contiguous copy of those frames, with the file's transposition and log-base
    conversion applied to the slice only.  For a ``.npy`` on disk the array is a read-only
    memory map; the pages a slice touched are handed back to the kernel afterwards, so a long
    mel costs neither a copy nor resident memory.  ``np.asarray(mel)`` gives the whole array."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, data: np.ndarray, scale: float = 1.0, mapping: mmap.mmap | None = None
                 ) -> None:
        self.data, self.scale, self.mapping = data, scale, mapping

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    def __getitem__(self, key: Any) -> np.ndarray:
        block = np.asarray(self.data[key])
        if self.scale != 1.0:
            block = block * np.float32(self.scale)  # in the file's precision, as a whole array
        out = np.array(block, dtype=np.float32, order="C")
        self.release()
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:, :]
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def release(self) -> None:
        """Hand the pages read so far back to the kernel (a memory-mapped file only)."""
        if self.mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:  # file-backed and read-only: the pages come back from the page cache
                self.mapping.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass


def read_mel(source: str | os.PathLike[str] | bytes | IO[bytes], name: str | None = None,
             n_mels: int | None = None, layout: str = "CT", scale: str = "ln",
             notes: list[str] | None = None, *, lazy: bool = False) -> np.ndarray | LazyMel:
    """A mel spectrogram as float32 (n_mels, frames), natural-log magnitude (Tacotron 2).

    ``source`` is a path, the file's bytes (stdin) or an open binary file; ``name`` is what
    errors call it.  A leading batch axis of size 1 is dropped.  With ``n_mels`` the channel
    axis must match.  ``layout`` says which axis holds the channels: CT (channels, time), TC,
    or auto (transpose only when the shape says so unambiguously, with a note).  ``scale``
    converts other toolkits' log mels to the natural log: log10, or db (20 log10 of the
    magnitude).  A ``.npy`` header is checked against the file's size before anything is
    allocated.  With ``lazy`` the result is a :class:`LazyMel` (nothing copied: long inputs),
    else an array."""
    if layout not in MEL_LAYOUTS or scale not in MEL_SCALES:
        raise UsageError(f"mel layout must be one of {MEL_LAYOUTS} and scale one of {MEL_SCALES}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "<stdin>"
        mel = _read_mel_from(io.BytesIO(bytes(source)), name, n_mels, layout, scale, notes)
    elif _is_open_file(source):
        name = name or str(getattr(source, "name", "<input>"))
        mel = _read_mel_from(source, name, n_mels, layout, scale, notes)
    else:
        name = name or str(source)
        with open_input(source, name, MelFileError) as f:
            mel = _read_mel_from(f, name, n_mels, layout, scale, notes)
    return mel if lazy else np.asarray(mel)


def peek(f: IO[bytes], name: str, error: type[InputFileError]) -> bytes:
    """The first 64 bytes (to sniff the format), the file left at its start; an empty or
    unreadable file is ``error(name, reason)``."""
    try:
        head = f.read(64)
        f.seek(0)
    except OSError as e:
        raise error(name, f"cannot read: {e.strerror or e}") from None
    if not head:
        raise error(name, "file is empty")
    return head


def _read_mel_from(f: IO[bytes], name: str, n_mels: int | None, layout: str, scale: str,
                   notes: list[str] | None) -> LazyMel:
    head = peek(f, name, MelFileError)
    kind = sniff(head)
    mapping = None
    if kind == "npy":
        array, mapping = _load_npy(f, name)
    elif kind == "torch":
        array = _load_torch_tensor(f, name)
    elif kind == "html":
        raise MelFileError(name, "is an HTML page, not a mel spectrogram (a saved web page?)")
    elif kind == "audio":
        raise MelFileError(name, "is an audio file, not a mel spectrogram")
    else:
        raise MelFileError(
            name, "not a mel spectrogram (expected a .npy array or a torch .pt tensor)")
    array = _mel_shape(array, name, n_mels, layout, notes)
    factor = {"ln": 1.0, "log10": math.log(10.0), "db": math.log(10.0) / 20.0}[scale]
    mel = LazyMel(array, factor, mapping)
    # NaN/inf are refused before synthesis starts, a slice at a time (nothing kept).
    step = max(1, _SCAN_VALUES // max(1, array.shape[0]))
    for lo in range(0, array.shape[1], step):
        if not np.isfinite(mel[:, lo:lo + step]).all():
            raise MelFileError(name, "mel contains NaN or infinite values")
    return mel


def _mel_shape(array: np.ndarray, name: str, n_mels: int | None, layout: str,
               notes: list[str] | None) -> np.ndarray:
    """The (n_mels, frames) view of a float array (no copy), or a named error."""
    if array.dtype.kind != "f":
        raise MelFileError(name, f"mel has dtype {array.dtype}; expected floating point log-mels")
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2 and (layout == "TC" or (
            layout == "auto" and n_mels is not None
            and array.shape[1] == n_mels and array.shape[0] != n_mels)):
        if layout == "auto" and notes is not None:
            notes.append(f"{name}: mel of shape {array.shape} read as (frames, n_mels) and "
                         "transposed")
        array = array.T
    if array.ndim != 2:
        raise MelFileError(name, f"mel has shape {array.shape}; expected (n_mels, frames)")
    if n_mels is not None and array.shape[0] != n_mels:
        if array.shape[1] == n_mels:
            raise MelFileError(name, f"mel has shape {array.shape}: it looks like "
                                     f"(frames, n_mels); expected ({n_mels}, frames), transpose it")
        raise MelFileError(name, f"mel has {array.shape[0]} channels on its first axis (shape "
                                 f"{array.shape}); the checkpoint expects {n_mels}")
    if array.shape[1] == 0:
        raise MelFileError(name, "mel has zero frames")
    return array


def _file_size(f: IO[bytes]) -> int:
    if isinstance(f, io.BytesIO):
        return len(f.getbuffer())
    try:
        return os.fstat(f.fileno()).st_size
    except (OSError, AttributeError, io.UnsupportedOperation):
        position = f.tell()
        size = f.seek(0, os.SEEK_END)
        f.seek(position)
        return size


def _load_npy(f: IO[bytes], name: str) -> tuple[np.ndarray, mmap.mmap | None]:
    """The array of a .npy file, never allocating what its header merely claims.

    The header (parsed by numpy, without pickle) must declare a float array whose bytes the
    file actually holds after it; more bytes than that are ignored, as ``np.load`` does.  On
    disk the data is memory-mapped read-only (nothing is copied); from bytes it is a view."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise MelFileError(name, f".npy format version {version[0]}.{version[1]} is not "
                                     "supported (1.0 and 2.0 are)")
        offset = f.tell()
    except MelFileError:
        raise
    except (ValueError, TypeError, SyntaxError, OSError, EOFError) as e:
        raise MelFileError(name, f"corrupt or truncated .npy header ({str(e)[:160]})") from None
    if dtype.hasobject:
        raise MelFileError(name, "the .npy array holds Python objects; only numeric arrays "
                                 "are accepted")
    if dtype.kind != "f" or dtype.shape or dtype.names:
        raise MelFileError(name, f"mel has dtype {dtype}; expected floating point log-mels")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise MelFileError(name, f"corrupt .npy header: shape {shape}")
    count = math.prod(shape)
    need = count * dtype.itemsize
    held = _file_size(f) - offset
    if need > held:
        raise MelFileError(name, f"truncated or corrupt .npy file: its header declares shape "
                                 f"{shape} of {dtype} ({_size_text(need)}) but the file holds "
                                 f"{_size_text(max(held, 0))} of data")
    order: Literal["C", "F"] = "F" if fortran else "C"
    if count == 0:
        return np.zeros(shape, dtype=dtype, order=order), None
    if isinstance(f, io.BytesIO):
        return np.ndarray(shape, dtype=dtype, buffer=f.getbuffer(), offset=offset,
                          order=order), None
    try:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        f.seek(offset)
        data = f.read(need)
        if len(data) != need:
            raise MelFileError(name, "truncated .npy file") from None
        return np.ndarray(shape, dtype=dtype, buffer=data, order=order), None
    if len(mapping) < offset + need:  # the file shrank since it was measured
        raise MelFileError(name, "truncated .npy file (it changed while being read)")
    return np.ndarray(shape, dtype=dtype, buffer=mapping, offset=offset, order=order), mapping


def _load_torch_tensor(f: IO[bytes], name: str) -> np.ndarray:
    """A dense float tensor from a torch file, as a numpy array (the file is read whole: long
    mels belong in .npy files, which are memory-mapped).  Only plain data is unpickled
    (``weights_only``); zip members must be stored uncompressed (as ``torch.save`` writes them)
    and within the file; the tensor must be dense, strided, floating point and no larger than
    its storage (no stride-0 or overlapping view that would expand a few bytes into gigabytes)."""
    import zipfile

    import torch

    try:
        data = f.read()
    except OSError as e:
        raise MelFileError(name, f"cannot read: {e.strerror or e}") from None
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = archive.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise MelFileError(name, f"corrupt or truncated .pt file ({str(e)[:120]})") from None
        if any(m.compress_type != zipfile.ZIP_STORED for m in members):
            raise MelFileError(name, "the .pt file has compressed members (torch.save stores "
                                     "them uncompressed); refused")
        if sum(m.file_size for m in members) > len(data):
            raise MelFileError(name, "corrupt .pt file: its members claim more bytes than the "
                                     "file holds")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).split("\n")[0]
        raise MelFileError(name, "the .pt file holds more than plain tensors and is not loaded "
                                 f"(weights_only refused it: {first[:120]})") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of untrusted bytes
        text = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise MelFileError(name, f"corrupt or truncated .pt file ({text})") from None
    del data
    if isinstance(obj, dict):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if "mel" in obj and isinstance(obj["mel"], torch.Tensor):
            obj = obj["mel"]
        elif len(tensors) == 1:
            obj = tensors[0]
    if not isinstance(obj, torch.Tensor):
        raise MelFileError(name, f"the .pt file holds a {type(obj).__name__}, not a tensor")
    if obj.layout != torch.strided or obj.is_nested:
        raise MelFileError(name, f"the mel tensor is {str(obj.layout).replace('torch.', '')}; "
                                 "only dense (strided) tensors are accepted")
    if obj.is_complex():
        raise MelFileError(name, "the mel tensor is complex; expected real log-magnitudes")
    if not obj.is_floating_point() or obj.is_quantized:
        raise MelFileError(name, f"mel has dtype {str(obj.dtype).replace('torch.', '')}; "
                                 "expected floating point log-mels")
    held = obj.untyped_storage().nbytes() // max(1, obj.element_size())
    reach = obj.storage_offset() + 1 + sum((n - 1) * s for n, s in zip(obj.shape, obj.stride())) \
        if obj.numel() else 0
    if obj.numel() > held or reach > held:
        raise MelFileError(name, f"the mel tensor of shape {tuple(obj.shape)} is a view that "
                                 f"repeats its storage of {held} values (stride "
                                 f"{tuple(obj.stride())}); refused")
    return obj.detach().float().numpy()


def validate_mel(array: np.ndarray, name: str, n_mels: int | None = None) -> np.ndarray:
    """Check dtype, shape and values; return a C-contiguous float32 (n_mels, frames) array."""
    array = _mel_shape(np.asarray(array), name, n_mels, "CT", None)
    if not np.isfinite(array).all():
        raise MelFileError(name, "mel contains NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


def encode_mel(mel: np.ndarray, fmt: str = "npy") -> bytes:
    """A float32 mel as .npy bytes, or as a torch tensor file (what NVIDIA's inference.py reads)."""
    mel = np.ascontiguousarray(mel, dtype=np.float32)
    buffer = io.BytesIO()
    if fmt == "npy":
        np.save(buffer, mel, allow_pickle=False)
    elif fmt == "pt":
        import torch

        torch.save(torch.from_numpy(mel), buffer)
    else:
        raise UsageError(f"unknown mel format {fmt!r}; use npy or pt")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Audio in


# Decoded audio is bounded by what its header declares, checked before a sample is decoded: a
# 60 KB WAV declaring 1 Hz was resampled to 5.4 GB, a 657 KB FLAC of an hour of 8-channel
# silence decoded to 5.1 GB.  Rates outside these bounds are no audio anyone records.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000
# The longest audio a whole-file command (mel, copy synthesis, score, compare, plot) reads:
# one hour, i.e. MAX_AUDIO_SECONDS * the model's rate samples after resampling (79.4 million
# at 22.05 kHz: 318 MB of float32 mono; decoding itself goes a block at a time).
MAX_AUDIO_SECONDS = 3600
# Samples x channels decoded at a time (4 MiB of float32).
_DECODE_BLOCK_VALUES = 1 << 20
# libsndfile's "length unknown" (SF_COUNT_MAX) and anything near it says nothing.
_UNKNOWN_FRAMES = 1 << 62
_T = TypeVar("_T")


def read_audio(source: str | os.PathLike[str] | bytes | IO[bytes], name: str | None = None, *,
               max_seconds: float = MAX_AUDIO_SECONDS) -> tuple[np.ndarray, int]:
    """Samples as float32 (channels, samples) and the sample rate, from a file, its bytes or an
    open binary file.  Devices and other special files are refused (see :func:`open_input`),
    and so is, from its header before anything is decoded, a rate outside
    [:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`] or more than ``max_seconds`` of audio.
    Commands read through :func:`read_mono`, which never holds all channels at once."""
    return _with_input(source, name, lambda f, label: _read_audio_from(f, label, max_seconds))


def read_mono(source: str | os.PathLike[str] | bytes | IO[bytes], name: str | None,
              target_rate: int, *, max_seconds: float = MAX_AUDIO_SECONDS
              ) -> tuple[np.ndarray, list[str]]:
    """Audio as float32 mono at ``target_rate``, with notes on what changed (what
    :func:`read_audio` then :func:`prepare_audio` give, sample for sample), decoded a block at
    a time: channels are averaged and the rate converted (soxr's HQ filter, as a stream) block
    by block, so neither all channels nor the source rate's samples exist at once.

    Refused with one line naming the file, from the header before a sample is decoded: a rate
    outside [:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`] or more than ``max_seconds``
    of audio (a header that under-declares is caught while decoding, at the same bound)."""
    def decode(f: IO[bytes], label: str) -> tuple[np.ndarray, list[str]]:
        with _open_sound(f, label) as sound:
            _check_header(sound, label, max_seconds)
            return _decode_mono(sound, label, target_rate, max_seconds)

    return _with_input(source, name, decode)


def _with_input(source: str | os.PathLike[str] | bytes | IO[bytes], name: str | None,
                read: Callable[[IO[bytes], str], _T]) -> _T:
    """``read(open binary file, name)`` on a path (devices refused), bytes or an open file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return read(io.BytesIO(bytes(source)), name or "<stdin>")
    if _is_open_file(source):
        return read(source, name or str(getattr(source, "name", "<input>")))
    name = name or str(source)
    with open_input(source, name, AudioFileError) as f:
        return read(f, name)


def _open_sound(f: IO[bytes], name: str) -> Any:
    """A soundfile.SoundFile on ``f`` (its header parsed, nothing decoded), or a named error."""
    import soundfile as sf

    head = peek(f, name, AudioFileError)
    try:
        return sf.SoundFile(f)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        raise _not_audio(name, head, e) from None


def _not_audio(name: str, head: bytes, error: Exception) -> AudioFileError:
    kind = sniff(head)
    what = {"html": "an HTML page", "npy": "a .npy array", "torch": "a torch file"}.get(kind)
    return AudioFileError(name, f"is {what}, not audio" if what else
                          f"not a readable audio file ({_soundfile_reason(error)})")


def _duration_text(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h" if seconds >= 3600 else f"{seconds:.4g} s"


def _check_header(sound: Any, name: str, max_seconds: float) -> None:
    """Refuse, from the header alone, a rate no audio has or more than ``max_seconds``."""
    rate, frames = int(sound.samplerate), int(sound.frames)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioFileError(name, f"declares a sample rate of {rate} Hz; audio from "
                                   f"{MIN_SAMPLE_RATE // 1000} kHz to "
                                   f"{MAX_SAMPLE_RATE // 1000} kHz is accepted")
    if sound.channels < 1:
        raise AudioFileError(name, f"declares {sound.channels} channels")
    if frames < _UNKNOWN_FRAMES and frames > max_seconds * rate:
        raise AudioFileError(name, f"lasts {_duration_text(frames / rate)} ({frames} frames at "
                                   f"{rate} Hz); at most {_duration_text(max_seconds)} of audio "
                                   "is read at once")


def _read_audio_from(f: IO[bytes], name: str, max_seconds: float) -> tuple[np.ndarray, int]:
    import soundfile as sf

    with _open_sound(f, name) as sound:
        _check_header(sound, name, max_seconds)
        rate, channels = int(sound.samplerate), int(sound.channels)
        # All channels at the file's rate are kept here: at most 1 GiB of float32.
        limit = min(int(max_seconds * rate), _MAX_DECODED_VALUES // channels)
        if limit < sound.frames < _UNKNOWN_FRAMES:
            raise AudioFileError(name, f"{sound.frames} frames x {channels} channels are more "
                                       "than is decoded at once")
        blocks, total = [], 0
        while True:
            try:
                block = sound.read(min(limit + 1 - total, _DECODE_BLOCK_VALUES // channels + 1),
                                   dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
                raise AudioFileError(name, "not a readable audio file "
                                           f"({_soundfile_reason(e)})") from None
            if block.shape[0] == 0:
                break
            blocks.append(block)
            total += block.shape[0]
            if total > limit:
                raise AudioFileError(name, "holds more than its header declares, beyond "
                                           f"{_duration_text(max_seconds)} of audio")
    if total == 0:
        raise AudioFileError(name, "audio has zero samples")
    return np.ascontiguousarray(np.concatenate(blocks).T), rate


# read_audio keeps every channel at the file's rate: at most this many values (1 GiB).
_MAX_DECODED_VALUES = 1 << 28


class _MonoBuffer:
    """Float32 samples appended block by block into one array, never beyond ``limit``."""

    def __init__(self, expected: int, limit: int, name: str, max_seconds: float) -> None:
        self.data = np.empty(max(0, min(expected, limit)), dtype=np.float32)
        self.size, self.limit, self.name, self.max_seconds = 0, limit, name, max_seconds

    def append(self, block: np.ndarray) -> None:
        if not np.isfinite(block).all():
            raise AudioFileError(self.name, "audio contains NaN or infinite samples")
        end = self.size + block.size
        if end > self.limit:
            raise AudioFileError(self.name, "holds more than its header declares, beyond "
                                            f"{_duration_text(self.max_seconds)} of audio")
        if end > self.data.size:
            grown = np.empty(min(self.limit, max(end, self.data.size * 3 // 2 + (1 << 16))),
                             dtype=np.float32)
            grown[:self.size] = self.data[:self.size]
            self.data = grown
        self.data[self.size:end] = block
        self.size = end

    def result(self) -> np.ndarray:
        if self.size == 0:
            raise AudioFileError(self.name, "audio has zero samples")
        if self.size >= self.data.size - self.data.size // 8:
            return self.data[:self.size]
        return self.data[:self.size].copy()  # the header over-declared: give the rest back


def _decode_mono(sound: Any, name: str, target_rate: int, max_seconds: float
                 ) -> tuple[np.ndarray, list[str]]:
    import soundfile as sf

    rate, channels, frames = int(sound.samplerate), int(sound.channels), int(sound.frames)
    notes = []
    if channels > 1:
        notes.append(f"{name}: {channels} channels averaged to mono")
    stream = None
    if rate != target_rate:
        import soxr

        notes.append(f"{name}: resampled from {rate} Hz to {target_rate} Hz")
        stream = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")
    ratio = target_rate / rate
    expected = math.ceil(frames * ratio) + 1 if frames < _UNKNOWN_FRAMES else 1 << 20
    out = _MonoBuffer(expected, math.ceil(max_seconds * target_rate) + 1, name, max_seconds)
    block_frames = max(1, _DECODE_BLOCK_VALUES // max(channels, math.ceil(ratio)))
    while True:
        try:
            block = sound.read(block_frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
            raise AudioFileError(name, "not a readable audio file "
                                       f"({_soundfile_reason(e)})") from None
        if block.shape[0] == 0:
            break
        # (channels, frames) then the mean over axis 0: the very arithmetic of prepare_audio.
        mono = block[:, 0] if channels == 1 else np.ascontiguousarray(block.T).mean(axis=0)
        out.append(mono if stream is None else stream.resample_chunk(mono))
    if stream is not None:
        out.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return out.result(), notes


# What soundfile puts in its messages for an open file: "<_io.BytesIO object at 0x7f..>",
# "<_io.BufferedReader name=3>" (the error already names the file).
_OBJECT_REPR = re.compile(r"<[\w.]+(?: object at 0x[0-9a-fA-F]+| name=[^>]*)>")


def _soundfile_reason(error: Exception) -> str:
    """libsndfile's own reason ("Format not recognised.", "Error in WAV file. No 'data' chunk
    marker."), never the repr of the file object soundfile read from."""
    reason = str(getattr(error, "error_string", "") or "").strip()
    if not reason:
        text = _OBJECT_REPR.sub("", str(error))
        reason = text.replace("Error opening :", "").strip(" :") or type(error).__name__
    return reason.rstrip(".")


def prepare_audio(samples: np.ndarray, rate: int, target_rate: int, name: str
                  ) -> tuple[np.ndarray, list[str]]:
    """(channels, S) float audio -> mono float32 at ``target_rate``, with notes on what changed.

    Channels are averaged; another rate is resampled with soxr's high-quality filter.  Samples
    beyond [-1, 1] (float files) are kept as they are: the mel is defined for them."""
    notes = []
    samples = np.asarray(samples, dtype=np.float32)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE \
            or samples.shape[-1] * target_rate / rate > MAX_AUDIO_SECONDS * target_rate:
        raise AudioFileError(name, f"{samples.shape[-1]} samples at {rate} Hz are refused: "
                                   f"audio from {MIN_SAMPLE_RATE // 1000} to "
                                   f"{MAX_SAMPLE_RATE // 1000} kHz and at most "
                                   f"{_duration_text(MAX_AUDIO_SECONDS)} is accepted")
    if samples.ndim == 2 and samples.shape[0] > 1:
        notes.append(f"{name}: {samples.shape[0]} channels averaged to mono")
        mono = samples.mean(axis=0)
    else:
        mono = samples.reshape(-1)
    if rate != target_rate:
        import soxr

        notes.append(f"{name}: resampled from {rate} Hz to {target_rate} Hz")
        mono = soxr.resample(mono, rate, target_rate, quality="HQ").astype(np.float32)
    if not np.isfinite(mono).all():
        raise AudioFileError(name, "audio contains NaN or infinite samples")
    return np.ascontiguousarray(mono), notes
