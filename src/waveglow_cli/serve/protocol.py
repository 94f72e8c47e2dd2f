"""What a client may send to ``POST /v1/synthesize``, parsed and checked into typed values.

Pure functions over bytes and mappings (no HTTP, no model): every way a request can be wrong
becomes a :class:`RequestError` carrying the HTTP status and a one-line reason, so the tests
can exercise them without a server and the server answers ``{"error": reason}``.

The mel is read exactly as ``waveglow synth`` reads a file (:func:`audio_io.read_mel`: the
format sniffed from the bytes, ``.npy`` without pickle, ``.pt`` with ``weights_only``, the
channel count and NaN/inf checked), so a request and a file that hold the same mel give the
same audio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ..audio.io import read_mel, validate_mel
from ..audio.out import STREAM_FORMATS, SUBTYPES
from ..errors import InputFileError
from ..synthesis.noise import item_seed, noise_seed
from .jsonmel import MelJsonReader
from .refusals import RequestError, RequestTooLarge, ServerBusy

__all__ = ["RequestError", "RequestTooLarge", "ServerBusy"]  # re-exported: where they are met

DEFAULT_SIGMA = 0.6  # as `waveglow synth` (NVIDIA's recommended inference sigma)
PARAMETERS = ("sigma", "seed", "key", "denoiser_strength", "format", "subtype")
MAX_KEY_CHARS = 4096
# Seeds are hashed as text (synthesis.item_seed); the bound only keeps them 64-bit.
SEED_BOUND = 2**63
# Bytes a JSON mel may take per value ("-11.512925464970229," is 20) and slack for the rest.
JSON_BYTES_PER_VALUE = 24
BODY_SLACK_BYTES = 64 * 1024
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "raw": "application/octet-stream"}


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for."""

    n_mels: int
    max_frames: int

    def body_bytes(self, json_body: bool) -> int:
        """The largest body accepted: a float64 ``.npy`` (or a JSON text) of ``max_frames``."""
        values = self.n_mels * self.max_frames
        return values * (JSON_BYTES_PER_VALUE if json_body else 8) + BODY_SLACK_BYTES


def default_max_frames(sample_rate: int, hop_length: int, seconds: float = 600.0) -> int:
    """Frames in ``seconds`` of audio (the default per-request limit: ten minutes)."""
    return max(1, math.ceil(seconds * sample_rate / hop_length))


@dataclass(frozen=True)
class AudioParams:
    """How to synthesise and encode one request (the defaults are ``waveglow synth``'s)."""

    sigma: float = DEFAULT_SIGMA
    seed: int | None = None
    key: str = ""
    denoiser_strength: float = 0.0
    format: str = "wav"
    subtype: str = "PCM_16"

    def noise_seed(self) -> int:
        """The item's noise seed: the one ``waveglow synth --seed S`` uses for a file whose
        relative path is ``key``; fresh random bits without a seed."""
        return noise_seed(None, "") if self.seed is None else item_seed(self.seed, self.key)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


@dataclass(frozen=True)
class SynthesisRequest:
    mel: np.ndarray  # float32 (n_mels, frames), checked
    params: AudioParams

    @property
    def frames(self) -> int:
        return int(self.mel.shape[1])


