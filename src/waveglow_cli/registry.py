"""The checkpoint registry: ``checkpoints.toml`` (shipped) plus ``WAVEGLOW_REGISTRY`` entries.

Resolution turns what a user typed (a path, a short name or an alias) into a local file:
an existing path wins; a registry name maps to its file in the cache.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import CheckpointNotAvailableError, UnknownCheckpointError, UsageError
from .settings import Settings

DEFAULT_CHECKPOINT = "universal"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _is_inner_path(value: object) -> bool:
    """A non-empty relative path that stays inside its root (no leading slash, no '..')."""
    return (isinstance(value, str) and bool(value.strip()) and not value.startswith(("/", "\\"))
            and ".." not in value.replace("\\", "/").split("/"))


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    urls: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    sha256: str | None = None
    size: int | None = None
    archive: str | None = None      # "zip" when the download is an archive holding the file
    member: str | None = None       # path of the checkpoint inside the archive
    description: str = ""
    license: str = ""
    sample_rate: int = 22050
    mel: Mapping[str, Any] = field(default_factory=dict)
    bundled: str | None = None      # shipped inside the package at this relative path: no download

    @property
    def bundled_path(self) -> Path | None:
        """Where a checkpoint shipped with the package lies (None: not a bundled entry)."""
        if self.bundled is None:
            return None
        return Path(str(resources.files("waveglow_cli").joinpath(self.bundled)))

    @property
    def filename(self) -> str:
        """The checkpoint's file name in the cache."""
        if self.bundled:
            return Path(self.bundled).name
        if self.member:
            return Path(self.member).name
        for url in self.urls:
            leaf = Path(urlparse(url).path).name
            if leaf.endswith((".pt", ".pth", ".safetensors", ".ckpt")):
                return leaf
        return f"{self.aliases[0] if self.aliases else self.name}.pt"

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any], origin: str) -> RegistryEntry:
        def fail(reason: str) -> UsageError:
            return UsageError(f"{origin}: entry [{name}]: {reason}")

        if not _NAME.fullmatch(name) or ".." in name:
            raise fail("a checkpoint name may hold only letters, digits, '.', '_' and '-' "
                       "(it names a folder in the cache)")
        bundled = table.get("bundled")
        if bundled is not None and not _is_inner_path(bundled):
            raise fail("'bundled' must be a path inside the package, without '..'")
        urls = table.get("urls", [] if bundled else None)
        if not isinstance(urls, list) or not (urls or bundled) \
                or not all(isinstance(u, str) for u in urls):
            raise fail("'urls' must be a non-empty list of strings")
        # NVIDIA publishes neither hashes nor byte sizes for most checkpoints; an entry without
        # both is verified by structure on download and its sha256 recorded then.
        sha = table.get("sha256")
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                                or any(c not in "0123456789abcdef" for c in sha.lower())):
            raise fail("'sha256' must be 64 hex digits")
        size = table.get("size")
        if size is not None and (not isinstance(size, int) or size <= 0):
            raise fail("'size' must be a positive integer (bytes)")
        if table.get("archive") not in (None, "zip"):
            raise fail("'archive' must be \"zip\"")
        if table.get("archive") and not table.get("member"):
            raise fail("an 'archive' needs a 'member'")
        member = table.get("member")
        if member is not None and not _is_inner_path(member):
            raise fail("'member' must be a relative path inside the archive, without '..'")
        mel = table.get("mel", {})
        if not isinstance(mel, Mapping):
            raise fail("'mel' must be a table")
        return cls(name=name, urls=tuple(urls), aliases=tuple(table.get("aliases", ())),
                   sha256=sha.lower() if sha else None, size=size,
                   archive=table.get("archive"), member=table.get("member"),
                   description=str(table.get("description", "")),
                   license=str(table.get("license", "")),
                   sample_rate=int(table.get("sample_rate", 22050)), mel=dict(mel),
                   bundled=bundled)


