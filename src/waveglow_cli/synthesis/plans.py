"""Plans: which frames each forward pass computes (pieces with context margins, batches).

Items of a batch are zero-padded to the longest and masked inside every WN layer, so padding
never leaks through the dilated convolutions; long items are cut into pieces whose inputs
carry ``margin`` frames of real context on each side, and only the interior of each piece is
kept (see :func:`plan_pieces`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from ..model.waveglow import WaveGlowConfig

# Audio frames in an item's first piece when it is synthesised front to back (one input to
# ``synth``, a request to ``serve``): 32 frames is 0.37 s at 22.05 kHz, whose synthesis takes a
# fraction of a second on the CPU with the demo model; the pieces then double in size.
FIRST_PIECE_FRAMES = 32


@dataclass(frozen=True)
class BatchOptions:
    batch_size: int = 8          # items (or pieces) per forward pass
    max_frames: int = 2048       # longest piece, context included (bounds memory per item)
    batch_frames: int = 16384    # padded frames per batch (the memory budget)
    first_piece: int = 0         # > 0: items go front to back in growing pieces (see plan_pieces)

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_frames", "batch_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.first_piece < 0:
            raise ValueError(f"first_piece={self.first_piece} must be >= 0")

    @classmethod
    def for_device(cls, device: torch.device | str, config: WaveGlowConfig, *,
                   batch_size: int = 8, max_frames: int | None = None,
                   batch_frames: int | None = None, first_piece: int = 0) -> BatchOptions:
        """The defaults of ``synth`` and ``serve`` for a device.  On the CPU one piece of 1024
        frames at a time: the upsampled mel alone is M x hop floats per frame (80 KiB at 80
        mels), so a GPU-sized batch (16384 frames) would take gigabytes of RAM.  Never below 4
        context margins, so a model with a wide receptive field still has room for the piece
        itself.  A ``max_frames`` below 3 margins is a :class:`UsageError`."""
        from ..errors import UsageError

        on_cpu = torch.device(device).type == "cpu"
        margin = context_margin(config)
        if max_frames is None:
            max_frames = max(1024 if on_cpu else 2048, 4 * margin)
        if batch_frames is None:
            batch_frames = max_frames if on_cpu else max(16384, max_frames)
        # A model whose hop is not a whole number of groups is synthesised whole (no pieces).
        if config.hop_length % config.n_group == 0 and max_frames < 3 * margin:
            raise UsageError(f"--max-frames {max_frames} is too small for this checkpoint: the "
                             f"minimum is {3 * margin} frames (3 x its {margin}-frame context "
                             "margin)")
        return cls(batch_size=batch_size, max_frames=max_frames, batch_frames=batch_frames,
                   first_piece=first_piece)


def context_margin(config: WaveGlowConfig) -> int:
    """Frames of context a piece needs on each side for its interior to be exact
    (:meth:`WaveGlowConfig.context_frames`)."""
    return config.context_frames()


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class Piece:
    """Output frames [start, end) of item ``item``, computed from input frames [lo, hi)."""

    item: int
    start: int
    end: int
    lo: int
    hi: int

    @property
    def frames(self) -> int:
        return self.hi - self.lo


#: How much larger each piece of a stream is than the one before (up to the largest that fits).
PIECE_GROWTH = 4


def plan_pieces(item: int, frames: int, max_frames: int, margin: int, first: int = 0
                ) -> list[Piece]:
    """An item's pieces: output frames [start, end) each computed from [lo, hi), the output
    plus up to ``margin`` frames of context on each side (none beyond the item's ends), so
    that joined they equal the item's whole synthesis to float rounding.

    Without ``first`` (files): one piece when the item fits ``max_frames``, else as few pieces
    as ``max_frames`` allows (every boundary costs 2 x ``margin`` frames of extra work; the
    first and last pieces need context on one side only, so they are the longest).

    With ``first`` > 0 (streams): the first piece has ``first`` frames of audio, so it is ready
    early; each next one is ``PIECE_GROWTH`` times larger, up to the largest that fits, and
    the rest is taken in one piece as soon as it fits and is at most twice the size the next
    piece would have: few boundaries, each with ``2 x margin`` frames of extra work."""
    if frames <= max_frames and (first <= 0 or frames <= first):
        return [Piece(item, 0, frames, 0, frames)]
    core = max_frames - 2 * margin
    if core < margin:
        raise ValueError(f"max_frames={max_frames} is too small for chunking: it must be at least "
                         f"{3 * margin} frames (3 x the {margin}-frame context margin)")
    pieces: list[Piece] = []
    start, size = 0, (min(first, core) if first > 0 else max_frames - margin)
    while start < frames:
        rest = frames - start
        fits = rest <= max_frames - (margin if start > 0 else 0)  # the last: no right margin
        if first <= 0:
            take = rest if fits else size
        elif not pieces:
            take = min(rest, size)  # a stream's first piece stays small, whatever would fit
        else:
            take = rest if fits and rest <= 2 * size else size
        end = start + take
        pieces.append(Piece(item, start, end, max(0, start - margin), min(frames, end + margin)))
        start = end
        size = core if first <= 0 else min(PIECE_GROWTH * size, core)
    return pieces


#: The orders :func:`plan_batches` takes pieces in: ``longest`` first (the fewest padded
#: frames: whole items of a folder), or ``items``: by (item, start), so that each item's audio
#: completes front to back and only a batch's worth of a long item is ever held.
BatchOrder = Literal["longest", "items"]
_ORDER_KEYS: dict[str, Callable[[Piece], tuple[int, ...]]] = {
    "longest": lambda p: (-p.frames, p.item, p.start),
    "items": lambda p: (p.item, p.start),
}


def plan_batches(pieces: list[Piece], options: BatchOptions,
                 order: BatchOrder = "longest") -> list[list[Piece]]:
    """The pieces in ``order`` (:data:`BatchOrder`), consecutive ones grouped greedily while
    the batch stays within both limits (its size, and its longest piece's frames times its
    size)."""
    batches: list[list[Piece]] = []
    longest = 0  # of the last batch
    for piece in sorted(pieces, key=_ORDER_KEYS[order]):
        if batches:
            batch = batches[-1]
            wider = max(longest, piece.frames)
            if len(batch) < options.batch_size and wider * (len(batch) + 1) <= options.batch_frames:
                batch.append(piece)
                longest = wider
                continue
        batches.append([piece])
        longest = piece.frames
    return batches


def plan_waves(pieces: list[Piece], options: BatchOptions) -> list[list[Piece]]:
    """Streaming order: the first pieces of all items (whole items among them), batched as
    :func:`plan_batches` does, then all second pieces, and so on.  Each item's audio completes
    front to back, every item's first audio comes from the first batches, and no batch holds
    two pieces of one item (they would only finish together)."""
    ranks: dict[int, int] = {}
    waves: dict[int, list[Piece]] = {}
    for piece in sorted(pieces, key=lambda p: (p.item, p.start)):
        rank = ranks[piece.item] = ranks.get(piece.item, -1) + 1
        waves.setdefault(rank, []).append(piece)
    return [batch for rank in sorted(waves) for batch in plan_batches(waves[rank], options)]
