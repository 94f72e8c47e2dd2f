"""Audio out: mono audio to WAV/FLAC files (atomically, a block at a time) and to streams.

Every sample is checked (NaN/inf fail the item) and PCM is clipped, never wrapped.  WAV is
written by :class:`StreamEncoder` for files and standard output alike, so the two are
byte-identical; FLAC by libsndfile."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SynthesisError, UsageError
from ..fileio import atomic_write

SUBTYPES = ("PCM_16", "PCM_24", "PCM_32", "FLOAT")
# soundfile formats we write, by file extension
_FORMATS = {".wav": "WAV", ".flac": "FLAC"}

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
        raise UsageError(f"{path}: unsupported output extension {suffix or '(none)'!r}; "
                         "use .wav or .flac")
    fmt = _FORMATS[suffix]
    if fmt == "FLAC" and subtype not in ("PCM_16", "PCM_24"):
        raise UsageError(f"{path}: FLAC stores PCM_16 or PCM_24, not {subtype}")
    return fmt


# More than this fraction of an output's samples beyond full scale is worth a note: WaveGlow's
# audio of a natural-log mel hardly ever clips; that of a linear or dB mel clips most samples.
CLIP_NOTE_FRACTION = 0.01


@dataclass
class ClipCount:
    """Samples seen and how many lay beyond full scale (|x| > 1: clipped in PCM, kept in
    FLOAT), counted by :func:`finalize_audio` and :func:`write_audio_blocks` when given one."""

    samples: int = 0
    clipped: int = 0
    pcm: bool = True

    def add(self, audio: np.ndarray, pcm: bool = True) -> None:
        self.samples += int(audio.size)
        self.clipped += int(np.count_nonzero(np.abs(audio) > 1.0))
        self.pcm = pcm

    @property
    def fraction(self) -> float:
        return self.clipped / self.samples if self.samples else 0.0

    def note(self, name: str, threshold: float = CLIP_NOTE_FRACTION) -> str | None:
        """``name: 68% of samples clipped at full scale; ...`` when more than ``threshold``
        of the samples did, else None."""
        if self.fraction <= threshold:
            return None
        share = self.fraction * 100
        percent = f"{share:.0f}%" if share >= 10 else f"{share:.1f}%"
        what = "clipped at full scale" if self.pcm else "beyond full scale (they clip when played)"
        return (f"{name}: {percent} of samples {what}; the mel is probably not a natural-log "
                "Tacotron 2 mel (see --mel-scale)")


def finalize_audio(audio: np.ndarray, name: str, subtype: str,
                   clips: ClipCount | None = None) -> np.ndarray:
    """Refuse non-finite samples; clip to [-1, 1] for PCM (never wrap); FLOAT stays as is.
    With ``clips``, the samples beyond full scale are counted there."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise SynthesisError(name, f"synthesis produced {bad} NaN/inf samples; nothing was written")
    pcm = subtype.startswith("PCM")
    if clips is not None:
        clips.add(audio, pcm)
    if pcm:
        audio = np.clip(audio, -1.0, 1.0)
    return audio


def encode_audio(audio: np.ndarray, sample_rate: int, subtype: str, fmt: str = "WAV") -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, subtype=subtype, format=fmt)
    return buffer.getvalue()


# Standard output's formats: WAV and raw PCM are streamed as the audio is made (the WAV
# header's length is known from the mel); FLAC is encoded whole at the end.
STREAM_FORMATS = ("wav", "raw", "flac")

# subtype -> (WAVE format tag: 1 integer PCM, 3 IEEE float; bits per sample)
_WAV_SAMPLE = {"PCM_16": (1, 16), "PCM_24": (1, 24), "PCM_32": (1, 32), "FLOAT": (3, 32)}
_RIFF_MAX = 0xFFFFFFFF