def _parse(text: str, origin: str) -> dict[str, RegistryEntry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{origin}: invalid TOML ({e})") from None
    entries = {}
    for name, table in data.items():
        if not isinstance(table, Mapping):
            raise UsageError(f"{origin}: top-level key {name!r} must be a table")
        entries[name] = RegistryEntry.from_table(name, table, origin)
    return entries


def builtin_registry_text() -> str:
    return resources.files("waveglow_cli").joinpath("checkpoints.toml").read_text("utf-8")


@dataclass(frozen=True)
class Registry:
    entries: Mapping[str, RegistryEntry]

    @classmethod
    def load(cls, settings: Settings) -> Registry:
        entries = _parse(builtin_registry_text(), "checkpoints.toml")
        if settings.registry_file is not None:
            try:
                text = settings.registry_file.read_text("utf-8")
            except OSError as e:
                raise UsageError(f"{settings.registry_file}: cannot read WAVEGLOW_REGISTRY file "
                                 f"({e.strerror or e})") from None
            entries.update(_parse(text, str(settings.registry_file)))
        return cls(entries)

    def find(self, name: str) -> RegistryEntry | None:
        if name in self.entries:
            return self.entries[name]
        stem = Path(name).stem if name.endswith((".pt", ".pth")) else name
        return next((e for e in self.entries.values() if stem in e.aliases), None)


def _looks_like_path(spec: str) -> bool:
    return any(sep in spec for sep in ("/", "\\")) or spec.endswith(
        (".pt", ".pth", ".safetensors", ".ckpt"))


def close_matches(spec: str, registry: Registry, n: int = 3) -> list[str]:
    """Registry names that ``spec`` may be a typo of (names and aliases compared)."""
    by_key: dict[str, str] = {}
    for entry in registry.entries.values():
        for key in (entry.name, *entry.aliases):
            by_key.setdefault(key.lower(), entry.name)
    found: list[str] = []
    for key in difflib.get_close_matches(spec.lower(), list(by_key), n=2 * n, cutoff=0.6):
        if by_key[key] not in found:
            found.append(by_key[key])
    return found[:n]


def unknown_checkpoint_error(spec: str, registry: Registry) -> UnknownCheckpointError:
    """A clear error for a ``spec`` that is neither a file nor a registry name."""
    if _looks_like_path(spec) and not close_matches(Path(spec).stem, registry):
        return UnknownCheckpointError(f"{spec}: no such checkpoint file")
    matches = close_matches(Path(spec).stem if _looks_like_path(spec) else spec, registry)
    hint = (f"did you mean {' or '.join(repr(m) for m in matches)}? " if matches else "")
    names = ", ".join(sorted(registry.entries)) or "(none)"
    return UnknownCheckpointError(
        f"unknown checkpoint {spec!r}: not a file and not a registry name; {hint}"
        f"known: {names} (`waveglow list` describes them)")


def bundled_checkpoint(entry: RegistryEntry) -> Path:
    """The file of an entry shipped inside the package (no cache, no network)."""
    path = entry.bundled_path
    if path is None or not path.is_file():
        raise CheckpointNotAvailableError(
            f"checkpoint {entry.name!r} should ship with the package at {path}, but that file "
            "is missing; reinstall waveglow")
    return path


_RUN_CHECKPOINT = re.compile(r"step_(\d+)\.safetensors")


def newest_run_checkpoint(folder: Path) -> Path | None:
    """The highest-step ``step_<N>.safetensors`` that ``waveglow train`` wrote in ``folder``."""
    found = [(int(m.group(1)), p) for p in folder.iterdir()
             if (m := _RUN_CHECKPOINT.fullmatch(p.name)) and p.is_file()]
    return max(found)[1] if found else None


def ensure_checkpoint(spec: str, settings: Settings, progress: object = None,
                      registry: Registry | None = None) -> Path:
    """A local file for ``spec``: an existing path as it is; a registry name or alias from the
    cache (its safetensors copy when there is one), downloaded, verified and cached first if
    it is not there yet, unless ``settings.offline``.

    ``progress`` receives the download's progress (see :mod:`waveglow_cli.download`)."""
    path = Path(spec).expanduser()
    if path.is_dir() and (newest := newest_run_checkpoint(path)) is not None:
        return newest  # a `waveglow train` run folder: its latest checkpoint
    if path.exists():
        return path
    registry = registry or Registry.load(settings)
    entry = registry.find(spec)
    if entry is None:
        raise unknown_checkpoint_error(spec, registry)
    from .cache import cached_file, fetch_checkpoint

    if entry.bundled is not None:
        return bundled_checkpoint(entry)
    local = cached_file(entry, settings)
    if local is not None:
        return local
    if settings.offline:
        raise CheckpointNotAvailableError(
            f"checkpoint {entry.name!r} is not downloaded (looked in "
            f"{settings.checkpoint_dir / entry.name}) and offline mode (WAVEGLOW_OFFLINE=1 or "
            f"--offline) forbids fetching it; run `waveglow fetch {entry.name}` while online, "
            f"or pass --checkpoint PATH")
    return fetch_checkpoint(entry, settings, progress=progress).path
