"""The benchmark baseline: plain eager float32 WaveGlow inference as NVIDIA's ``glow.py`` does it.

Independent of ``waveglow_cli`` (only torch, numpy and soundfile): channels-first ``Conv1d``
modules, NVIDIA's upsample / unfold / permute conditioning, the per-flow loop with
``fused_add_tanh_sigmoid_multiply`` written out, and each 1x1 inverse computed once in float32
(``W.float().inverse()``).  Weights come from a plain state dict in NVIDIA's (weight-norm-free,
fused ``cond_layer``) parameter names, as ``torch.save(model.state_dict())`` of a ``glow.py``
model or ``waveglow convert``'s tensors give; ``module.`` prefixes and ``weight_g``/``weight_v``
pairs are accepted.  The architecture is read off the tensor shapes.

End to end (load, read mel, synthesise, write 16-bit WAV)::

    python benchmarks/baseline.py CHECKPOINT.pt MEL.npy OUT.wav [--sigma 0.6] [--seed 0]

prints the seconds spent loading and synthesising as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn


class WN(nn.Module):
    """glow.py's WN: start, fused cond_layer, dilated in_layers, res_skip_layers, end."""

    def __init__(self, n_in_channels: int, n_mel_channels: int, n_layers: int, n_channels: int,
                 kernel_size: int) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.n_channels = n_channels
        self.start = nn.Conv1d(n_in_channels, n_channels, 1)
        self.end = nn.Conv1d(n_channels, 2 * n_in_channels, 1)
        self.cond_layer = nn.Conv1d(n_mel_channels, 2 * n_channels * n_layers, 1)
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            dilation = 2 ** i
            padding = int((kernel_size * dilation - dilation) / 2)
            self.in_layers.append(nn.Conv1d(n_channels, 2 * n_channels, kernel_size,
                                            dilation=dilation, padding=padding))
            res_skip = 2 * n_channels if i < n_layers - 1 else n_channels
            self.res_skip_layers.append(nn.Conv1d(n_channels, res_skip, 1))

    def forward(self, audio: torch.Tensor, spect: torch.Tensor) -> torch.Tensor:
        audio = self.start(audio)
        output = torch.zeros_like(audio)
        n = self.n_channels
        spect = self.cond_layer(spect)
        for i in range(self.n_layers):
            offset = i * 2 * n
            in_act = self.in_layers[i](audio) + spect[:, offset:offset + 2 * n, :]
            acts = torch.tanh(in_act[:, :n, :]) * torch.sigmoid(in_act[:, n:, :])
            res_skip = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                audio = audio + res_skip[:, :n, :]
                output = output + res_skip[:, n:, :]
            else:
                output = output + res_skip
        return self.end(output)


class WaveGlow(nn.Module):
    def __init__(self, n_mel_channels: int, n_flows: int, n_group: int, n_early_every: int,
                 n_early_size: int, n_layers: int, n_channels: int, kernel_size: int,
                 upsample_kernel: int = 1024, hop_length: int = 256) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose1d(n_mel_channels, n_mel_channels, upsample_kernel,
                                           stride=hop_length)
        self.n_flows, self.n_group = n_flows, n_group
        self.n_early_every, self.n_early_size = n_early_every, n_early_size
        self.WN = nn.ModuleList()
        self.convinv = nn.ModuleList()
        n_half, n_remaining = n_group // 2, n_group
        for k in range(n_flows):
            if k % n_early_every == 0 and k > 0:
                n_half -= n_early_size // 2
                n_remaining -= n_early_size
            conv = nn.Module()
            conv.conv = nn.Conv1d(n_remaining, n_remaining, 1, bias=False)
            self.convinv.append(conv)
            self.WN.append(WN(n_half, n_mel_channels * n_group, n_layers, n_channels, kernel_size))
        self.n_remaining_channels = n_remaining
        self.inverses: list[torch.Tensor] = []

    def prepare(self) -> None:
        """glow.py inverts each W once, in float32, on the first reverse call."""
        self.inverses = [c.conv.weight.squeeze(-1).float().inverse()[..., None]
                         for c in self.convinv]

    @torch.no_grad()
    def infer(self, spect: torch.Tensor, sigma: float = 1.0, z: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, M, F) mel -> (B, F * hop) audio.  ``z`` (B, G, T), if given, is the noise in the
        layout waveglow_cli uses (early outputs first, in flow order); else glow.py's draws."""
        if not self.inverses:
            self.prepare()
        spect = self.upsample(spect)
        time_cutoff = self.upsample.kernel_size[0] - self.upsample.stride[0]
        spect = spect[:, :, :-time_cutoff]
        spect = spect.unfold(2, self.n_group, self.n_group).permute(0, 2, 1, 3)
        spect = spect.contiguous().view(spect.size(0), spect.size(1), -1).permute(0, 2, 1)
        batch, steps = spect.size(0), spect.size(2)
        n_early = sum(1 for k in range(1, self.n_flows) if k % self.n_early_every == 0)

        def noise(start: int, channels: int) -> torch.Tensor:
            if z is not None:
                return z[:, start:start + channels, :].to(spect.dtype)
            return torch.randn(batch, channels, steps, generator=generator, dtype=spect.dtype)

        audio = sigma * noise(n_early * self.n_early_size, self.n_remaining_channels)
        for k in reversed(range(self.n_flows)):
            n_half = audio.size(1) // 2
            audio_0, audio_1 = audio[:, :n_half, :], audio[:, n_half:, :]
            output = self.WN[k](audio_0, spect)
            s, b = output[:, n_half:, :], output[:, :n_half, :]
            audio_1 = (audio_1 - b) / torch.exp(s)
            audio = torch.cat([audio_0, audio_1], 1)
            audio = F.conv1d(audio, self.inverses[k].to(audio.dtype))
            if k % self.n_early_every == 0 and k > 0:
                n_early -= 1
                audio = torch.cat((sigma * noise(n_early * self.n_early_size, self.n_early_size),
                                   audio), 1)
        return audio.permute(0, 2, 1).contiguous().view(audio.size(0), -1)


