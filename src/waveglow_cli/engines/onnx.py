"""A ``waveglow export`` ONNX file run by onnxruntime: an
:class:`~waveglow_cli.engines.base.Engine`.

The file's graph takes ``mel`` (B, M, F) float32, ``z`` (B, G, F * hop / G) float32
standard-normal noise, ``lengths`` (B,) int64 frames and ``sigma`` (a float32 scalar), and gives
``audio`` (B, F * hop).  Its metadata properties (``waveglow.*``) carry what a checkpoint file
carries: the architecture, sample rate and mel settings, so an :class:`OnnxSource` (what a
vocoder is made from, beside a checkpoint's weights) stands in for it and the rest of the
package (noise, batching, chunking, denoiser, outputs) works unchanged.

The file is untrusted.  Its bytes are read once and checked by
:mod:`waveglow_cli.engines.onnx_check` before onnxruntime sees them: every tensor anywhere in the
model (functions, subgraphs, node attributes, sparse tensors) must be inside the file (external
data would make onnxruntime read another file, e.g. ``~/.ssh/id_rsa``, and hand it back as
audio), what the tensors and the ``waveglow.*`` metadata declare must fit the file's size and
sane limits, and the graph's
contract is checked too.  onnxruntime then gets those same bytes, never the path, with its
folder for external data set to a path under the model file itself (which cannot be a folder),
so that even a tensor the checks missed could not name a file to read.  Nothing else in an
ONNX file can run code.  Any failure to parse or load it is one
:class:`~waveglow_cli.errors.CheckpointError` naming the file.

onnxruntime and onnx are optional (``pip install "waveglow-exact[onnx]"``); this module imports
them only when a file is opened, so ``load_vocoder`` can recognise an ONNX path without them.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError, UsageError
from ..features.mel import MelConfig
from ..model.waveglow import FlowProgress, WaveGlowConfig
from .onnx_check import (
    ImplausibleArchitecture,
    check_architecture,
    check_model_tensors,
    check_weights_fit,
    read_model_bytes,
    weight_budget,
)

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
#: A graph exported with a fixed batch is run in slices of that size, padded: bounded so that
#: a declared batch cannot size the padding.
MAX_FIXED_BATCH = 1024
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000
MAX_MEL_FFT = 1 << 16
# onnxruntime resolves external data from bytes against this folder: a path under the model
# file itself, which is not a folder, so no external file can ever be opened (defence in depth
# behind onnx_check, which refuses such tensors first).
_EXTERNAL_DATA_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
INSTALL_HINT = 'pip install "waveglow-exact[onnx]" (onnx and onnxruntime)'


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


def checked_model_bytes(path: Path) -> bytes:
    """The file's bytes, refused (one :class:`CheckpointError`) unless they are a
    self-contained model whose tensors, architecture and contract pass the checks of
    :mod:`waveglow_cli.engines.onnx_check` and :func:`read_onnx_info`: all before onnxruntime (or
    any allocation a declaration sizes) sees them."""
    return _checked_model(path)[0]


def read_onnx_file_info(path: Path) -> OnnxInfo:
    """What a ``waveglow export`` file declares (``waveglow info`` shows it), checked as for
    running it; needs the onnx package, not onnxruntime."""
    return _checked_model(path)[1]


def _checked_model(path: Path) -> tuple[bytes, OnnxInfo]:
    try:
        import onnx
    except ImportError:
        raise UsageError(f"reading an ONNX model needs the onnx package: {INSTALL_HINT}") from None
    data = read_model_bytes(path)
    try:
        model = onnx.ModelProto.FromString(data)
    except MemoryError:
        raise CheckpointError(path, "out of memory while reading it") from None
    except Exception as e:  # noqa: BLE001 - any parse failure of untrusted bytes is "corrupt"
        raise CheckpointError(path, "corrupt or not an ONNX model (cannot parse it: "
                                    f"{_first_line(e)})") from None
    check_model_tensors(path, model, len(data))
    graph = model.graph
    initializers = {t.name for t in graph.initializer} | {
        t.values.name for t in graph.sparse_initializer}
    inputs = {i.name: _declared_shape(i) for i in graph.input if i.name not in initializers}
    meta = {p.key: p.value for p in model.metadata_props}
    return data, _checked_info(path, inputs, [o.name for o in graph.output], meta,
                               weight_budget(path))


def _declared_shape(value_info: Any) -> list[int | str | None]:
    """A graph input's shape as onnxruntime reports it: a number, a name or None per axis."""
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            if d.HasField("dim_param") else None for d in value_info.type.tensor_type.shape.dim]


