"""From mels to audio with a loaded model: noise, exact batching, chunking, denoising.

Exactness: every item's audio is, up to float rounding, what synthesising it alone gives.

* Noise for an item depends only on (seed, the item's key) and is drawn on the CPU in float32
  in the layout :meth:`WaveGlow.infer` takes, once for the whole item, so it is indexed by
  position: the same whatever the device, batch, order, chunking or number of workers.
* Items of a batch are zero-padded to the longest and masked inside every WN layer (see
  :meth:`WaveGlow.infer`), so padding never leaks through the dilated convolutions; zero mel
  frames after an item's end do not touch its first frames x hop samples.
* Long items are cut into pieces whose inputs carry ``margin`` frames of real context on each
  side.  Each flow's WN sees ``receptive_field_steps`` grouped steps each way, so an edge can
  only change outputs within n_flows x that distance (plus the upsampler's kernel); the margin
  covers it and only the interior of each piece is kept.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .model import WaveGlow, WaveGlowConfig

Denoise = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class SynthesisOptions:
    sigma: float = 0.6              # NVIDIA's recommended inference sigma (README: -s 0.6)
    seed: int | None = None
    denoiser_strength: float = 0.0  # the reference inference.py's default: no denoising

    def __post_init__(self) -> None:
        if not self.sigma >= 0:
            raise ValueError(f"sigma={self.sigma} must be >= 0")
        if not self.denoiser_strength >= 0:
            raise ValueError(f"denoiser_strength={self.denoiser_strength} must be >= 0")


@dataclass(frozen=True)
class BatchOptions:
    batch_size: int = 8          # items (or pieces) per forward pass
    max_frames: int = 2048       # longest piece, context included (bounds memory per item)
    batch_frames: int = 16384    # padded frames per batch (the memory budget)

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_frames", "batch_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


def context_margin(config: WaveGlowConfig) -> int:
    """Frames of context a piece needs on each side for its interior to be exact."""
    steps = config.n_flows * config.receptive_field_steps()
    samples = steps * config.n_group + config.upsample_kernel
    return math.ceil(samples / config.hop_length)


# ---------------------------------------------------------------------------------------------
# Noise


def item_seed(seed: int, key: str) -> int:
    """A 63-bit seed from (seed, key): stable across runs, platforms and Python versions."""
    digest = hashlib.sha256(f"waveglow-noise:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def item_noise(model: WaveGlow, frames: int, seed: int | None, key: str) -> torch.Tensor:
    """Standard-normal noise (G, T) for one whole item, on the CPU."""
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(item_seed(seed, key))
    return torch.randn(model.noise_shape(1, frames), generator=generator)[0]


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass(frozen=True)
class Piece:
    """Output frames [start, end) of item ``item``, computed from input frames [lo, hi)."""

    item: int
    start: int
    end: int
    lo: int
    hi: int

    @property
    def frames(self) -> int:
        return self.hi - self.lo


def plan_pieces(item: int, frames: int, max_frames: int, margin: int) -> list[Piece]:
    """One piece for an item that fits ``max_frames``; else overlapping pieces with context."""
    if frames <= max_frames:
        return [Piece(item, 0, frames, 0, frames)]
    core = max_frames - 2 * margin
    if core < margin:
        raise ValueError(f"max_frames={max_frames} is too small for chunking: it must be at least "
                         f"{3 * margin} frames (3 x the {margin}-frame context margin)")
    pieces = []
    for start in range(0, frames, core):
        end = min(frames, start + core)
        pieces.append(Piece(item, start, end, max(0, start - margin), min(frames, end + margin)))
    return pieces


def plan_batches(pieces: list[Piece], options: BatchOptions) -> list[list[Piece]]:
    """Longest first, greedily grouped while the batch stays within both limits."""
    batches: list[list[Piece]] = []
    for piece in sorted(pieces, key=lambda p: (-p.frames, p.item, p.start)):
        if batches:
            batch = batches[-1]
            longest = batch[0].frames  # sorted: the first piece is the longest
            if len(batch) < options.batch_size and longest * (len(batch) + 1) <= options.batch_frames:
                batch.append(piece)
                continue
        batches.append([piece])
    return batches


# ---------------------------------------------------------------------------------------------
# Running


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA, then MPS, then CPU; explicit names are checked for availability."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} "
                             "CUDA device(s) exist")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' requested but MPS is not available")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AMX or AVX512-BF16) and oneDNN
    can run the fast path's fused products; elsewhere bf16 would be emulated and slower."""
    import torch.cpu

    from .fastpath import onednn_available

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        native = any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except RuntimeError:
        native = False
    return native and onednn_available(torch.bfloat16)


