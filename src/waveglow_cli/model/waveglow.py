"""WaveGlow (Prenger et al., 2019) as a pure tensor module: inference, training direction, loss.

Numerically this is the function of NVIDIA's reference ``glow.py`` (and, with
``alternate_halves=True``, of ``glow_old.py``).  It knows tensors only: no files, no names,
no device policy.  Checkpoint reading and layout conversion live in
:mod:`waveglow_cli.checkpoints.reader`.

Parameter names follow NVIDIA's current (fused) layout, so a weight-norm-free state dict of
``glow.WaveGlow`` loads as is: ``upsample.*``, ``WN.{k}.start|cond_layer|in_layers.{i}|
res_skip_layers.{i}|end.*``, ``convinv.{k}.conv.weight``.

Shapes: B batch, M mel channels, F frames, G = n_group, T = F * hop / G grouped steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class WaveGlowConfig:
    """Architecture of one WaveGlow.  Defaults are the published 256-channel universal model."""

    n_mel_channels: int = 80
    n_flows: int = 12
    n_group: int = 8
    n_early_every: int = 4
    n_early_size: int = 2
    n_layers: int = 8
    n_channels: int = 256
    kernel_size: int = 3
    upsample_kernel: int = 1024
    hop_length: int = 256
    # glow_old.py semantics: on odd flows the *first* half is transformed and the second half
    # conditions the WN.  The tensors look the same; only the pickled class tells them apart.
    alternate_halves: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_mel_channels", "n_flows", "n_group", "n_early_every", "n_layers",
                     "n_channels", "kernel_size", "upsample_kernel", "hop_length"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.n_group % 2:
            problems.append(f"n_group={self.n_group} must be even")
        if self.n_early_size < 0 or self.n_early_size % 2:
            problems.append(f"n_early_size={self.n_early_size} must be even and >= 0")
        if self.kernel_size % 2 == 0:
            problems.append(f"kernel_size={self.kernel_size} must be odd")
        if self.n_channels % 2:
            problems.append(f"n_channels={self.n_channels} must be even")
        if self.upsample_kernel <= self.hop_length:
            problems.append(
                f"upsample_kernel={self.upsample_kernel} must exceed hop_length={self.hop_length}")
        if not problems and self.channels_per_flow()[-1] < 2:
            problems.append("early outputs leave fewer than 2 channels for the last flow")
        if problems:
            raise ValueError("invalid WaveGlow architecture: " + "; ".join(problems))

    def is_early_flow(self, k: int) -> bool:
        """Flow ``k`` splits off ``n_early_size`` channels before it (in the forward direction)."""
        return k > 0 and k % self.n_early_every == 0 and self.n_early_size > 0

    def channels_per_flow(self) -> list[int]:
        """Channels entering each flow's 1x1 convolution, in forward order."""
        channels, remaining = [], self.n_group
        for k in range(self.n_flows):
            if self.is_early_flow(k):
                remaining -= self.n_early_size
            channels.append(remaining)
        return channels

    @property
    def n_remaining_channels(self) -> int:
        return self.channels_per_flow()[-1]

    def receptive_field_steps(self) -> int:
        """Grouped steps one WN looks each way: sum of the dilated kernels' half widths."""
        half = (self.kernel_size - 1) // 2
        return sum(half * 2**i for i in range(self.n_layers))

    def receptive_field_samples(self) -> int:
        """Output samples an input edge can reach, each way: every flow's WN sees
        :meth:`receptive_field_steps` grouped steps each way, plus the upsampler's kernel."""
        return self.n_flows * self.receptive_field_steps() * self.n_group + self.upsample_kernel

    def context_frames(self) -> int:
        """Frames of real context a piece needs on each side for its interior to be exact
        (:meth:`receptive_field_samples` in whole frames)."""
        return math.ceil(self.receptive_field_samples() / self.hop_length)

    def noise_shape(self, batch: int, frames: int) -> tuple[int, int, int]:
        """Shape (B, G, T) of the standard-normal noise that synthesising ``frames`` frames
        consumes."""
        return (batch, self.n_group, frames * self.hop_length // self.n_group)

    def check_noise(self, z: Tensor, batch: int, frames: int) -> None:
        """Refuse (ValueError) noise ``z`` that is not :meth:`noise_shape` for ``batch`` items
        of ``frames`` frames: every engine's ``infer`` checks its caller's noise here."""
        expected = self.noise_shape(batch, frames)
        if tuple(z.shape) != expected:
            raise ValueError(f"noise has shape {tuple(z.shape)}, expected {expected}")

    def n_early_outputs(self) -> int:
        """Flows that split channels off early (in the forward direction)."""
        return sum(self.is_early_flow(k) for k in range(self.n_flows))

    def flops_per_sample(self) -> float:
        """Multiply-adds x 2 of one output sample for :meth:`WaveGlow.infer` (convolutions only),
        as the reference computes it: per grouped step and flow the start, cond, dilated,
        res/skip and end 1x1s; divided by the group size.  About 20.3 MFLOP for the 256-channel
        model."""
        c, n_cond = self.n_channels, self.n_mel_channels * self.n_group
        total = 0.0
        for channels in self.channels_per_flow():
            n_half = channels // 2
            per_step = n_half * c + n_cond * 2 * c * self.n_layers + c * 2 * n_half
            for i in range(self.n_layers):
                per_step += self.kernel_size * c * 2 * c
                per_step += c * (2 * c if i < self.n_layers - 1 else c)
            per_step += channels * channels  # the 1x1 inverse
            total += 2 * per_step
        upsample = 2 * self.n_mel_channels ** 2 * self.upsample_kernel / self.hop_length
        return total / self.n_group + upsample

    # Both layouts keep channels on dimension 1: (B, C, T) in the model, (rows, C) in the fast
    # path, so the coupling's halves are cut and joined the same way in both.
    def split_halves(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(conditioning half, transformed half) of flow ``k``'s input, along dimension 1."""
        n_half = x.size(1) // 2
        if self.alternate_halves and k % 2:
            return x[:, n_half:], x[:, :n_half]
        return x[:, :n_half], x[:, n_half:]

    def join_halves(self, x_0: Tensor, x_1: Tensor, k: int) -> Tensor:
        """The inverse of :meth:`split_halves`."""
        if self.alternate_halves and k % 2:
            return torch.cat([x_1, x_0], 1)
        return torch.cat([x_0, x_1], 1)

    def to_dict(self) -> dict[str, int | bool]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> WaveGlowConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown WaveGlow config keys: {', '.join(unknown)}")
        return cls(**values)


def conv_bias(conv: nn.Conv1d | nn.ConvTranspose1d) -> Tensor:
    """``conv.bias`` of a convolution built with one (torch types every bias Optional): all
    of the model's but the mixing matrices'."""
    assert conv.bias is not None, "a WaveGlow convolution without its bias"
    return conv.bias


class Invertible1x1Conv(nn.Module):
    """Channel mixing by an invertible matrix W (C, C); ``conv.weight`` is W as (C, C, 1)."""

    weight_inverse: Tensor  # the buffer registered in __init__ (declared for the type checker)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=1, bias=False)
        # Orthonormal start with determinant +1, as in the paper's initialisation.
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        if torch.det(w) < 0:
            w[:, 0] = -w[:, 0]
        with torch.no_grad():
            self.conv.weight.copy_(w.unsqueeze(-1))
        # The inverse is computed once by refresh_inverse() (not per call, and not lazily behind
        # hasattr as the reference does), then follows .to() as a buffer.
        self.register_buffer("weight_inverse", torch.empty(channels, channels, 1), persistent=False)
        self.refresh_inverse()

    @torch.no_grad()
    def refresh_inverse(self) -> None:
        """Invert W in float32 (float64 for a float64 model), then cast to the buffer's dtype.

        float32 is what NVIDIA's glow.py does (``W.float().inverse()``), and it makes our output
        bit-identical to the reference on the CPU; a float64 inverse is closer to the exact
        inverse but differs from the reference by float rounding that a long flow amplifies."""
        w = self.conv.weight.detach().squeeze(-1)
        if w.dtype != torch.float64:
            w = w.float()
        inverse = torch.linalg.inv(w).to(dtype=self.weight_inverse.dtype)
        self.weight_inverse.copy_(inverse.unsqueeze(-1))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, T) -> (W z, log|det W| summed over batch and time)."""
        batch, _, steps = z.shape
        w = self.conv.weight.squeeze(-1)
        if w.dtype in (torch.float16, torch.bfloat16):  # logdet needs at least float32
            w = w.float()
        log_det = batch * steps * torch.logdet(w)
        return self.conv(z), log_det

    def inverse(self, z: Tensor) -> Tensor:
        if self.training:  # weights may have moved since the cached inverse was made
            w = self.conv.weight.squeeze(-1)
            return F.conv1d(z, torch.linalg.inv(w.float()).to(z.dtype).unsqueeze(-1))
        return F.conv1d(z, self.weight_inverse.to(z.dtype))


class WN(nn.Module):
    """The non-causal WaveNet of one affine coupling: (B, n_in, T) x (B, n_cond, T) ->
    (B, 2 n_in, T)."""

    def __init__(self, n_in_channels: int, n_cond_channels: int, n_layers: int,
                 n_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.n_channels = n_channels
        self.start = nn.Conv1d(n_in_channels, n_channels, 1)
        self.cond_layer = nn.Conv1d(n_cond_channels, 2 * n_channels * n_layers, 1)
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            dilation = 2**i
            self.in_layers.append(nn.Conv1d(n_channels, 2 * n_channels, kernel_size,
                                            dilation=dilation,
                                            padding=dilation * (kernel_size - 1) // 2))
            out = 2 * n_channels if i < n_layers - 1 else n_channels
            self.res_skip_layers.append(nn.Conv1d(n_channels, out, 1))
        # Zero end layer: a fresh coupling starts as the identity (training stability).
        self.end = nn.Conv1d(n_channels, 2 * n_in_channels, 1)
        nn.init.zeros_(self.end.weight)
        nn.init.zeros_(conv_bias(self.end))

    def layer(self, i: int) -> tuple[nn.Conv1d, nn.Conv1d]:
        """Layer ``i``'s (dilated gate convolution, res/skip convolution), typed (an item of a
        ModuleList is a plain Module to the type checker)."""
        in_layer, res_skip_layer = self.in_layers[i], self.res_skip_layers[i]
        assert isinstance(in_layer, nn.Conv1d) and isinstance(res_skip_layer, nn.Conv1d)
        return in_layer, res_skip_layer

    def forward(self, audio: Tensor, cond: Tensor, mask: Tensor | None = None) -> Tensor:
        """``mask`` (B, 1, T) is 1 inside each item and 0 in padding.  Zeroing the dilated
        convolutions' input there makes each item see exactly the zero padding it would see
        alone, so a padded batch gives every item its single-item result."""
        c = self.n_channels
        x = self.start(audio)
        cond = self.cond_layer(cond)
        skip = torch.zeros_like(x)
        for i, (in_layer, res_skip_layer) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            if mask is not None:
                x = x * mask
            acts = in_layer(x) + cond[:, i * 2 * c:(i + 1) * 2 * c, :]
            acts = torch.tanh(acts[:, :c, :]) * torch.sigmoid(acts[:, c:, :])
            res_skip = res_skip_layer(acts)
            if i < self.n_layers - 1:
                x = x + res_skip[:, :c, :]
                skip = skip + res_skip[:, c:, :]
            else:
                skip = skip + res_skip
        out: Tensor = self.end(skip)
        return out


class WaveGlow(nn.Module):
    """The flow.  ``infer`` maps mels to audio; ``forward`` maps (mel, audio) to z and log-dets."""

    def __init__(self, config: WaveGlowConfig) -> None:
        super().__init__()
        self.config = config
        m, g = config.n_mel_channels, config.n_group
        self.upsample = nn.ConvTranspose1d(m, m, config.upsample_kernel, stride=config.hop_length)
        self.WN = nn.ModuleList()
        self.convinv = nn.ModuleList()
        for channels in config.channels_per_flow():
            self.convinv.append(Invertible1x1Conv(channels))
            self.WN.append(WN(channels // 2, m * g, config.n_layers, config.n_channels,
                              config.kernel_size))
        # The cached inverses follow the weights: recomputed whenever weights are loaded ...
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            lambda module, keys: module.refresh_inverses())

    def train(self, mode: bool = True) -> WaveGlow:
        # ... and when training ends (train -> eval), not on every eval(): a model cast to
        # fp16/bf16 keeps the inverses made from its float32 weights.
        was_training = self.training
        super().train(mode)
        if was_training and not mode:
            self.refresh_inverses()
        return self

    def refresh_inverses(self) -> None:
        for k in range(len(self.convinv)):
            self.flow_conv(k).refresh_inverse()

    def flow_wn(self, k: int) -> WN:
        """Flow ``k``'s coupling network, typed (``self.WN[k]`` is a plain Module to the type
        checker)."""
        wn = self.WN[k]
        assert isinstance(wn, WN)
        return wn

    def flow_conv(self, k: int) -> Invertible1x1Conv:
        """Flow ``k``'s invertible 1x1 convolution, typed (as :meth:`flow_wn`)."""
        conv = self.convinv[k]
        assert isinstance(conv, Invertible1x1Conv)
        return conv

    # -- shared pieces -------------------------------------------------------------------
    def upsample_mel(self, mel: Tensor, n_samples: int) -> Tensor:
        """(B, M, F) mel -> (B, M*G, T) conditioning for the first ``n_samples`` samples.

        Frame j of the transposed convolution touches samples [hop*j, hop*j + kernel), so
        zero frames padded after an item's end leave its first F*hop samples unchanged."""
        g = self.config.n_group
        if not torch.is_grad_enabled() and self.config.hop_length % g == 0:
            return self._upsample_in_chunks(mel, n_samples)
        up: Tensor = self.upsample(mel)[:, :, :n_samples]
        steps = up.size(2) // g
        up = up[:, :, :steps * g]
        # cond[b, m*G + j, t] = up[b, m, t*G + j]  (NVIDIA's unfold/permute/view, as a reshape)
        b, m, _ = up.shape
        return up.reshape(b, m, steps, g).permute(0, 1, 3, 2).reshape(b, m * g, steps)

    def _upsample_in_chunks(self, mel: Tensor, n_samples: int, chunk_frames: int = 64) -> Tensor:
        """:meth:`upsample_mel` for inference, ``chunk_frames`` frames of output at a time,
        written straight into the (B, M*G, T) layout.  Whole, the transposed convolution's
        workspace is M x kernel values per frame, four times its output, and the layout change
        copies the output once more (together 2 GB for one 2048-frame, 80-mel piece); in chunks
        only the result itself grows with the length.  Output samples [s0, s1) come from frames
        j with j*hop <= s < j*hop + kernel only, so each chunk reads those frames and keeps its
        slice: the same sums.  Needs whole groups per frame (hop % n_group == 0)."""
        hop, kernel, g = self.config.hop_length, self.config.upsample_kernel, self.config.n_group
        batch, frames = mel.size(0), mel.size(2)
        total = min(n_samples, (frames - 1) * hop + kernel) if frames else 0
        steps = max(total, 0) // g
        m = self.upsample.out_channels
        cond = mel.new_empty(batch, m, g, steps)  # cond[b, m, j, t] = up[b, m, t*G + j]
        reach = -(-kernel // hop)  # frames before a sample's own that still reach it
        for s0 in range(0, steps * g, chunk_frames * hop):
            s1 = min(steps * g, s0 + chunk_frames * hop)
            f0 = max(0, s0 // hop - reach + 1)
            f1 = min(frames, -(-s1 // hop))
            part = self.upsample(mel[:, :, f0:f1])[:, :, s0 - f0 * hop:s1 - f0 * hop]
            cond[:, :, :, s0 // g:s1 // g] = part.reshape(batch, m, -1, g).permute(0, 1, 3, 2)
        return cond.reshape(batch, m * g, steps)

    def _mask(self, lengths: Tensor | None, steps: int, like: Tensor) -> Tensor | None:
        """(B, 1, T) mask from per-item lengths in *frames* (None when no masking is wanted)."""
        if lengths is None:
            return None
        item_steps = lengths.to(like.device) * self.config.hop_length // self.config.n_group
        positions = torch.arange(steps, device=like.device)
        return (positions[None, :] < item_steps[:, None]).to(like.dtype).unsqueeze(1)

    # -- inference -------------------------------------------------------------------------
    def noise_shape(self, batch: int, frames: int) -> tuple[int, int, int]:
        """Shape of the standard-normal ``z`` that :meth:`infer` consumes for ``frames`` frames."""
        return self.config.noise_shape(batch, frames)

    def infer(self, mel: Tensor, sigma: float = 1.0, z: Tensor | None = None,
              lengths: Tensor | None = None, generator: torch.Generator | None = None,
              progress: FlowProgress | None = None) -> Tensor:
        """(B, M, F) natural-log mel -> (B, F * hop) audio.

        ``z`` (B, G, T) is standard-normal noise in the layout :meth:`forward` returns (early
        outputs first, in flow order), so ``infer(mel, 1.0, z=forward(mel, audio)[0])`` gives
        ``audio`` back.  Without ``z`` noise is drawn from ``generator``.  ``lengths`` (B,) in
        frames masks padding so each item equals its unbatched synthesis.  ``progress`` is told
        the fraction done after each flow (:data:`FlowProgress`)."""
        c = self.config
        frames = mel.size(2)
        cond = self.upsample_mel(mel, frames * c.hop_length)
        steps = cond.size(2)
        if z is None:
            z = torch.randn(self.noise_shape(mel.size(0), frames), generator=generator,
                            device=generator.device if generator is not None else "cpu")
        c.check_noise(z, mel.size(0), frames)
        z = z.to(device=cond.device, dtype=cond.dtype)
        mask = self._mask(lengths, steps, cond)

        audio = reverse_flows(c, lambda lo, hi: sigma * z[:, lo:hi, :],
                              lambda k, audio_0: self.WN[k](audio_0, cond, mask),
                              lambda k, joined: self.flow_conv(k).inverse(joined), progress)
        return audio.permute(0, 2, 1).reshape(audio.size(0), -1)

    # -- training direction ----------------------------------------------------------------
    def forward(self, mel: Tensor, audio: Tensor, lengths: Tensor | None = None
                ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """(B, M, F) mel and (B, S) audio -> (z (B, G, S/G), log_s per flow, log|det W| per flow).

        As in NVIDIA's reference, the upsampled mel is cut to the audio's length and audio
        beyond a whole group is dropped.  With ``lengths`` (frames) the WN inputs are masked as
        in :meth:`infer`; the log-dets still count every step (callers mask per item)."""
        c = self.config
        n_samples = audio.size(1)
        cond = self.upsample_mel(mel, n_samples)
        if cond.size(2) * c.n_group < n_samples - n_samples % c.n_group:
            raise ValueError(f"mel with {mel.size(2)} frames is too short for {n_samples} samples")
        steps = cond.size(2)
        x = audio[:, :steps * c.n_group].reshape(audio.size(0), steps, c.n_group).permute(0, 2, 1)
        mask = self._mask(lengths, steps, cond)
        early_outputs: list[Tensor] = []
        log_s_list: list[Tensor] = []
        log_det_list: list[Tensor] = []
        for k in range(c.n_flows):
            if c.is_early_flow(k):
                early_outputs.append(x[:, :c.n_early_size, :])
                x = x[:, c.n_early_size:, :]
            x, log_det = self.convinv[k](x)
            log_det_list.append(log_det)
            audio_0, audio_1 = c.split_halves(x, k)
            output = self.WN[k](audio_0, cond, mask)
            n_half = audio_1.size(1)
            log_s, b = output[:, n_half:, :], output[:, :n_half, :]
            audio_1 = torch.exp(log_s) * audio_1 + b
            log_s_list.append(log_s)
            x = c.join_halves(audio_0, audio_1, k)
        early_outputs.append(x)
        return torch.cat(early_outputs, 1), log_s_list, log_det_list


#: Told the fraction of a forward pass's audio done, in (0, 1], after each flow of the reverse
#: flow (the last call says 1.0).  A plain Python call per flow: on CUDA it runs when the
#: flow's kernels are queued, not when they finish (no synchronisation is added for it).
FlowProgress = Callable[[float], None]


def part_of(progress: FlowProgress | None, done: float, size: float, total: float
            ) -> FlowProgress | None:
    """``progress`` for one part of a pass that runs in parts (an engine's groups of rows):
    the part's fractions map onto ``[done, done + size]`` of ``total``, so the pass as a whole
    still reports increasing fractions ending at 1."""
    if progress is None or total <= 0:
        return progress
    return lambda fraction: progress((done + fraction * size) / total)


def reverse_flows(config: WaveGlowConfig, noise: Callable[[int, int], Tensor],
                  coupling: Callable[[int, Tensor], Tensor],
                  mix_inverse: Callable[[int, Tensor], Tensor],
                  progress: FlowProgress | None = None) -> Tensor:
    """The inference direction of the flow, written once for every implementation.

    ``noise(lo, hi)`` gives sigma x noise channels [lo, hi) in the implementation's layout
    (channels on dimension 1); ``coupling(k, audio_0)`` gives flow ``k``'s WN output on the
    conditioning half, the affine coupling's (b, log s) stacked on dimension 1;
    ``mix_inverse(k, x)`` applies the inverse of flow ``k``'s 1x1 convolution.  The flows run
    last to first; the channels split off early in the forward direction are re-injected from
    the noise in front of the rest, as in NVIDIA's ``infer``.  ``progress``, where given, is
    told the fraction of the flows done after each one (:data:`FlowProgress`)."""
    n_early = config.n_early_outputs()
    audio = noise(n_early * config.n_early_size, config.n_group)
    for k in reversed(range(config.n_flows)):
        audio_0, audio_1 = config.split_halves(audio, k)
        output = coupling(k, audio_0)
        n_half = audio_1.size(1)
        b, s = output[:, :n_half], output[:, n_half:]
        audio_1 = (audio_1 - b) / torch.exp(s)
        audio = mix_inverse(k, config.join_halves(audio_0, audio_1, k))
        if config.is_early_flow(k):
            n_early -= 1
            start = n_early * config.n_early_size
            audio = torch.cat([noise(start, start + config.n_early_size), audio], 1)
        if progress is not None:
            progress((config.n_flows - k) / config.n_flows)
    return audio


def waveglow_loss(z: Tensor, log_s_list: list[Tensor], log_det_w_list: list[Tensor],
                  sigma: float = 1.0) -> Tensor:
    """NVIDIA's WaveGlowLoss: (sum z^2 / 2 sigma^2 - sum log_s - sum log|det W|) / z.numel().

    This is the negative log-likelihood per element without the Gaussian normalising constant
    (0.5 log(2 pi sigma^2) per element), which is what ``train.py`` prints."""
    log_s_total = sum(torch.sum(log_s) for log_s in log_s_list)
    log_det_total = sum(log_det_w_list)
    loss = torch.sum(z * z) / (2 * sigma * sigma) - log_s_total - log_det_total
    return loss / z.numel()


class WaveGlowLoss(nn.Module):
    """Module form of :func:`waveglow_loss`, taking the tuple that :meth:`WaveGlow.forward`
    returns."""

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, model_output: tuple[Tensor, list[Tensor], list[Tensor]]) -> Tensor:
        return waveglow_loss(*model_output, sigma=self.sigma)