def plain_state_dict(path: str) -> dict[str, torch.Tensor]:
    """A plain state dict from ``path``: bare or under 'state_dict'/'model', weight norm folded."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    sd = {k.removeprefix("module.").removeprefix("_orig_mod."): v.float()
          for k, v in sd.items() if isinstance(v, torch.Tensor)}
    for key in [k for k in sd if k.endswith(".weight_g")]:
        stem = key[:-len("_g")]
        g, v = sd.pop(key), sd.pop(stem + "_v")
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
        sd[stem] = g * v / norm
    return sd


def build(sd: dict[str, torch.Tensor]) -> WaveGlow:
    """A WaveGlow with the architecture read off the tensors, weights loaded, eval mode."""
    n_flows = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("WN."))
    n_layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("WN.0.in_layers."))
    channels = [sd[f"convinv.{k}.conv.weight"].size(0) for k in range(n_flows)]
    drops = [k for k in range(1, n_flows) if channels[k] < channels[k - 1]]
    n_early_every = drops[0] if drops else n_flows
    n_early_size = channels[drops[0] - 1] - channels[drops[0]] if drops else 0
    upsample = sd["upsample.weight"]
    in_layer = sd["WN.0.in_layers.0.weight"]
    model = WaveGlow(n_mel_channels=upsample.size(0), n_flows=n_flows, n_group=channels[0],
                     n_early_every=n_early_every, n_early_size=n_early_size, n_layers=n_layers,
                     n_channels=in_layer.size(1), kernel_size=in_layer.size(2),
                     upsample_kernel=upsample.size(2))
    sd = {k: (v.unsqueeze(-1) if k.startswith("convinv") and v.dim() == 2 else v)
          for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    model.eval()
    model.prepare()
    return model


def load(path: str) -> WaveGlow:
    return build(plain_state_dict(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("mel", help=".npy (n_mels, frames) natural-log mel")
    parser.add_argument("output", help="16-bit WAV to write")
    parser.add_argument("--sigma", type=float, default=0.6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-rate", type=int, default=22050)
    args = parser.parse_args()
    import numpy as np
    import soundfile

    start = time.perf_counter()
    model = load(args.checkpoint)
    loaded = time.perf_counter()
    mel = torch.from_numpy(np.load(args.mel)).float()[None]
    audio = model.infer(mel, args.sigma, generator=torch.Generator().manual_seed(args.seed))[0]
    synthesised = time.perf_counter()
    soundfile.write(args.output, audio.clamp(-1, 1).numpy(), args.sample_rate, subtype="PCM_16")
    print(json.dumps({"load_s": loaded - start, "synth_s": synthesised - loaded,
                      "samples": audio.numel()}))


if __name__ == "__main__":
    main()
