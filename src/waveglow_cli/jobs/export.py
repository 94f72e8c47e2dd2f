"""``waveglow export``: a checkpoint as one self-contained ONNX file, checked before it is written.

The graph (:class:`ExportGraph`) is the inference function of :meth:`WaveGlow.infer` with
everything a deployment needs as inputs: ``mel`` (B, M, F) float32, ``z`` (B, G, F*hop/G)
float32 standard-normal noise in the layout our synthesis draws (so the same seed gives the
same audio everywhere), ``lengths`` (B,) int64 frames per item (the model's exact masking, so a
padded batch equals its items alone) and ``sigma`` (a float32 scalar); it gives ``audio``
(B, F*hop).  Batch and frame axes are dynamic (or the batch is fixed with ``batch``).

What differs from the module, and why:

* the upsampler's transposed convolution is rewritten as an ordinary convolution over the mel
  (``kernel / hop`` taps, ``M * hop`` outputs per frame; :func:`polyphase_upsampler`): the same
  sums, but ONNX runtimes then need no ``M x kernel`` column buffer per frame (a quarter of a
  gigabyte for a 1000-frame, 80-mel piece), and its outputs land straight in the conditioning
  layout;
* the 1x1 inverses are constants, taken from the model (inverted from the float32 weights
  exactly as our engine and NVIDIA's ``glow.py`` do, so the two agree to rounding);
* with ``dtype`` fp16 the graph computes in float16 (weights stored so, half the file) behind
  float32 inputs and output.

Exporter: ``torch.onnx.export`` in its TorchScript-based (tracing) mode.  The dynamo exporter
also gives a correct graph for this module (checked: same outputs), but took 30-40 s for the
8-channel test model against 3-5 s (the tests export a dozen files), and it ties the noise
length to the frame count symbolically; the tracer's graph has named dynamic axes that
onnxruntime and TensorRT take as they are.

Before anything is written the bytes are run by onnxruntime on random mels and noise (items
of different lengths in one batch at sigma 0.6, then full-length items at sigma 0) and compared
with our torch engine: more than 1e-4 apart in fp32, or under 30 dB SNR in fp16, and no file
is written.
"""

from __future__ import annotations

import copy
import io
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._version import __version__
from ..checkpoints.cache import ensure_checkpoint
from ..checkpoints.reader import Checkpoint, read_checkpoint
from ..engines.base import EagerEngine
from ..engines.devices import pick_device
from ..engines.onnx import (
    INPUT_NAMES,
    INSTALL_HINT,
    META_BATCH,
    META_CONFIG,
    META_DTYPE,
    META_FORMAT,
    META_FORMAT_VERSION,
    META_MEL,
    META_PREFIX,
    META_SAMPLE_RATE,
    META_SOURCE_SHA256,
    ONNX_FORMAT,
    ONNX_FORMAT_VERSION,
    OUTPUT_NAMES,
    OnnxEngine,
    is_onnx_file,
    open_onnx,
)
from ..errors import CheckpointError, OutputExistsError, UsageError
from ..features.mel import MelConfig
from ..fileio import atomic_write
from ..model.waveglow import WaveGlow, WaveGlowConfig, reverse_flows
from ..progress import ProgressTarget, StatusCallback, report_step
from ..settings import Settings
from ..synthesis.plans import BatchOptions
from ..vocoder import Vocoder, mel_config_for, registry_entry_for

DEFAULT_OPSET = 17  # onnxruntime >= 1.14 and TensorRT >= 8.6 take it
MIN_OPSET, MAX_OPSET = 13, 20  # 13: Unsqueeze/Slice with tensor inputs; 20: the tracer's last
FP32_TOLERANCE = 1e-4          # max abs difference from the torch engine, float32 graph
FP16_MIN_SNR_DB = 30.0         # float16 graph: signal-to-difference ratio
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------
# The graph


