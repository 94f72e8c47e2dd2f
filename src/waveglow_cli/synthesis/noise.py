"""Noise for synthesis: per item, from (seed, key), indexed by position.

Noise for an item depends only on (seed, the item's key) and is drawn on the CPU in float32
in the layout :meth:`WaveGlow.infer` takes, in fixed blocks of ``NOISE_BLOCK_STEPS`` grouped
steps, block ``b`` from a generator seeded by (item seed, ``b``).  So it is indexed by
position and any slice of it can be drawn alone: the same whatever the device, batch,
order, chunking or number of workers, and never drawn for a whole long item at once."""

from __future__ import annotations

import hashlib
import os

import torch

from ..model.waveglow import WaveGlowConfig

# Grouped steps per noise block: 128 frames at hop 256 and 8 samples per group (128 KiB).
NOISE_BLOCK_STEPS = 4096


# ---------------------------------------------------------------------------------------------
# Noise


def item_seed(seed: int, key: str) -> int:
    """A 63-bit seed from (seed, key): stable across runs, platforms and Python versions."""
    digest = hashlib.sha256(f"waveglow-noise:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def noise_seed(seed: int | None, key: str) -> int:
    """The item's noise seed: from (seed, key), or fresh random bits when unseeded."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little") >> 1
    return item_seed(seed, key)


def _block_seed(seed: int, block: int) -> int:
    digest = hashlib.sha256(f"waveglow-noise-block:{seed}:{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def noise_steps(seed: int, groups: int, lo: int, hi: int) -> torch.Tensor:
    """Standard-normal noise (groups, hi - lo) for grouped steps [lo, hi) of the item whose
    noise seed is ``seed``: the same numbers whichever slice they are drawn in."""
    out = torch.empty(groups, max(hi - lo, 0))
    first, last = lo // NOISE_BLOCK_STEPS, (hi - 1) // NOISE_BLOCK_STEPS
    for block in range(first, last + 1) if hi > lo else ():
        generator = torch.Generator(device="cpu").manual_seed(_block_seed(seed, block))
        values = torch.randn(groups, NOISE_BLOCK_STEPS, generator=generator)
        start = block * NOISE_BLOCK_STEPS
        a, b = max(lo, start), min(hi, start + NOISE_BLOCK_STEPS)
        out[:, a - lo:b - lo] = values[:, a - start:b - start]
    return out


def item_noise(config: WaveGlowConfig, frames: int, seed: int | None, key: str) -> torch.Tensor:
    """Standard-normal noise (G, T) for one whole item, on the CPU (what :class:`Synthesizer`
    draws piece by piece)."""
    _, groups, steps = config.noise_shape(1, frames)
    return noise_steps(noise_seed(seed, key), groups, 0, steps)