@dataclass
class StreamEncoder:
    """Mono audio as WAV or raw (headerless little-endian) bytes, a block at a time.

    ``header() + encode(block)... + trailer()`` is a complete file whose header states
    ``samples``, so it can be written to a pipe as the audio is made.  The header is the
    one libsndfile writes (44 bytes; 56 with the ``fact`` chunk of FLOAT, without the
    ``PEAK`` chunk libsndfile adds there: that needs the whole signal and stamps the time,
    so such files were not reproducible); the samples are converted by libsndfile's RAW
    writer, the conversion its WAV writer uses.  So files (:func:`write_audio_blocks`) and
    streams are byte-identical."""

    fmt: str             # "wav" or "raw"
    sample_rate: int
    subtype: str
    samples: int

    def __post_init__(self) -> None:
        if self.fmt not in ("wav", "raw"):
            raise UsageError(f"cannot stream {self.fmt!r}; stream wav or raw")
        if self.subtype not in _WAV_SAMPLE:
            raise UsageError(
                f"unknown subtype {self.subtype!r}; choose one of {', '.join(SUBTYPES)}")

    @property
    def _width(self) -> int:
        return _WAV_SAMPLE[self.subtype][1] // 8

    def header(self) -> bytes:
        if self.fmt == "raw":
            return b""
        tag, bits = _WAV_SAMPLE[self.subtype]
        width = bits // 8
        data = self.samples * width
        fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, tag, 1, self.sample_rate,
                                self.sample_rate * width, width, bits)
        fact = struct.pack("<4sII", b"fact", 4, self.samples) if tag == 3 else b""
        riff = 4 + len(fmt_chunk) + len(fact) + 8 + data + (data & 1)
        return (struct.pack("<4sI4s", b"RIFF", min(riff, _RIFF_MAX), b"WAVE") + fmt_chunk + fact
                + struct.pack("<4sI", b"data", min(data, _RIFF_MAX)))

    def encode(self, block: np.ndarray, name: str, clips: ClipCount | None = None) -> bytes:
        """The block's samples (checked and clipped as :func:`finalize_audio` does)."""
        import soundfile as sf

        audio = finalize_audio(block, name, self.subtype, clips)
        if not audio.size:
            return b""
        buffer = io.BytesIO()
        sf.write(buffer, audio, self.sample_rate, subtype=self.subtype, format="RAW",
                 endian="LITTLE")
        return buffer.getvalue()

    def trailer(self) -> bytes:
        """RIFF chunks are padded to an even size (PCM_24 with an odd number of samples)."""
        return b"\0" if self.fmt == "wav" and self.samples * self._width % 2 else b""


def write_audio(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int,
                subtype: str = "PCM_16", *, overwrite: bool = False) -> None:
    """Write mono ``audio`` atomically; the format comes from the extension (.wav, .flac).

    An existing file is replaced only with ``overwrite`` (else :class:`OutputExistsError`, also
    when another process wrote it meanwhile); see :func:`fileio.atomic_write`."""
    fmt = output_format(path, subtype)
    data = encode_audio(audio, sample_rate, subtype, fmt)
    atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


# ---------------------------------------------------------------------------------------------
# Audio out, a block at a time


def write_audio_blocks(path: str | os.PathLike[str], blocks: Iterable[np.ndarray],
                       sample_rate: int, subtype: str = "PCM_16", *, name: str | None = None,
                       overwrite: bool = False, clips: ClipCount | None = None) -> int:
    """Write mono audio that arrives in ``blocks`` (in order) atomically, one block at a time,
    so a long output is never held whole; returns the number of samples written.

    Each block is checked and clipped as :func:`finalize_audio` does; with ``clips``, the
    samples beyond full scale are counted there (``clips.note(name)`` says when too many
    were).  A block with NaN/inf, or an exception raised by ``blocks``, fails the file: its
    temporary file is removed and nothing is published (see :func:`atomic_write`)."""
    import soundfile as sf

    fmt = output_format(path, subtype)
    name = name or str(path)
    written = 0

    def write_wav(tmp: Path) -> None:  # the StreamEncoder's bytes, as standard output gets them
        nonlocal written
        encoder = StreamEncoder("wav", sample_rate, subtype, 0)
        with open(tmp, "wb") as out:
            out.write(encoder.header())  # rewritten below with the length
            for block in blocks:
                out.write(encoder.encode(block, name, clips))
                written += int(np.size(block))
            encoder.samples = written
            out.write(encoder.trailer())
            out.seek(0)
            out.write(encoder.header())

    def write(tmp: Path) -> None:
        nonlocal written
        with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=1, subtype=subtype,
                          format=fmt) as out:
            for block in blocks:
                out.write(finalize_audio(block, name, subtype, clips))
                written += int(np.size(block))

    atomic_write(path, write_wav if fmt == "WAV" else write, overwrite=overwrite)
    return written
