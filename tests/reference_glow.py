"""A straightforward stand-in for NVIDIA's glow.py / glow_old.py, written for the tests.

It has the same module attributes as NVIDIA's classes (weight-normed convolutions named
start/end/in_layers/cond_layer(s)/res_skip_layers or res_layers+skip_layers, convinv, WN,
upsample), so pickling it under the module names ``glow`` / ``glow_old`` produces files shaped
like NVIDIA's ``train.py`` checkpoints, in all three WN layouts.  Its arithmetic is written in
the reference's plain style (unfold/permute/view, per-flow loops) and independently of
``waveglow_cli.model.waveglow``, so agreement between the two is evidence, not a tautology.

Noise: instead of drawing from CUDA as the reference does, ``infer`` calls ``draw(shape)``.
"""

from __future__ import annotations

import contextlib
import sys
import types
import warnings

import torch
import torch.nn.functional as F

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torch.nn.utils import remove_weight_norm, weight_norm

LAYOUTS = ("fused", "cond_layers", "res_skip_separate")


def _wn(conv):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return weight_norm(conv, name="weight")


def _gated(a, b, n):
    x = a + b
    return torch.tanh(x[:, :n, :]) * torch.sigmoid(x[:, n:, :])


class Invertible1x1Conv(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = torch.nn.Conv1d(c, c, kernel_size=1, stride=1, padding=0, bias=False)
        w = torch.linalg.qr(torch.randn(c, c))[0]
        if torch.det(w) < 0:
            w[:, 0] = -w[:, 0]
        self.conv.weight.data = w.view(c, c, 1)

    def forward(self, z, reverse=False):
        b, _, t = z.size()
        w = self.conv.weight.squeeze()
        if reverse:
            if not hasattr(self, "W_inverse"):
                self.W_inverse = w.float().inverse()[..., None]
            return F.conv1d(z, self.W_inverse.to(z.dtype))
        return self.conv(z), b * t * torch.logdet(w)


class WN(torch.nn.Module):
    def __init__(self, n_in_channels, n_mel_channels, n_layers, n_channels, kernel_size,
                 layout="fused"):
        super().__init__()
        self.n_layers = n_layers
        self.n_channels = n_channels
        self.in_layers = torch.nn.ModuleList()
        self.start = _wn(torch.nn.Conv1d(n_in_channels, n_channels, 1))
        self.end = torch.nn.Conv1d(n_channels, 2 * n_in_channels, 1)
        if layout == "fused":
            self.cond_layer = _wn(torch.nn.Conv1d(n_mel_channels, 2 * n_channels * n_layers, 1))
        else:
            self.cond_layers = torch.nn.ModuleList(
                [_wn(torch.nn.Conv1d(n_mel_channels, 2 * n_channels, 1)) for _ in range(n_layers)])
        if layout == "res_skip_separate":
            self.res_layers = torch.nn.ModuleList()
            self.skip_layers = torch.nn.ModuleList()
        else:
            self.res_skip_layers = torch.nn.ModuleList()
        for i in range(n_layers):
            d = 2**i
            self.in_layers.append(_wn(torch.nn.Conv1d(n_channels, 2 * n_channels, kernel_size,
                                                      dilation=d, padding=(kernel_size * d - d) // 2)))
            if layout == "res_skip_separate":
                if i < n_layers - 1:
                    self.res_layers.append(_wn(torch.nn.Conv1d(n_channels, n_channels, 1)))
                self.skip_layers.append(_wn(torch.nn.Conv1d(n_channels, n_channels, 1)))
            else:
                out = 2 * n_channels if i < n_layers - 1 else n_channels
                self.res_skip_layers.append(_wn(torch.nn.Conv1d(n_channels, out, 1)))

    def forward(self, forward_input):
        audio, spect = forward_input
        audio = self.start(audio)
        n = self.n_channels
        output = None
        if hasattr(self, "cond_layer"):
            all_cond = self.cond_layer(spect)
        for i in range(self.n_layers):
            if hasattr(self, "cond_layer"):
                cond = all_cond[:, i * 2 * n:(i + 1) * 2 * n, :]
            else:
                cond = self.cond_layers[i](spect)
            acts = _gated(self.in_layers[i](audio), cond, n)
            if hasattr(self, "res_skip_layers"):
                rs = self.res_skip_layers[i](acts)
                if i < self.n_layers - 1:
                    audio = audio + rs[:, :n, :]
                    skip = rs[:, n:, :]
                else:
                    skip = rs
            else:
                if i < self.n_layers - 1:
                    audio = audio + self.res_layers[i](acts)
                skip = self.skip_layers[i](acts)
            output = skip if output is None else output + skip
        return self.end(output)


class WaveGlow(torch.nn.Module):
    alternate = False  # glow_old semantics

    def __init__(self, n_mel_channels, n_flows, n_group, n_early_every, n_early_size,
                 WN_config, layout="fused"):
        super().__init__()
        self.upsample = torch.nn.ConvTranspose1d(n_mel_channels, n_mel_channels, 1024, stride=256)
        self.n_flows = n_flows
        self.n_group = n_group
        self.n_early_every = n_early_every
        self.n_early_size = n_early_size
        self.WN = torch.nn.ModuleList()
        self.convinv = torch.nn.ModuleList()
        n_half = n_group // 2
        n_remaining = n_group
        wn_class = sys.modules[type(self).__module__].WN if type(self).__module__ in sys.modules else WN
        for k in range(n_flows):
            if k % n_early_every == 0 and k > 0:
                n_half -= n_early_size // 2
                n_remaining -= n_early_size
            self.convinv.append(Invertible1x1Conv(n_remaining))
            self.WN.append(wn_class(n_half, n_mel_channels * n_group, layout=layout, **WN_config))
        self.n_remaining_channels = n_remaining

    def _every(self):
        return 4 if self.alternate else self.n_early_every

    def _halves(self, audio, k):
        n_half = audio.size(1) // 2
        if self.alternate and k % 2:
            return audio[:, n_half:, :], audio[:, :n_half, :]
        return audio[:, :n_half, :], audio[:, n_half:, :]

    def _cat(self, a0, a1, k):
        return torch.cat([a1, a0], 1) if self.alternate and k % 2 else torch.cat([a0, a1], 1)

    def forward(self, forward_input):
        spect, audio = forward_input
        spect = self.upsample(spect)
        spect = spect[:, :, :audio.size(1)]
        spect = spect.unfold(2, self.n_group, self.n_group).permute(0, 2, 1, 3)
        spect = spect.contiguous().view(spect.size(0), spect.size(1), -1).permute(0, 2, 1)
        audio = audio.unfold(1, self.n_group, self.n_group).permute(0, 2, 1)
        outs, log_s_list, log_det_list = [], [], []
        for k in range(self.n_flows):
            if k % self._every() == 0 and k > 0:
                outs.append(audio[:, :self.n_early_size, :])
                audio = audio[:, self.n_early_size:, :]
            audio, log_det = self.convinv[k](audio)
            log_det_list.append(log_det)
            a0, a1 = self._halves(audio, k)
            out = self.WN[k]((a0, spect))
            n_half = a1.size(1)
            log_s, b = out[:, n_half:, :], out[:, :n_half, :]
            a1 = torch.exp(log_s) * a1 + b
            log_s_list.append(log_s)
            audio = self._cat(a0, a1, k)
        outs.append(audio)
        return torch.cat(outs, 1), log_s_list, log_det_list

    def infer(self, spect, sigma=1.0, draw=None):
        draw = draw or (lambda shape: torch.randn(shape))
        spect = self.upsample(spect)
        cutoff = self.upsample.kernel_size[0] - self.upsample.stride[0]
        spect = spect[:, :, :-cutoff]
        spect = spect.unfold(2, self.n_group, self.n_group).permute(0, 2, 1, 3)
        spect = spect.contiguous().view(spect.size(0), spect.size(1), -1).permute(0, 2, 1)
        audio = sigma * draw((spect.size(0), self.n_remaining_channels, spect.size(2)))
        for k in reversed(range(self.n_flows)):
            a0, a1 = self._halves(audio, k)
            out = self.WN[k]((a0, spect))
            n_half = a1.size(1)
            s, b = out[:, n_half:, :], out[:, :n_half, :]
            a1 = (a1 - b) / torch.exp(s)
            audio = self.convinv[k](self._cat(a0, a1, k), reverse=True)
            if k % self._every() == 0 and k > 0:
                z = draw((spect.size(0), self.n_early_size, spect.size(2)))
                audio = torch.cat((sigma * z, audio), 1)
        return audio.permute(0, 2, 1).contiguous().view(audio.size(0), -1).data

    @staticmethod
    def remove_weightnorm(model):
        for wn in model.WN:
            for name, child in list(wn.named_modules()):
                if isinstance(child, torch.nn.Conv1d) and hasattr(child, "weight_g"):
                    remove_weight_norm(child)
        return model


class OldWaveGlow(WaveGlow):
    alternate = True


class OldWN(WN):
    pass


def _module(name, **attrs):
    module = types.ModuleType(name)
    for attr, cls in attrs.items():
        cls.__module__ = name
        cls.__qualname__ = attr
        setattr(module, attr, cls)
    return module


@contextlib.contextmanager
def nvidia_modules():
    """Make ``glow`` and ``glow_old`` importable (for pickling), and remove them afterwards."""
    glow = _module("glow", WaveGlow=WaveGlow, WN=WN, Invertible1x1Conv=Invertible1x1Conv)
    glow_old = _module("glow_old", WaveGlow=OldWaveGlow, WN=OldWN)
    saved = {k: sys.modules.get(k) for k in ("glow", "glow_old")}
    sys.modules.update(glow=glow, glow_old=glow_old)
    try:
        yield glow, glow_old
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def build(n_mel_channels=4, n_flows=8, n_group=8, n_early_every=4, n_early_size=2, n_layers=3,
          n_channels=8, kernel_size=3, layout="fused", old=False, seed=0, scale=0.3):
    """A small reference model with every parameter randomised (NVIDIA zero-inits ``end``)."""
    torch.manual_seed(seed)
    cls = OldWaveGlow if old else WaveGlow
    with nvidia_modules():
        model = cls(n_mel_channels, n_flows, n_group, n_early_every, n_early_size,
                    dict(n_layers=n_layers, n_channels=n_channels, kernel_size=kernel_size),
                    layout=layout)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("convinv"):  # away from orthonormal: a non-zero log-det
                p.add_(torch.randn_like(p) * 0.2)
            elif name.endswith("weight_g"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, scale)
    return model.eval()