def polyphase_upsampler(weight: Tensor, bias: Tensor, hop: int, n_group: int
                        ) -> tuple[Tensor, Tensor, int]:
    """The transposed convolution (``weight`` (M_in, M_out, K), stride ``hop``) as a Conv1d
    over the mel left-padded by ``taps - 1`` frames: (weight (M_out*hop, M_in, taps), bias,
    taps), with ``taps = ceil(K / hop)``.

    Output sample ``q*hop + p`` of the transposed convolution is ``sum_r mel[q - r] .
    W[:, :, r*hop + p]``: frame q's hop samples are a ``taps``-tap convolution with hop output
    channels per mel channel.  The kernel is zero-padded to ``taps * hop`` (exact).  The output
    channels are ordered (m, j, p') with p = p'*G + j, so that (B, M*hop, F) reshapes to
    (B, M, G, hop/G, F), and a transpose of the last two axes gives the model's conditioning
    ``cond[b, m*G + j, t] = up[b, m, t*G + j]`` with t = q*hop/G + p'."""
    m_in, m_out, kernel = weight.shape
    taps = -(-kernel // hop)
    w = torch.zeros(m_in, m_out, taps * hop, dtype=torch.float64)
    w[:, :, :kernel] = weight.double()
    w = w.reshape(m_in, m_out, taps, hop // n_group, n_group)  # [i, o, r, p', j]
    w = w.flip(2)                                              # tap k = taps - 1 - r
    w = w.permute(1, 4, 3, 0, 2).reshape(m_out * hop, m_in, taps)  # [(o, j, p'), i, k]
    return w.float(), bias.double().repeat_interleave(hop).float(), taps


class ExportGraph(nn.Module):
    """``(mel, z, lengths, sigma) -> audio``: :meth:`WaveGlow.infer` with masking always on,
    in a traceable form (no Python branches on shapes).  Build it from a float32 model, then
    cast it (``.to(torch.float16)``) for a float16 graph: the upsampler and 1x1 inverses are
    then rounded from float32 values, as our fp16 engine's are."""

    def __init__(self, model: WaveGlow) -> None:
        super().__init__()
        c = self.config = model.config
        if c.hop_length % c.n_group:
            raise ValueError(f"hop_length {c.hop_length} is not a multiple of n_group "
                             f"{c.n_group}: the ONNX graph needs whole groups per frame")
        upsample_bias = model.upsample.bias
        assert upsample_bias is not None  # a ConvTranspose1d made with its bias (WaveGlow's)
        weight, bias, self.taps = polyphase_upsampler(
            model.upsample.weight.detach(), upsample_bias.detach(), c.hop_length, c.n_group)
        self.register_buffer("upsample_weight", weight)
        self.register_buffer("upsample_bias", bias)
        self.WN = copy.deepcopy(model.WN)  # its own: casting the graph leaves the model as is
        for k, conv in enumerate(model.convinv):
            inverse = cast(Tensor, conv.weight_inverse)  # a buffer (nn.Module's getattr)
            self.register_buffer(f"inverse_{k}", inverse.detach().clone())

    upsample_weight: Tensor  # buffers (registered in __init__)
    upsample_bias: Tensor

    def forward(self, mel: Tensor, z: Tensor, lengths: Tensor, sigma: Tensor) -> Tensor:
        c = self.config
        dtype = self.upsample_weight.dtype
        mel, z, sigma = mel.to(dtype), z.to(dtype), sigma.to(dtype)
        batch, steps = mel.shape[0], z.shape[2]
        up = F.conv1d(F.pad(mel, (self.taps - 1, 0)), self.upsample_weight, self.upsample_bias)
        per_frame = c.hop_length // c.n_group
        cond = up.reshape(batch, c.n_mel_channels, c.n_group, per_frame, -1)
        cond = cond.transpose(3, 4).reshape(batch, c.n_mel_channels * c.n_group, -1)
        positions = torch.arange(steps, device=mel.device)
        mask = (positions[None, :] < (lengths * per_frame)[:, None]).to(dtype).unsqueeze(1)
        noise = z * sigma
        audio = reverse_flows(c, lambda lo, hi: noise[:, lo:hi],
                              lambda k, audio_0: self.WN[k](audio_0, cond, mask),
                              lambda k, x: F.conv1d(x, getattr(self, f"inverse_{k}")))
        return audio.transpose(1, 2).reshape(batch, -1).float()


def graph_bytes(model: WaveGlow, dtype: torch.dtype = torch.float32, opset: int = DEFAULT_OPSET,
                batch: int | None = None) -> bytes:
    """The ONNX bytes of ``model`` (float32, eval) as an :class:`ExportGraph` in ``dtype``;
    ``batch`` None: a dynamic batch axis, else that fixed size."""
    graph = ExportGraph(model).to(dtype).eval()
    c = model.config
    rows, frames = batch or 2, 11
    example = (torch.zeros(rows, c.n_mel_channels, frames),
               torch.zeros(c.noise_shape(rows, frames)),
               torch.full((rows,), frames, dtype=torch.int64), torch.tensor(0.0))
    axes: dict[str, dict[int, str]] = {"mel": {2: "frames"}, "z": {2: "steps"},
                                       "audio": {1: "samples"}}
    if batch is None:
        for name in ("mel", "z", "lengths", "audio"):
            axes.setdefault(name, {})[0] = "batch"
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's deprecation and tracing notes
        # A file object works (the ONNX bytes land in it); torch's stubs name only paths.
        torch.onnx.export(graph, example, buffer,  # type: ignore[arg-type]
                          input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Options, result


@dataclass(frozen=True)
class ExportOptions:
    """What ``waveglow export`` asks for: ``batch`` None is a dynamic batch axis."""

    opset: int = DEFAULT_OPSET
    dtype: str = "fp32"
    batch: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise UsageError(f"--opset {self.opset}: use {MIN_OPSET} to {MAX_OPSET}")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype {self.dtype}: use fp32 or fp16")
        if self.batch is not None and self.batch < 1:
            raise UsageError(f"--batch {self.batch}: use 'dynamic' or a size >= 1")

    @staticmethod
    def parse_batch(text: str) -> int | None:
        """``--batch``: 'dynamic' -> None, a positive integer -> itself."""
        if text.strip().lower() == "dynamic":
            return None
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"--batch {text!r}: use 'dynamic' or a size >= 1") from None
        if value < 1:
            raise UsageError(f"--batch {text!r}: use 'dynamic' or a size >= 1")
        return value


@dataclass(frozen=True)
class Verification:
    """onnxruntime's output against our torch engine on the same random inputs."""

    max_abs_diff: float
    snr_db: float          # signal (torch) to difference, over the items' samples
    passed: bool
    requirement: str

    def describe(self) -> str:
        snr = "inf" if math.isinf(self.snr_db) else f"{self.snr_db:.1f}"
        return f"max abs difference {self.max_abs_diff:.2e}, SNR {snr} dB ({self.requirement})"


@dataclass(frozen=True)
class ExportReport:
    path: Path
    source: Path | None
    source_sha256: str | None
    options: ExportOptions
    verification: Verification
    size: int
    seconds: float

    def line(self) -> str:
        batch = "dynamic batch" if self.options.batch is None else f"batch {self.options.batch}"
        return (f"wrote {self.path} ({self.size / 1e6:.1f} MB, opset {self.options.opset}, "
                f"{self.options.dtype}, {batch}) in {self.seconds:.1f} s; onnxruntime vs the "
                f"torch engine: {self.verification.describe()}")

    def as_dict(self) -> dict[str, Any]:
        snr = self.verification.snr_db
        return {"path": str(self.path), "source": None if self.source is None else str(self.source),
                "source_sha256": self.source_sha256, **asdict(self.options),
                "max_abs_diff": self.verification.max_abs_diff,
                "snr_db": None if math.isinf(snr) else snr,
                "size": self.size, "seconds": round(self.seconds, 3)}


# ---------------------------------------------------------------------------------------------
# Verification


def _verification_cases(config: WaveGlowConfig, rows: int
                        ) -> list[tuple[Tensor, Tensor, Tensor, float]]:
    """(mel, z, lengths, sigma): ``rows`` items of different lengths (masked padding) at sigma
    0.6, and all rows full length at sigma 0 (the deterministic mode), from a fixed seed."""
    generator = torch.Generator().manual_seed(19)
    cases = []
    for frames, sigma, varied in ((29, 0.6, True), (29, 0.0, False)):  # one shape: quicker
        mel = (torch.randn(rows, config.n_mel_channels, frames, generator=generator) * 2 - 5
               ).clamp(-11.5, 2.0)  # the range of natural-log mels of speech
        z = torch.randn(config.noise_shape(rows, frames), generator=generator)
        lengths = torch.tensor([max(1, frames - 6 * i) if varied else frames
                                for i in range(rows)], dtype=torch.int64)
        for row, length in enumerate(lengths.tolist()):  # padding is zero, as synthesis pads
            mel[row, :, length:] = 0
            z[row, :, config.noise_shape(1, length)[2]:] = 0
        cases.append((mel, z, lengths, sigma))
    return cases


def verify_engine(onnx_engine: OnnxEngine, reference: EagerEngine, fp16: bool) -> Verification:
    """Run both engines on :func:`_verification_cases` and compare the items' samples."""
    config = reference.config
    rows = onnx_engine.info.batch or 2
    worst, signal, noise = 0.0, 0.0, 0.0
    for mel, z, lengths, sigma in _verification_cases(config, rows):
        expected = reference.infer(mel, sigma, z, lengths).float()
        got = onnx_engine.infer(mel, sigma, z, lengths).float()
        for row, length in enumerate(lengths.tolist()):
            n = length * config.hop_length
            a, b = got[row, :n].double(), expected[row, :n].double()
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                worst = math.inf
                continue
            worst = max(worst, float((a - b).abs().max()))
            signal += float((b * b).sum())
            noise += float(((a - b) ** 2).sum())
    snr = math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)
    if fp16:
        return Verification(worst, snr, snr >= FP16_MIN_SNR_DB and math.isfinite(worst),
                            f"fp16 needs SNR >= {FP16_MIN_SNR_DB:.0f} dB")
    return Verification(worst, snr, worst <= FP32_TOLERANCE,
                        f"fp32 needs max abs difference <= {FP32_TOLERANCE:g}")


def _session_from_bytes(data: bytes) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(f"waveglow export needs onnxruntime to check its output: "
                         f"{INSTALL_HINT}") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# Export


def _metadata(checkpoint: Checkpoint, mel: MelConfig, options: ExportOptions,
              source: Path | None, source_sha256: str | None) -> dict[str, str]:
    meta = {META_FORMAT: ONNX_FORMAT, META_FORMAT_VERSION: ONNX_FORMAT_VERSION,
            META_CONFIG: json.dumps(checkpoint.config.to_dict()),
            META_SAMPLE_RATE: str(checkpoint.sample_rate), META_MEL: json.dumps(asdict(mel)),
            META_DTYPE: options.dtype,
            META_BATCH: "dynamic" if options.batch is None else str(options.batch),
            META_PREFIX + "version": __version__, META_PREFIX + "torch": torch.__version__,
            META_PREFIX + "opset": str(options.opset),
            META_PREFIX + "exporter": "torch.onnx.export (TorchScript-based)",
            META_PREFIX + "source_format": checkpoint.source_format}
    if source is not None:
        meta[META_PREFIX + "source"] = source.name
    if source_sha256 is not None:
        meta[META_SOURCE_SHA256] = source_sha256
    return meta


def _with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    try:
        import onnx
    except ImportError:
        raise UsageError(f"waveglow export needs the onnx package: {INSTALL_HINT}") from None
    model = onnx.load_model_from_string(data)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata)
    model.doc_string = ("WaveGlow vocoder exported by waveglow-cli: (mel, z, lengths, sigma) -> "
                        "audio; see the waveglow.* metadata properties")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_checkpoint(checkpoint: Checkpoint, output: str | Path, mel: MelConfig,
                      options: ExportOptions = ExportOptions(), source: Path | None = None,
                      source_sha256: str | None = None, status: StatusCallback | None = None
                      ) -> ExportReport:
    """Export ``checkpoint`` to ``output`` (atomically; refused if it exists unless
    ``options.overwrite``) after checking the bytes with onnxruntime against the torch engine.
    A failed check writes nothing and raises :class:`CheckpointError` naming the source.
    Each step (building, tracing, checking, writing) is reported to ``status`` as it starts."""
    started = time.monotonic()
    if not options.overwrite and Path(output).exists():  # before the work, not only after it
        raise OutputExistsError(output)
    report_step(status, "building the float32 model")
    model = checkpoint.build_model()  # float32, eval: the inverses from the float32 weights
    report_step(status, f"tracing the {options.dtype} graph (torch.onnx.export, opset "
                        f"{options.opset})")
    try:
        data = graph_bytes(model, DTYPES[options.dtype], options.opset, options.batch)
    except ValueError as e:
        raise CheckpointError(source or Path(output), f"cannot export it: {e}") from None
    report_step(status, "checking the graph (onnx.checker)")
    meta = _metadata(checkpoint, mel, options, source, source_sha256)
    data = _with_metadata(data, meta)
    report_step(status, "verifying with onnxruntime against the torch engine")
    engine = OnnxEngine(output, session=_session_from_bytes(data))
    check = verify_engine(engine, EagerEngine(model), options.dtype == "fp16")
    if not check.passed:
        raise CheckpointError(source or Path(output), f"its ONNX export disagrees with the torch "
                                                      f"engine: {check.describe()}; nothing was "
                                                      "written")
    meta[META_PREFIX + "verified"] = check.describe()
    report_step(status, f"writing {output}")
    data = _with_metadata(data, meta)
    path = atomic_write(output, lambda tmp: tmp.write_bytes(data), overwrite=options.overwrite)
    return ExportReport(path, source, source_sha256, options, check, len(data),
                        time.monotonic() - started)