def pick_dtype(precision: str, device: torch.device, sigma: float | None = None) -> torch.dtype:
    """The compute dtype for ``--precision``.

    ``auto`` is bf16 (the CPU fast path, about 4x faster) on a CPU with native bf16 matrix
    products when noise is sampled (``sigma`` > 0): its rounding sits about 40-50 dB below the
    signal, far under the sampled noise itself.  Everywhere else ``auto`` is float32, and always
    at ``sigma`` 0, the deterministic mode that is compared against NVIDIA's reference: float32
    matches it to float rounding, reduced precision cannot.  GPUs stay float32 under ``auto``
    until their reduced-precision quality and speed are measured here; fp16/bf16 are taken on
    any device when asked for."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision == "auto":
        if device.type == "cpu" and sigma is not None and sigma > 0 and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if precision not in table:
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    return table[precision]


@dataclass
class _Pending:
    key: str
    frames: int
    z: torch.Tensor
    mel: torch.Tensor
    audio: np.ndarray
    remaining: int
    error: Exception | None = None


@dataclass
class Synthesizer:
    """Batched, chunked synthesis of many items; yields each item's audio when it is complete."""

    model: WaveGlow
    options: SynthesisOptions = field(default_factory=SynthesisOptions)
    batch: BatchOptions = field(default_factory=BatchOptions)
    denoiser: Denoise | None = None

    def __post_init__(self) -> None:
        config = self.model.config
        self.margin = context_margin(config)
        # Chunking needs whole grouped steps per frame to slice the noise by frame.
        self.can_chunk = config.hop_length % config.n_group == 0
        param = next(self.model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def run(self, items: Iterable[tuple[str, np.ndarray]]
            ) -> Iterator[tuple[str, np.ndarray | Exception]]:
        """``items`` are (key, (n_mels, frames) float32 mel); yields (key, float32 audio of
        frames * hop samples, not clipped) or (key, the exception that failed it)."""
        pending: dict[int, _Pending] = {}
        pieces: list[Piece] = []
        for index, (key, mel) in enumerate(items):
            frames = int(mel.shape[1])
            max_frames = self.batch.max_frames if self.can_chunk else max(frames, 1)
            item_pieces = plan_pieces(index, frames, max_frames, self.margin)
            pending[index] = _Pending(
                key, frames, item_noise(self.model, frames, self.options.seed, key),
                torch.as_tensor(mel, dtype=torch.float32),
                np.zeros(frames * self.model.config.hop_length // self.model.config.n_group
                         * self.model.config.n_group, dtype=np.float32),
                len(item_pieces))
            pieces += item_pieces
        for batch in plan_batches(pieces, self.batch):
            yield from self._run_batch(batch, pending)

    def _run_batch(self, batch: list[Piece], pending: dict[int, _Pending]
                   ) -> Iterator[tuple[str, np.ndarray | Exception]]:
        try:
            outputs = self._infer_with_retry(batch, pending)
        except Exception as e:  # noqa: BLE001 - an item's failure must not stop the others
            outputs = [e] * len(batch)
        for piece, out in zip(batch, outputs):
            item = pending[piece.item]
            if isinstance(out, Exception):
                item.error = item.error or out
            else:
                hop = self.model.config.hop_length
                target = item.audio[piece.start * hop:piece.end * hop]
                source = out[(piece.start - piece.lo) * hop:][:target.size]
                target[:source.size] = source
            item.remaining -= 1
            if item.remaining == 0:
                del pending[piece.item]
                yield item.key, item.error if item.error else self._finish(item.audio)

    def _finish(self, audio: np.ndarray) -> np.ndarray:
        if self.denoiser is not None and self.options.denoiser_strength > 0:
            tensor = torch.from_numpy(audio).to(self.device)
            audio = self.denoiser(tensor[None], self.options.denoiser_strength)[0].cpu().numpy()
        return audio

    def _infer_with_retry(self, batch: list[Piece], pending: dict[int, _Pending]
                          ) -> list[np.ndarray | Exception]:
        """Run a batch; on CUDA out-of-memory, halve it and try again."""
        try:
            return self._infer(batch, pending)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(batch) == 1:
                return [MemoryError("out of GPU memory even for a batch of one; lower --max-frames")]
            half = len(batch) // 2
            return (self._infer_with_retry(batch[:half], pending)
                    + self._infer_with_retry(batch[half:], pending))

    @torch.inference_mode()
    def _infer(self, batch: list[Piece], pending: dict[int, _Pending]) -> list[np.ndarray]:
        config = self.model.config
        steps_per_frame = config.hop_length // config.n_group
        longest = max(p.frames for p in batch)
        mel = torch.zeros(len(batch), config.n_mel_channels, longest)
        z = torch.zeros(self.model.noise_shape(len(batch), longest))
        for row, piece in enumerate(batch):
            item = pending[piece.item]
            mel[row, :, :piece.frames] = item.mel[:, piece.lo:piece.hi]
            if self.can_chunk:
                z[row, :, :piece.frames * steps_per_frame] = \
                    item.z[:, piece.lo * steps_per_frame:piece.hi * steps_per_frame]
            else:  # whole items only
                z[row, :, :item.z.size(1)] = item.z
        lengths = torch.tensor([p.frames for p in batch])
        mask_lengths = None if len(batch) == 1 else lengths
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            # bf16 on the CPU: (time, channels) matmuls (see fastpath); float32 stays exact.
            from .fastpath import fast_path_for

            audio = fast_path_for(self.model).infer(mel, sigma=self.options.sigma, z=z,
                                                    lengths=mask_lengths)
        else:
            audio = self.model.infer(mel.to(self.device, self.dtype), sigma=self.options.sigma,
                                     z=z, lengths=mask_lengths)
        audio = audio.float().cpu().numpy()
        return [audio[row, :p.frames * config.hop_length] for row, p in enumerate(batch)]


def synthesize(model: WaveGlow, mel: np.ndarray | torch.Tensor, options: SynthesisOptions,
               key: str = "", denoiser: Denoise | None = None,
               batch: BatchOptions | None = None) -> np.ndarray:
    """One (n_mels, frames) mel -> float32 audio of frames * hop samples (not clipped)."""
    mel_np = mel.detach().cpu().float().numpy() if isinstance(mel, torch.Tensor) else mel
    runner = Synthesizer(model, options, batch or BatchOptions(), denoiser)
    [(_, audio)] = list(runner.run([(key, np.asarray(mel_np, dtype=np.float32))]))
    if isinstance(audio, Exception):
        raise audio
    return audio
