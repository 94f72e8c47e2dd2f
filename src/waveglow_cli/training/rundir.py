"""The run folder::

    run.json                         the run's settings (what --resume falls back to)
    metrics.jsonl                    one JSON object per logged step
    step_000100.safetensors          weights in our checkpoint format (usable by synth)
    step_000100.state.pt             optimizer, step and RNG states (plain tensors/dicts)
    tensorboard/                     TensorBoard scalars (--tensorboard)

Checkpoint file names and steps, writing and reading a checkpoint set, run.json, the
truncation of metrics.jsonl on resume, and the RNG states saved with each checkpoint.

A run folder is read as untrusted as any input (it may be shared, copied from elsewhere, or
damaged): each of its files is opened once, non-blocking, checked by ``fstat`` of what was
opened (a regular file, within a cap) and read from that descriptor, so ``/dev/zero``, a FIFO
or a name swapped meanwhile ends in one line naming the file (:class:`TrainingError`).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ..errors import TrainingError, UsageError
from ..features.mel import MelConfig
from ..fileio import atomic_write, open_side_file, read_side_text, size_text, write_json
from ..model.waveglow import WaveGlow, WaveGlowConfig
from ..settings import Shard
from .options import MODEL_FLAGS, RESUMABLE, TrainOptions

STATE_FORMAT = "waveglow-cli-train-state"
STATE_VERSION = 1
CHECKPOINT_RE = re.compile(r"^step_(\d+)\.safetensors$")
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

# Caps on what is read back from a run folder.  run.json is a few KB (its largest part is the
# DATA list, which a command line bounds to a few MB).  metrics.jsonl grows by one record of
# about 250 bytes per logged step: it is streamed line by line, each line bounded, and 1 GiB
# is some 4 million logged steps.  A training state holds two Adam moments per weight: about
# twice its weights file, so four times it (plus room for the small states) is the cap.
MAX_RUN_FILE_BYTES = 16 * 1024**2
MAX_METRICS_BYTES = 1024**3
MAX_METRICS_LINE_BYTES = 64 * 1024
STATE_BYTES_PER_WEIGHT_BYTE = 4
STATE_EXTRA_BYTES = 64 * 1024**2


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in ``run_dir`` (weights and state both present), sorted.
    A state that is there but is no regular file counts: reading it refuses it with one line,
    rather than a resume silently starting over from an older step."""
    steps = []
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            match = CHECKPOINT_RE.match(path.name)
            if match and os.path.lexists(state_path(run_dir, int(match.group(1)))):
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
    if not resume and (checkpoint_steps(run_dir) or os.path.lexists(run_dir / METRICS_FILE)):
        raise UsageError(f"-o {run_dir}: holds a training run already; pass --resume to "
                         "continue it, or choose another folder")


def read_run_file(run_dir: Path) -> dict[str, Any]:
    """The run.json of a run being resumed ({} when there is none), its fields checked."""
    run_file = run_dir / RUN_FILE
    if not os.path.lexists(run_file):
        return {}
    text = read_side_text(run_file, "run settings file", MAX_RUN_FILE_BYTES,
                          error=TrainingError)
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise TrainingError(f"{run_file}: unreadable ({reason})") from None
    problem = run_record_problem(record)
    if problem:
        raise TrainingError(f"{run_file}: damaged ({problem}); fix it, or move it away and "
                            "give DATA and the options again")
    return record


# What run.json's fields must be (what --resume takes from it), by type: an integer (never a
# bool), a number, a text, a flag, a list of texts; "?" also allows null.
_RECORDED_TYPES: dict[str, str] = {
    "data": "texts", "val": "text?", "segment_length": "int", "batch_size": "int",
    "lr": "number", "lr_schedule": "text", "lr_min": "number", "warmup_steps": "int",
    "sigma": "number", "grad_clip": "number?", "seed": "int?", "checkpoint_every": "int",
    "keep": "int", "val_every": "int?", "log_every": "int", "precision": "text",
    "max_steps": "int", "tensorboard": "flag", "sample_rate": "int",
    **dict.fromkeys(MODEL_FLAGS, "int")}
_TYPE_NAMES = {"int": "an integer", "number": "a number", "text": "a text", "flag": "true or "
               "false", "texts": "a list of texts"}


def _is_kind(value: Any, kind: str) -> bool:
    if kind.endswith("?"):
        return value is None or _is_kind(value, kind[:-1])
    if isinstance(value, bool):
        return kind == "flag"
    return {"int": isinstance(value, int), "number": isinstance(value, (int, float)),
            "text": isinstance(value, str), "flag": False,
            "texts": isinstance(value, list) and all(isinstance(v, str) for v in value)}[kind]


