"""Reading what is synthesised from: a mel file (.npy/.pt), or an audio file whose mel is
computed (copy synthesis), told apart by content.  A mel of another toolkit's convention
(:mod:`waveglow_cli.features.conventions`) is read with its own band count and converted
(:mod:`waveglow_cli.features.melconvert`) before the usual checks."""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from typing import IO, cast

import numpy as np

from ..audio.io import LazyMel, open_input, peek, read_mel, read_mono, sniff, validate_mel
from ..errors import AudioFileError, MelFileError
from .conventions import PRESETS, Convention, load_mel_stats, resolve_convention
from .mel import MelConfig, log_mel_frames
from .melcheck import check_mel_scale
from .melconvert import MelConverter


def audio_to_mel(source: str | os.PathLike[str] | bytes | IO[bytes], config: MelConfig,
                 name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Any audio file (or its bytes, or an open binary file) -> (float32 (n_mels, frames) log
    mel, notes).

    Multi-channel audio is averaged; another sample rate is resampled to ``config``'s.  The
    file is decoded a block at a time and its mel computed a block of frames at a time
    (:func:`~waveglow_cli.audio.io.read_mono`, :func:`~waveglow_cli.features.mel.log_mel_frames`):
    memory is the mono signal and its mel, and audio declaring an absurd rate or more than
    :data:`~waveglow_cli.audio.io.MAX_AUDIO_SECONDS` is refused before it is decoded."""
    if not name:
        name = "<stdin>" if isinstance(source, bytes) else str(getattr(source, "name", source))
    mono, notes = read_mono(source, name, config.sample_rate)
    try:
        mel = log_mel_frames(mono, config)
    except ValueError as e:  # too short to analyse
        raise AudioFileError(name, str(e)) from None
    return mel, notes


def mel_converter(convention: str | os.PathLike[str] | Convention, config: MelConfig,
                  stats: str | os.PathLike[str] | None = None) -> MelConverter:
    """What ``--mel-from CONVENTION [--mel-stats FILE]`` means for a checkpoint whose mel is
    ``config``: a preset name or a TOML file (:func:`conventions.resolve_convention`), and
    the mean-variance statistics to undo (``.h5``/``.npy``).  Bad specs are a UsageError."""
    resolved = (convention if isinstance(convention, Convention)
                else resolve_convention(convention))
    mel_stats = None if stats is None else load_mel_stats(stats, resolved.n_mels)
    return MelConverter(resolved, config, mel_stats)


def load_synthesis_input(source: str | os.PathLike[str] | bytes | IO[bytes], name: str,
                         config: MelConfig, layout: str = "auto", scale: str = "ln", *,
                         lazy: bool = False, converter: MelConverter | None = None
                         ) -> tuple[np.ndarray | LazyMel, list[str]]:
    """A mel file (.npy/.pt) or an audio file (copy synthesis), told apart by content.

    The input is opened once (a FIFO is read once, with a cap; devices are refused).  With
    ``lazy`` a mel comes back as a :class:`LazyMel` that reads frames on demand (a ``.npy`` is
    memory-mapped, never copied whole); audio gives its computed mel.  With ``converter`` a
    mel file is in that converter's convention: it is read with the convention's band count
    (``layout`` as given; ``scale`` is the convention's) and converted whole to ``config``'s
    mel (audio inputs are analysed as usual)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_from(io.BytesIO(bytes(source)), name, config, layout, scale, lazy,
                          converter)
    if hasattr(source, "read"):
        return _load_from(cast(IO[bytes], source), name, config, layout, scale, lazy, converter)
    with open_input(source, name, MelFileError) as f:
        return _load_from(f, name, config, layout, scale, lazy, converter)


def _load_from(f: IO[bytes], name: str, config: MelConfig, layout: str, scale: str, lazy: bool,
               converter: MelConverter | None = None
               ) -> tuple[np.ndarray | LazyMel, list[str]]:
    if sniff(peek(f, name, MelFileError)) == "audio":
        return audio_to_mel(f, config, name)
    if converter is not None and not converter.identity:
        return _converted(f, name, config, layout, converter)
    notes: list[str] = []
    try:
        mel = read_mel(f, name, n_mels=config.n_mels, layout=layout, scale=scale, notes=notes,
                       lazy=True)
    except MelFileError as e:
        raise _with_preset_hint(e) from None
    assert isinstance(mel, LazyMel)
    # The file's own values (before the log-base conversion), a few windows of frames only.
    note = check_mel_scale(name, mel.data, scale, config.clip_min)
    mel.release()
    if note is not None:
        notes.append(note)
    return (mel if lazy else np.asarray(mel)), notes


# read_mel's words for a mel whose band count is not the checkpoint's
_OTHER_BAND_COUNT = re.compile(r"mel has (\d+) channels on its first axis .*; the checkpoint "
                               r"expects \d+$")


def _with_preset_hint(error: MelFileError) -> MelFileError:
    """A mel of another band count than the checkpoint's is most likely another toolkit's:
    the error then names the ``--mel-from`` presets with that many bands."""
    found = _OTHER_BAND_COUNT.match(error.reason)
    if found is None:
        return error
    bands = int(found.group(1))
    presets = [name for name, convention in PRESETS.items() if convention.n_mels == bands]
    how = (" or ".join(f"--mel-from {name}" for name in presets) + f" (the presets with {bands} "
           "bands)" if presets else f"--mel-from FILE.toml (no preset has {bands} bands)")
    return MelFileError(error.path, f"{error.reason}; if it is another toolkit's mel, pass {how}")


def _converted(f: IO[bytes], name: str, config: MelConfig, layout: str,
               converter: MelConverter) -> tuple[np.ndarray, list[str]]:
    """A mel of the converter's convention, read whole and converted to ``config``'s."""
    if converter.target != config:
        raise ValueError("the converter was made for another mel configuration")
    notes: list[str] = []
    n_mels = converter.convention.n_mels
    try:
        lazy = read_mel(f, name, n_mels=n_mels, layout=layout, notes=notes, lazy=True)
        converter.check_length(lazy.shape[1], name)  # before the whole mel is read
        source = np.asarray(lazy)
    except MelFileError as e:  # say whose band count it is: the convention's, not the model's
        expects = f"the checkpoint expects {n_mels}"
        if expects not in e.reason:
            raise
        raise MelFileError(name, e.reason.replace(
            expects, f"mel convention {converter.convention.name} has {n_mels} bands")) from None
    note = converter.check(source, name)
    if note is not None:
        notes.append(note)
    notes += [f"{name}: {text}" for text in converter.notes()]
    return validate_mel(converter(source, name), name, config.n_mels), notes


@dataclass(frozen=True)
class SynthesisInputReader:
    """What a synthesis job loads its items with: (path or open file, display name) ->
    ((n_mels, frames) mel, notes); a mel file stays lazy (only its pieces are ever read).

    With ``converter`` (a :class:`~waveglow_cli.features.melconvert.MelConverter` for
    ``config``, see :func:`mel_converter`) mel files are in that toolkit's convention and are
    converted whole when read; ``scale`` then does not apply (the convention says it).  A mel
    shorter
    than ``context_frames`` (the model's, :meth:`~waveglow_cli.model.waveglow.WaveGlowConfig.
    context_frames`) gets a note: its audio is made, but is all edge."""

    config: MelConfig
    layout: str = "auto"
    scale: str = "ln"
    converter: MelConverter | None = None
    context_frames: int = 0

    def __call__(self, source: str | os.PathLike[str] | IO[bytes], name: str
                 ) -> tuple[np.ndarray | LazyMel, list[str]]:
        mel, notes = load_synthesis_input(source, name, self.config, self.layout, self.scale,
                                          lazy=True, converter=self.converter)
        frames = mel.shape[1]
        if frames < self.context_frames:
            seconds = frames * self.config.hop_length / self.config.sample_rate
            notes.append(f"{name}: only {frames} frame{'s' if frames != 1 else ''} "
                         f"({seconds:.3f} s of audio), fewer than the model's context of "
                         f"{self.context_frames} frames; audio this short is not meaningful")
        return mel, notes
