"""A fast CPU inference path: WaveGlow in (time, channels) layout with plain matrix products.

Why: on the CPU, ``Conv1d`` in bfloat16 is slow (oneDNN's convolution does not reach the
matrix units: about 0.4 TFLOP/s on a 2-core AMX Xeon), while a bfloat16 matrix product on
(time, channels) rows runs at several TFLOP/s.  :class:`FastWaveGlow` computes the function of
:meth:`WaveGlow.infer` with every convolution of the WNs written as one matrix product (the
flow's skeleton, :func:`~waveglow_cli.model.waveglow.reverse_flows`, is the model's own; this module
supplies the couplings and 1x1 inverses in its layout):

* rows are grouped time steps, columns are channels; the items of a batch are packed one after
  another with ``pad`` zero rows between them (``pad`` = the widest dilated tap), so one product
  serves the whole batch and padding frames cost nothing;
* the dilated kernel-3 convolution and the layer's share of the conditioning (the cond 1x1
  convolution) are *one* product: the left matrix holds the three shifted copies of the
  residual stream beside the upsampled mel, ``[x(t-d) | x(t) | x(t+d) | mel(t)]`` (its centre
  block *is* the residual stream; the mel block is written once per utterance), and the gate's
  ``tanh`` runs inside the product (oneDNN post-op).  The gate uses
  ``tanh(a) sigmoid(b) = (tanh(a) + tanh(a) tanh(b/2)) / 2``, with the halves folded into the
  weights, so it is one fused product and one ``addcmul``;
* the skip branch is folded into the end layer (``end(sum skip_i) = sum (W_end W_skip_i) acts_i``),
  so each layer's second product has ``n_channels + 2 n_half`` outputs instead of
  ``2 n_channels`` and there is no skip accumulator;
* inside a layer the products and elementwise passes run on tiles of ``tile_rows`` rows, so
  their temporaries stay in cache (row r's product reads only row r of the left matrix);
* masking keeps the model's semantics: before every dilated product the rows outside each
  item (the gaps) are zeroed, so each item sees exactly the zeros it would see alone.

Precision: the WN products, their inputs and the residual stream are in ``dtype`` (bfloat16 by
default; oneDNN accumulates in float32 and applies the tanh before rounding); the end
accumulator, the affine coupling ``(audio_1 - b) / exp(s)``, the 1x1 inverses and the upsampler
are float32.  The gate weights are cast from the model's parameters (the halving is exact), the
skip/end fold is done in float64.  Use it with the model *before* a cast to bfloat16 (see
:meth:`Checkpoint.engine <waveglow_cli.checkpoints.reader.Checkpoint.engine>`, which folds it from the
float32 weights): rounding the 1x1 inverses to bfloat16 alone costs about 6 dB of SNR.
On the full-size random-weight model the output is about 50 dB SNR from float32 (not
bit-exact: this is a reduced-precision path; float32 synthesis keeps using the exact model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.waveglow import FlowProgress, WaveGlow, WaveGlowConfig, part_of, reverse_flows

#: rows (grouped steps) processed together: bounds memory; one item is never split.
DEFAULT_MAX_ROWS = 1 << 17
#: rows per product inside a layer, so that its temporaries stay in cache.
DEFAULT_TILE_ROWS = 4096


def onednn_available(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused linear (matrix product with a tanh post-op) can run ``dtype``."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        ops = torch.ops.mkldnn
        if not hasattr(ops, "_linear_pointwise"):
            return False
        if dtype == torch.bfloat16 and not ops._is_mkldnn_bf16_supported():
            return False
        return dtype in (torch.bfloat16, torch.float32)
    except (AttributeError, RuntimeError):
        return False


class _Linear:
    """``act(x @ W.T + b)`` for (rows, in) x in ``dtype``; W (out, in) and b of any float type."""

    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, act: str,
                 use_onednn: bool) -> None:
        self.act = act
        self.weight = weight.to(dtype).contiguous()
        self.bias = None if bias is None else bias.to(dtype).contiguous()
        self.use_onednn = use_onednn
        # (Prepacking the weight with mkldnn._reorder_linear_weight measured no faster.)
        if not use_onednn:
            self.weight_t = self.weight.t()

    def __call__(self, x: Tensor) -> Tensor:
        if self.use_onednn:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.act, [], "")
        y = torch.mm(x, self.weight_t) if self.bias is None else torch.addmm(self.bias, x,
                                                                               self.weight_t)
        return torch.tanh_(y) if self.act == "tanh" else y


@dataclass
class _Layer:
    gate: _Linear            # [taps | mel] -> tanh of the (half-scaled) pre-activations (2C)
    res_skip: _Linear        # 2 x gate -> [residual (C, not on the last layer) | end share]


@dataclass
class _Flow:
    start_w: Tensor          # (n_half, C) float32: x = a0 @ start_w + start_b
    start_b: Tensor
    layers: list[_Layer]
    end_b: Tensor            # (2 n_half,) float32: end bias plus every layer's folded skip bias
    inverse_t: Tensor        # (n, n) float32: rows @ inverse_t applies W^-1


def noise_and_lengths(config: WaveGlowConfig, mel: Tensor, z: Tensor | None,
                      lengths: Tensor | None, generator: torch.Generator | None = None
                      ) -> tuple[Tensor, int, list[int]]:
    """For an engine's ``infer`` on a (B, M, F) mel: the noise (drawn when None, else its shape
    checked), the padded batch's grouped steps, and each item's frames (``lengths`` clipped to
    F; all F without it)."""
    batch, _, frames = mel.shape
    steps = frames * config.hop_length // config.n_group
    if z is None:
        z = torch.randn((batch, config.n_group, steps), generator=generator,
                        device=generator.device if generator is not None else "cpu")
    if tuple(z.shape) != (batch, config.n_group, steps):
        raise ValueError(f"noise has shape {tuple(z.shape)}, expected "
                         f"{(batch, config.n_group, steps)}")
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


class RowUpsampler:
    """The model's transposed-convolution upsampler, written straight into conditioning rows:
    ``cond[t, m G + j] = up[m, t G + j]`` for (M, F) float32 mels (whole groups per frame).

    Frame f adds ``mel[:, f] @ W[:, :, k]`` to sample ``hop f + k`` for k in [0, kernel): with
    k = hop q + r, that is frame row f + q of the output at offset r.  So the output, one row
    of ``hop x M`` values per frame, is the bias plus ``Q = ceil(kernel / hop)`` matrix products
    ``rows[q:] += mel.T[:F - q] @ W_q``, each accumulating in place; ordering W_q's columns as
    (step in frame, mel, sample in group) makes each frame row the conditioning rows of its
    ``hop / G`` grouped steps, so no transpose follows.  Float32 throughout (ATen's
    ConvTranspose1d on the CPU is very slow; this is a few matrix products)."""

    def __init__(self, weight: Tensor, bias: Tensor, hop: int, n_group: int,
                 device: torch.device | str = "cpu") -> None:
        m_in, m, kernel = weight.shape                      # (M in, M out, K)
        if hop % n_group:
            raise ValueError(f"hop {hop} is not a whole number of groups of {n_group}")
        self.hop, self.n_group, self.m = hop, n_group, m
        self.quarters = -(-kernel // hop)
        w = torch.zeros(m_in, m, self.quarters * hop, dtype=torch.float32)
        w[:, :, :kernel] = weight.detach().float().cpu()
        # (M in, M, Q, hop / G steps, G) -> (Q, M in, steps, M, G): columns (step, mel, j)
        w = w.view(m_in, m, self.quarters, hop // n_group, n_group).permute(2, 0, 3, 1, 4)
        self.weights = w.reshape(self.quarters, m_in, hop * m).contiguous().to(device)
        bias_rows = bias.detach().float().cpu().repeat_interleave(n_group)  # [m G + j] = b[m]
        self.bias_frame = bias_rows.repeat(hop // n_group).to(device)      # one frame row

    def __call__(self, mel: Tensor, out: Tensor, block_frames: int = 256) -> None:
        """Write the conditioning rows of the (M, F) mel into ``out`` (F hop / G, M G), a
        block of frames at a time (bounded temporaries)."""
        frames = mel.size(1)
        steps_per_frame = self.hop // self.n_group
        mel_t = mel.t().contiguous()                                       # (F, M in)
        for f0 in range(0, frames, block_frames):
            f1 = min(frames, f0 + block_frames)
            rows = self.bias_frame.expand(f1 - f0, -1).clone()             # (frames, hop M)
            for q in range(self.quarters):
                lo, hi = max(0, f0 - q), f1 - q   # source frames landing in rows [f0, f1)
                if hi > lo:
                    rows[lo + q - f0:hi + q - f0].addmm_(mel_t[lo:hi], self.weights[q])
            out[f0 * steps_per_frame:f1 * steps_per_frame] = rows.view(-1, self.m * self.n_group)


class FastWaveGlow:
    """Inference of ``model`` in (time, channels) layout; see the module docstring.

    An :class:`~waveglow_cli.engines.base.Engine` on the CPU whose ``dtype`` is the products' type:
    ``infer`` takes and returns what :meth:`WaveGlow.infer` does (audio float32 on the CPU).
    It holds its own folded weights, so it does not follow later changes of ``model``."""

    def __init__(self, model: WaveGlow, dtype: torch.dtype = torch.bfloat16,
                 use_onednn: bool | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                 tile_rows: int = DEFAULT_TILE_ROWS) -> None:
        config = model.config
        self.config = config
        self.device = torch.device("cpu")
        self.dtype = dtype
        self.use_onednn = onednn_available(dtype) if use_onednn is None else use_onednn
        self.max_rows = max_rows
        self.tile_rows = tile_rows
        c, half = config.n_channels, (config.kernel_size - 1) // 2
        self.taps = config.kernel_size
        self.dilations = [2**i for i in range(config.n_layers)]
        self.pad = max(1, half * self.dilations[-1])   # zero rows between packed items
        self.n_cond = config.n_mel_channels * config.n_group
        self.in_width = self.taps * c + self.n_cond
        self.upsample = RowUpsampler(model.upsample.weight, model.upsample.bias,
                                     config.hop_length, config.n_group)
        self.flows = [self._fold(model, k) for k in range(config.n_flows)]

    # -- weights -----------------------------------------------------------------------------
    def _fold(self, model: WaveGlow, k: int) -> _Flow:
        config, wn = self.config, model.WN[k]
        c, n_layers = config.n_channels, config.n_layers

        def f32(t: Tensor) -> Tensor:
            return t.detach().to("cpu", torch.float32)

        def f64(t: Tensor) -> Tensor:
            return t.detach().to("cpu", torch.float64)

        end_w = f64(wn.end.weight)[:, :, 0]               # (2 n_half, C)
        end_b = f64(wn.end.bias).clone()
        cond_w = wn.cond_layer.weight.detach().cpu()[:, :, 0]   # (2C L, M G)
        cond_b = f32(wn.cond_layer.bias)
        scale = torch.ones(2 * c)
        scale[c:] = 0.5                                    # sigmoid(b) = (1 + tanh(b / 2)) / 2
        layers = []
        for i in range(n_layers):
            w_in = f32(wn.in_layers[i].weight)             # (2C, C, K)
            rows = slice(2 * c * i, 2 * c * (i + 1))
            # Column blocks in the order of the left matrix: tap j sees x(t + (j - K//2) d).
            weight = torch.cat([w_in.permute(0, 2, 1).reshape(2 * c, self.taps * c),
                                cond_w[rows].float()], 1)
            weight[c:] *= 0.5                              # exact: a power of two
            bias = (f32(wn.in_layers[i].bias) + cond_b[rows]) * scale
            gate = _Linear(weight, bias, self.dtype, "tanh", self.use_onednn)
            w_rs = f32(wn.res_skip_layers[i].weight)[:, :, 0]
            b_rs = f64(wn.res_skip_layers[i].bias)
            # The skip branch folded into the end layer, in float64 (small: 2 n_half x C).
            if i < n_layers - 1:
                b_skip = b_rs[c:]
                w_out = torch.cat([w_rs[:c], (end_w @ w_rs[c:].double()).float()], 0)
                b_out = torch.cat([b_rs[:c], torch.zeros(end_w.size(0), dtype=torch.float64)])
            else:
                b_skip = b_rs
                w_out, b_out = (end_w @ w_rs.double()).float(), None
            end_b += end_w @ b_skip
            # The gate above computes 2 x tanh(a) sigmoid(b): halve it here (exact).
            res_skip = _Linear(w_out * 0.5, b_out, self.dtype, "none", self.use_onednn)
            layers.append(_Layer(gate, res_skip))
        # The cached inverse: made from the float32 weights before any cast (see Invertible1x1Conv).
        inverse = model.convinv[k].weight_inverse.detach().float().cpu()[:, :, 0]
        return _Flow(start_w=f32(wn.start.weight)[:, :, 0].t().contiguous(),
                     start_b=f32(wn.start.bias), layers=layers,
                     end_b=end_b.float(), inverse_t=inverse.t().contiguous())

    # -- inference ---------------------------------------------------------------------------
    def _groups(self, item_steps: list[int]) -> list[list[int]]:
        """Items in order, grouped so that a group's packed rows stay within ``max_rows``."""
        return pack_rows(item_steps, self.pad, self.max_rows)

    @torch.inference_mode()
    def infer(self, mel: Tensor, sigma: float = 1.0, z: Tensor | None = None,
              lengths: Tensor | None = None, generator: torch.Generator | None = None,
              progress: FlowProgress | None = None) -> Tensor:
        """(B, M, F) natural-log mel -> (B, F * hop) float32 audio; as :meth:`WaveGlow.infer`.

        Samples beyond an item's ``lengths`` are zero (the model leaves its padding's values
        there; neither is part of any item).  ``progress``: the fraction done after each flow
        of each group of rows (groups weighted by their rows)."""
        c = self.config
        z, steps, item_frames = noise_and_lengths(c, mel, z, lengths, generator)
        mel = mel.detach().to("cpu", torch.float32)
        z = z.detach().to("cpu", torch.float32)
        out = torch.zeros(mel.shape[0], steps * c.n_group)
        item_steps = [f * c.hop_length // c.n_group for f in item_frames]
        groups = self._groups(item_steps)
        rows = [sum(item_steps[b] + self.pad for b in group) for group in groups]
        for index, group in enumerate(groups):
            audio, spans = self._run(mel, z, sigma, group, item_frames,
                                     part_of(progress, sum(rows[:index]), rows[index], sum(rows)))
            for b, (lo, hi) in zip(group, spans):
                out[b, :(hi - lo) * c.n_group] = audio[lo:hi].reshape(-1)
        return out

    def _run(self, mel: Tensor, z: Tensor, sigma: float, group: list[int],
             item_frames: list[int], progress: FlowProgress | None = None
             ) -> tuple[Tensor, list[tuple[int, int]]]:
        """Synthesise the items ``group`` packed as rows; returns (rows (R, G), item spans)."""
        c, pad, ch = self.config, self.pad, self.config.n_channels
        spans, gaps, row = [], [], 0
        for b in group:
            steps = item_frames[b] * c.hop_length // c.n_group
            gaps.append((row, row + pad))
            spans.append((row + pad, row + pad + steps))
            row += pad + steps
        gaps.append((row, row + pad))
        n_rows = row + pad

        # The left matrix of every gate product: [K shifted copies of x | upsampled mel].  Its
        # centre tap *is* the residual stream x; the mel columns are written once.
        left = torch.zeros(n_rows, self.in_width, dtype=self.dtype)
        for b, (lo, hi) in zip(group, spans):
            self.upsample(mel[b, :, :item_frames[b]], left[lo:hi, self.taps * ch:])

        def rows_of(noise: Tensor) -> Tensor:
            """(B, n, T) noise -> (R, n) rows of the group (zeros in the gaps)."""
            packed = torch.zeros(n_rows, noise.size(1))
            for b, (lo, hi) in zip(group, spans):
                packed[lo:hi] = noise[b, :, :hi - lo].t()
            return packed

        audio = reverse_flows(c, lambda lo, hi: sigma * rows_of(z[:, lo:hi, :]),
                              lambda k, audio_0: self._coupling(k, audio_0, left, gaps),
                              lambda k, joined: self._mix_inverse(k, joined, gaps), progress)
        return audio, spans

    def _shift_taps(self, left: Tensor, gaps: list[tuple[int, int]], dilation: int) -> None:
        """Zero the gaps of the centre tap (masking: every item sees zeros beyond its ends),
        then copy it into the other taps: tap j of row r holds x(r + (j - K//2) d)."""
        ch, half = self.config.n_channels, (self.taps - 1) // 2
        center = left[:, half * ch:(half + 1) * ch]
        for lo, hi in gaps:
            center[lo:hi] = 0
        n_rows, width = left.shape
        if self.taps == 3 and n_rows > 2 * dilation and left.is_contiguous():
            # Both side taps in one copy: [r, j] <- x(r + (2j - 1) d), rows d .. R - d
            # (the first and last d rows lie in the zero gaps: their outputs are never used).
            rows = n_rows - 2 * dilation
            source = left.as_strided((rows, 2, ch), (width, 2 * dilation * width, 1),
                                     ch)
            target = left.as_strided((rows, 2, ch), (width, 2 * ch, 1), dilation * width)
            target.copy_(source)
            return
        for j in range(self.taps):
            shift = (j - half) * dilation
            tap = left[:, j * ch:(j + 1) * ch]
            if shift < 0:
                tap[-shift:].copy_(center[:shift])
            elif shift > 0:
                tap[:-shift].copy_(center[shift:])

    def _coupling(self, k: int, audio_0: Tensor, left: Tensor, gaps: list[tuple[int, int]]
                  ) -> Tensor:
        """Flow ``k``'s WN on the conditioning half: (R, 2 n_half) float32, (b, log s)."""
        flow, ch = self.flows[k], self.config.n_channels
        half = (self.taps - 1) // 2
        x = left[:, half * ch:(half + 1) * ch]                     # the residual stream
        x.copy_(torch.addmm(flow.start_b, audio_0, flow.start_w))
        end = flow.end_b.expand(audio_0.size(0), -1).clone()       # (R, 2 n_half) float32
        n_layers, n_rows = len(flow.layers), left.size(0)
        for i, layer in enumerate(flow.layers):
            self._shift_taps(left, gaps, self.dilations[i])
            # Row tiles: a tile's temporaries stay in cache between the products and the
            # elementwise passes.  Row r's product reads only row r of ``left``, whose taps
            # were copied above, so updating x tile by tile is safe.
            for lo in range(0, n_rows, self.tile_rows):
                hi = min(n_rows, lo + self.tile_rows)
                acts = layer.gate(left[lo:hi])                       # tanh(a), tanh(b/2)
                t_a = acts[:, :ch]
                gated = torch.addcmul(t_a, t_a, acts[:, ch:])         # 2 tanh(a) sigmoid(b)
                out = layer.res_skip(gated)
                if i == n_layers - 1:
                    end[lo:hi] += out
                else:
                    x[lo:hi] += out[:, :ch]
                    end[lo:hi] += out[:, ch:]
        return end

    def _mix_inverse(self, k: int, joined: Tensor, gaps: list[tuple[int, int]]) -> Tensor:
        """The inverse 1x1 of flow ``k`` on (R, n) rows."""
        for lo, hi in gaps:  # keep the gaps finite and zero
            joined[lo:hi] = 0
        return torch.mm(joined, self.flows[k].inverse_t)