def run_record_problem(record: Any) -> str:
    """What is wrong with a run.json record ('' when nothing): a field a resume would use
    that is missing its shape or type."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for key in ("options", "architecture", "mel"):
        if not isinstance(record.get(key, {}), dict):
            return f"{key!r} is not an object"
    for name, value in record.get("options", {}).items():
        kind = _RECORDED_TYPES.get(name)
        if kind is not None and not _is_kind(value, kind):
            return f"options.{name} is not {_TYPE_NAMES[kind.rstrip('?')]}"
    for key, kind in (("init_from", "text?"), ("world_size", "int?")):
        if not _is_kind(record.get(key), kind):
            return f"{key} is not {_TYPE_NAMES[kind.rstrip('?')]}"
    return ""


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
    """Keep the records of steps <= ``last_step`` (a resumed run writes the rest again).

    Streamed line by line into the replacement (at most :data:`MAX_METRICS_BYTES` in all,
    a line longer than :data:`MAX_METRICS_LINE_BYTES` is damage and dropped, as a line that
    is no record is), so memory stays bounded however long training ran.  The file written
    is a regular file of ours whatever was under the name (a link is replaced, not
    followed); anything but a regular file there is refused with one line."""
    if not os.path.lexists(path):
        return
    fd, _ = open_side_file(path, "metrics file", MAX_METRICS_BYTES, error=TrainingError,
                           too_large="move it away to resume")

    def write_kept(tmp: Path) -> None:
        with os.fdopen(fd, "rb", closefd=False) as source, tmp.open("wb") as out:
            for line in _metrics_lines(source, path):
                if _record_step(line) <= last_step:
                    out.write(line.rstrip(b"\r\n") + b"\n")

    try:
        atomic_write(path, write_kept, overwrite=True)
    finally:
        os.close(fd)


def _metrics_lines(source: IO[bytes], path: Path) -> Iterator[bytes]:
    """The lines of metrics.jsonl, each at most :data:`MAX_METRICS_LINE_BYTES` (longer ones
    are skipped to their end), all together at most :data:`MAX_METRICS_BYTES` (a file that
    keeps growing while it is read is refused)."""
    total = 0
    skipping = False  # inside a line longer than the cap: dropped up to its end
    while line := source.readline(MAX_METRICS_LINE_BYTES + 1):
        total += len(line)
        if total > MAX_METRICS_BYTES:
            raise TrainingError(f"{path}: cannot read metrics file (it grew beyond "
                                f"{size_text(MAX_METRICS_BYTES)} while being read)")
        ended = line.endswith(b"\n")
        if skipping:
            skipping = not ended
        elif ended or len(line) <= MAX_METRICS_LINE_BYTES:
            yield line
        else:
            skipping = True


def _record_step(line: bytes) -> float:
    """The step of a metrics record; +inf for a line that is no record (it is dropped)."""
    try:
        step = json.loads(line)["step"]
        if isinstance(step, int) and not isinstance(step, bool):
            return step
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):
        pass
    return float("inf")


def rng_state() -> dict[str, Any]:
    """RNG states as plain tensors and numbers (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)  # the default (numpy's stub says otherwise)
    assert isinstance(np_state, tuple)  # numpy's global RandomState is an MT19937: a tuple
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np_state
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
    """The optimizer, scaler, step and RNG states saved with checkpoint ``step``.

    Read as any checkpoint is (see :mod:`waveglow_cli.checkpoints.torch_container`): our own
    container reader and allow-listed unpickler, which never allocates more than the file holds,
    from the one descriptor that was checked; nothing of the file stays mapped afterwards."""
    from ..checkpoints.torch_container import read_torch_file

    path = state_path(run_dir, step)
    try:
        weights = model_path(run_dir, step).stat().st_size
    except OSError:
        weights = 0
    cap = STATE_BYTES_PER_WEIGHT_BYTE * weights + STATE_EXTRA_BYTES
    fd, _ = open_side_file(path, "training state file", cap, error=TrainingError,
                           too_large=f"the state of {model_path(run_dir, step).name} is about "
                                     "twice its size")
    with os.fdopen(fd, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # torch.save's zip container, as we write it
            raise TrainingError(f"{path}: not a training state file")
        f.seek(0)
        try:
            state, _ = read_torch_file(f, "torch-zip")
        except Exception as e:  # noqa: BLE001 - any failure to parse untrusted bytes
            reason = getattr(e, "reason", None) or str(e).split("\n")[0][:160]
            raise TrainingError(f"{path}: unreadable training state file "
                                f"({reason or type(e).__name__})") from None
        state = _detached(state)
    problem = state_problem(state)
    if problem:
        raise TrainingError(f"{path}: not a training state file ({problem})")
    return state


def _detached(obj: Any) -> Any:
    """``obj`` with every tensor copied out of the file's mapping (and mappings as dicts)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {key: _detached(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_detached(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(_detached(value) for value in obj)
    return obj


def state_problem(state: Any) -> str:
    """What keeps ``state`` from being the state :func:`save_checkpoint_set` writes ('' if
    nothing): its format, step and the shape of its optimizer and RNG parts."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return f"no {STATE_FORMAT!r} record"
    if not isinstance(state.get("step"), int) or isinstance(state["step"], bool) \
            or state["step"] < 0:
        return "its step is not a count"
    optimizer, rng = state.get("optimizer"), state.get("rng")
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)):
        return "no optimizer state"
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor)
            and isinstance(rng.get("python"), dict) and isinstance(rng.get("numpy"), dict)):
        return "no random number generator states"
    if state.get("scaler") is not None and not isinstance(state["scaler"], dict):
        return "its gradient scaler state is not a mapping"
    return ""


def save_checkpoint_set(run_dir: Path, step: int, model: WaveGlow, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, mel_config: MelConfig, keep: int) -> Path:
    """Write the training state, then the weights (both atomically), then drop all but the
    newest ``keep`` checkpoints.  The weights file appearing last marks a complete set."""
    from ..checkpoints.reader import save_checkpoint

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
