"""The Python API: ``load_vocoder(name_or_path)`` gives a callable vocoder with a likelihood.

    from waveglow_cli import load_vocoder, mel_spectrogram
    vocoder = load_vocoder("universal", device="cuda")
    audio = vocoder(mel, sigma=0.6)          # (n_mels, F) or (B, n_mels, F), tensor or numpy
    scores = vocoder.score(audio)            # exact log-likelihood of audio under the model

:func:`load_vocoder` is the one loader (every command uses it): resolve a registry name or
path (fetching on first use unless offline), read the checkpoint safely, choose the engine
for the device and precision once, and find the mel settings the checkpoint expects.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints.cache import ensure_checkpoint
from .checkpoints.reader import Checkpoint, read_checkpoint
from .checkpoints.registry import Registry, RegistryEntry
from .engines.base import Engine
from .engines.devices import pick_device, pick_dtype
from .engines.select import engine_from_float32, select_engine
from .errors import CheckpointError, UsageError
from .features.mel import MelConfig, mel_spectrogram
from .model.waveglow import WaveGlow, WaveGlowConfig, waveglow_loss
from .settings import Settings
from .synthesis.plans import FIRST_PIECE_FRAMES, BatchOptions
from .synthesis.synthesizer import SynthesisOptions, Synthesizer

Denoise = Callable[[torch.Tensor, float], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Mel settings


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


def mel_settings_for(spec: str, settings: Settings, progress: Any = None) -> MelConfig:
    """The mel settings of a registry name (no download needed) or a checkpoint file."""
    entry = registry_entry_for(spec, settings)
    if entry is not None:
        return mel_config_for(None, entry)
    return mel_config_for(read_checkpoint(ensure_checkpoint(spec, settings, progress)), None)


# ---------------------------------------------------------------------------------------------
# The weights: in the engine only


@dataclass(frozen=True)
class WeightsFile:
    """The checkpoint file a vocoder from :func:`load_vocoder` reads its weights from again
    when it needs them (the likelihood beside an engine that is not a module, another
    precision): in memory, only the engine holds them.  ``identity`` is the file's (device,
    inode, size, mtime) when it was first read, so that a file replaced since is refused rather
    than mixed with an engine built from the old one."""

    path: Path
    identity: tuple[int, int, int, int]

    @classmethod
    def at(cls, path: Path) -> WeightsFile:
        return cls(path, _file_identity(path))

    def read(self) -> Checkpoint:
        try:
            unchanged = _file_identity(self.path) == self.identity
        except OSError:
            unchanged = False
        if not unchanged:
            raise CheckpointError(self.path, "changed or gone since the vocoder was loaded (its "
                                             "engine holds the old weights); load it again")
        return read_checkpoint(self.path)


def _file_identity(path: Path) -> tuple[int, int, int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def _read_engine(weights: WeightsFile, device: torch.device, dtype: torch.dtype, kind: str,
                 cache_dir: Path | None) -> tuple[Checkpoint, Engine]:
    """The checkpoint without its weights, and the engine that holds them.  The checkpoint's
    tensors are let go once the float32 model is built from them, before the engine is folded
    or cast from the model: at most two copies of the weights exist at once, and one stays.
    For the 256-channel model through the fast path, the peak was the checkpoint, the model
    and the engine (3 x 0.35 GB), and the checkpoint's copy was kept beside the engine."""
    checkpoint = weights.read()
    model = checkpoint.build_model("cpu", torch.float32)
    checkpoint = dataclasses.replace(checkpoint, state_dict={})  # the only reference: freed
    return checkpoint, engine_from_float32(model, device, dtype, kind, cache_dir)


_NO_WEIGHTS = ("the checkpoint's weights; an ONNX export holds only the inference graph (use "
               "the checkpoint it was exported from)")


# ---------------------------------------------------------------------------------------------
# The vocoder


@dataclass(frozen=True)
class Score:
    """Likelihood of one waveform under the model (sigma = 1, as in training).

    ``loss`` is exactly NVIDIA's WaveGlowLoss (what train.py prints): the negative
    log-likelihood per sample *without* the Gaussian normalising constant.  ``nll_nats_per_sample``
    adds it (0.5 log(2 pi sigma^2) per sample), giving the true negative log-density of the
    waveform (continuous, so it can be negative); ``bits_per_sample`` is the same in bits."""

    loss: float
    nll_nats_per_sample: float
    bits_per_sample: float
    samples: int

    def as_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "nll_nats_per_sample": self.nll_nats_per_sample,
                "bits_per_sample": self.bits_per_sample, "samples": self.samples}


