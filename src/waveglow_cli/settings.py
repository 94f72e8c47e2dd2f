"""Environment read once, into an immutable value the rest of the code is handed."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "waveglow"
GiB = 1 << 30
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def parse_bytes(text: str) -> int:
    """``4294967296``, ``4G``, ``4GiB``, ``500M``, ``64k`` -> bytes (binary units).  ValueError
    for anything else, negative numbers included."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def _parse_seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


@dataclass(frozen=True)
class DownloadLimits:
    """Bounds on one download, so that a hostile or broken server cannot fill the disk or keep
    a fetch (and the checkpoint's lock) forever.  0 or None switches a bound off."""

    # Most bytes accepted from a source that publishes no size (registry ``size`` absent);
    # also the most a zip member may expand to.  WAVEGLOW_MAX_DOWNLOAD_BYTES.
    max_bytes: int = 4 * GiB
    # Fewer than min_rate * rate_window bytes in rate_window seconds: "download too slow".
    # The read timeout only notices silence; this notices a 1-byte/s trickle.
    min_rate: int = 4096                    # WAVEGLOW_DOWNLOAD_MIN_RATE (bytes/s)
    rate_window: float = 30.0
    deadline: float | None = None           # WAVEGLOW_DOWNLOAD_DEADLINE (s per source)
    # How long to wait for another process's lock on a checkpoint while its files show no
    # progress (a hung holder); a dead holder never blocks (flock is released on exit).
    lock_timeout: float = 600.0             # WAVEGLOW_LOCK_TIMEOUT (s)


@dataclass(frozen=True)
class Settings:
    """What the environment says.  Tests build their own instead of patching os.environ."""

    home: Path                      # cache root: checkpoints, partial downloads, locks
    registry_file: Path | None      # WAVEGLOW_REGISTRY: extra TOML entries
    offline: bool                   # WAVEGLOW_OFFLINE=1: never touch the network
    mirror: str | None              # WAVEGLOW_MIRROR: base URL tried before the registry's URLs
    debug: bool                     # WAVEGLOW_DEBUG=1: show tracebacks
    limits: DownloadLimits = DownloadLimits()   # download caps and deadlines (see above)
    # Environment values that could not be parsed; reported (as a usage error) by the code
    # that needs them, so that a typo cannot break commands that never download.
    problems: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = env.get("WAVEGLOW_HOME")
        if not home:
            from platformdirs import user_cache_dir

            home = user_cache_dir(APP_NAME)
        registry = env.get("WAVEGLOW_REGISTRY")
        limits, problems = _limits_from_env(env)
        return cls(home=Path(home).expanduser(),
                   registry_file=Path(registry).expanduser() if registry else None,
                   offline=_truthy(env.get("WAVEGLOW_OFFLINE")),
                   mirror=env.get("WAVEGLOW_MIRROR") or None,
                   debug=_truthy(env.get("WAVEGLOW_DEBUG")),
                   limits=limits, problems=problems)

    @property
    def checkpoint_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def compile_cache(self) -> Path:
        """Where ``--engine compiled`` keeps torch.compile's code between runs: code that runs,
        so it is made 0700 and refused if anyone else could write to it or to the home holding
        it (see :func:`waveglow_cli.engines.gpu.check_compile_cache`)."""
        return self.home / "compile-cache"


@contextmanager
def compile_cache_environment(directory: Path) -> Iterator[None]:
    """Point every cache torch.compile writes at ``directory`` while it compiles, then put the
    environment back: inductor (``TORCHINDUCTOR_CACHE_DIR``) and Triton (``TRITON_CACHE_DIR``)
    take these folders from the environment only, and otherwise write under
    ``$TMPDIR/torchinductor_$USER`` and ``~/.triton``, outside the cache we check.  This module
    is the one place of the library that touches the environment."""
    wanted = {"TORCHINDUCTOR_CACHE_DIR": str(directory),
              "TRITON_CACHE_DIR": str(directory / "triton")}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _limits_from_env(env: Mapping[str, str]) -> tuple[DownloadLimits, tuple[str, ...]]:
    """The download limits the environment sets; unparsable values keep the default and are
    listed (never raised here: from_env also runs while reporting another error)."""
    default = DownloadLimits()
    values: dict[str, object] = {}
    problems: list[str] = []
    for var, key, parse, what in (
            ("WAVEGLOW_MAX_DOWNLOAD_BYTES", "max_bytes", parse_bytes, "a byte count (e.g. 4G)"),
            ("WAVEGLOW_DOWNLOAD_MIN_RATE", "min_rate", parse_bytes,
             "bytes per second (e.g. 4k; 0 switches the check off)"),
            ("WAVEGLOW_DOWNLOAD_DEADLINE", "deadline", _parse_seconds,
             "seconds (0 switches it off)"),
            ("WAVEGLOW_LOCK_TIMEOUT", "lock_timeout", _parse_seconds, "seconds")):
        text = env.get(var)
        if text is None or not text.strip():
            continue
        try:
            values[key] = parse(text)
        except (ValueError, OverflowError):
            problems.append(f"{var}={text!r} is not {what}")
    if values.get("deadline") == 0:
        values["deadline"] = None
    if values.get("max_bytes") == 0:
        problems.append("WAVEGLOW_MAX_DOWNLOAD_BYTES=0 would refuse every download")
        del values["max_bytes"]
    return DownloadLimits(**{**default.__dict__, **values}), tuple(problems)


@dataclass(frozen=True)
class Shard:
    """This process's place under torchrun (RANK, WORLD_SIZE, LOCAL_RANK): synthesis gives rank
    r the items r, r+N, ...; training shards data and picks the GPU by local rank."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Shard:
        env = os.environ if environ is None else environ
        return cls(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")),
                   int(env.get("LOCAL_RANK", "0")))

    @property
    def main(self) -> bool:
        return self.rank == 0
