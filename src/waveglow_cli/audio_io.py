"""Reading mels and audio, writing audio: files or bytes (stdin/stdout), atomically.

Every file is untrusted: the format is sniffed from the content (an HTML page saved as
``.pt`` is named as such), ``.npy`` loads without pickle and ``.pt`` with
``weights_only=True``.  Errors are :class:`MelFileError` / :class:`AudioFileError` naming the
file and the reason.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import AudioFileError, MelFileError, SynthesisError, UsageError

SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au",
                  ".w64", ".caf")
# soundfile formats we write, by file extension
_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


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


def read_bytes(source: str | os.PathLike[str], name: str, error: type,
               limit: int | None = None) -> bytes:
    """The file's bytes (its first ``limit`` only, if given); failures as ``error(name, reason)``."""
    try:
        with open(source, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except IsADirectoryError:
        raise error(name, "is a directory") from None
    except FileNotFoundError:
        raise error(name, "no such file") from None
    except OSError as e:
        raise error(name, f"cannot read: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------
# Mels


MEL_LAYOUTS = ("auto", "CT", "TC")
MEL_SCALES = ("ln", "log10", "db")


def read_mel(source: str | os.PathLike[str] | bytes, name: str | None = None,
             n_mels: int | None = None, layout: str = "CT", scale: str = "ln",
             notes: list[str] | None = None) -> np.ndarray:
    """A mel spectrogram as float32 (n_mels, frames), natural-log magnitude (Tacotron 2).

    ``source`` is a path or the file's bytes (stdin); ``name`` is what errors call it.
    A leading batch axis of size 1 is dropped.  With ``n_mels`` the channel axis must match.
    ``layout`` says which axis holds the channels: CT (channels, time), TC, or auto (transpose
    only when the shape says so unambiguously, with a note).  ``scale`` converts other toolkits'
    log mels to the natural log: log10, or db (20 log10 of the magnitude)."""
    if isinstance(source, bytes):
        data, name = source, name or "<stdin>"
    else:
        name = name or str(source)
        data = read_bytes(source, name, MelFileError)
    if not data:
        raise MelFileError(name, "file is empty")
    kind = sniff(data[:64])
    if kind == "npy":
        array = _load_npy(data, name)
    elif kind == "torch":
        array = _load_torch_tensor(data, name)
    elif kind == "html":
        raise MelFileError(name, "is an HTML page, not a mel spectrogram (a saved web page?)")
    elif kind == "audio":
        raise MelFileError(name, "is an audio file, not a mel spectrogram")
    else:
        raise MelFileError(name, "not a mel spectrogram (expected a .npy array or a torch .pt tensor)")
    if layout not in MEL_LAYOUTS or scale not in MEL_SCALES:
        raise UsageError(f"mel layout must be one of {MEL_LAYOUTS} and scale one of {MEL_SCALES}")
    if array.dtype.kind == "f":
        while array.ndim > 2 and array.shape[0] == 1:
            array = array[0]
        if array.ndim == 2 and (layout == "TC" or (
                layout == "auto" and n_mels is not None
                and array.shape[1] == n_mels and array.shape[0] != n_mels)):
            if layout == "auto" and notes is not None:
                notes.append(f"{name}: mel of shape {array.shape} read as (frames, n_mels) and "
                             "transposed")
            array = array.T
        if scale == "log10":
            array = array * np.float32(math.log(10.0))
        elif scale == "db":
            array = array * np.float32(math.log(10.0) / 20.0)
    return validate_mel(array, name, n_mels)


def _load_npy(data: bytes, name: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise MelFileError(name, "the .npy array holds Python objects; only numeric arrays "
                                     "are accepted") from None
        raise MelFileError(name, f"corrupt or truncated .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise MelFileError(name, f"corrupt or truncated .npy file ({e})") from None


def _load_torch_tensor(data: bytes, name: str) -> np.ndarray:
    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).split("\n")[0]
        raise MelFileError(name, "the .pt file holds more than plain tensors and is not loaded "
                                 f"(weights_only refused it: {first[:120]})") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of untrusted bytes
        raise MelFileError(name, f"corrupt or truncated .pt file ({str(e).splitlines()[0][:120]})") from None
    if isinstance(obj, dict):
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if "mel" in obj and isinstance(obj["mel"], torch.Tensor):
            obj = obj["mel"]
        elif len(tensors) == 1:
            obj = tensors[0]
    if not isinstance(obj, torch.Tensor):
        raise MelFileError(name, f"the .pt file holds a {type(obj).__name__}, not a tensor")
    if obj.is_complex():
        raise MelFileError(name, "the mel tensor is complex; expected real log-magnitudes")
    return obj.detach().cpu().float().numpy() if obj.is_floating_point() else obj.cpu().numpy()


def validate_mel(array: np.ndarray, name: str, n_mels: int | None = None) -> np.ndarray:
    """Check dtype, shape and values; return a C-contiguous float32 (n_mels, frames) copy."""
    if array.dtype.kind != "f":
        raise MelFileError(name, f"mel has dtype {array.dtype}; expected floating point log-mels")
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise MelFileError(name, f"mel has shape {array.shape}; expected (n_mels, frames)")
    if n_mels is not None and array.shape[0] != n_mels:
        if array.shape[1] == n_mels:
            raise MelFileError(name, f"mel has shape {array.shape}: it looks like (frames, n_mels); "
                                     f"expected ({n_mels}, frames), transpose it")
        raise MelFileError(name, f"mel has {array.shape[0]} channels on its first axis (shape "
                                 f"{array.shape}); the checkpoint expects {n_mels}")
    if array.shape[1] == 0:
        raise MelFileError(name, "mel has zero frames")
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
# Audio out


def output_format(path: str | os.PathLike[str], subtype: str) -> str:
    """The soundfile format for ``path`` ('-' means WAV), checking that it takes ``subtype``."""
    if subtype not in SUBTYPES:
        raise UsageError(f"unknown subtype {subtype!r}; choose one of {', '.join(SUBTYPES)}")
    if str(path) == "-":
        return "WAV"
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise UsageError(f"{path}: unsupported output extension {suffix or '(none)'!r}; use .wav or .flac")
    fmt = _FORMATS[suffix]
    if fmt == "FLAC" and subtype not in ("PCM_16", "PCM_24"):
        raise UsageError(f"{path}: FLAC stores PCM_16 or PCM_24, not {subtype}")
    return fmt


def finalize_audio(audio: np.ndarray, name: str, subtype: str) -> np.ndarray:
    """Refuse non-finite samples; clip to [-1, 1] for PCM (never wrap); FLOAT stays as is."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise SynthesisError(name, f"synthesis produced {bad} NaN/inf samples; nothing was written")
    if subtype.startswith("PCM"):
        audio = np.clip(audio, -1.0, 1.0)
    return audio


def encode_audio(audio: np.ndarray, sample_rate: int, subtype: str, fmt: str = "WAV") -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, subtype=subtype, format=fmt)
    return buffer.getvalue()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary file beside ``path``, then rename it into place, so a
    killed run never leaves a truncated file under the final name."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_audio(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int,
                subtype: str = "PCM_16") -> None:
    """Write mono ``audio`` atomically; the format comes from the extension (.wav, .flac)."""
    fmt = output_format(path, subtype)
    data = encode_audio(audio, sample_rate, subtype, fmt)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


# ---------------------------------------------------------------------------------------------
# Audio in


def read_audio(source: str | os.PathLike[str] | bytes, name: str | None = None
               ) -> tuple[np.ndarray, int]:
    """Samples as float32 (channels, samples) and the sample rate, from a file or bytes."""
    import soundfile as sf

    if isinstance(source, bytes):
        data, name = source, name or "<stdin>"
    else:
        name = name or str(source)
        data = read_bytes(source, name, AudioFileError)
    if not data:
        raise AudioFileError(name, "file is empty")
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        kind = sniff(data[:64])
        what = {"html": "an HTML page", "npy": "a .npy array", "torch": "a torch file"}.get(kind)
        reason = f"is {what}, not audio" if what else f"not a readable audio file ({e})"
        raise AudioFileError(name, reason) from None
    if samples.shape[0] == 0:
        raise AudioFileError(name, "audio has zero samples")
    return np.ascontiguousarray(samples.T), int(rate)


def prepare_audio(samples: np.ndarray, rate: int, target_rate: int, name: str
                  ) -> tuple[np.ndarray, list[str]]:
    """(channels, S) float audio -> mono float32 at ``target_rate``, with notes on what changed.

    Channels are averaged; another rate is resampled with soxr's high-quality filter.  Samples
    beyond [-1, 1] (float files) are kept as they are: the mel is defined for them."""
    notes = []
    samples = np.asarray(samples, dtype=np.float32)
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
