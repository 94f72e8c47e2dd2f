"""A fast CPU inference path: WaveGlow in (time, channels) layout with plain matrix products.

Why: on the CPU, ``Conv1d`` in bfloat16 is slow (oneDNN's convolution does not reach the
matrix units: about 0.4 TFLOP/s on a 2-core AMX Xeon), while a bfloat16 matrix product on
(time, channels) rows runs at several TFLOP/s.  :class:`FastWaveGlow` computes the function of
:meth:`WaveGlow.infer` with every convolution of the WNs written as one matrix product (the
flow's skeleton, :func:`~waveglow_cli.model.waveglow.reverse_flows`, is the model's own; this module
supplies the couplings and 1x1 inverses in its layout):

* rows are grouped time steps, columns are channels; the items of a batch are packed one after
  another with ``pad`` zero rows between them (``pad`` = the widest dilated tap), so one product
  serves the whole batch and padding frames cost nothing (the layout, the upsampler and the
  infer loop are the GPU engine's too: :mod:`waveglow_cli.engines.rows`);
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
:func:`~waveglow_cli.engines.select.build_engine`, which folds it from the float32
weights): rounding the 1x1 inverses to bfloat16 alone costs about 6 dB of SNR.
On the full-size random-weight model the output is about 50 dB SNR from float32 (not
bit-exact: this is a reduced-precision path; float32 synthesis keeps using the exact model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.waveglow import WaveGlow, conv_bias
from .rows import PackedRowEngine, RowPacking

#: rows (grouped steps) processed together: bounds memory; one item is never split.
DEFAULT_MAX_ROWS = 1 << 17
#: rows per product inside a layer, so that its temporaries stay in cache.
DEFAULT_TILE_ROWS = 4096


def onednn_available(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused linear (matrix product with a tanh post-op) can run ``dtype``."""
    try:
        if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]  # unannotated in torch
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
            fused: Tensor = torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias,
                                                               self.act, [], "")
            return fused
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


@dataclass
class _Pass:
    """A group's buffers while its flows run."""

    left: Tensor                     # (R, K C + M G) in dtype: [K shifted copies of x | mel]
    gaps: tuple[tuple[int, int], ...]  # rows outside the items, zeroed before each product


class FastWaveGlow(PackedRowEngine[_Pass]):
    """Inference of ``model`` in (time, channels) layout; see the module docstring.

    An :class:`~waveglow_cli.engines.base.Engine` on the CPU whose ``dtype`` is the products' type:
    ``infer`` (:meth:`PackedRowEngine.infer <waveglow_cli.engines.rows.PackedRowEngine.infer>`)
    takes and returns what :meth:`WaveGlow.infer` does (audio float32 on the CPU).
    It holds its own folded weights, so it does not follow later changes of ``model``."""

    def __init__(self, model: WaveGlow, dtype: torch.dtype = torch.bfloat16,
                 use_onednn: bool | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                 tile_rows: int = DEFAULT_TILE_ROWS) -> None:
        config = model.config
        # Each frame's rows are whole steps here (the select table only packs such models).
        if config.hop_length % config.n_group:
            raise ValueError(f"hop {config.hop_length} is not a whole number of groups of "
                             f"{config.n_group}")
        super().__init__(model, "cpu", dtype, max_rows)
        self.use_onednn = onednn_available(dtype) if use_onednn is None else use_onednn
        self.tile_rows = tile_rows
        self.taps = config.kernel_size
        self.n_cond = config.n_mel_channels * config.n_group
        self.in_width = self.taps * config.n_channels + self.n_cond
        self.flows = [self._fold(model, k) for k in range(config.n_flows)]

    # -- weights -----------------------------------------------------------------------------
    def _fold(self, model: WaveGlow, k: int) -> _Flow:
        config, wn = self.config, model.flow_wn(k)
        c, n_layers = config.n_channels, config.n_layers

        def f32(t: Tensor) -> Tensor:
            return t.detach().to("cpu", torch.float32)

        def f64(t: Tensor) -> Tensor:
            return t.detach().to("cpu", torch.float64)

        end_w = f64(wn.end.weight)[:, :, 0]               # (2 n_half, C)
        end_b = f64(conv_bias(wn.end)).clone()
        cond_w = wn.cond_layer.weight.detach().cpu()[:, :, 0]   # (2C L, M G)
        cond_b = f32(conv_bias(wn.cond_layer))
        scale = torch.ones(2 * c)
        scale[c:] = 0.5                                    # sigmoid(b) = (1 + tanh(b / 2)) / 2
        layers = []
        for i in range(n_layers):
            in_layer, res_skip_layer = wn.layer(i)
            w_in = f32(in_layer.weight)                    # (2C, C, K)
            rows = slice(2 * c * i, 2 * c * (i + 1))
            # Column blocks in the order of the left matrix: tap j sees x(t + (j - K//2) d).
            weight = torch.cat([w_in.permute(0, 2, 1).reshape(2 * c, self.taps * c),
                                cond_w[rows].float()], 1)
            weight[c:] *= 0.5                              # exact: a power of two
            bias = (f32(conv_bias(in_layer)) + cond_b[rows]) * scale
            gate = _Linear(weight, bias, self.dtype, "tanh", self.use_onednn)
            w_rs = f32(res_skip_layer.weight)[:, :, 0]
            b_rs = f64(conv_bias(res_skip_layer))
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
        inverse = model.flow_conv(k).weight_inverse.detach().float().cpu()[:, :, 0]
        return _Flow(start_w=f32(wn.start.weight)[:, :, 0].t().contiguous(),
                     start_b=f32(conv_bias(wn.start)), layers=layers,
                     end_b=end_b.float(), inverse_t=inverse.t().contiguous())

    # -- the packed rows' products ----------------------------------------------------------
    def _start_pass(self, packing: RowPacking, n_rows: int) -> tuple[_Pass, Tensor]:
        """The left matrix of every gate product, [K shifted copies of x | upsampled mel]:
        its centre tap *is* the residual stream x; the mel columns (returned, to be written
        once) stay for every flow."""
        left = torch.zeros(n_rows, self.in_width, dtype=self.dtype)
        return _Pass(left, packing.gaps), left[:, self.taps * self.config.n_channels:]

    def _shift_taps(self, left: Tensor, gaps: Sequence[tuple[int, int]], dilation: int
                    ) -> None:
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

    def _coupling(self, k: int, audio_0: Tensor, state: _Pass) -> Tensor:
        """Flow ``k``'s WN on the conditioning half: (R, 2 n_half) float32, (b, log s)."""
        flow, ch = self.flows[k], self.config.n_channels
        left, gaps = state.left, state.gaps
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

    def _mix_inverse(self, k: int, joined: Tensor, state: _Pass) -> Tensor:
        """The inverse 1x1 of flow ``k`` on (R, n) rows."""
        for lo, hi in state.gaps:  # keep the gaps finite and zero
            joined[lo:hi] = 0
        return torch.mm(joined, self.flows[k].inverse_t)