def _first_line(error: BaseException) -> str:
    text = str(error).strip().split("\n")[0]
    return (text[:200] or type(error).__name__)


def _providers(onnxruntime: Any, device: torch.device) -> list[str]:
    """CPU always (last: the fallback for any node the others do not take); on a CUDA device
    TensorRT and CUDA first, when this onnxruntime build has them."""
    available = set(onnxruntime.get_available_providers())
    wanted = ["CPUExecutionProvider"]
    if device.type == "cuda":
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", *wanted]
    return [p for p in wanted if p in available or p == "CPUExecutionProvider"]


def _session(path: Path, device: torch.device, threads: int | None) -> Any:
    onnxruntime = _import_onnxruntime()
    data = checked_model_bytes(path)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings would break "one line"
    options.add_session_config_entry(_EXTERNAL_DATA_FOLDER_KEY,
                                     str(path.absolute() / "no-external-data"))
    if threads is not None:
        options.intra_op_num_threads = threads
    providers = _providers(onnxruntime, device)
    provider_options = [({"device_id": device.index or 0}
                         if p != "CPUExecutionProvider" else {}) for p in providers]
    try:
        # The bytes checked, not the path: nothing is read from the file again.
        return onnxruntime.InferenceSession(data, options, providers=providers,
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
    inputs = {i.name: list(i.shape) for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    meta = dict(session.get_modelmeta().custom_metadata_map)
    return _checked_info(path, inputs, outputs, meta, None)


def _checked_info(path: Path, inputs: Mapping[str, Sequence[int | str | None]],
                  outputs: list[str], meta: dict[str, str], max_weight_bytes: int | None
                  ) -> OnnxInfo:
    """What :func:`read_onnx_info` checks, from the graph's declared inputs (name -> shape),
    outputs and metadata: also from the parsed file, before onnxruntime sees it."""
    if sorted(inputs) != sorted(INPUT_NAMES) or outputs != list(OUTPUT_NAMES):
        raise CheckpointError(path, f"is an ONNX model but not a WaveGlow export (inputs "
                                    f"{', '.join(sorted(inputs)) or 'none'}, outputs "
                                    f"{', '.join(outputs) or 'none'}; expected mel, z, lengths, "
                                    "sigma -> audio)")
    if meta.get(META_FORMAT) != ONNX_FORMAT:
        raise CheckpointError(path, "is an ONNX model without waveglow metadata (make it "
                                    "with `waveglow export`)")
    try:
        config, sample_rate, mel, dtype = _parse_metadata(meta)
    except ImplausibleArchitecture as e:
        raise CheckpointError(path, f"refused: its waveglow metadata declares an implausible "
                                    f"architecture ({e})") from None
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(path, f"unreadable waveglow metadata in the ONNX model "
                                    f"({_first_line(e)})") from None
    mel_shape, z_shape = inputs["mel"], inputs["z"]
    if len(z_shape) != 3 or z_shape[1] != config.n_group:
        raise CheckpointError(path, f"its z input has shape {z_shape}, but its metadata says "
                                    f"n_group {config.n_group}")
    if len(mel_shape) != 3 or mel_shape[1] != config.n_mel_channels:
        raise CheckpointError(path, f"its mel input has shape {mel_shape}, but its metadata "
                                    f"says {config.n_mel_channels} mel channels")
    batch = mel_shape[0] if isinstance(mel_shape[0], int) and mel_shape[0] > 0 else None
    if batch is not None and batch > MAX_FIXED_BATCH:
        raise CheckpointError(path, f"refused: its graph declares a fixed batch of {batch}, "
                                    f"more than {MAX_FIXED_BATCH}")
    if max_weight_bytes is not None:  # last: the shapes name a mismatch better than this
        try:
            check_weights_fit(config, max_weight_bytes)
        except ImplausibleArchitecture as e:
            raise CheckpointError(path, f"refused: its waveglow metadata declares an "
                                        f"implausible architecture ({e})") from None
    return OnnxInfo(config, sample_rate, mel, dtype, batch, meta)


def _parse_metadata(meta: dict[str, str]) -> tuple[WaveGlowConfig, int, dict[str, Any],
                                                    torch.dtype]:
    """(config, sample rate, mel settings, compute dtype) from the ``waveglow.*`` properties;
    every value bounded before anything is sized by it."""
    config = check_architecture(json.loads(meta[META_CONFIG]))
    sample_rate = int(meta[META_SAMPLE_RATE])
    mel = json.loads(meta[META_MEL])
    if not isinstance(mel, dict) or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"bad mel settings or sample rate {sample_rate} (use "
                         f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)")
    mel_config = MelConfig.from_dict(mel)  # checked here, so that a bad value names this file
    if max(mel_config.n_fft, mel_config.win_length, mel_config.hop_length) > MAX_MEL_FFT:
        raise ValueError(f"implausible mel settings (n_fft {mel_config.n_fft}, hop "
                         f"{mel_config.hop_length})")
    if config.hop_length > MAX_HOP or config.n_group > MAX_HOP:
        # Synthesis sizes its buffers by these before the graph runs.
        raise ValueError(f"implausible hop_length {config.hop_length} or n_group "
                         f"{config.n_group}")
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[meta.get(META_DTYPE, "fp32")]
    return config, sample_rate, mel, dtype


class OnnxEngine:
    """An exported WaveGlow run by onnxruntime: an :class:`~waveglow_cli.engines.base.Engine`.

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

    def infer(self, mel: Tensor, sigma: float, z: Tensor, lengths: Tensor | None = None,
              progress: FlowProgress | None = None) -> Tensor:
        """As :meth:`Engine.infer <waveglow_cli.engines.base.Engine.infer>`; ``lengths`` None means
        every item is the mel's full length.  The graph runs whole, so ``progress`` hears
        only the end of each slice of the batch (each run of the session)."""
        c = self.config
        batch, n_mels, frames = mel.shape
        if n_mels != c.n_mel_channels:
            raise ValueError(f"mel has {n_mels} channels, expected {c.n_mel_channels}")
        c.check_noise(z, batch, frames)
        mel_np = mel.detach().cpu().float().numpy()
        z_np = z.detach().cpu().float().numpy()
        lengths_np = (np.full(batch, frames, dtype=np.int64) if lengths is None
                      else lengths.detach().cpu().numpy().astype(np.int64))
        sigma_np = np.asarray(sigma, dtype=np.float32)
        size = self.info.batch
        if size is None:
            audio = self._run(mel_np, z_np, lengths_np, sigma_np)
            if progress is not None:
                progress(1.0)
            return torch.from_numpy(audio)
        parts = []
        for lo in range(0, batch, size):
            rows = slice(lo, min(batch, lo + size))
            pad = size - (rows.stop - rows.start)
            parts.append(self._run(_pad_rows(mel_np[rows], pad), _pad_rows(z_np[rows], pad),
                                   _pad_rows(lengths_np[rows], pad, frames), sigma_np)
                         [:size - pad])
            if progress is not None:
                progress(rows.stop / batch)
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


@dataclass(frozen=True)
class OnnxSource:
    """An exported file as the source of a vocoder: what it declares (architecture, sample
    rate, mel settings, metadata), and no weights: onnxruntime runs its graph, in the
    precision fixed when it was exported.  The counterpart of a
    :class:`~waveglow_cli.checkpoints.reader.Checkpoint`, which holds float32 weights that
    engines are built from; callers tell the two apart by type."""

    path: Path
    info: OnnxInfo

    @property
    def config(self) -> WaveGlowConfig:
        return self.info.config

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @property
    def mel(self) -> dict[str, Any]:
        return self.info.mel

    @property
    def metadata(self) -> dict[str, str]:
        return self.info.metadata

    @property
    def source_format(self) -> str:
        """How ``waveglow info`` names what was read."""
        dtype_name = "fp16" if self.info.dtype == torch.float16 else "fp32"
        return f"ONNX (waveglow export, {dtype_name})"


def open_onnx(path: str | Path, device: str | torch.device = "cpu",
              threads: int | None = None) -> tuple[OnnxSource, OnnxEngine]:
    """An exported file as (its :class:`OnnxSource`, the engine that runs it on ``device``):
    the file is read and checked once, for both."""
    engine = OnnxEngine(path, device, threads)
    return OnnxSource(engine.path, engine.info), engine


__all__ = [
    "INPUT_NAMES",
    "ONNX_FORMAT",
    "OUTPUT_NAMES",
    "OnnxEngine",
    "OnnxInfo",
    "OnnxSource",
    "checked_model_bytes",
    "is_onnx_file",
    "open_onnx",
    "read_onnx_info",
]
