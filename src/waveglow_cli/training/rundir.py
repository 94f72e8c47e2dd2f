"""The run folder::

    run.json                         the run's settings (what --resume falls back to)
    metrics.jsonl                    one JSON object per logged step
    step_000100.safetensors          weights in our checkpoint format (usable by synth)
    step_000100.state.pt             optimizer, step and RNG states (plain tensors/dicts)
    tensorboard/                     TensorBoard scalars (--tensorboard)

Checkpoint file names and steps, writing and reading a checkpoint set, run.json, the
truncation of metrics.jsonl on resume, and the RNG states saved with each checkpoint.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TrainingError, UsageError
from ..fileio import atomic_write, write_json
from ..mel import MelConfig
from ..model import WaveGlow, WaveGlowConfig
from ..settings import Shard
from .options import MODEL_FLAGS, RESUMABLE, TrainOptions

STATE_FORMAT = "waveglow-cli-train-state"
STATE_VERSION = 1
CHECKPOINT_RE = re.compile(r"^step_(\d+)\.safetensors$")
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in ``run_dir`` (weights and state both present), sorted."""
    steps = []
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            match = CHECKPOINT_RE.match(path.name)
            if match and state_path(run_dir, int(match.group(1))).is_file():
                steps.append(int(match.group(1)))
    return sorted(steps)


def model_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"step_{step:06d}.safetensors"


def state_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"step_{step:06d}.state.pt"


def refuse_unusable_run_dir(run_dir: Path, resume: bool) -> None:
    """-o must be a folder (or not exist); without --resume it must not hold a run already."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"-o {run_dir}: exists and is not a folder")
    if not resume and (checkpoint_steps(run_dir) or (run_dir / METRICS_FILE).exists()):
        raise UsageError(f"-o {run_dir}: holds a training run already; pass --resume to "
                         "continue it, or choose another folder")


def read_run_file(run_dir: Path) -> dict[str, Any]:
    """The run.json of a run being resumed ({} when there is none)."""
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        return {}
    try:
        return json.loads(run_file.read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise TrainingError(f"{run_file}: unreadable ({e})") from None


def _resolved(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def run_record(options: TrainOptions, config: WaveGlowConfig, mel_config: MelConfig,
               shard: Shard) -> dict[str, Any]:
    """What run.json holds: the options a resume falls back to, with the architecture of the
    model actually trained (from --from or the checkpoint, not the flags' defaults)."""
    recorded = {**{name: getattr(options, name) for name in RESUMABLE},
                **{name: getattr(config, name) for name in MODEL_FLAGS},
                "sample_rate": mel_config.sample_rate}
    recorded["data"] = [_resolved(p) for p in options.data]
    if options.val is not None and Path(options.val).exists():
        recorded["val"] = _resolved(options.val)
    init_from = options.init_from
    return {"options": recorded,
            "init_from": (_resolved(init_from) if init_from and Path(init_from).expanduser()
                          .exists() else init_from),
            "architecture": config.to_dict(),
            "mel": mel_config.to_dict(), "world_size": shard.world}


def write_run_file(run_dir: Path, record: dict[str, Any]) -> None:
    write_json(run_dir / RUN_FILE, record)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the records of steps <= ``last_step`` (a resumed run writes the rest again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text("utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    text = "".join(f"{line}\n" for line in kept)
    atomic_write(path, lambda tmp: tmp.write_text(text, "utf-8"), overwrite=True)


def rng_state() -> dict[str, Any]:
    """RNG states as plain tensors and numbers (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def read_training_state(run_dir: Path, step: int) -> dict[str, Any]:
    """The optimizer, scaler, step and RNG states saved with checkpoint ``step``."""
    path = state_path(run_dir, step)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path}: not a training state file")
    return state


def save_checkpoint_set(run_dir: Path, step: int, model: WaveGlow, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, mel_config: MelConfig, keep: int) -> Path:
    """Write the training state, then the weights (both atomically), then drop all but the
    newest ``keep`` checkpoints.  The weights file appearing last marks a complete set."""
    from ..checkpoint import save_checkpoint

    state = {"format": STATE_FORMAT, "version": STATE_VERSION, "step": step,
             "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict() if scaler.is_enabled() else None,
             "rng": rng_state()}
    atomic_write(state_path(run_dir, step), lambda tmp: torch.save(state, tmp), overwrite=True)
    model.refresh_inverses()  # the inverses follow the weights (they are not saved)
    target = save_checkpoint(model_path(run_dir, step), model,
                             sample_rate=mel_config.sample_rate, mel=mel_config.to_dict(),
                             extra={"step": str(step), "trained_by": "waveglow train"})
    for old in checkpoint_steps(run_dir)[:-keep]:
        model_path(run_dir, old).unlink(missing_ok=True)
        state_path(run_dir, old).unlink(missing_ok=True)
    return target