def export_onnx(spec: str, output: str | Path, options: ExportOptions = ExportOptions(), *,
                settings: Settings, progress: ProgressTarget = None,
                status: StatusCallback | None = None) -> ExportReport:
    """Export the checkpoint ``spec`` (a registry name, fetched first unless offline, or a
    file of any format we read) to the ONNX file ``output``: see :func:`export_checkpoint`.
    A download reports to ``progress`` (bytes); the steps after it to ``status``."""
    from ..checkpoints.download import sha256_file

    path = Path(ensure_checkpoint(spec, settings, progress))
    if is_onnx_file(path):
        raise CheckpointError(path, "is an ONNX model already; export a checkpoint (.pt, "
                                    ".safetensors or a registry name)")
    report_step(status, f"reading {path.name}")
    checkpoint = read_checkpoint(path)
    mel = mel_config_for(checkpoint, registry_entry_for(spec, settings))
    return export_checkpoint(checkpoint, output, mel, options, source=path,
                             source_sha256=sha256_file(path), status=status)


def load_onnx_vocoder(path: str | Path, device: str | torch.device = "cpu", *,
                      denoise: bool = False, threads: int | None = None) -> Vocoder:
    """An exported file as a :class:`~waveglow_cli.vocoder.Vocoder` (what ``load_vocoder``
    gives for a ``.onnx`` path): its engine is an :class:`OnnxEngine`, its checkpoint the file's
    metadata (no weights, so :meth:`Vocoder.score` is not available)."""
    from ..synthesis.denoiser import Denoiser

    torch_device = pick_device(device) if isinstance(device, str) else device
    checkpoint, engine = open_onnx(path, torch_device, threads)
    denoiser = Denoiser.for_engine(engine) if denoise else None
    batch = BatchOptions.for_device(torch_device, engine.config)
    return Vocoder(engine, checkpoint, mel_config_for(checkpoint, None), denoiser, batch,
                   path=Path(path))


__all__ = [
    "ExportGraph",
    "ExportOptions",
    "ExportReport",
    "Verification",
    "export_checkpoint",
    "export_onnx",
    "graph_bytes",
    "load_onnx_vocoder",
    "polyphase_upsampler",
    "verify_engine",
]
