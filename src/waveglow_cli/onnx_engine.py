"""A ``waveglow export`` ONNX file run by onnxruntime: an :class:`~waveglow_cli.engine.Engine`.

The file's graph takes ``mel`` (B, M, F) float32, ``z`` (B, G, F * hop / G) float32
standard-normal noise, ``lengths`` (B,) int64 frames and ``sigma`` (a float32 scalar), and gives
``audio`` (B, F * hop).  Its metadata properties (``waveglow.*``) carry what a checkpoint file
carries: the architecture, sample rate and mel settings, so a :class:`Checkpoint` without
weights stands in for it and the rest of the package (noise, batching, chunking, denoiser,
outputs) works unchanged.

The file is untrusted.  It is parsed with ``onnx`` first and refused if any tensor points at
external data (a path that onnxruntime would otherwise open and read beside the model, or
anywhere); nothing else in an ONNX file can run code.  Any failure to parse or load it is one
:class:`~waveglow_cli.errors.CheckpointError` naming the file.

onnxruntime and onnx are optional (``pip install "waveglow-cli[onnx]"``); this module imports
them only when a file is opened, so ``load_vocoder`` can recognise an ONNX path without them.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checkpoint import Checkpoint
from .errors import CheckpointError, UsageError
from .mel import MelConfig
from .model import WaveGlowConfig

ONNX_FORMAT = "waveglow-cli-onnx"
ONNX_FORMAT_VERSION = "1"
INPUT_NAMES = ("mel", "z", "lengths", "sigma")
OUTPUT_NAMES = ("audio",)
# Metadata property keys (ONNX metadata_props); every value is a string.
META_PREFIX = "waveglow."
META_FORMAT = META_PREFIX + "format"
META_FORMAT_VERSION = META_PREFIX + "format_version"
META_CONFIG = META_PREFIX + "config"              # JSON of WaveGlowConfig
META_SAMPLE_RATE = META_PREFIX + "sample_rate"
META_MEL = META_PREFIX + "mel"                    # JSON of the full MelConfig
META_DTYPE = META_PREFIX + "dtype"                # fp32 | fp16 (compute type inside the graph)
META_BATCH = META_PREFIX + "batch"                # "dynamic" or a fixed batch size
META_SOURCE_SHA256 = META_PREFIX + "source_sha256"
ONNX_SUFFIX = ".onnx"
MAX_HOP = 1 << 16  # far above any WaveGlow's (256 samples per frame, groups of 8)
INSTALL_HINT = 'pip install "waveglow-cli[onnx]" (onnx and onnxruntime)'


def is_onnx_file(path: str | Path) -> bool:
    """Whether ``path`` is (meant as) an ONNX model: its suffix is ``.onnx``, or its first
    bytes are how a serialised ModelProto starts (field 1, ir_version, as a small varint,
    followed by another known field).  Checkpoints never start so: pickles start with 0x80
    or an opcode, zips with ``PK``, safetensors with a little-endian header length."""
    path = Path(path)
    if path.suffix.lower() == ONNX_SUFFIX:
        return True
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return False
        with path.open("rb") as f:
            head = f.read(9)
    except OSError:
        return False
    # 0x08: field 1 varint; ir_version 3..15; then producer_name (0x12), producer_version
    # (0x1a), domain (0x22), model_version (0x28), doc_string (0x32) or graph (0x3a).  A
    # safetensors file whose header length happens to start so has '{' at byte 8.
    return (len(head) >= 3 and head[0] == 0x08 and 3 <= head[1] <= 15
            and head[2] in (0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A) and head[8:9] != b"{")


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(f"running an ONNX model needs onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


def _check_no_external_data(path: Path) -> None:
    """Parse the file (without loading external data) and refuse any tensor stored outside
    it: such a tensor names a file for onnxruntime to read, which a hostile model would aim
    at something else on this machine."""
    try:
        import onnx
    except ImportError:
        raise UsageError(f"reading an ONNX model needs the onnx package: {INSTALL_HINT}") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except MemoryError:
        raise CheckpointError(path, "out of memory while reading it") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of untrusted bytes is "corrupt"
        raise CheckpointError(path, "corrupt or not an ONNX model (cannot parse it: "
                                    f"{_first_line(e)})") from None
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data)
           for tensor in _all_tensors(model.graph)):
        raise CheckpointError(path, "refused: the ONNX model keeps tensors in external files "
                                    "(waveglow export writes one self-contained file)")


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers (dense and sparse) and node attributes,
    subgraphs (If/Loop/Scan bodies) included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def _check_file(path: Path) -> None:
    """The checks :func:`~waveglow_cli.checkpoint.read_checkpoint` makes before parsing."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise CheckpointError(path, "is a directory, not an ONNX model")
    if not stat.S_ISREG(mode):  # a FIFO or device would block or never end
        raise CheckpointError(path, "not a regular file (a FIFO, device or socket)")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "file is empty (an interrupted download?)")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().split("\n")[0]
    return (text[:200] or type(error).__name__)


