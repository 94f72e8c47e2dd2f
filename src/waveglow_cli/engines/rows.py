"""The packed-row layout both row engines share: items packed one after another as rows of
(grouped time step, channels), the mel upsampled straight into conditioning rows, and the
infer loop around the model's reverse flow.

Why a base: :class:`~waveglow_cli.engines.packed.FastWaveGlow` (the CPU, fp32/bf16, oneDNN
fused products) and :class:`~waveglow_cli.engines.gpu.GpuEngine` (any device, fp16/bf16/fp32,
optionally compiled, bucketed row counts) differ only in their products, their precision and
how they mask; where the items lie in the rows, the noise and conditioning written into them,
the groups a batch is split into, the progress of each group and the audio read back are one
thing, written here once (:class:`PackedRowEngine`).

The layout: rows are grouped time steps, columns are channels; a group's items follow each
other with ``pad`` zero rows before, between and after them (``pad`` = the widest dilated tap),
so one product serves the whole group and each item sees exactly the zeros it would see alone
once the rows outside the items are zeroed before every dilated product (the engines do that:
gaps set to zero, or a mask)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import Tensor

from ..model.waveglow import (
    FlowProgress,
    WaveGlow,
    WaveGlowConfig,
    conv_bias,
    part_of,
    reverse_flows,
)


def noise_and_lengths(config: WaveGlowConfig, mel: Tensor, z: Tensor | None,
                      lengths: Tensor | None, generator: torch.Generator | None = None
                      ) -> tuple[Tensor, int, list[int]]:
    """For an engine's ``infer`` on a (B, M, F) mel: the noise (drawn when None, else its shape
    checked), the padded batch's grouped steps, and each item's frames (``lengths`` clipped to
    F; all F without it)."""
    batch, _, frames = mel.shape
    steps = frames * config.hop_length // config.n_group
    if z is None:
        z = torch.randn(config.noise_shape(batch, frames), generator=generator,
                        device=generator.device if generator is not None else "cpu")
    config.check_noise(z, batch, frames)
    item_frames = [frames] * batch if lengths is None else \
        [min(int(n), frames) for n in lengths]
    return z, steps, item_frames


def pack_rows(item_steps: Sequence[int], pad: int, max_rows: int) -> list[list[int]]:
    """Items (by their grouped steps) in order, grouped so that a group's rows, each item
    followed by ``pad`` zero rows and one leading pad, stay within ``max_rows``; an item too
    long for that alone gets a group of its own."""
    groups: list[list[int]] = []
    rows = 0
    for b, steps in enumerate(item_steps):
        need = steps + pad
        if groups and rows + need <= max_rows:
            groups[-1].append(b)
            rows += need
        else:
            groups.append([b])
            rows = pad + need
    return groups


@dataclass(frozen=True)
class RowPacking:
    """Where one group's items lie in its rows: item ``items[i]`` fills rows ``spans[i]``;
    the ``gaps`` (``pad`` rows before, between and after the items) are zero; ``rows`` is the
    group's row count before any padding up to a bucket."""

    items: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    gaps: tuple[tuple[int, int], ...]
    rows: int

    @classmethod
    def of(cls, items: Sequence[int], item_steps: Sequence[int], pad: int) -> RowPacking:
        spans, gaps, row = [], [], 0
        for b in items:
            gaps.append((row, row + pad))
            spans.append((row + pad, row + pad + item_steps[b]))
            row += pad + item_steps[b]
        gaps.append((row, row + pad))
        return cls(tuple(items), tuple(spans), tuple(gaps), row + pad)

    def noise_rows(self, z: Tensor, n_rows: int) -> Tensor:
        """(B, G, T) noise -> (n_rows, G) float32 CPU rows of this group, zeros elsewhere."""
        rows = torch.zeros(n_rows, z.size(1))
        for b, (lo, hi) in zip(self.items, self.spans):
            rows[lo:hi] = z[b, :, :hi - lo].t()
        return rows


