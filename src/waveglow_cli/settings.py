"""Environment read once, into an immutable value the rest of the code is handed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "waveglow"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """What the environment says.  Tests build their own instead of patching os.environ."""

    home: Path                      # cache root: checkpoints, partial downloads, locks
    registry_file: Path | None      # WAVEGLOW_REGISTRY: extra TOML entries
    offline: bool                   # WAVEGLOW_OFFLINE=1: never touch the network
    mirror: str | None              # WAVEGLOW_MIRROR: base URL tried before the registry's URLs
    debug: bool                     # WAVEGLOW_DEBUG=1: show tracebacks

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = env.get("WAVEGLOW_HOME")
        if not home:
            from platformdirs import user_cache_dir

            home = user_cache_dir(APP_NAME)
        registry = env.get("WAVEGLOW_REGISTRY")
        return cls(home=Path(home).expanduser(),
                   registry_file=Path(registry).expanduser() if registry else None,
                   offline=_truthy(env.get("WAVEGLOW_OFFLINE")),
                   mirror=env.get("WAVEGLOW_MIRROR") or None,
                   debug=_truthy(env.get("WAVEGLOW_DEBUG")))

    @property
    def checkpoint_dir(self) -> Path:
        return self.home / "checkpoints"


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