def _providers(onnxruntime: Any, device: torch.device) -> list[str]:
    """CPU always (last: the fallback for any node the others do not take); on a CUDA device
    TensorRT and CUDA first, when this onnxruntime build has them."""
    available = set(onnxruntime.get_available_providers())
    wanted = ["CPUExecutionProvider"]
    if device.type == "cuda":
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] + wanted
    return [p for p in wanted if p in available or p == "CPUExecutionProvider"]


def _session(path: Path, device: torch.device, threads: int | None) -> Any:
    onnxruntime = _import_onnxruntime()
    _check_file(path)
    _check_no_external_data(path)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would break "one line"
    if threads is not None:
        options.intra_op_num_threads = threads
    providers = _providers(onnxruntime, device)
    provider_options = [({"device_id": device.index or 0}
                         if p != "CPUExecutionProvider" else {}) for p in providers]
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=providers,
                                            provider_options=provider_options)
    except MemoryError:
        raise CheckpointError(path, "out of memory while loading it") from None
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for bad graphs
        raise CheckpointError(path, "not a usable ONNX model (onnxruntime refused it: "
                                    f"{_first_line(e)})") from None


@dataclass(frozen=True)
class OnnxInfo:
    """What an exported file declares: its checkpoint metadata and its graph's contract."""

    config: WaveGlowConfig
    sample_rate: int
    mel: dict[str, Any]
    dtype: torch.dtype
    batch: int | None  # a fixed batch size, or None for a dynamic batch axis
    metadata: dict[str, str]


