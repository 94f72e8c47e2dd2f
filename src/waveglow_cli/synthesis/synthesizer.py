"""From mels to audio with a loaded model: noise, exact batching, chunking, denoising.

Exactness: every item's audio is, up to float rounding, what synthesising it alone gives.

* Noise for an item depends only on (seed, the item's key) and is drawn on the CPU in float32
  in the layout :meth:`WaveGlow.infer` takes, in fixed blocks of ``NOISE_BLOCK_STEPS`` grouped
  steps, block ``b`` from a generator seeded by (item seed, ``b``).  So it is indexed by
  position and any slice of it can be drawn alone: the same whatever the device, batch,
  order, chunking or number of workers, and never drawn for a whole long item at once.
* Items of a batch are zero-padded to the longest and masked inside every WN layer (see
  :meth:`WaveGlow.infer`), so padding never leaks through the dilated convolutions; zero mel
  frames after an item's end do not touch its first frames x hop samples.
* Long items are cut into pieces whose inputs carry ``margin`` frames of real context on each
  side.  Each flow's WN sees ``receptive_field_steps`` grouped steps each way, so an edge can
  only change outputs within n_flows x that distance (plus the upsampler's kernel); the margin
  covers it and only the interior of each piece is kept.
* Memory does not grow with an item's length: its mel is read a piece at a time (a
  memory-mapped ``.npy`` stays on disk), its pieces are run in order and :meth:`Synthesizer.stream`
  hands each finished stretch of audio on (denoised piecewise, exactly) instead of assembling
  the whole item."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from ..engines.base import Engine
from ..engines.select import as_engine
from ..model.waveglow import FlowProgress, WaveGlow
from .denoiser import Denoise, StreamingDenoiser
from .noise import noise_seed, noise_steps
from .plans import (
    BatchOptions,
    Piece,
    context_margin,
    plan_batches,
    plan_pieces,
    plan_waves,
)


class MelLike(Protocol):
    """A (n_mels, frames) mel: a numpy array, or a lazily read one (see
    :class:`waveglow_cli.audio.io.LazyMel`) whose ``[:, lo:hi]`` returns those frames."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray: ...


# One step of :meth:`Synthesizer.stream`: (key, the next stretch of the item's audio or the
# exception that failed it, whether this is the item's last event).
Event = tuple[str, "np.ndarray | Exception", bool]

#: Told the samples of audio synthesised so far in one :meth:`Synthesizer.stream` (all its
#: items together), increasing: within a forward pass after each flow, so that even one long
#: file made in one pass shows progress.  A failed batch's audio counts as done (its work is).
AudioProgress = Callable[[int], None]


@dataclass(frozen=True)
class SynthesisOptions:
    sigma: float = 0.6              # NVIDIA's recommended inference sigma (README: -s 0.6)
    seed: int | None = None
    denoiser_strength: float = 0.0  # the reference inference.py's default: no denoising

    def __post_init__(self) -> None:
        if not self.sigma >= 0:
            raise ValueError(f"sigma={self.sigma} must be >= 0")
        if not self.denoiser_strength >= 0:
            raise ValueError(f"denoiser_strength={self.denoiser_strength} must be >= 0")


# ---------------------------------------------------------------------------------------------
# Running


# glibc's mallopt parameter, and the size from which every allocation gets its own mapping.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 64 * 1024**2


def return_freed_memory_promptly() -> bool:
    """Fix glibc's mmap threshold at 64 MiB, so memory settles instead of creeping up.  By
    default glibc raises that threshold each time a large block is freed (up to 32 MiB), so
    which tensors come from the heap, and stay resident once freed, changes as a long
    synthesis goes on (one hour of mel with a tiny model settled ~150 MB higher).  A fixed
    threshold ends that.  It used to be 4 MiB, which gave every activation of a piece its own
    mapping, zeroed page by page on every use: the demo model's CLI synthesis of 1,500 frames
    took 13.0 s against 7.9 s at 64 MiB (7.2 s without the call), and with the 80-mel mini
    model a 40,000-frame mel peaked at 503 MiB against 518 for 2,000 frames (4 MiB: 449/445;
    no call: 530/477; measured 2026-11-30, 2-core EPYC).  Process-wide, so it is called by the
    ``synth`` and ``serve`` commands, not by the library.  Returns whether it took effect
    (glibc only)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


@dataclass
class _Item:
    """One item in flight: its pieces' audio is handed on front to back."""

    key: str
    frames: int
    mel: MelLike
    seed: int
    samples: int                      # frames * hop, whole groups
    ends: dict[int, int]              # piece start frame -> its end frame
    next_frame: int = 0               # output frames [0, next_frame) have been handed on
    held: dict[int, np.ndarray] = field(default_factory=dict)  # finished out of order
    denoiser: StreamingDenoiser | None = None
    closed: bool = False              # its last event was yielded