def is_json(content_type: str | None, head: bytes = b"") -> bool:
    """A JSON body: declared so, or starting with ``{`` whatever the declared type (clients
    such as urllib send form-urlencoded by default; no mel file starts with ``{``: .npy
    starts with ``\\x93NUMPY``, a torch file with ``PK`` or a pickle opcode)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == "application/json" or kind.endswith("+json"):
        return True
    return head.lstrip()[:1] == b"{"


def may_be_json(content_type: str | None) -> bool:
    """Whether the body may be JSON (and so gets JSON's larger size limit): anything not
    declared as binary."""
    kind = (content_type or "").split(";")[0].strip().lower()
    return kind not in ("application/octet-stream", "application/x-npy")


def parse_request(body: bytes, content_type: str | None, query: Mapping[str, str],
                  limits: Limits) -> SynthesisRequest:
    """The request's mel and parameters from a whole body; a :class:`RequestError` for
    anything wrong.  (The server reads bodies as they arrive, :mod:`.body`, to the same
    result.)"""
    if is_json(content_type, body[:64]):
        reader = MelJsonReader(limits.n_mels, limits.max_frames)
        reader.feed(body)
        mel, fields = reader.finish()
        return json_request(mel, fields, query, limits)
    return SynthesisRequest(binary_mel(body, limits), parse_params(query))


def json_request(mel: np.ndarray, fields: dict[str, object], query: Mapping[str, str],
                 limits: Limits) -> SynthesisRequest:
    """A JSON body's request: its mel (rows as read by :class:`MelJsonReader`) checked as a
    file's is, its other fields over the query's parameters."""
    unknown = sorted(set(fields) - set(PARAMETERS))
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}; fields are mel, "
                           f"{', '.join(PARAMETERS)}")
    mel = _within(check_mel(mel, limits.n_mels), limits)
    return SynthesisRequest(mel, parse_params({**query, **fields}))


def _within(mel: np.ndarray, limits: Limits) -> np.ndarray:
    frames = int(mel.shape[1])
    if frames > limits.max_frames:
        raise RequestTooLarge(f"mel has {frames} frames; this server takes at most "
                              f"{limits.max_frames} per request (--max-frames-per-request)")
    return mel


def binary_mel(body: bytes, limits: Limits) -> np.ndarray:
    """A ``.npy``/``.pt`` body's mel, read as ``synth`` reads a file, within the limits."""
    if not body:
        raise RequestError("empty body: send a mel as .npy bytes or JSON {\"mel\": [[...]]}")
    try:
        mel = read_mel(body, "request body", n_mels=limits.n_mels, layout="auto")
    except InputFileError as e:
        raise RequestError(e.reason) from None
    return _within(np.ascontiguousarray(mel, dtype=np.float32), limits)


def check_mel(mel: np.ndarray, n_mels: int) -> np.ndarray:
    """A JSON mel's shape and values, as a file's are checked."""
    try:
        return validate_mel(mel, "mel", n_mels)
    except InputFileError as e:
        raise RequestError(e.reason) from None


def parse_params(fields: Mapping[str, object]) -> AudioParams:
    """The synthesis parameters from query strings or JSON values; unknown names refused."""
    unknown = sorted(set(fields) - set(PARAMETERS))
    if unknown:
        raise RequestError(f"unknown parameter {unknown[0]!r}; parameters are "
                           f"{', '.join(PARAMETERS)}")
    sigma = _number(fields, "sigma", DEFAULT_SIGMA)
    strength = _number(fields, "denoiser_strength", 0.0)
    fmt = _choice(fields, "format", "wav", STREAM_FORMATS, str.lower)
    subtype = _choice(fields, "subtype", "PCM_16", SUBTYPES, str.upper)
    if fmt == "flac" and subtype not in ("PCM_16", "PCM_24"):
        raise RequestError(f"format flac stores subtype PCM_16 or PCM_24, not {subtype}")
    key = fields.get("key", "")
    if not isinstance(key, str):
        raise RequestError("key must be a string (the relative path whose noise to use)")
    if len(key) > MAX_KEY_CHARS:
        raise RequestError(f"key is longer than {MAX_KEY_CHARS} characters")
    return AudioParams(sigma, _seed(fields.get("seed")), key, strength, fmt, subtype)


def _number(fields: Mapping[str, object], name: str, default: float) -> float:
    value = fields.get(name, default)
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        number = float(value)
    except (ValueError, OverflowError):
        raise RequestError(f"{name} must be a number, not {_shown(value)}") from None
    if not math.isfinite(number) or number < 0:
        raise RequestError(f"{name} must be a finite number >= 0, not {_shown(value)}")
    return number


def _seed(value: object) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError
        seed = int(value)
    except ValueError:
        raise RequestError(f"seed must be an integer, not {_shown(value)}") from None
    if not -SEED_BOUND <= seed < SEED_BOUND:
        raise RequestError("seed must fit in 64 bits")
    return seed


def _choice(fields: Mapping[str, object], name: str, default: str, allowed: tuple[str, ...],
            normal: Callable[[str], str]) -> str:
    value = fields.get(name, default)
    if not isinstance(value, str) or normal(value) not in allowed:
        raise RequestError(f"{name} must be one of {', '.join(allowed)}, not {_shown(value)}")
    return normal(value)


def _shown(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
