"""Training data: audio files from folders and file lists, their headers probed, the seeded
endless stream of (mel, audio) segments, the per-step batches of each rank and the
validation split.

Which file and which segment each batch element gets is a pure function of (seed, step,
rank, position in the batch): file order is a seeded permutation per epoch of the training
files and each segment's offset comes from a generator seeded by its position in that
stream.  Nothing about the data depends on earlier steps, on worker processes or on timing,
so a resumed run sees exactly the batches an uninterrupted run sees.
"""

from __future__ import annotations

import functools
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..audio.io import AUDIO_SUFFIXES, prepare_audio, read_audio
from ..errors import (
    AudioFileError,
    InputFileError,
    TrainingError,
    UsageError,
    WaveGlowError,
    printable,
)
from ..features.mel import MelConfig, mel_spectrogram
from ..fileio import file_kind, open_checked, read_side_file
from .options import TrainOptions

MAX_SKIP_NOTES = 20  # skipped files named one by one; the rest are counted
# A file list is read whole.  64 MiB holds about a million lines of a path and a transcript
# (a Tacotron 2 filelist of LJSpeech is about 1.5 MB); anything larger is no file list.
MAX_FILE_LIST_BYTES = 64 * 1024**2
FILE_LIST_CAP_HINT = "split the list in several files, or give the folders of the audio"


@dataclass(frozen=True)
class AudioFile:
    path: Path
    samples: int          # length at the training sample rate (estimated from the header)


def read_file_list(list_path: Path) -> list[Path]:
    """Paths from a list file: one per line; '#' comments and blank lines ignored; anything
    after a '|' dropped (Tacotron 2 filelists are ``path|transcript``).  Relative paths are
    taken relative to the list's folder, else to the current folder.

    The list is read through the bounded open every side file gets: a name leading to
    ``/dev/zero``, a FIFO or a list beyond :data:`MAX_FILE_LIST_BYTES` is one line, never a
    hang or a read until memory runs out."""
    data = read_side_file(list_path, "training file list", MAX_FILE_LIST_BYTES,
                          too_large=FILE_LIST_CAP_HINT)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{list_path}: neither a folder, an audio file nor a text file list") \
            from None
    paths = []
    for line in text.splitlines():
        line = line.split("|", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line).expanduser()
        if not path.is_absolute():
            beside = list_path.parent / path
            path = beside if beside.exists() or not path.exists() else path
        paths.append(path)
    return paths


def collect_files(specs: Sequence[str]) -> list[Path]:
    """Audio files from folders (recursive), single audio files and file lists, each once.

    A name that is there but is no folder is an audio file by its suffix (:func:`probe`
    checks and skips it if it is no regular file), else a file list (read bounded)."""
    found: list[Path] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("."))
            if not files:
                raise UsageError(f"{spec}: folder holds no audio files "
                                 f"({'/'.join(AUDIO_SUFFIXES)})")
            found += files
        elif not os.path.lexists(path):
            raise UsageError(f"{spec}: no such file or folder")
        elif path.suffix.lower() in AUDIO_SUFFIXES:
            found.append(path)
        else:
            found += read_file_list(path)
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(str(path.resolve()), path)
    return list(unique.values())


def audio_header(path: Path) -> Any:
    """soundfile's header of the audio file ``path`` (nothing decoded), or an
    :class:`AudioFileError` naming it and why.  Opened once, checked by ``fstat`` of what was
    opened (a regular, non-empty file) and parsed from that descriptor: a FIFO or a device
    in the list, or a name swapped for one, is skipped, never waited on."""
    import soundfile as sf

    fd, st = open_checked(path, lambda reason: AudioFileError(path, reason))
    problem = (f"is {file_kind(st.st_mode)}, not a regular file"
               if not stat.S_ISREG(st.st_mode) else "file is empty" if st.st_size == 0 else "")
    if problem:
        os.close(fd)
        raise AudioFileError(path, problem)
    with os.fdopen(fd, "rb") as f:
        try:
            return sf.info(f)
        except Exception:  # noqa: BLE001 - let read_audio name the reason
            f.seek(0)
            read_audio(f, str(path))
            raise AudioFileError(path, "not a readable audio file") from None