@dataclass
class _Computed:
    """The audio one stream has synthesised so far, told to ``report`` as it grows: the
    batches finished, plus the fraction of the running batch that its engine reports."""

    report: AudioProgress
    done: int = 0                     # samples of the batches finished
    told: int = 0                     # the last count reported (never told less again)

    def within(self, samples: int, offset: int = 0) -> FlowProgress:
        """The engine's callback for a pass of ``samples`` that starts ``offset`` samples after
        the finished batches (a half of a batch retried in halves starts after the other)."""
        start = self.done + offset
        return lambda fraction: self._tell(start + int(fraction * samples))

    def finish(self, samples: int) -> None:
        self.done += samples
        self._tell(self.done)

    def _tell(self, samples: int) -> None:
        # A batch retried in halves (out of GPU memory) reports its start again: told once.
        if samples > self.told:
            self.told = samples
            self.report(samples)


@dataclass
class Synthesizer:
    """Batched, chunked synthesis of many items, streamed: :meth:`stream` hands on each item's
    audio front to back as its pieces finish; :meth:`run` gives whole items."""

    engine: Engine | WaveGlow  # a WaveGlow is wrapped by engines.select.as_engine
    options: SynthesisOptions = field(default_factory=SynthesisOptions)
    batch: BatchOptions = field(default_factory=BatchOptions)
    denoiser: Denoise | None = None

    def __post_init__(self) -> None:
        self.engine = as_engine(self.engine)
        config = self.config = self.engine.config
        self.margin = context_margin(config)
        # Chunking needs whole grouped steps per frame to slice the noise by frame.
        self.can_chunk = config.hop_length % config.n_group == 0
        self.device, self.dtype = self.engine.device, self.engine.dtype

    def run(self, items: Iterable[tuple[str, MelLike]]
            ) -> Iterator[tuple[str, np.ndarray | Exception]]:
        """``items`` are (key, (n_mels, frames) float32 mel); yields (key, float32 audio of
        frames * hop samples, not clipped) or (key, the exception that failed it)."""
        parts: dict[str, list[np.ndarray]] = {}
        for key, block, done in self.stream(items):
            if isinstance(block, Exception):
                parts.pop(key, None)
                yield key, block
                continue
            parts.setdefault(key, []).append(block)
            if done:
                yield key, np.concatenate(parts.pop(key)).astype(np.float32, copy=False)

    def samples(self, frames: int) -> int:
        """Samples of audio an item of ``frames`` mel frames gives (whole groups)."""
        config = self.config
        return frames * config.hop_length // config.n_group * config.n_group

    def stream(self, items: Iterable[tuple[str, MelLike]], cancelled: Container[str] = (),
               seeds: Mapping[str, int] | None = None,
               progress: AudioProgress | None = None) -> Iterator[Event]:
        """Yields (key, audio block, done) events: each item's blocks in order, ending with
        ``done`` True; a failed item yields (key, exception, True) once instead.  The blocks
        join to exactly what :meth:`run` gives.  Without ``batch.first_piece`` an item's events
        come together (no other item's between its first and last); with it (streaming,
        :func:`plan_waves`) the items' events interleave.  Keys must be unique; ``seeds[key]``,
        where given, is that item's noise seed (else :func:`noise_seed` of the options' seed
        and the key).  Keys in ``cancelled`` (the caller gave up on them) are not computed
        further.  ``progress`` is told the samples synthesised so far (:data:`AudioProgress`);
        without it the engine is called as it always was (no callback)."""
        state: dict[int, _Item] = {}
        whole: list[Piece] = []
        chunked: list[Piece] = []
        first = self.batch.first_piece if self.can_chunk else 0
        for index, (key, mel) in enumerate(items):
            frames = int(mel.shape[1])
            max_frames = self.batch.max_frames if self.can_chunk else max(frames, 1)
            pieces = plan_pieces(index, frames, max_frames, self.margin, first)
            seed = seeds[key] if seeds is not None and key in seeds \
                else noise_seed(self.options.seed, key)
            samples = self.samples(frames)
            item = _Item(key, frames, mel, seed, samples, {p.start: p.end for p in pieces})
            if self.denoiser is not None and self.options.denoiser_strength > 0:
                item.denoiser = StreamingDenoiser(self.denoiser, self.options.denoiser_strength,
                                                  samples, self.device)
            state[index] = item
            (whole if len(pieces) == 1 else chunked).extend(pieces)
        batches = (plan_waves(whole + chunked, self.batch) if first
                   else plan_batches(whole, self.batch)
                   + plan_batches(chunked, self.batch, order="items"))
        computed = None if progress is None else _Computed(progress)
        for batch in batches:
            batch = [p for p in batch
                     if not state[p.item].closed and state[p.item].key not in cancelled]
            if batch:
                yield from self._run_batch(batch, state, computed)

    def _kept_samples(self, batch: list[Piece], state: dict[int, _Item]) -> int:
        """Samples of audio a batch's pieces give (their outputs, without context)."""
        hop = self.config.hop_length
        return sum(max(0, min(p.end * hop, state[p.item].samples) - p.start * hop)
                   for p in batch)

    def _run_batch(self, batch: list[Piece], state: dict[int, _Item],
                   computed: _Computed | None = None) -> Iterator[Event]:
        try:
            outputs = self._infer_with_retry(batch, state, computed)
        except Exception as e:  # noqa: BLE001 - an item's failure must not stop the others
            outputs = [e] * len(batch)
        if computed is not None:
            computed.finish(self._kept_samples(batch, state))
        hop = self.config.hop_length
        for piece, out in sorted(zip(batch, outputs),
                                 key=lambda pair: (pair[0].item, pair[0].start)):
            item = state[piece.item]
            if item.closed:
                continue
            if isinstance(out, Exception):
                item.closed = True
                yield item.key, out, True
                continue
            stop = min(piece.end * hop, item.samples)
            item.held[piece.start] = np.array(
                out[(piece.start - piece.lo) * hop:][:max(0, stop - piece.start * hop)],
                dtype=np.float32)
            yield from self._hand_on(item)

    def _hand_on(self, item: _Item) -> Iterator[Event]:
        """Yield the item's audio that is now complete from the front, in order."""
        while item.next_frame in item.held:
            held = item.held.pop(item.next_frame)
            item.next_frame = item.ends[item.next_frame]
            last = item.next_frame >= item.frames
            block: np.ndarray | None = held
            try:
                if item.denoiser is not None:
                    block = item.denoiser.push(held)
            except Exception as e:  # noqa: BLE001 - this item fails, the others go on
                item.closed = True
                yield item.key, e, True
                return
            if block is not None and (block.size or last):
                yield item.key, block, last
            elif last:
                yield item.key, np.zeros(0, dtype=np.float32), True
            if last:
                item.closed = True

    def _infer_with_retry(self, batch: list[Piece], state: dict[int, _Item],
                          computed: _Computed | None = None, offset: int = 0
                          ) -> list[np.ndarray | Exception]:
        """Run a batch; on CUDA out-of-memory, halve it and try again.  ``offset``: samples of
        its batch before these pieces (the halves' progress follows each other)."""
        flows = None if computed is None else computed.within(self._kept_samples(batch, state),
                                                              offset)
        try:
            return self._infer(batch, state, flows)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(batch) == 1:
                return [MemoryError("out of GPU memory even for a batch of one; "
                                    "lower --max-frames")]
            half = len(batch) // 2
            return (self._infer_with_retry(batch[:half], state, computed, offset)
                    + self._infer_with_retry(batch[half:], state, computed,
                                             offset + self._kept_samples(batch[:half], state)))

    @torch.inference_mode()
    def _infer(self, batch: list[Piece], state: dict[int, _Item],
               progress: FlowProgress | None = None) -> list[np.ndarray | Exception]:
        config = self.config
        longest = max(p.frames for p in batch)
        mel = torch.zeros(len(batch), config.n_mel_channels, longest)
        _, groups, steps = config.noise_shape(len(batch), longest)
        z = torch.zeros(len(batch), groups, steps)
        for row, piece in enumerate(batch):
            item = state[piece.item]
            # Only this piece's frames are read (a memory-mapped mel stays on disk).
            mel[row, :, :piece.frames] = torch.from_numpy(
                np.asarray(item.mel[:, piece.lo:piece.hi], dtype=np.float32))
            _, _, lo = config.noise_shape(1, piece.lo)
            _, _, hi = config.noise_shape(1, piece.hi)
            z[row, :, :hi - lo] = noise_steps(item.seed, groups, lo, hi)
        lengths = torch.tensor([p.frames for p in batch])
        mask_lengths = None if len(batch) == 1 else lengths
        if self.device.type == "cuda":  # page-locked: the copies to the GPU run at full speed
            mel, z = mel.pin_memory(), z.pin_memory()
        if progress is None:  # an engine written before the callback existed still runs
            audio = self.engine.infer(mel, self.options.sigma, z, mask_lengths)
        else:
            audio = self.engine.infer(mel, self.options.sigma, z, mask_lengths,
                                      progress=progress)
        rows = audio.float().cpu().numpy()
        return [rows[row, :p.frames * config.hop_length] for row, p in enumerate(batch)]


def synthesize(engine: Engine | WaveGlow, mel: np.ndarray | torch.Tensor,
               options: SynthesisOptions, key: str = "", denoiser: Denoise | None = None,
               batch: BatchOptions | None = None) -> np.ndarray:
    """One (n_mels, frames) mel -> float32 audio of frames * hop samples (not clipped).
    ``engine`` as for :class:`Synthesizer`."""
    mel_np = mel.detach().cpu().float().numpy() if isinstance(mel, torch.Tensor) else mel
    runner = Synthesizer(engine, options, batch or BatchOptions(), denoiser)
    [(_, audio)] = list(runner.run([(key, np.asarray(mel_np, dtype=np.float32))]))
    if isinstance(audio, Exception):
        raise audio
    return audio
