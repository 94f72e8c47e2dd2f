"""The GPU engine: WaveGlow inference as packed-row matrix products, optionally compiled.

Why another engine: the eager model runs every convolution channels-first through cuDNN,
computes all eight layers' conditioning of a flow at once (B x 4096 x T values: 3.6 GB for
16 x 10 s in fp16), keeps everything in one precision and pays a kernel launch for every
elementwise step.  :class:`GpuEngine` computes the function of :meth:`WaveGlow.infer
<waveglow_cli.model.waveglow.WaveGlow.infer>` (the same reverse-flow skeleton,
:func:`~waveglow_cli.model.waveglow.reverse_flows`) so that:

* **rows are grouped time steps, columns channels**; the items of a pass are packed one after
  another with ``pad`` zero rows between them (``pad`` = the widest dilated tap), and the rows
  are padded up to one of a small fixed set of sizes (``buckets``).  A compiled pass therefore
  sees at most ``len(buckets)`` shapes however many lengths a folder holds (the layout, the
  upsampler and the infer loop are the CPU path's too: :mod:`waveglow_cli.engines.rows`).
  Masking is exact:
  before every dilated product the rows outside each item are multiplied by zero, so each item
  sees exactly the zeros it would see alone (as the model's ``lengths`` masking does);
* **every convolution of a WN is a matrix product** on row slices: the dilated kernel-3
  convolution is three products on the residual stream shifted by -d, 0, +d rows (plain
  contiguous slices of a padded copy, no gather), accumulated onto the layer's conditioning
  product, which is computed per layer (so no B x 4096 x T tensor exists);
* **precision**: the WN's products, their inputs and the residual stream are in ``dtype``
  (fp16, bf16 or fp32); the skip accumulator, the start and end layers, the affine coupling
  ``(audio_1 - b) / exp(s)``, the 1x1 inverses (made from the float32 weights) and the
  upsampler are float32, as on the CPU fast path (:mod:`waveglow_cli.engines.packed`);
* **the gate is fused**: with ``compile=True`` the whole WN trunk of a flow (its eight layers:
  products, masking, shifts, bias, ``tanh(a) * sigmoid(b)``, residual and skip sums) is one
  ``torch.compile`` region, shared by every flow (the weights are its arguments), and inductor
  fuses each layer's elementwise work into one or two kernels.  Uncompiled, the gate is one
  ``tanh`` and an in-place ``sigmoid``/multiply.

The compile cache is persistent: compiled code is written under ``cache_dir`` (inductor's FX
graph cache, its precompiled headers and Triton's kernels), so a second process loads it
instead of compiling.  The folder is an argument (the command line passes one under
``WAVEGLOW_HOME``); the library never reads the environment.  What is in the cache runs (a line
appended to a cached ``.py``, or a pickle in place of an FX graph entry, runs on the next
compile), so the folder is created 0700 and refused, before anything is compiled, when another
user owns it or could write to it or to the folder holding it (:func:`check_compile_cache`).

In float32 (with TF32 off, PyTorch's default for matrix products) the output equals the eager
model's to float rounding; fp16/bf16 are reduced-precision paths, measured as SNR against
float32 with the same noise.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError
from ..model.waveglow import WaveGlow, conv_bias
from ..settings import compile_cache_environment
from .rows import PackedRowEngine, RowPacking, pack_rows

#: Rows per pass.  The largest, 2^18 rows = 8 pieces of 1024 frames, bounds a pass's memory
#: (about 1.2 GB of activations for the 256-channel model in fp16).  Powers of two below, and
#: steps of 2^15 near the top, where batches of whole utterances land: 10 s at 22.05 kHz is
#: 27,690 rows with its gap, so 8 of them (synth's default batch) fill 7 x 2^15 to 3.5%.
DEFAULT_BUCKETS = (1 << 12, 1 << 14, 1 << 15, 1 << 16, 1 << 17, 3 << 16, 7 << 15, 1 << 18)
#: dynamo's default limit of compiled variants per function; more buckets would silently run
#: uncompiled, so more are refused.
MAX_BUCKETS = 8


class _Layer(NamedTuple):
    """One WN layer's weights (a named tuple: torch.compile takes it apart as plain inputs)."""

    taps: tuple[Tensor, ...]   # K x (C, 2C) in dtype: row r of tap j reads x(r + (j - K//2) d)
    cond_w: Tensor             # (M G, 2C) in dtype: the layer's share of cond_layer
    bias: Tensor               # (2C,) in dtype: in_layer bias + cond_layer bias
    res_skip_w: Tensor         # (C, 2C), or (C, C) on the last layer, in dtype
    res_skip_b: Tensor