def probe(paths: Sequence[Path], mel_config: MelConfig, min_samples: int
          ) -> tuple[list[AudioFile], list[str], list[str]]:
    """(usable files, skip messages, other notes).  Reads headers only; a file that fails
    later, while training, is skipped then."""
    usable, skipped = [], []
    resampled: dict[int, int] = {}
    multichannel = 0
    for path in paths:
        try:
            info = audio_header(path)
            if info.frames <= 0:
                raise AudioFileError(path, "audio has zero samples")
            n = info.frames if info.samplerate == mel_config.sample_rate else int(
                info.frames * mel_config.sample_rate / info.samplerate)
            if n < min_samples:
                raise AudioFileError(path, f"too short: {n} samples at {mel_config.sample_rate} "
                                           f"Hz, fewer than {min_samples} (one STFT window)")
        except (InputFileError, OSError) as e:
            skipped.append(f"skipped {e}" if isinstance(e, InputFileError)
                           else f"skipped {path}: {e}")
            continue
        if info.samplerate != mel_config.sample_rate:
            resampled[info.samplerate] = resampled.get(info.samplerate, 0) + 1
        if info.channels > 1:
            multichannel += 1
        usable.append(AudioFile(path, n))
    notes = [f"{count} file(s) at {rate} Hz are resampled to {mel_config.sample_rate} Hz"
             for rate, count in sorted(resampled.items())]
    if multichannel:
        notes.append(f"{multichannel} multi-channel file(s) are averaged to mono")
    return usable, skipped, notes


def load_mono(path: Path, sample_rate: int) -> np.ndarray:
    """The file as mono float32 at ``sample_rate``: read, downmixed and resampled as
    ``waveglow mel`` does."""
    samples, rate = read_audio(path)
    mono, _ = prepare_audio(samples, rate, sample_rate, str(path))
    return mono


def take_segment(mono: np.ndarray, length: int, start: int) -> np.ndarray:
    """``length`` samples from ``start``; a shorter file is zero-padded at the end (mel2samp)."""
    if mono.size >= length:
        return mono[start:start + length]
    return np.pad(mono, (0, length - mono.size))


