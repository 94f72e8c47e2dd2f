"""The Python API: ``load_vocoder(name_or_path)`` gives a callable vocoder with a likelihood.

    from waveglow_cli import load_vocoder, mel_spectrogram
    vocoder = load_vocoder("universal", device="cuda")
    audio = vocoder(mel, sigma=0.6)          # (n_mels, F) or (B, n_mels, F), tensor or numpy
    scores = vocoder.score(audio)            # exact log-likelihood of audio under the model

:func:`load_vocoder` is the one loader, in three steps that the commands take one by one (to
say what they do between them): :func:`open_model_file` resolves a registry name or path
(fetching on first use unless offline), reads the checkpoint safely (or checks an exported
file) and finds the mel settings it expects; :func:`~waveglow_cli.engines.select.choose_engine`
chooses the engines for the device, precision and sigma policy, once; and
:meth:`ModelFile.vocoder` builds the first of them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
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
from .engines.devices import pick_device, precision_name
from .engines.onnx import OnnxEngine, OnnxSource, is_onnx_file, open_onnx
from .engines.select import EngineChoice, EnginePick, SigmaPolicy, build_engine, choose_engine
from .errors import CheckpointError, UsageError
from .features.mel import MelConfig, mel_spectrogram
from .model.waveglow import WaveGlow, WaveGlowConfig, waveglow_loss
from .settings import Settings
from .synthesis.plans import FIRST_PIECE_FRAMES, BatchOptions
from .synthesis.synthesizer import SynthesisOptions, Synthesizer

Denoise = Callable[[torch.Tensor, float], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Mel settings


def mel_config_for(checkpoint: Checkpoint | OnnxSource | None,
                   entry: RegistryEntry | None) -> MelConfig:
    """The mel settings a checkpoint (or exported file) expects: stored with it, else its
    registry entry's, else NVIDIA's Tacotron 2 defaults (with its mel count and sample
    rate)."""
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
# The weights: in the engines only


@dataclass(frozen=True)
class WeightsFile:
    """The checkpoint file a vocoder from :func:`load_vocoder` reads its weights from again
    when it needs them (the likelihood beside an engine that is not a module, the engine for
    the other kind of noise, another precision): in memory, only the engines hold them.
    ``identity`` is the file's (device, inode, size, mtime) when it was first read, so that a
    file replaced since is refused rather than mixed with engines built from the old one."""

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


_NO_WEIGHTS = ("the checkpoint's weights; an ONNX export holds only the inference graph (use "
               "the checkpoint it was exported from)")


def _engine_from(checkpoint: Checkpoint, pick: EnginePick, cache_dir: Path | None) -> Engine:
    """The engine ``pick`` from a checkpoint read for it.  The checkpoint's tensors are let go
    (the caller's must be its only other reference) once the float32 model is built from
    them, before the engine is folded or cast from the model: at most two copies of the
    weights exist at once, and one stays."""
    model = checkpoint.build_model("cpu", torch.float32)
    del checkpoint
    return build_engine(pick, model, cache_dir)


class ModelFile:
    """A checkpoint or exported file opened for a device, before its engines are built:
    :attr:`source` is what :func:`~waveglow_cli.engines.select.choose_engine` is given,
    :meth:`vocoder` builds the vocoder for its choice.  A checkpoint's tensors are held until
    then and let go there (the engine holds the weights; they are read from the file again
    where needed); an exported file is opened once, for the device it was opened for."""

    def __init__(self, path: Path, source: Checkpoint | OnnxSource, mel_config: MelConfig, *,
                 read: Checkpoint | None = None, opened: OnnxEngine | None = None) -> None:
        self.path = path
        self.source = source  # without tensors: what the table reads (type and architecture)
        self.mel_config = mel_config
        self.weights = None if isinstance(source, OnnxSource) else WeightsFile.at(path)
        self._read = read      # the checkpoint with its tensors, until the first engine
        self._opened = opened  # the exported file's engine, until the vocoder takes it

    def vocoder(self, choice: EngineChoice, *, denoise: bool = False,
                cache_dir: Path | None = None) -> Vocoder:
        """A :class:`Vocoder` holding ``choice``'s first engine (its other, where it differs,
        is built when first needed), with NVIDIA's denoiser when ``denoise``, and the
        batching ``synth`` uses on the device."""
        pick = choice.first
        read, self._read = self._read, None
        opened, self._opened = self._opened, None
        if isinstance(self.source, OnnxSource):
            engine = opened if opened is not None else build_engine(pick, self.source)
        elif read is not None:
            engine = _engine_from(read, pick, cache_dir)
        else:
            engine = _engine_from(self._weights_file().read(), pick, cache_dir)
        del read  # the tensors: the engine holds the weights now
        denoiser = _denoiser_for(engine) if denoise else None
        batch = BatchOptions.for_device(pick.device, engine.config)  # synth's defaults
        return Vocoder(engine, self.source, self.mel_config, denoiser, batch, path=self.path,
                       weights=self.weights, choice=choice, cache_dir=cache_dir)

    def _weights_file(self) -> WeightsFile:
        assert self.weights is not None  # a checkpoint's source always has its file
        return self.weights


def open_model_file(spec: str, device: torch.device, *, settings: Settings,
                    progress: Any = None, threads: int | None = None) -> ModelFile:
    """Resolve ``spec`` (a registry name, fetched first unless offline, reporting to
    ``progress``; or a path) and read it: a checkpoint's weights (held until the vocoder is
    built), or an exported file checked and opened by onnxruntime for ``device`` (with
    ``threads`` intra-op threads where given), with the mel settings it expects."""
    path = Path(ensure_checkpoint(spec, settings, progress))
    entry = registry_entry_for(spec, settings)
    if is_onnx_file(path):  # a `waveglow export` file: onnxruntime, its precision built in
        exported, engine = open_onnx(path, device, threads)
        return ModelFile(path, exported, mel_config_for(exported, entry), opened=engine)
    read = read_checkpoint(path)
    source = dataclasses.replace(read, state_dict={})  # the architecture and metadata
    return ModelFile(path, source, mel_config_for(source, entry), read=read)


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

    ``choice`` is the selection table's decision
    (:class:`~waveglow_cli.engines.select.EngineChoice`): the engine for sampled noise and the
    one for sigma 0.  Where they differ (``precision="auto"`` on a CPU with native bf16: bf16
    for sampled noise, float32 at sigma 0, as ``synth`` picks per run) the vocoder holds
    both, each built when a call first needs it, and every call (:meth:`__call__`,
    :meth:`stream`, :meth:`synthesizer`) runs on the one for its sigma: :meth:`engine_for`.
    ``engine`` is the one built at load (:attr:`EngineChoice.first`; without a ``choice`` it
    serves every sigma), ``denoiser`` its NVIDIA bias-spectrum denoiser when asked for (each
    engine gets its own).  ``source`` is the checkpoint, without its tensors where
    ``weights`` says which file to read them from again (so a loaded vocoder keeps one copy,
    its engines'), or the :class:`~waveglow_cli.engines.onnx.OnnxSource` of an exported file."""

    def __init__(self, engine: Engine, source: Checkpoint | OnnxSource, mel_config: MelConfig,
                 denoiser: Denoise | None = None, batch: BatchOptions | None = None,
                 path: Path | None = None, *, weights: WeightsFile | None = None,
                 choice: EngineChoice | None = None, cache_dir: Path | None = None) -> None:
        self.source = source
        self.mel_config = mel_config
        self.batch = batch or BatchOptions()
        self.path = path  # the file read (None: built in memory)
        self.weights = weights
        self.choice = choice
        self.cache_dir = cache_dir  # the compiled engine's code
        self._first = choice.first if choice is not None else None
        self._engines: dict[EnginePick | None, tuple[Engine, Denoise | None]] = {
            self._first: (engine, denoiser)}
        self._building = threading.Lock()  # a server's worker and its event loop may both ask
        self._float32_model: WaveGlow | None = None  # built for score() when the engine has none
        self._sha256: str | None = None

    @property
    def engine(self) -> Engine:
        """The engine built at load: for sampled noise, unless only sigma 0 was expected."""
        return self._engines[self._first][0]

    @property
    def denoiser(self) -> Denoise | None:
        return self._engines[self._first][1]

    @property
    def checkpoint(self) -> Checkpoint | OnnxSource:
        """The older name of :attr:`source`."""
        return self.source

    def engine_for(self, sigma: float) -> Engine:
        """The engine that synthesises at ``sigma``: the one built at load, or the table's
        other pick (float32 at sigma 0 beside bf16 for sampled noise), built from the weights
        the first time it is needed and kept."""
        return self._engine_and_denoiser(sigma)[0]

    def _engine_and_denoiser(self, sigma: float) -> tuple[Engine, Denoise | None]:
        pick = self.choice.for_sigma(sigma) if self.choice is not None else None
        if pick not in self._engines:
            with self._building:
                if pick not in self._engines:
                    assert pick is not None  # without a choice the one engine serves all
                    engine = self._build(pick, self.cache_dir)
                    denoiser = _denoiser_for(engine) if self.denoiser is not None else None
                    self._engines[pick] = (engine, denoiser)
        return self._engines[pick]

    def _build(self, pick: EnginePick, cache_dir: Path | None) -> Engine:
        """The engine ``pick`` built from the weights: read from the file again (or this
        vocoder's in-memory checkpoint)."""
        if self.weights is not None:
            return _engine_from(self.weights.read(), pick, cache_dir)
        return build_engine(pick, self._float32_weights("another engine"), cache_dir)

    def _float32_weights(self, purpose: str) -> WaveGlow:
        """A float32 model on the CPU from the checkpoint's weights, or a UsageError naming
        ``purpose`` where there are none (an exported file)."""
        if self.weights is not None:
            return self.weights.read().build_model()
        if isinstance(self.source, Checkpoint) and self.source.state_dict:  # built in memory
            return self.source.build_model()
        raise UsageError(f"{self.path or 'this vocoder'}: {purpose} needs {_NO_WEIGHTS}")

    def sha256(self) -> str | None:
        """The sha256 of the checkpoint file (computed once; None without a file)."""
        if self._sha256 is None and self.path is not None:
            from .checkpoints.download import sha256_file

            self._sha256 = sha256_file(self.path)
        return self._sha256

    @property
    def sample_rate(self) -> int:
        return self.source.sample_rate

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
            self._float32_model = self._float32_weights("the likelihood").to(self.device)
        return self._float32_model

    @property
    def has_weights(self) -> bool:
        """Whether engines can be built from the checkpoint's weights (in memory or in its
        file): an exported file (:class:`~waveglow_cli.engines.onnx.OnnxSource`) has only its
        inference graph."""
        return not isinstance(self.source, OnnxSource)

    def with_engine(self, engine: Engine) -> Vocoder:
        """The same source, mel settings and batching over ``engine``, which then serves
        every sigma, with its own denoiser where this one has one."""
        denoiser = _denoiser_for(engine) if self.denoiser is not None else None
        return Vocoder(engine, self.source, self.mel_config, denoiser, self.batch,
                       path=self.path, weights=self.weights, cache_dir=self.cache_dir)

    def with_precision(self, precision: str | torch.dtype, engine: str = "auto",
                       cache_dir: Path | None = None) -> Vocoder:
        """This vocoder in another precision on the same device, chosen by the selection
        table as :func:`load_vocoder` chooses (``precision`` a name, ``auto`` included, or a
        dtype; ``engine`` and the sigma policy as loaded) and built from the checkpoint's
        weights (read from its file again where only the engines hold them)."""
        if isinstance(self.source, OnnxSource):
            raise UsageError(f"{self.path or 'this vocoder'}: another precision needs "
                             f"{_NO_WEIGHTS}")
        name = precision if isinstance(precision, str) else precision_name(precision)
        first = self.choice.first if self.choice is not None else None
        policy = self.choice.policy if self.choice is not None else SigmaPolicy.EITHER
        choice = choose_engine(self.source, first.device if first else self.device, name,
                               engine, policy)
        cache_dir = cache_dir if cache_dir is not None else self.cache_dir
        chosen = self._build(choice.first, cache_dir)
        denoiser = _denoiser_for(chosen) if self.denoiser is not None else None
        return Vocoder(chosen, self.source, self.mel_config, denoiser, self.batch,
                       path=self.path, weights=self.weights, choice=choice, cache_dir=cache_dir)

    def synthesizer(self, options: SynthesisOptions | None = None,
                    batch: BatchOptions | None = None) -> Synthesizer:
        """A :class:`Synthesizer` over the engine (and its denoiser) for ``options.sigma``."""
        options = options or SynthesisOptions()
        engine, denoiser = self._engine_and_denoiser(options.sigma)
        return Synthesizer(engine, options, batch or self.batch, denoiser)

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
        runner = Synthesizer(self.engine_for(sigma), SynthesisOptions(sigma=sigma, seed=seed),
                             self.batch)
        items = [(str(i), batch[i].numpy()) for i in range(batch.size(0))]
        results = dict(runner.run(items))
        rows = []
        for key, _ in items:
            result = results[key]
            if isinstance(result, Exception):
                raise result
            rows.append(torch.from_numpy(result))
        out = torch.stack(rows)
        return out[0] if single else out

    def stream(self, mel: np.ndarray | torch.Tensor, sigma: float = 0.6, seed: int | None = None,
               key: str = "", denoiser_strength: float = 0.0,
               first_piece: int = FIRST_PIECE_FRAMES) -> Iterator[np.ndarray]:
        """One (n_mels, F) mel -> float32 audio pieces, front to back, as they are made: the
        first of ``first_piece`` frames (0: the whole item at once), then growing.  Joined they
        are the F * hop samples ``waveglow synth`` writes for the same seed and key (its noise
        rule: :func:`~waveglow_cli.synthesis.noise.item_seed`); not clipped.  Raises the item's
        error (NaN audio ...) where it happens."""
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
                 progress: Any = None, engine: str = "auto",
                 sigma: SigmaPolicy = SigmaPolicy.EITHER) -> Vocoder:
    """Load a checkpoint (or exported ONNX file) by registry name or path and return a
    :class:`Vocoder`.

    A registry checkpoint not yet cached is fetched first (unless offline), reporting to
    ``progress`` (see :mod:`waveglow_cli.progress`; None: silent).  ``device``: 'auto' (CUDA,
    MPS, CPU) or a name or ``torch.device``.  ``precision``: 'fp32', 'fp16', 'bf16' or 'auto',
    what the command line's ``--precision auto`` means (bf16 for sampled noise and float32 at
    sigma 0 on a CPU with native bf16, float32 elsewhere: see
    :mod:`waveglow_cli.engines.select`); ``dtype``, where given, names the precision instead.
    ``engine``: 'auto', 'eager', 'packed', 'gpu' or 'compiled' (the compiled code is cached
    under the settings' home).  ``sigma``: the noise the calls will bring where it is known
    (:class:`~waveglow_cli.engines.select.SigmaPolicy`): it decides which engine is built now;
    the other, where the precision differs, when a call first needs it.  ``settings``: where
    the cache and registry are (default: from the environment).  ``denoise`` prepares NVIDIA's
    denoiser (used by synthesis with a denoiser strength).  An exported file runs through
    onnxruntime in the precision it was exported in; ``precision`` and ``engine`` do not
    apply to it."""
    settings = settings if settings is not None else Settings.from_env()
    torch_device = pick_device(device) if isinstance(device, str) else device
    if dtype is not None:
        precision = precision_name(dtype)
    model_file = open_model_file(spec, torch_device, settings=settings, progress=progress)
    choice = choose_engine(model_file.source, torch_device, precision, engine, sigma)
    return model_file.vocoder(choice, denoise=denoise, cache_dir=settings.compile_cache)
