"""Setting a run up: the device and mixed precision, and the model to train (a fresh one, a
checkpoint to fine-tune, or the run's own latest checkpoint) with its mel settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import UsageError, WaveGlowError
from ..features.mel import MelConfig
from ..model.waveglow import WaveGlow
from ..settings import Settings, Shard
from .options import TrainOptions
from .rundir import model_path, read_training_state

if TYPE_CHECKING:
    from ..checkpoints.reader import Checkpoint
    from ..checkpoints.registry import RegistryEntry


def pick_training_device(name: str, shard: Shard) -> torch.device:
    """``auto``: this process's LOCAL_RANK GPU under CUDA, else the CPU; ``cuda`` without an
    index also means the local rank's GPU."""
    from ..engines.devices import pick_device

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{shard.local_rank % torch.cuda.device_count()}")
        return torch.device("cpu")
    device = pick_device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{shard.local_rank % torch.cuda.device_count()}")
    return device


def pick_amp(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: float32).

    ``auto`` means mixed precision on CUDA only.  On a CPU, bf16 is opt-in: with native bf16
    matmuls (AMX, AVX512-BF16) it trains 1.4-1.7x faster here (the master weights, the
    optimizer and the loss stay float32); fp16 autocast is not offered on CPUs."""
    if device.type != "cuda":
        if precision == "bf16" and device.type == "cpu":
            return torch.bfloat16
        if precision in ("bf16", "fp16"):
            raise UsageError(f"--precision {precision} needs CUDA; on {device.type} training "
                             "runs in fp32" + (" or bf16" if device.type == "cpu" else ""))
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def training_mel_config(options: TrainOptions, checkpoint: Checkpoint | None,
                        entry: RegistryEntry | None) -> MelConfig:
    """The mel settings the model is trained on: a checkpoint's own (stored with it, else its
    registry entry's), or, for a fresh model, NVIDIA's at the chosen sample rate with the
    model's mel count and hop (fmax capped at Nyquist)."""
    from ..vocoder import mel_config_for

    if checkpoint is not None:
        return mel_config_for(checkpoint, entry)
    return MelConfig(sample_rate=options.sample_rate, n_mels=options.model.n_mel_channels,
                     hop_length=options.model.hop_length,
                     fmax=min(8000.0, options.sample_rate / 2))


@dataclass
class ModelStart:
    """The model a run starts from, with its mel settings, step and (on resume) the saved
    optimizer/scaler/RNG states."""

    model: WaveGlow
    mel_config: MelConfig
    step: int
    state: dict[str, Any] | None
    source: str     # for the start-up note: "a fresh model", "fine-tuning X", "resumed from F"

    def check_mel_fits(self) -> None:
        mel, config = self.mel_config, self.model.config
        if mel.hop_length != config.hop_length or mel.n_mels != config.n_mel_channels:
            raise UsageError(f"mel settings (hop {mel.hop_length}, {mel.n_mels} mels) "
                             f"do not fit the model (hop {config.hop_length}, "
                             f"{config.n_mel_channels} mels)")


def _model_of(checkpoint: Checkpoint) -> WaveGlow:
    model = WaveGlow(checkpoint.config)
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model


def start_model(options: TrainOptions, run_dir: Path, resume_step: int | None,
                settings: Settings) -> ModelStart:
    """The run's latest checkpoint (``resume_step``), the checkpoint of --from (fetched if it
    is a registry name), or a fresh model of ``options.model`` seeded by ``options.seed``."""
    from ..checkpoints.reader import read_checkpoint

    if resume_step is not None:
        checkpoint = read_checkpoint(model_path(run_dir, resume_step))
        state = read_training_state(run_dir, resume_step)
        return ModelStart(_model_of(checkpoint), training_mel_config(options, checkpoint, None),
                          int(state["step"]), state,
                          f"resumed from {model_path(run_dir, resume_step)}")
    if options.init_from is not None:
        from ..checkpoints.cache import ensure_checkpoint, reword_way_forward
        from ..vocoder import registry_entry_for

        try:
            path = ensure_checkpoint(options.init_from, settings)
        except WaveGlowError as e:  # its way forward names --from's value, not -c
            raise reword_way_forward(e, "argument") from None
        checkpoint = read_checkpoint(path)
        entry = registry_entry_for(options.init_from, settings)
        return ModelStart(_model_of(checkpoint), training_mel_config(options, checkpoint, entry),
                          0, None, f"fine-tuning {options.init_from}")
    torch.manual_seed(options.run_seed())
    model = WaveGlow(options.model)
    return ModelStart(model, training_mel_config(options, None, None), 0, None, "a fresh model")
