"""Library entry points that tie resolution, loading, mel settings and devices together."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from .audio_io import LazyMel, open_input, peek, prepare_audio, read_audio, read_mel, sniff
from .checkpoint import Checkpoint, read_checkpoint
from .errors import AudioFileError, MelFileError
from .mel import MelConfig, mel_spectrogram
from .model import WaveGlow
from .registry import Registry, RegistryEntry, ensure_checkpoint
from .settings import Settings

Denoise = Callable[[torch.Tensor, float], torch.Tensor]


def mel_config_for(checkpoint: Checkpoint | None, entry: RegistryEntry | None) -> MelConfig:
    """The mel settings a checkpoint expects: stored with it, else its registry entry's, else
    NVIDIA's Tacotron 2 defaults (with the checkpoint's mel count and sample rate)."""
    values: dict = {}
    if entry is not None:
        values.update(entry.mel)
        values["sample_rate"] = entry.sample_rate
    if checkpoint is not None:
        values["sample_rate"] = checkpoint.sample_rate
        values["n_mels"] = checkpoint.config.n_mel_channels
        values["hop_length"] = checkpoint.config.hop_length
        values.update(checkpoint.mel or {})
    return MelConfig.from_dict(values)


def registry_entry_for(spec: str, settings: Settings) -> RegistryEntry | None:
    """The registry entry ``spec`` names (None for a path that exists)."""
    if Path(spec).expanduser().exists():
        return None
    return Registry.load(settings).find(spec)


def mel_settings_for(spec: str, settings: Settings) -> MelConfig:
    """The mel settings of a registry name (no download needed) or a checkpoint file."""
    entry = registry_entry_for(spec, settings)
    if entry is not None:
        return mel_config_for(None, entry)
    return mel_config_for(read_checkpoint(ensure_checkpoint(spec, settings)), None)


@dataclass
class LoadedVocoder:
    model: WaveGlow
    checkpoint: Checkpoint
    mel_config: MelConfig
    denoiser: Denoise | None = None

    @property
    def sample_rate(self) -> int:
        return self.checkpoint.sample_rate


def open_checkpoint(spec: str, device: torch.device | str, settings: Settings,
                    with_denoiser: bool = False, dtype: torch.dtype = torch.float32
                    ) -> LoadedVocoder:
    """Resolve ``spec`` (path or registry name), load it safely, build the model on ``device``,
    and (if asked) the denoiser for it."""
    # A registry name not yet cached is downloaded first (unless offline).
    checkpoint = read_checkpoint(ensure_checkpoint(spec, settings))
    model = checkpoint.build_model(device, dtype)
    denoiser = None
    if with_denoiser:
        from .denoiser import Denoiser

        denoiser = Denoiser.for_model(model)
    mel_config = mel_config_for(checkpoint, registry_entry_for(spec, settings))
    return LoadedVocoder(model, checkpoint, mel_config, denoiser)


def audio_to_mel(source: str | os.PathLike[str] | bytes | IO[bytes], config: MelConfig,
                 name: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Any audio file (or its bytes, or an open binary file) -> (float32 (n_mels, frames) log
    mel, notes).

    Multi-channel audio is averaged; another sample rate is resampled to ``config``'s."""
    name = name or ("<stdin>" if isinstance(source, bytes) else str(getattr(source, "name", source)))
    samples, rate = read_audio(source, name)
    mono, notes = prepare_audio(samples, rate, config.sample_rate, name)
    del samples
    try:
        mel = mel_spectrogram(torch.from_numpy(mono), config)[0]
    except ValueError as e:  # too short to analyse
        raise AudioFileError(name, str(e)) from None
    return mel.numpy(), notes


def load_synthesis_input(source: str | os.PathLike[str] | bytes | IO[bytes], name: str,
                         config: MelConfig, layout: str = "auto", scale: str = "ln", *,
                         lazy: bool = False) -> tuple[np.ndarray | LazyMel, list[str]]:
    """A mel file (.npy/.pt) or an audio file (copy synthesis), told apart by content.

    The input is opened once (a FIFO is read once, with a cap; devices are refused).  With
    ``lazy`` a mel comes back as a :class:`LazyMel` that reads frames on demand (a ``.npy`` is
    memory-mapped, never copied whole); audio gives its computed mel."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_from(io.BytesIO(bytes(source)), name, config, layout, scale, lazy)
    if hasattr(source, "read"):
        return _load_from(source, name, config, layout, scale, lazy)  # type: ignore[arg-type]
    with open_input(source, name, MelFileError) as f:  # type: ignore[arg-type]
        return _load_from(f, name, config, layout, scale, lazy)


def _load_from(f: IO[bytes], name: str, config: MelConfig, layout: str, scale: str, lazy: bool
               ) -> tuple[np.ndarray | LazyMel, list[str]]:
    if sniff(peek(f, name, MelFileError)) == "audio":
        return audio_to_mel(f, config, name)
    notes: list[str] = []
    mel = read_mel(f, name, n_mels=config.n_mels, layout=layout, scale=scale, notes=notes,
                   lazy=lazy)
    return mel, notes