def read_onnx_info(path: Path, session: Any) -> OnnxInfo:
    """The ``waveglow.*`` metadata and the inputs of ``session``'s graph, checked: a model that
    is not a ``waveglow export`` (other inputs, no metadata) is a :class:`CheckpointError`."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    if sorted(inputs) != sorted(INPUT_NAMES) or outputs != list(OUTPUT_NAMES):
        raise CheckpointError(path, f"is an ONNX model but not a WaveGlow export (inputs "
                                    f"{', '.join(sorted(inputs)) or 'none'}, outputs "
                                    f"{', '.join(outputs) or 'none'}; expected mel, z, lengths, "
                                    "sigma -> audio)")
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get(META_FORMAT) != ONNX_FORMAT:
        raise CheckpointError(path, "is an ONNX model without waveglow metadata (make it "
                                    "with `waveglow export`)")
    try:
        config = WaveGlowConfig.from_dict(json.loads(meta[META_CONFIG]))
        sample_rate = int(meta[META_SAMPLE_RATE])
        mel = json.loads(meta[META_MEL])
        if not isinstance(mel, dict) or sample_rate <= 0:
            raise ValueError("bad mel settings or sample rate")
        MelConfig.from_dict(mel)  # checked here, so that a bad value names this file
        if config.hop_length > MAX_HOP or config.n_group > MAX_HOP:
            # Synthesis sizes its buffers by these before the graph runs.
            raise ValueError(f"implausible hop_length {config.hop_length} or n_group "
                             f"{config.n_group}")
        dtype = {"fp32": torch.float32, "fp16": torch.float16}[meta.get(META_DTYPE, "fp32")]
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(path, f"unreadable waveglow metadata in the ONNX model "
                                    f"({_first_line(e)})") from None
    mel_shape, z_shape = inputs["mel"].shape, inputs["z"].shape
    if len(z_shape) != 3 or z_shape[1] != config.n_group:
        raise CheckpointError(path, f"its z input has shape {z_shape}, but its metadata says "
                                    f"n_group {config.n_group}")
    if len(mel_shape) != 3 or mel_shape[1] != config.n_mel_channels:
        raise CheckpointError(path, f"its mel input has shape {mel_shape}, but its metadata "
                                    f"says {config.n_mel_channels} mel channels")
    batch = mel_shape[0] if isinstance(mel_shape[0], int) and mel_shape[0] > 0 else None
    return OnnxInfo(config, sample_rate, mel, dtype, batch, meta)


class OnnxEngine:
    """An exported WaveGlow run by onnxruntime: an :class:`~waveglow_cli.engine.Engine`.

    ``device`` chooses the execution providers (a CUDA device: TensorRT and CUDA when this
    onnxruntime has them, CPU otherwise); the audio always comes back as a float32 CPU tensor,
    so :attr:`device` is the CPU (where the denoiser and writers then work).  A file exported
    with a fixed batch size is run in slices of that size, the last one zero-padded."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu",
                 threads: int | None = None, *, session: Any = None) -> None:
        self.path = Path(path)
        # A session made elsewhere (the export's check runs the bytes before they are a file).
        self.session = session if session is not None else _session(
            self.path, torch.device(device), threads)
        self.info = read_onnx_info(self.path, self.session)
        self.config = self.info.config
        self.device = torch.device("cpu")
        self.dtype = self.info.dtype
        self.providers: list[str] = list(self.session.get_providers())

    def infer(self, mel: Tensor, sigma: float, z: Tensor, lengths: Tensor | None = None
              ) -> Tensor:
        """As :meth:`Engine.infer <waveglow_cli.engine.Engine.infer>`; ``lengths`` None means
        every item is the mel's full length."""
        c = self.config
        batch, n_mels, frames = mel.shape
        if n_mels != c.n_mel_channels:
            raise ValueError(f"mel has {n_mels} channels, expected {c.n_mel_channels}")
        if tuple(z.shape) != c.noise_shape(batch, frames):
            raise ValueError(f"noise has shape {tuple(z.shape)}, expected "
                             f"{c.noise_shape(batch, frames)}")
        mel_np = mel.detach().cpu().float().numpy()
        z_np = z.detach().cpu().float().numpy()
        lengths_np = (np.full(batch, frames, dtype=np.int64) if lengths is None
                      else lengths.detach().cpu().numpy().astype(np.int64))
        sigma_np = np.asarray(sigma, dtype=np.float32)
        size = self.info.batch
        if size is None:
            return torch.from_numpy(self._run(mel_np, z_np, lengths_np, sigma_np))
        parts = []
        for lo in range(0, batch, size):
            rows = slice(lo, min(batch, lo + size))
            pad = size - (rows.stop - rows.start)
            parts.append(self._run(_pad_rows(mel_np[rows], pad), _pad_rows(z_np[rows], pad),
                                   _pad_rows(lengths_np[rows], pad, frames), sigma_np)
                         [:size - pad])
        return torch.from_numpy(np.concatenate(parts))

    def _run(self, mel: np.ndarray, z: np.ndarray, lengths: np.ndarray, sigma: np.ndarray
             ) -> np.ndarray:
        feeds = {"mel": np.ascontiguousarray(mel), "z": np.ascontiguousarray(z),
                 "lengths": np.ascontiguousarray(lengths), "sigma": sigma}
        try:
            (audio,) = self.session.run(list(OUTPUT_NAMES), feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own types; the model is at fault
            raise CheckpointError(self.path, f"onnxruntime failed to run it: "
                                             f"{_first_line(e)}") from None
        c = self.config
        expected = (mel.shape[0], z.shape[2] * c.n_group)
        if getattr(audio, "shape", None) != expected:  # a file that only looks like ours
            got = getattr(audio, "shape", None)
            raise CheckpointError(self.path, f"its graph gave audio of shape {got}, expected "
                                             f"{expected}")
        return np.asarray(audio, dtype=np.float32)


def _pad_rows(array: np.ndarray, pad: int, fill: int = 0) -> np.ndarray:
    """``array`` with ``pad`` more rows of ``fill`` (a fixed-batch graph's spare rows)."""
    if pad == 0:
        return array
    extra = np.full((pad, *array.shape[1:]), fill, dtype=array.dtype)
    return np.concatenate([array, extra])


def open_onnx(path: str | Path, device: str | torch.device = "cpu",
              threads: int | None = None) -> tuple[Checkpoint, OnnxEngine]:
    """An exported file as (a :class:`Checkpoint` with its metadata and no weights, the
    engine that runs it): what :func:`~waveglow_cli.vocoder.load_vocoder` uses for ``.onnx``."""
    engine = OnnxEngine(path, device, threads)
    info = engine.info
    dtype_name = "fp16" if info.dtype == torch.float16 else "fp32"
    checkpoint = Checkpoint(config=info.config, state_dict={}, sample_rate=info.sample_rate,
                            mel=info.mel, source_format=f"ONNX (waveglow export, {dtype_name})",
                            metadata=dict(info.metadata))
    return checkpoint, engine


__all__ = ["OnnxEngine", "OnnxInfo", "open_onnx", "is_onnx_file", "read_onnx_info",
           "ONNX_FORMAT", "INPUT_NAMES", "OUTPUT_NAMES"]