class Vocoder:
    """A loaded WaveGlow with its mel settings: mel -> audio, and audio -> likelihood.

    ``engine`` runs inference (chosen once for the device and precision: the eager model, or
    the CPU bf16 fast path); ``denoiser`` is NVIDIA's bias-spectrum denoiser when asked for.
    ``checkpoint`` may come without its weights (``state_dict`` empty) where ``weights`` says
    which file to read them from again: so :func:`load_vocoder` keeps one copy, the engine's."""

    def __init__(self, engine: Engine, checkpoint: Checkpoint, mel_config: MelConfig,
                 denoiser: Denoise | None = None, batch: BatchOptions | None = None,
                 path: Path | None = None, *, weights: WeightsFile | None = None) -> None:
        self.engine = engine
        self.checkpoint = checkpoint
        self.mel_config = mel_config
        self.denoiser = denoiser
        self.batch = batch or BatchOptions()
        self.path = path  # the checkpoint file read (None: built in memory)
        self.weights = weights
        self._float32_model: WaveGlow | None = None  # built for score() when the engine has none
        self._sha256: str | None = None

    def sha256(self) -> str | None:
        """The sha256 of the checkpoint file (computed once; None without a file)."""
        if self._sha256 is None and self.path is not None:
            from .checkpoints.download import sha256_file

            self._sha256 = sha256_file(self.path)
        return self._sha256

    @property
    def sample_rate(self) -> int:
        return self.checkpoint.sample_rate

    @property
    def config(self) -> WaveGlowConfig:
        return self.engine.config

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.dtype

    @property
    def model(self) -> WaveGlow:
        """The eager model (its ``forward`` gives the likelihood): the engine's own, else (the
        CPU fast path holds folded weights, not a module) a float32 one on the engine's
        device, built once."""
        model = getattr(self.engine, "model", None)
        if isinstance(model, WaveGlow):
            return model
        if self._float32_model is None:
            checkpoint = self._checkpoint_with_weights("the likelihood")
            self._float32_model = checkpoint.build_model(self.device, torch.float32)
        return self._float32_model

    @property
    def has_weights(self) -> bool:
        """Whether the checkpoint's weights are at hand (in memory or in its file): an ONNX
        export has only its inference graph."""
        return bool(self.checkpoint.state_dict) or self.weights is not None

    def _checkpoint_with_weights(self, purpose: str) -> Checkpoint:
        if self.checkpoint.state_dict:
            return self.checkpoint
        if self.weights is not None:
            return self.weights.read()
        raise UsageError(f"{self.path or 'this vocoder'}: {purpose} needs {_NO_WEIGHTS}")

    def with_engine(self, engine: Engine) -> Vocoder:
        """The same checkpoint, mel settings and batching over another engine (another
        precision of the same weights), with its own denoiser where this one has one."""
        denoiser = _denoiser_for(engine) if self.denoiser is not None else None
        return Vocoder(engine, self.checkpoint, self.mel_config, denoiser, self.batch,
                       path=self.path, weights=self.weights)

    def with_precision(self, dtype: torch.dtype, engine: str = "auto",
                       cache_dir: Path | None = None) -> Vocoder:
        """This vocoder in another precision on the same device: an engine built from the
        checkpoint's weights (read from its file again where only the engine holds them);
        ``engine`` and ``cache_dir`` as for :func:`load_vocoder`."""
        if self.weights is not None and not self.checkpoint.state_dict:
            _, chosen = _read_engine(self.weights, self.device, dtype, engine, cache_dir)
        else:
            chosen = select_engine(self._checkpoint_with_weights("another precision"),
                                   self.device, dtype, engine, cache_dir)
        return self.with_engine(chosen)

    def synthesizer(self, options: SynthesisOptions | None = None,
                    batch: BatchOptions | None = None) -> Synthesizer:
        """A :class:`Synthesizer` over this vocoder's engine (and denoiser)."""
        return Synthesizer(self.engine, options or SynthesisOptions(), batch or self.batch,
                           self.denoiser)

    def __call__(self, mel: torch.Tensor | np.ndarray, sigma: float = 0.6,
                 seed: int | None = None) -> torch.Tensor:
        """(n_mels, F) -> (F * hop,) audio, or (B, n_mels, F) -> (B, F * hop), float32 on the CPU.

        A batch is synthesised with exact masking, so each row equals its unbatched result."""
        mel_t = torch.as_tensor(mel, dtype=torch.float32)
        single = mel_t.dim() == 2
        batch = mel_t[None] if single else mel_t
        n_mels = self.config.n_mel_channels
        if batch.dim() != 3 or batch.size(1) != n_mels:
            raise ValueError(f"mel of shape {tuple(mel_t.shape)}; expected (n_mels, frames) or "
                             f"(batch, n_mels, frames) with n_mels={n_mels}")
        runner = Synthesizer(self.engine, SynthesisOptions(sigma=sigma, seed=seed), self.batch)
        items = [(str(i), batch[i].numpy()) for i in range(batch.size(0))]
        results = dict(runner.run(items))
        rows = []
        for key, _ in items:
            if isinstance(results[key], Exception):
                raise results[key]
            rows.append(torch.from_numpy(results[key]))
        out = torch.stack(rows)
        return out[0] if single else out

    def stream(self, mel: np.ndarray | torch.Tensor, sigma: float = 0.6, seed: int | None = None,
               key: str = "", denoiser_strength: float = 0.0,
               first_piece: int = FIRST_PIECE_FRAMES) -> Iterator[np.ndarray]:
        """One (n_mels, F) mel -> float32 audio pieces, front to back, as they are made: the
        first of ``first_piece`` frames (0: the whole item at once), then growing.  Joined they
        are the F * hop samples ``waveglow synth`` writes for the same seed and key (its noise
        rule: :func:`~waveglow_cli.synthesis.noise.item_seed`); not clipped.  Raises the item's error
        (NaN audio ...) where it happens."""
        array = mel.detach().cpu().float().numpy() if isinstance(mel, torch.Tensor) else mel
        array = np.asarray(array, dtype=np.float32)
        if array.ndim != 2 or array.shape[0] != self.config.n_mel_channels:
            raise ValueError(f"mel of shape {array.shape}; expected (n_mels, frames) with "
                             f"n_mels={self.config.n_mel_channels}")
        options = SynthesisOptions(sigma=sigma, seed=seed, denoiser_strength=denoiser_strength)
        batch = dataclasses.replace(self.batch, first_piece=first_piece)
        for _, block, _ in self.synthesizer(options, batch).stream([(key, array)]):
            if isinstance(block, Exception):
                raise block
            yield block

    def mel(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The Tacotron 2 mel this vocoder expects, of (S,) or (B, S) audio at its sample rate."""
        return mel_spectrogram(audio, self.mel_config)

    @torch.inference_mode()
    def score(self, audio: torch.Tensor | np.ndarray, sigma: float = 1.0) -> Score:
        """Likelihood of one (S,) waveform at the vocoder's sample rate (see :class:`Score`)."""
        model = self.model
        audio_t = torch.as_tensor(audio, dtype=torch.float32).reshape(-1)
        mel = mel_spectrogram(audio_t, self.mel_config)
        param = next(model.parameters())
        z, log_s, log_det = model(mel.to(param.device, param.dtype),
                                  audio_t[None].to(param.device, param.dtype))
        z = z.float()
        log_s = [t.float() for t in log_s]
        log_det = [t.float() for t in log_det]
        loss = float(waveglow_loss(z, log_s, log_det, sigma))
        nats = loss + 0.5 * math.log(2 * math.pi * sigma * sigma)
        return Score(loss, nats, nats / math.log(2), int(z.numel()))


def _denoiser_for(engine: Engine) -> Denoise:
    from .synthesis.denoiser import Denoiser

    return Denoiser.for_engine(engine)


def load_vocoder(spec: str = "universal", device: str | torch.device = "auto",
                 dtype: torch.dtype | None = None, *, precision: str = "fp32",
                 settings: Settings | None = None, denoise: bool = False,
                 progress: Any = None, engine: str = "auto") -> Vocoder:
    """Load a checkpoint by registry name or path and return a :class:`Vocoder`.

    A registry checkpoint not yet cached is fetched first (unless offline), reporting to
    ``progress`` (see :mod:`waveglow_cli.progress`; None: silent).  ``device``: 'auto' (CUDA,
    MPS, CPU) or a name or ``torch.device``.  The compute type is ``dtype`` when given, else
    ``precision`` ('fp32', 'fp16', 'bf16'; 'auto' is fp32 here: synthesis chooses bf16 only
    when noise is sampled, see :func:`~waveglow_cli.engines.devices.pick_dtype`).  ``settings``:
    where the cache and registry are (default: from the environment).  ``denoise`` prepares
    NVIDIA's denoiser (used by synthesis with a denoiser strength).  ``engine``: 'auto', or
    'eager', 'gpu', 'compiled' (see :func:`~waveglow_cli.engines.select.engine_from_float32`; the
    compiled code is cached under the settings' home)."""
    settings = settings if settings is not None else Settings.from_env()
    torch_device = pick_device(device) if isinstance(device, str) else device
    if dtype is None:
        dtype = pick_dtype(precision, torch_device)
    path = ensure_checkpoint(spec, settings, progress)
    from .engines.onnx import is_onnx_file, open_onnx  # no onnxruntime import until a file

    chosen: Engine
    weights = None
    if is_onnx_file(path):  # a `waveglow export` file: onnxruntime, its precision built in
        checkpoint, chosen = open_onnx(path, torch_device)
    else:
        weights = WeightsFile.at(Path(path))
        checkpoint, chosen = _read_engine(weights, torch_device, dtype, engine,  # chosen once
                                          settings.compile_cache)
    denoiser = _denoiser_for(chosen) if denoise else None
    mel_config = mel_config_for(checkpoint, registry_entry_for(spec, settings))
    batch = BatchOptions.for_device(torch_device, chosen.config)  # synth's defaults
    return Vocoder(chosen, checkpoint, mel_config, denoiser, batch, path=Path(path),
                   weights=weights)