class SegmentDataset(torch.utils.data.Dataset):
    """Item ``i`` of an endless, seeded stream of (mel, audio) training segments.

    Stream position ``i`` lies in epoch ``i // N`` at place ``i % N`` of that epoch's seeded
    permutation of the N files; the segment's offset is drawn from a generator seeded by
    (seed, i).  A file that cannot be read (or is too short) when its turn comes is noted,
    remembered, and replaced by the next file of the same permutation."""

    def __init__(self, files: Sequence[AudioFile], mel_config: MelConfig, segment_length: int,
                 seed: int, min_samples: int, note: Callable[[str], None] | None = None) -> None:
        self.files = list(files)
        self.mel_config = mel_config
        self.segment_length = segment_length
        self.seed = seed
        self.min_samples = min_samples
        self.note = note or (lambda text: print(printable(f"note: {text}"), file=sys.stderr))
        self.bad: set[int] = set()

    def __len__(self) -> int:  # the stream is endless; this is one epoch
        return len(self.files)

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a handful of small arrays per dataset
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.files))

    def file_index(self, i: int, attempt: int = 0) -> int:
        n = len(self.files)
        return int(self.permutation(i // n)[(i % n + attempt) % n])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        for attempt in range(len(self.files)):
            index = self.file_index(i, attempt)
            if index in self.bad:
                continue
            try:
                mono = load_mono(self.files[index].path, self.mel_config.sample_rate)
                if mono.size < self.min_samples:
                    raise AudioFileError(self.files[index].path,
                                         f"too short: {mono.size} samples")
            except (WaveGlowError, OSError) as e:
                self.bad.add(index)
                self.note(f"skipped {e} (from now on)")
                continue
            rng = np.random.default_rng([self.seed, 1, i, attempt])
            start = int(rng.integers(0, max(mono.size - self.segment_length, 0) + 1))
            return self.example(take_segment(mono, self.segment_length, start))
        raise TrainingError("none of the training files can be read any more")

    def example(self, segment: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        audio = torch.from_numpy(np.ascontiguousarray(segment, dtype=np.float32))
        return mel_spectrogram(audio, self.mel_config)[0], audio


class StepBatches(torch.utils.data.Sampler):
    """The stream positions of each step's batch for one rank: step ``s`` (1-based) of rank
    ``r`` out of ``W`` takes positions ``((s - 1) W + r) B ... + B - 1``."""

    def __init__(self, first_step: int, last_step: int, batch_size: int, rank: int,
                 world: int) -> None:
        self.first_step, self.last_step = first_step, last_step
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step + 1)

    def __iter__(self) -> Iterator[list[int]]:
        b = self.batch_size
        for step in range(self.first_step, self.last_step + 1):
            start = ((step - 1) * self.world + self.rank) * b
            yield list(range(start, start + b))


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([m for m, _ in items]), torch.stack([a for _, a in items])


def split_validation(files: list[AudioFile], val: str | None, seed: int, mel_config: MelConfig,
                     min_samples: int) -> tuple[list[AudioFile], list[AudioFile], list[str]]:
    """(training files, validation files, notes) for ``--val`` (a fraction or files)."""
    if val is None:
        return files, [], []
    try:
        fraction: float | None = float(val)
    except ValueError:
        fraction = None
    if fraction is not None and not Path(val).exists():
        if not 0 < fraction < 1:
            raise UsageError(f"--val {val}: a fraction must lie strictly between 0 and 1")
        n_val = max(1, round(fraction * len(files)))
        if n_val >= len(files):
            raise UsageError(f"--val {val} leaves no training files ({len(files)} usable)")
        chosen = set(np.random.default_rng([seed, 2]).permutation(len(files))[:n_val].tolist())
        return ([f for i, f in enumerate(files) if i not in chosen],
                [f for i, f in enumerate(files) if i in chosen], [])
    val_files, skipped, notes = probe(collect_files([val]), mel_config, min_samples)
    notes = notes + [f"validation: {text}" for text in skipped]
    val_keys = {str(f.path.resolve()) for f in val_files}
    train = [f for f in files if str(f.path.resolve()) not in val_keys]
    if len(train) < len(files):
        notes.append(f"{len(files) - len(train)} validation file(s) are also in DATA; they are "
                     "left out of training")
    if not val_files:
        raise UsageError(f"--val {val}: no usable validation files")
    return train, val_files, notes


def validation_set(files: Sequence[AudioFile], dataset: SegmentDataset,
                   note: Callable[[str], None]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One fixed segment per validation file: the middle ``segment_length`` samples."""
    examples = []
    for f in files:
        try:
            mono = load_mono(f.path, dataset.mel_config.sample_rate)
        except (WaveGlowError, OSError) as e:
            note(f"validation: skipped {e}")
            continue
        start = max(mono.size - dataset.segment_length, 0) // 2
        examples.append(dataset.example(take_segment(mono, dataset.segment_length, start)))
    return examples


@dataclass
class TrainingData:
    """The training stream and the fixed validation segments of one run."""

    files: list[AudioFile]
    dataset: SegmentDataset
    validation: list[tuple[torch.Tensor, torch.Tensor]]

    def seconds(self) -> float:
        return sum(f.samples for f in self.files) / self.dataset.mel_config.sample_rate


def prepare_data(options: TrainOptions, mel_config: MelConfig, min_samples: int,
                 note: Callable[[str], None]) -> TrainingData:
    """Find and probe the training files, split off the validation files and build the
    stream; what is skipped or changed on the way is passed to ``note``."""
    files, skipped, notes = probe(collect_files(options.data), mel_config, min_samples)
    for text in skipped[:MAX_SKIP_NOTES]:
        note(text)
    if len(skipped) > MAX_SKIP_NOTES:
        note(f"... and {len(skipped) - MAX_SKIP_NOTES} more files skipped")
    if not files:
        raise UsageError(f"no usable training audio in {', '.join(options.data)} "
                         f"({len(skipped)} file(s) skipped)")
    seed = options.run_seed()
    files, val_files, val_notes = split_validation(files, options.val, seed, mel_config,
                                                   min_samples)
    for text in notes + val_notes:
        note(text)
    dataset = SegmentDataset(files, mel_config, options.segment_length, seed, min_samples)
    return TrainingData(files, dataset, validation_set(val_files, dataset, note))
