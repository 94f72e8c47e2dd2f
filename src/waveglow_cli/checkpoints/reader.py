"""Read any published WaveGlow checkpoint safely; write our own safetensors format.

Supported inputs (all untrusted):

* NVIDIA pickles as ``train.py`` writes them: ``{'model': <glow.WaveGlow>, 'iteration', ...}``
  or ``{'model': ...}`` alone, legacy (pre-1.6) or zip serialization, with or without weight
  norm, in any of the three WN layouts (fused ``cond_layer``; per-layer ``cond_layers``;
  separate ``res_layers``/``skip_layers``), and pickled ``glow_old.WaveGlow`` models;
* plain state dicts, bare or under ``state_dict``/``model``, with or without ``module.``
  prefixes and weight norm, optionally with a ``config``;
* our safetensors files (tensors in the fused layout + JSON metadata).

Pickles go through :mod:`waveglow_cli.checkpoints.safe_pickle` and their containers are parsed by
:mod:`waveglow_cli.checkpoints.torch_container` (never ``torch.load``); nothing from a file is
ever executed, and what a load allocates is bounded by the file's size.
The architecture is read off the tensors; the pickled class (``glow`` vs ``glow_old``) decides
the coupling semantics.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from ..errors import CheckpointError, ContainerError, RefusedPickle, UnsafeGlobal, UnsafePickleError
from ..fileio import open_checked
from ..model.waveglow import WaveGlow, WaveGlowConfig
from .safe_pickle import InertObject
from .torch_container import TAR_REFUSAL, is_tar_header, read_torch_file

FORMAT_NAME = "waveglow-cli"
FORMAT_VERSION = "1"
DEFAULT_SAMPLE_RATE = 22050  # every NVIDIA WaveGlow checkpoint was trained at 22.05 kHz


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read into memory: architecture, fused float32 weights, metadata."""

    config: WaveGlowConfig
    state_dict: dict[str, Tensor]
    sample_rate: int = DEFAULT_SAMPLE_RATE
    mel: dict[str, Any] | None = None  # mel settings stored with the weights, if any
    source_format: str = ""            # human-readable description of what was read
    metadata: dict[str, Any] = field(default_factory=dict)

    def build_model(self, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> WaveGlow:
        """A ready-to-infer model (eval mode, inverses computed from the float32 weights, then
        cast with them)."""
        return self._float32_model().to(device=device, dtype=dtype)

    def _float32_model(self) -> WaveGlow:
        if not self.state_dict:
            raise ValueError("this Checkpoint holds no weights (a loaded Vocoder keeps them in "
                             "its engine only: use Vocoder.model, or read_checkpoint(path))")
        with _NoRandomInit():  # every tensor is loaded next
            model = WaveGlow(self.config)
        model.load_state_dict(self.state_dict, strict=True)
        model.eval()  # inverses computed from the float32 weights, then cast with them
        return model


class _NoRandomInit(torch.overrides.TorchFunctionMode):
    """Skip ``nn.init``'s random fills while building a model whose tensors are all loaded next
    (or whose shapes alone are wanted): for the 256-channel model they cost about as much as
    reading the checkpoint.  A torch function mode is thread-local."""

    _SKIPPED = frozenset({"kaiming_uniform_", "uniform_", "normal_"})

    def __torch_function__(self, func: Callable[..., Any], types: Any,
                           args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
                           ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self._SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> tuple[WaveGlow, Checkpoint]:
    """Read ``path`` and build the model on ``device``."""
    checkpoint = read_checkpoint(path)
    return checkpoint.build_model(device, dtype), checkpoint


# ---------------------------------------------------------------------------------------------
# Reading


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file of any supported format, or raise :class:`CheckpointError`.

    The file is opened once, non-blocking, and what was opened is checked (``fstat``: a
    regular file) and parsed: a name swapped for a FIFO or a device after a check by name
    gains nothing."""
    path = Path(path)

    def refused(reason: str) -> CheckpointError:
        if reason == "is a directory":
            reason = "is a directory, not a checkpoint file"
        return CheckpointError(path, reason)

    fd, st = open_checked(path, refused)
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        os.close(fd)
        raise refused("is a directory" if stat.S_ISDIR(st.st_mode)
                      else "not a regular file (a FIFO, device or socket)")
    with os.fdopen(fd, "rb") as f:
        try:
            head = f.read(512)
        except OSError as e:
            raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
        return _read_opened(path, f, head, st.st_size)


def _read_opened(path: Path, f: BinaryIO, head: bytes, size: int) -> Checkpoint:
    """The checkpoint open as ``f`` (``head``: its first bytes, ``size``: its length)."""
    if size == 0:
        raise CheckpointError(path, "file is empty (an interrupted download?)")
    kind = sniff_format(head, size)
    if kind == "html":
        raise CheckpointError(
            path, "is an HTML page, not a checkpoint (a saved download page, e.g. Google Drive's "
                  "quota or virus-scan notice); download the file again")
    if kind == "tar":
        raise CheckpointError(path, TAR_REFUSAL)
    if kind == "safetensors":
        return _read_safetensors(path, f)
    if kind in ("torch-zip", "torch-legacy"):
        f.seek(0)
        return _read_torch_pickle(path, kind, f)
    if Path(path).suffix.lower() == ".onnx" or (head[:1] == b"\x08" and head[2:3] == b"\x12"):
        # An ONNX ModelProto (ir_version, then producer_name): a `waveglow export` file.
        raise CheckpointError(path, "an ONNX export, not a checkpoint: it holds only the "
                                    "inference graph (synth -c FILE and serve -c FILE run it, "
                                    "info FILE describes it; convert and score need the "
                                    "checkpoint it came from)")
    raise CheckpointError(
        path, f"not a WaveGlow checkpoint (unrecognised file format, first bytes {head[:8]!r})")


def sniff_format(head: bytes, size: int) -> str:
    """'torch-zip', 'torch-legacy', 'safetensors', 'html', 'tar' or 'unknown' from the first
    bytes (512 of them to recognise a tar archive)."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "torch-zip"
    if is_tar_header(head[:512]):  # may well start with '}' or '(' (a member's name)
        return "tar"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 8 + header_len <= size:
            return "safetensors"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<!--", b"<?xml")):
        return "html"
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):  # pickle protocols >= 2 / 0-1
        return "torch-legacy"
    return "unknown"


def _read_torch_pickle(path: Path, kind: str, f: BinaryIO) -> Checkpoint:
    # Our own container reader and unpickler: torch.load would try the legacy tar container,
    # check pickled module source (writing .patch files) and hand TorchScript zips to
    # torch.jit.load (see torch_container).
    try:
        obj, container = read_torch_file(f, kind)
    except UnsafeGlobal as e:
        raise UnsafePickleError(path, e.name) from None
    except RefusedPickle as e:
        raise CheckpointError(path, f"refused to load: {e.reason} (nothing from the file was "
                                    "executed)") from None
    except ContainerError as e:
        raise CheckpointError(path, str(e)) from None
    except MemoryError:
        raise CheckpointError(path, "out of memory while reading it") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of untrusted bytes is "corrupt"
        raise CheckpointError(path, _describe_parse_error(e, kind)) from None
    return _checkpoint_from_object(path, obj, container)


def _describe_parse_error(error: Exception, kind: str) -> str:
    text = str(error).split("\n")[0][:160]
    # struct.error: a fixed-size field (an opcode's argument, a length) cut off by the end.
    if isinstance(error, (EOFError, struct.error)) or "EOF" in text \
            or "central directory" in text or "truncated" in text:
        return "truncated or corrupt checkpoint (the file ends early; an interrupted download?)"
    container = "zip-format torch file" if kind == "torch-zip" else "legacy torch file"
    return f"corrupt or not a torch checkpoint (cannot parse as a {container}: {text})"


def _read_safetensors(path: Path, opened: BinaryIO) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    # safetensors opens by name: the name of the descriptor already checked where the system
    # has one (Linux), so that it reads the same file.
    by_fd = f"/proc/self/fd/{opened.fileno()}"
    name = by_fd if os.path.exists(by_fd) else str(path)
    try:
        with safe_open(name, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(path, f"corrupt safetensors file ({str(e)[:160]})") from None
    hints: dict[str, Any] = {}
    mel = None
    sample_rate = DEFAULT_SAMPLE_RATE
    try:
        if "config" in metadata:
            hints = json.loads(metadata["config"])
        if "mel" in metadata:
            mel = json.loads(metadata["mel"])
        if "sample_rate" in metadata:
            sample_rate = int(metadata["sample_rate"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(path, f"unreadable metadata in safetensors file ({e})") from None
    source = ("waveglow-cli safetensors" if metadata.get("format") == FORMAT_NAME
              else "safetensors state dict")
    return _finish(path, tensors, hints, source, sample_rate=sample_rate, mel=mel,
                   metadata=metadata)


def _checkpoint_from_object(path: Path, obj: Any, container: str) -> Checkpoint:
    """Find the model (a pickled module or a state dict) inside whatever the pickle held."""
    hints: dict[str, Any] = {}
    outer = obj
    for _ in range(3):  # {'model': ...}, {'state_dict': ...}, at most nested a little
        if isinstance(obj, InertObject) or _looks_like_state_dict(obj):
            break
        if isinstance(obj, Mapping):
            if isinstance(obj.get("config"), (Mapping, InertObject)):
                hints.update(_config_hints(obj["config"]))
            inner = next((obj[k] for k in ("model", "state_dict", "waveglow", "generator")
                          if k in obj), None)
            if inner is None:
                break
            obj = inner
        else:
            break
    if isinstance(obj, InertObject):
        type_name = obj.type_name
        if not type_name.endswith(".WaveGlow"):
            raise CheckpointError(path, f"holds a pickled {type_name}, not a WaveGlow model")
        tensors = _module_tensors(obj)
        hints.update(_module_hints(obj))
        source = f"NVIDIA pickle ({type_name}, {container} format)"
    elif _looks_like_state_dict(obj):
        tensors = dict(obj)
        source = f"state dict ({container} format)"
    else:
        what = type(outer).__name__
        keys = ", ".join(map(str, list(outer)[:6])) if isinstance(outer, Mapping) else ""
        raise CheckpointError(
            path,
            f"not a WaveGlow checkpoint (holds a {what}{' with keys ' + keys if keys else ''})")
    return _finish(path, tensors, hints, source)


def _looks_like_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) for k in obj)
            and sum(isinstance(v, Tensor) for v in obj.values()) >= max(1, len(obj) // 2)
            and any(k.endswith("upsample.weight") or ".WN." in f".{k}" for k in obj))


def _module_tensors(module: InertObject, prefix: str = "") -> dict[str, Tensor]:
    """Parameters and buffers of a pickled module tree, by dotted name (like state_dict())."""
    out: dict[str, Tensor] = {}
    state = module.__dict__
    for table in ("_parameters", "_buffers"):
        for name, value in (state.get(table) or {}).items():
            if isinstance(value, Tensor):
                out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, InertObject):
            out.update(_module_tensors(child, f"{prefix}{name}."))
    return out


def _int_attr(obj: Any, name: str) -> int | None:
    value = getattr(obj, name, None) if isinstance(obj, InertObject) else None
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _module_hints(model: InertObject) -> dict[str, Any]:
    hints: dict[str, Any] = {"alternate_halves": model.type_name.split(".")[-2] == "glow_old"}
    for name in ("n_early_every", "n_early_size"):
        if (value := _int_attr(model, name)) is not None:
            hints[name] = value
    upsample = (model.__dict__.get("_modules") or {}).get("upsample")
    if (stride := _int_attr(upsample, "stride")) is not None:
        hints["hop_length"] = stride
    return hints


# Names under which NVIDIA's configs (config.json's waveglow_config / DeepLearningExamples'
# argparse options) and ours store the values that tensors cannot tell.
_HINT_KEYS = {
    "n_early_every": "n_early_every", "n_early_size": "n_early_size",
    "hop_length": "hop_length", "upsample_stride": "hop_length",
    "alternate_halves": "alternate_halves",
    "sampling_rate": "sample_rate", "sample_rate": "sample_rate",
}


def _config_hints(config: Any) -> dict[str, Any]:
    values = config.__dict__ if isinstance(config, InertObject) else dict(config)
    nested = values.get("waveglow_config")
    if isinstance(nested, Mapping):
        values = {**values, **nested}
    return {_HINT_KEYS[k]: v for k, v in values.items()
            if k in _HINT_KEYS and isinstance(v, (int, bool)) and not isinstance(v, float)}


# ---------------------------------------------------------------------------------------------
# Normalising a state dict to our fused, weight-norm-free layout


_PREFIXES = ("module.", "_orig_mod.", "waveglow.", "model.")


def normalize_state_dict(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrapper prefixes, fold weight norm, fuse per-layer cond/res/skip layers."""
    sd: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if not isinstance(value, Tensor):
            continue
        while key.startswith(_PREFIXES) and not key.startswith(("WN.", "upsample.", "convinv.")):
            key = key.split(".", 1)[1]
        # float32 tensors are used as they are (no copy): the model copies them when it loads.
        sd[key] = value.detach().to(torch.float32)
    sd = _fold_weight_norm(sd)
    return _fuse_wn_layers(sd)


def _fold_weight_norm(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = dict(sd)
    pairs = [(k[: -len("weight_g")], "weight_g", "weight_v") for k in sd if k.endswith(".weight_g")]
    pairs += [(k[: -len("parametrizations.weight.original0")],
               "parametrizations.weight.original0", "parametrizations.weight.original1")
              for k in sd if k.endswith(".parametrizations.weight.original0")]
    for prefix, g_name, v_name in pairs:
        g, v = out.pop(prefix + g_name), out.pop(prefix + v_name, None)
        if v is None:
            raise ValueError(f"'{prefix}{g_name}' has no matching '{v_name}'")
        # The same function torch.nn.utils.remove_weight_norm applies: w = g * v / ||v||,
        # the norm taken over every dim but the first.
        out[prefix + "weight"] = torch._weight_norm(v, g, 0)
    return out


_WN_KEY = re.compile(r"^WN\.(\d+)\.(cond_layers|res_layers|skip_layers)\.(\d+)\.(weight|bias)$")


def _fuse_wn_layers(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-layer cond_layers -> one cond_layer; res_layers + skip_layers -> res_skip_layers.

    Concatenating 1x1 convolutions along the output channels computes the same outputs, which
    is what NVIDIA's convert_model.py does too."""
    groups: dict[tuple[int, str], dict[tuple[int, str], Tensor]] = {}
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        match = _WN_KEY.match(key)
        if match:
            k, kind, i, param = match.groups()
            groups.setdefault((int(k), kind), {})[(int(i), param)] = value
        else:
            out[key] = value
    flows = sorted({k for k, _ in groups})
    for k in flows:
        cond = groups.get((k, "cond_layers"))
        if cond:
            n = 1 + max(i for i, _ in cond)
            for param in ("weight", "bias"):
                out[f"WN.{k}.cond_layer.{param}"] = torch.cat([cond[(i, param)] for i in range(n)])
        res, skip = groups.get((k, "res_layers"), {}), groups.get((k, "skip_layers"))
        if skip:
            n = 1 + max(i for i, _ in skip)
            for i in range(n):
                for param in ("weight", "bias"):
                    parts = [res[(i, param)]] if i < n - 1 else []
                    out[f"WN.{k}.res_skip_layers.{i}.{param}"] = torch.cat(
                        [*parts, skip[i, param]])
    return out


def infer_config(sd: Mapping[str, Tensor],
                 hints: Mapping[str, Any] | None = None) -> WaveGlowConfig:
    """The architecture, read off a normalised state dict's tensor shapes."""
    hints = dict(hints or {})
    up = sd["upsample.weight"]
    n_mel, kernel = up.shape[0], up.shape[2]
    flows = sorted({int(m.group(1)) for key in sd if (m := re.match(r"WN\.(\d+)\.", key))})
    if not flows or flows != list(range(len(flows))):
        raise ValueError("flow modules WN.0 ... WN.n are missing or not numbered 0..n-1")
    channels = [sd[f"convinv.{k}.conv.weight"].shape[0] for k in range(len(flows))]
    drops = [(k, channels[k - 1] - channels[k]) for k in range(1, len(channels))
             if channels[k] != channels[k - 1]]
    if drops:
        n_early_every, n_early_size = drops[0]
    else:  # no early output visible: any period past the last flow is equivalent
        n_early_every = hints.get("n_early_every", len(flows))
        n_early_size = hints.get("n_early_size", 0) if n_early_every < len(flows) else 0
    n_layers = len({key.split(".")[3] for key in sd if key.startswith("WN.0.in_layers.")})
    start = sd["WN.0.start.weight"]
    config = WaveGlowConfig(
        n_mel_channels=n_mel,
        n_flows=len(flows),
        n_group=channels[0],
        n_early_every=n_early_every,
        n_early_size=n_early_size,
        n_layers=n_layers,
        n_channels=start.shape[0],
        kernel_size=sd["WN.0.in_layers.0.weight"].shape[2],
        upsample_kernel=kernel,
        # Not in any tensor: NVIDIA always used stride 256 for its 1024 kernel.
        hop_length=int(hints.get("hop_length", 256 if kernel == 1024 else kernel // 4)),
        alternate_halves=bool(hints.get("alternate_halves", False)),
    )
    if config.channels_per_flow() != channels:
        raise ValueError(f"irregular early-output schedule (channels per flow {channels})")
    return config


def _check_shapes(sd: dict[str, Tensor], config: WaveGlowConfig) -> dict[str, Tensor]:
    with _NoRandomInit():  # only the shapes are wanted
        expected = {k: v.shape for k, v in WaveGlow(config).state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        raise ValueError(f"missing tensors: {', '.join(missing[:4])}"
                         + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
    if unexpected:
        raise ValueError(f"unexpected tensors: {', '.join(unexpected[:4])}"
                         + (f" and {len(unexpected) - 4} more" if len(unexpected) > 4 else ""))
    out = {}
    for key, shape in expected.items():
        value = sd[key]
        if value.dim() == len(shape) + 1 and value.shape[-1] == 1:  # Conv2d-shaped (.., k, 1)
            value = value.squeeze(-1)
        if value.shape != shape:
            raise ValueError(
                f"tensor {key} has shape {tuple(value.shape)}, expected {tuple(shape)}")
        if not all_finite(value):
            raise ValueError(f"tensor {key} contains NaN or infinite values")
        out[key] = value
    return out


def all_finite(tensor: Tensor) -> bool:
    """No NaN or infinity in ``tensor``: its minimum and maximum are finite (NaN propagates
    through both).  One reduction: ``torch.isfinite(t).all()`` took 2 s for the 88 M weights of
    NVIDIA's model, this 0.03 s."""
    if tensor.numel() == 0 or not tensor.is_floating_point():
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) and torch.isfinite(high))


def _weight_budget(path: Path) -> int:
    """The most weight bytes a checkpoint file of this size can hold: its size plus a little
    slack (container overhead is already in the size; the slack covers rounding)."""
    return int(path.stat().st_size * 1.1) + (1 << 20)


def _minimum_weights(config: WaveGlowConfig) -> int:
    """A lower bound of the weights (in elements, so bytes at one byte each) a checkpoint of
    ``config`` must store: the upsampler, the WN dilated convolutions and the 1x1 mixes."""
    c = config.n_channels
    return (config.n_mel_channels ** 2 * config.upsample_kernel
            + config.n_flows * config.n_layers * 2 * c * c * config.kernel_size
            + sum(ch * ch for ch in config.channels_per_flow()))


def _finish(path: Path, tensors: Mapping[str, Tensor], hints: Mapping[str, Any], source: str,
            sample_rate: int | None = None, mel: dict[str, Any] | None = None,
            metadata: dict[str, Any] | None = None) -> Checkpoint:
    budget = _weight_budget(path)
    declared = sum(v.numel() * v.element_size() for v in tensors.values() if isinstance(v, Tensor))
    if declared > budget:
        # Tensors sharing one storage could otherwise multiply a small file into gigabytes
        # once normalize/fold copies them.
        raise CheckpointError(path, f"refused to load: its tensors declare {declared} bytes of "
                                    f"weights, more than the file's {path.stat().st_size} bytes "
                                    "hold")
    try:
        sd = normalize_state_dict(tensors)
        if "upsample.weight" not in sd or "WN.0.start.weight" not in sd:
            raise ValueError("no WaveGlow tensors (upsample.weight, WN.0.start.weight) in it")
        arch_hints = {k: v for k, v in hints.items() if k != "sample_rate"}
        config = infer_config(sd, arch_hints)
        if (needed := _minimum_weights(config)) > budget:
            # The shape check builds a model of this architecture: refuse one whose weights
            # cannot be in the file before allocating it.
            raise ValueError(f"the architecture its tensors imply ({config.n_channels} channels, "
                             f"{config.n_layers} layers, {config.n_flows} flows) needs at least "
                             f"{needed} bytes of weights, more than the file holds")
        sd = _check_shapes(sd, config)
    except (ValueError, KeyError, IndexError, RuntimeError) as e:
        message = str(e).strip("'\"")
        raise CheckpointError(path, f"not a usable WaveGlow checkpoint: {message}") from None
    rate = sample_rate or int(hints.get("sample_rate", DEFAULT_SAMPLE_RATE))
    return Checkpoint(config=config, state_dict=sd, sample_rate=rate, mel=mel,
                      source_format=source, metadata=dict(metadata or {}))


# ---------------------------------------------------------------------------------------------
# Writing our own format


def save_checkpoint(path: str | os.PathLike[str], model_or_checkpoint: WaveGlow | Checkpoint,
                    sample_rate: int | None = None, mel: Mapping[str, Any] | None = None,
                    extra: Mapping[str, str] | None = None,
                    dtype: torch.dtype = torch.float32, *, overwrite: bool = True) -> Path:
    """Write tensors + JSON metadata as safetensors, atomically (temp file, then rename).

    ``dtype`` is the storage type (float32, or float16 for half the size: the weights are
    rounded once and read back as float32; computation is unchanged).  The file gets the
    umask's mode; with ``overwrite=False`` an existing file (also one another process wrote
    meanwhile) is kept and :class:`OutputExistsError` raised."""
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"cannot store a checkpoint as {dtype}; use float32, float16 or bfloat16")
    from safetensors.torch import save_file

    if isinstance(model_or_checkpoint, Checkpoint):
        config, state = model_or_checkpoint.config, model_or_checkpoint.state_dict
        sample_rate = sample_rate or model_or_checkpoint.sample_rate
        mel = mel if mel is not None else model_or_checkpoint.mel
    else:
        config, state = model_or_checkpoint.config, model_or_checkpoint.state_dict()
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "config": json.dumps(config.to_dict()),
                "sample_rate": str(sample_rate or DEFAULT_SAMPLE_RATE), **(extra or {})}
    if mel is not None:
        metadata["mel"] = json.dumps(dict(mel))
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
    from ..fileio import atomic_write

    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata),
                        overwrite=overwrite)


__all__ = [
    "Checkpoint",
    "infer_config",
    "load_model",
    "normalize_state_dict",
    "read_checkpoint",
    "save_checkpoint",
    "sniff_format",
]