@dataclass(frozen=True)
class _Flow:
    start_w: Tensor            # (n_half, C) float32
    start_b: Tensor
    layers: tuple[_Layer, ...]
    end_w: Tensor              # (C, 2 n_half) float32
    end_b: Tensor
    inverse_t: Tensor          # (n, n) float32: rows @ inverse_t applies W^-1


def _trunk(x: Tensor, cond: Tensor, mask: Tensor, layers: Sequence[_Layer],
           dilations: Sequence[int]) -> Tensor:
    """One WN's layers on packed rows: x (R, C) in dtype, cond (R, M G), mask (R, 1) -> the
    summed skip outputs (R, C) in float32.  Compiled as one region when asked for."""
    channels = x.size(1)
    rows = x.size(0)
    skip = torch.zeros(rows, channels, dtype=torch.float32, device=x.device)
    for i, (layer, dilation) in enumerate(zip(layers, dilations)):
        half = (len(layer.taps) - 1) // 2
        # Zero every row outside an item, then pad so each tap is a plain row slice.
        padded = F.pad(x * mask, (0, 0, half * dilation, half * dilation))
        acts = torch.addmm(layer.bias, cond, layer.cond_w)
        for j, weight in enumerate(layer.taps):
            acts.addmm_(padded[j * dilation:j * dilation + rows], weight)
        gated = torch.tanh(acts[:, :channels]).mul_(torch.sigmoid_(acts[:, channels:]))
        res_skip = torch.addmm(layer.res_skip_b, gated, layer.res_skip_w)
        if i < len(layers) - 1:
            x = x + res_skip[:, :channels]
            skip.add_(res_skip[:, channels:])
        else:
            skip.add_(res_skip)
    return skip