class RowUpsampler:
    """The model's transposed-convolution upsampler, written straight into conditioning rows:
    ``cond[t, m G + j] = up[m, t G + j]`` for (M, F) float32 mels.

    Frame f adds ``mel[:, f] @ W[:, :, k]`` to sample ``hop f + k`` for k in [0, kernel): with
    k = hop q + r, that is frame row f + q of the output at offset r.  So the output, one row
    of ``hop x M`` values per frame, is the bias plus ``Q = ceil(kernel / hop)`` matrix products
    ``rows[q:] += mel.T[:F - q] @ W_q``, each accumulating in place; ordering W_q's columns as
    (step in frame, mel, sample in group) makes each frame row the conditioning rows of its
    ``hop / G`` grouped steps, so no transpose follows.  Float32 throughout (ATen's
    ConvTranspose1d on the CPU is very slow; this is a few matrix products), on ``device``.

    A hop that is not a whole number of groups (which only the GPU engine takes) has no
    conditioning row per frame: its frame rows are single samples, regrouped afterwards."""

    def __init__(self, weight: Tensor, bias: Tensor, hop: int, n_group: int,
                 device: torch.device | str = "cpu") -> None:
        m_in, m, kernel = weight.shape                      # (M in, M out, K)
        self.hop, self.n_group, self.m = hop, n_group, m
        # Samples per frame-row column block: a whole group where the hop allows it.
        self.row_group = n_group if hop % n_group == 0 else 1
        self.quarters = -(-kernel // hop)
        w = torch.zeros(m_in, m, self.quarters * hop, dtype=torch.float32)
        w[:, :, :kernel] = weight.detach().float().cpu()
        # (M in, M, Q, hop / g steps, g) -> (Q, M in, steps, M, g): columns (step, mel, j)
        w = w.view(m_in, m, self.quarters, hop // self.row_group, self.row_group)
        w = w.permute(2, 0, 3, 1, 4)
        self.weights = w.reshape(self.quarters, m_in, hop * m).contiguous().to(device)
        bias_rows = bias.detach().float().cpu().repeat_interleave(self.row_group)  # [m g + j]
        self.bias_frame = bias_rows.repeat(hop // self.row_group).to(device)      # one frame row

    def __call__(self, mel: Tensor, out: Tensor, block_frames: int = 256) -> None:
        """Write the conditioning rows of the (M, F) mel into ``out`` (F hop // G, M G), a
        block of frames at a time (bounded temporaries)."""
        if self.row_group == self.n_group:
            self._frame_rows(mel, out, block_frames)
            return
        samples = torch.empty(mel.size(1) * self.hop, self.m, device=mel.device)
        self._frame_rows(mel, samples, block_frames)
        steps, g = out.size(0), self.n_group
        out.copy_(samples[:steps * g].view(steps, g, self.m).transpose(1, 2).reshape(steps, -1))

    def _frame_rows(self, mel: Tensor, out: Tensor, block_frames: int) -> None:
        """``out`` (F hop / g, M g) for g = :attr:`row_group`: every frame's rows."""
        frames = mel.size(1)
        steps_per_frame = self.hop // self.row_group
        mel_t = mel.t().contiguous()                                       # (F, M in)
        for f0 in range(0, frames, block_frames):
            f1 = min(frames, f0 + block_frames)
            rows = self.bias_frame.expand(f1 - f0, -1).clone()             # (frames, hop M)
            for q in range(self.quarters):
                lo, hi = max(0, f0 - q), f1 - q   # source frames landing in rows [f0, f1)
                if hi > lo:
                    rows[lo + q - f0:hi + q - f0].addmm_(mel_t[lo:hi], self.weights[q])
            out[f0 * steps_per_frame:f1 * steps_per_frame] = \
                rows.view(-1, self.m * self.row_group)


#: What an engine keeps for one group of rows while its flows run (its buffers, its masking).
PassT = TypeVar("PassT")


class PackedRowEngine(ABC, Generic[PassT]):
    """An :class:`~waveglow_cli.engines.base.Engine` on packed rows: the shared layout and infer
    loop (see the module docstring).  A subclass supplies its products and precision: the
    buffers of a group (:meth:`_start_pass`, which also says where the conditioning rows go),
    flow ``k``'s coupling and 1x1 inverse on rows, and optionally the row count a group is
    padded to (:meth:`_padded_rows`) and a context its flows run in (:meth:`_flows_running`).

    ``max_rows`` bounds a group's packed rows (its memory); one item is never split."""

    def __init__(self, model: WaveGlow, device: str | torch.device, dtype: torch.dtype,
                 max_rows: int) -> None:
        config = model.config
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_rows = max_rows
        self.dilations = tuple(2**i for i in range(config.n_layers))
        # Zero rows between packed items: the widest dilated tap (at least one).
        self.pad = max(1, (config.kernel_size - 1) // 2 * self.dilations[-1])
        self.upsample = RowUpsampler(model.upsample.weight, conv_bias(model.upsample),
                                     config.hop_length, config.n_group, self.device)

    def groups(self, item_steps: Sequence[int]) -> list[list[int]]:
        """Items in order, grouped so that a group's packed rows stay within ``max_rows``."""
        return pack_rows(item_steps, self.pad, self.max_rows)

    @torch.inference_mode()
    def infer(self, mel: Tensor, sigma: float = 1.0, z: Tensor | None = None,
              lengths: Tensor | None = None, generator: torch.Generator | None = None,
              progress: FlowProgress | None = None) -> Tensor:
        """(B, M, F) natural-log mel -> (B, F * hop) float32 audio on the engine's device; as
        :meth:`WaveGlow.infer <waveglow_cli.model.waveglow.WaveGlow.infer>`.

        Samples beyond an item's ``lengths`` are zero (the model leaves its padding's values
        there; neither is part of any item).  ``progress``: the fraction done after each flow
        of each group of rows (groups weighted by their rows)."""
        c = self.config
        z, steps, item_frames = noise_and_lengths(c, mel, z, lengths, generator)
        item_steps = [f * c.hop_length // c.n_group for f in item_frames]
        out = torch.zeros(mel.shape[0], steps * c.n_group, device=self.device)
        groups = self.groups(item_steps)
        rows = [sum(item_steps[b] + self.pad for b in group) for group in groups]
        for index, group in enumerate(groups):
            packing = RowPacking.of(group, item_steps, self.pad)
            audio = self._run(mel, z, sigma, packing, item_frames,
                              part_of(progress, sum(rows[:index]), rows[index], sum(rows)))
            for b, (lo, hi) in zip(group, packing.spans):
                out[b, :(hi - lo) * c.n_group] = audio[lo:hi].reshape(-1)
        return out

    def _run(self, mel: Tensor, z: Tensor, sigma: float, packing: RowPacking,
             item_frames: list[int], progress: FlowProgress | None = None) -> Tensor:
        """Synthesise one group's items packed as rows: its (R, G) float32 audio rows."""
        n_rows = self._padded_rows(packing.rows)
        noise = self._to_device(packing.noise_rows(z, n_rows)).mul_(sigma)
        state, cond = self._start_pass(packing, n_rows)
        for b, (lo, hi) in zip(packing.items, packing.spans):
            self.upsample(self._to_device(mel[b, :, :item_frames[b]]), cond[lo:hi])
        with self._flows_running(n_rows):
            return reverse_flows(self.config, lambda lo, hi: noise[:, lo:hi],
                                 lambda k, audio_0: self._coupling(k, audio_0, state),
                                 lambda k, joined: self._mix_inverse(k, joined, state),
                                 progress)

    def _to_device(self, t: Tensor) -> Tensor:
        """A tensor as float32 on the engine's device: from the CPU to CUDA pinned and
        non-blocking (the copy overlaps the work queued before it)."""
        t = t.detach().float()
        if self.device.type == "cuda" and t.device.type == "cpu":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _padded_rows(self, rows: int) -> int:
        """The row count a group of ``rows`` packed rows runs with (itself by default)."""
        return rows

    def _flows_running(self, n_rows: int) -> AbstractContextManager[object]:
        """The context the flows of a group of ``n_rows`` rows run in (none by default)."""
        return nullcontext()

    @abstractmethod
    def _start_pass(self, packing: RowPacking, n_rows: int) -> tuple[PassT, Tensor]:
        """A group's buffers for its flows, and the (n_rows, M G) rows (in the engine's
        buffers, any dtype) the upsampled mel is written into."""

    @abstractmethod
    def _coupling(self, k: int, audio_0: Tensor, state: PassT) -> Tensor:
        """Flow ``k``'s WN on the conditioning half: (R, 2 n_half) float32, (b, log s)."""

    @abstractmethod
    def _mix_inverse(self, k: int, joined: Tensor, state: PassT) -> Tensor:
        """Flow ``k``'s inverse 1x1 on (R, n) float32 rows."""


__all__ = ["PackedRowEngine", "RowPacking", "RowUpsampler", "noise_and_lengths", "pack_rows"]