def _own_copy(function: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``function`` with a code object of its own.  Dynamo keeps compiled variants per code
    object, at most 8 (its recompile limit, beyond which it silently runs uncompiled): each
    engine gets its own budget this way, so engines of several precisions in one process
    (the device check's) do not use up each other's."""
    import types

    code = function.__code__.replace()
    return types.FunctionType(code, function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)


@contextmanager
def _inductor_cache(directory: Path | None) -> Iterator[None]:
    """Point inductor's, Triton's and the precompiled headers' caches at ``directory`` (made
    0700 and checked first) while compiling or running compiled code: its FX graph cache then
    persists there across processes, and nothing is written to ``$TMPDIR/torchinductor_$USER``."""
    if directory is None:
        yield
        return
    prepare_compile_cache(directory)
    with compile_cache_environment(directory):
        # Imported only now: importing inductor (and dynamo) makes its cache folder already.
        from torch._inductor.runtime import cache_dir_utils

        with cache_dir_utils.temporary_cache_dir(str(directory)), _headers_under(directory):
            yield


@contextmanager
def _headers_under(directory: Path) -> Iterator[None]:
    """Inductor precompiles its C++ prefix header (about 150 MB) into a folder it fixes on
    import from the temporary directory, whatever the cache folder: moved under ``directory``
    while compiling.  A torch without that folder gets no precompiled headers instead."""
    import torch._inductor.config as inductor_config
    from torch._inductor import codecache

    if not hasattr(codecache, "_HEADER_DIR") or not hasattr(codecache, "_HEADER_LOCK_DIR"):
        with inductor_config.patch(cpp_cache_precompile_headers=False):
            yield
        return
    saved = codecache._HEADER_DIR, codecache._HEADER_LOCK_DIR
    headers = directory / "precompiled_headers"
    codecache._HEADER_DIR, codecache._HEADER_LOCK_DIR = str(headers), str(headers / "locks")
    try:
        yield
    finally:
        codecache._HEADER_DIR, codecache._HEADER_LOCK_DIR = saved


def check_compile_cache(directory: Path) -> None:
    """Refuse (:class:`~waveglow_cli.errors.UsageError`, one line) a compile cache someone else
    could have planted code in: the folder itself (not followed if it is a symlink) must be
    ours and writable by nobody else; the folder holding it (``WAVEGLOW_HOME`` for the command
    line) must be ours or root's and writable by nobody else, unless sticky (as /tmp), which
    keeps others from renaming our entries.  Folders not made yet pass: they are made 0700."""
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        info = None
    except OSError as e:
        raise UsageError(f"cannot use the compile cache {directory}: {e.strerror or e}") from None
    if info is not None:
        if not stat.S_ISDIR(info.st_mode):
            raise UsageError(f"the compile cache {directory} is not a folder (a symlink or a "
                             "file); remove it, or point WAVEGLOW_HOME elsewhere")
        _refuse_foreign(directory, info, "the compile cache")
    try:
        holder = os.stat(directory.parent)
    except OSError:
        return  # made when the cache is, with the umask's mode; checked again then
    _refuse_foreign(directory.parent, holder, "the folder holding the compile cache",
                    holder=True)


def _refuse_foreign(path: Path, info: os.stat_result, what: str, *, holder: bool = False
                    ) -> None:
    """Refuse a folder another user owns (root may own the ``holder``) or that its group or
    others may write to (a sticky ``holder`` is fine: they cannot rename our entries)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    owners = {uid, 0} if holder else {uid}
    if uid is not None and info.st_uid not in owners:
        raise UsageError(f"{what} {path} belongs to another user (uid {info.st_uid}): code "
                         "in it would run as you; point WAVEGLOW_HOME at a folder of yours")
    writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (holder and info.st_mode & stat.S_ISVTX):
        raise UsageError(f"{what} {path} is writable by its group or others (mode "
                         f"{stat.S_IMODE(info.st_mode):o}): code planted in it would run as "
                         f"you; `chmod go-w {path}` if nobody did, else remove the cache")


def prepare_compile_cache(directory: Path) -> None:
    """Make ``directory`` (0700, whatever the umask; the folder holding it too, if made here)
    or take it back to 0700 from a wider read-only mode (older versions made it 0755), after
    :func:`check_compile_cache`."""
    check_compile_cache(directory)
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a home made here: ours
    check_compile_cache(directory)  # the holder, if it was only made now
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise UsageError(f"cannot make the compile cache {directory}: {e.strerror or e}") \
            from None
    # Opened without following a symlink, so the mode is set on the folder that was checked.
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(directory, flags)
    except OSError as e:
        raise UsageError(f"cannot use the compile cache {directory}: {e.strerror or e} (a "
                         "symlink?)") from None
    try:
        info = os.fstat(fd)
        _refuse_foreign(directory, info, "the compile cache")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def bucket_rows(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``rows``; beyond the largest, the next multiple of it (an item
    longer than the largest bucket, which synthesis's pieces never are by default)."""
    for size in buckets:
        if rows <= size:
            return size
    largest = buckets[-1]
    return -(-rows // largest) * largest


@dataclass(frozen=True)
class _Pass:
    """A pass's buffers while its flows run."""

    cond: Tensor               # (R, M G) in dtype: the upsampled mel's conditioning rows
    mask: Tensor               # (R, 1) in dtype: 1 on an item's rows, 0 in the gaps and padding
    row_mask: Tensor           # the mask in float32, for the 1x1 inverses


class GpuEngine(PackedRowEngine[_Pass]):
    """An :class:`~waveglow_cli.engines.base.Engine` for any device (built for CUDA) in packed-row
    layout (:class:`~waveglow_cli.engines.rows.PackedRowEngine`); see the module docstring.
    Made from a float32 model; holds its own weights.

    ``compile``: run each WN trunk through ``torch.compile`` (``backend``, ``mode``), with
    its cache under ``cache_dir``.  ``buckets``: the row counts a pass is padded to (at most
    :data:`MAX_BUCKETS`, increasing).  ``shapes`` records the row counts passes have run
    with, so a caller can see how many compiled variants exist.  ``infer``'s progress is told,
    on CUDA, as the flows are queued: nothing waits for the device to report."""

    def __init__(self, model: WaveGlow, device: str | torch.device, dtype: torch.dtype, *,
                 compile: bool = False, cache_dir: Path | None = None,
                 buckets: Sequence[int] = DEFAULT_BUCKETS, backend: str = "inductor",
                 mode: str | None = None) -> None:
        buckets = tuple(int(b) for b in buckets)
        if not buckets or len(buckets) > MAX_BUCKETS or list(buckets) != sorted(set(buckets)) \
                or buckets[0] < 1:
            raise ValueError(f"buckets must be 1 to {MAX_BUCKETS} increasing positive row "
                             f"counts, not {buckets}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        # A pass's packed rows fit the largest bucket (an item too long alone gets its own).
        super().__init__(model, device, dtype, max_rows=buckets[-1])
        self.buckets = buckets
        self.cache_dir = cache_dir
        self.compiled = compile
        self.shapes: set[int] = set()
        if compile and cache_dir is not None:
            check_compile_cache(cache_dir)  # before any work; made when first compiled into
        self.flows = [self._fold(model, k) for k in range(self.config.n_flows)]
        self._trunk: Callable[..., Tensor] = _trunk
        # Compiled when the first shape is (inside the cache's context): importing dynamo
        # already makes inductor's cache folder, which must be ours, not $TMPDIR's.
        self._compile_with = (backend, mode) if compile else None

    def _fold(self, model: WaveGlow, k: int) -> _Flow:
        wn, c = model.flow_wn(k), self.config.n_channels

        def to(t: Tensor, dtype: torch.dtype = self.dtype) -> Tensor:
            return t.detach().to(self.device, dtype).contiguous()

        cond_w = wn.cond_layer.weight.detach()[:, :, 0]                  # (2C L, M G)
        cond_b = conv_bias(wn.cond_layer).detach()
        layers = []
        for i in range(self.config.n_layers):
            rows = slice(2 * c * i, 2 * c * (i + 1))
            in_layer, res_skip_layer = wn.layer(i)
            w_in = in_layer.weight.detach()                              # (2C, C, K)
            layers.append(_Layer(
                taps=tuple(to(w_in[:, :, j].t()) for j in range(w_in.size(2))),
                cond_w=to(cond_w[rows].t()),
                bias=to(conv_bias(in_layer).detach() + cond_b[rows]),
                res_skip_w=to(res_skip_layer.weight.detach()[:, :, 0].t()),
                res_skip_b=to(conv_bias(res_skip_layer).detach())))
        f32 = torch.float32
        # The cached inverse: made from the float32 weights (see Invertible1x1Conv).
        inverse = model.flow_conv(k).weight_inverse.detach()[:, :, 0]
        return _Flow(start_w=to(wn.start.weight.detach()[:, :, 0].t(), f32),
                     start_b=to(conv_bias(wn.start), f32), layers=tuple(layers),
                     end_w=to(wn.end.weight.detach()[:, :, 0].t(), f32),
                     end_b=to(conv_bias(wn.end), f32), inverse_t=to(inverse.t(), f32))

    # -- planning ------------------------------------------------------------------------------
    def passes(self, item_steps: Sequence[int]) -> list[list[int]]:
        """Items in order, grouped so that a pass's packed rows fit the largest bucket (an
        item too long for it alone gets a pass of its own)."""
        return self.groups(item_steps)

    def groups(self, item_steps: Sequence[int]) -> list[list[int]]:
        """As the base's, bounded by the largest bucket as it is now (a caller may narrow
        ``buckets`` after construction: the device check's dry run does)."""
        return pack_rows(item_steps, self.pad, self.buckets[-1])

    def _padded_rows(self, rows: int) -> int:
        """Passes run with bucketed row counts: a compiled trunk sees few shapes."""
        return bucket_rows(rows, self.buckets)

    # -- the packed rows' products ------------------------------------------------------------
    @contextmanager
    def _flows_running(self, n_rows: int) -> Iterator[None]:
        """A new shape is compiled by the first pass that sees it: only then is the cache
        folder needed (switching it clears inductor's in-memory caches)."""
        new_shape = self.compiled and n_rows not in self.shapes
        self.shapes.add(n_rows)
        with _inductor_cache(self.cache_dir) if new_shape else nullcontext():
            if self._compile_with is not None and self._trunk is _trunk:
                backend, mode = self._compile_with
                self._trunk = torch.compile(_own_copy(_trunk), backend=backend, mode=mode,
                                            dynamic=False, fullgraph=True)
            yield

    def _start_pass(self, packing: RowPacking, n_rows: int) -> tuple[_Pass, Tensor]:
        """The mask of the items' rows and the conditioning rows (returned to be written)."""
        c = self.config
        mask = torch.zeros(n_rows, 1)
        for lo, hi in packing.spans:
            mask[lo:hi] = 1
        mask = self._to_device(mask).to(self.dtype)
        cond = torch.zeros(n_rows, c.n_mel_channels * c.n_group, device=self.device,
                           dtype=self.dtype)
        return _Pass(cond, mask, mask.float()), cond

    def _mix_inverse(self, k: int, joined: Tensor, state: _Pass) -> Tensor:
        """Flow ``k``'s inverse 1x1, the rows outside the items zeroed first."""
        return (joined * state.row_mask) @ self.flows[k].inverse_t

    def _coupling(self, k: int, audio_0: Tensor, state: _Pass) -> Tensor:
        """Flow ``k``'s WN on the conditioning half: (R, 2 n_half) float32, (b, log s)."""
        flow = self.flows[k]
        x = torch.addmm(flow.start_b, audio_0, flow.start_w).to(self.dtype)
        skip = self._trunk(x, state.cond, state.mask, flow.layers, self.dilations)
        return torch.addmm(flow.end_b, skip, flow.end_w)


__all__ = [
    "DEFAULT_BUCKETS",
    "MAX_BUCKETS",
    "GpuEngine",
    "bucket_rows",
    "check_compile_cache",
    "prepare_compile_cache",
]
