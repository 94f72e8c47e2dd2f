"""The checkpoint registry: ``checkpoints.toml`` (shipped) plus ``WAVEGLOW_REGISTRY`` entries.

It names checkpoints and says where they come from; it knows nothing of the cache (which
uses it: :func:`waveglow_cli.checkpoints.cache.ensure_checkpoint` turns what a user typed, a path,
a short name or an alias, into a local file).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..errors import (
    CheckpointNotAvailableError,
    UnknownCheckpointError,
    UsageError,
    closest_names,
    did_you_mean,
)
from ..fileio import read_side_text
from ..settings import Settings

DEFAULT_CHECKPOINT = "universal"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 128
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt")
_REGISTRY_FILE_LIMIT = 16 << 20     # a registry is a few KB of TOML; refuse anything huge
_RESERVED_NAMES = ("metadata.json",)  # the cache's record beside each checkpoint


def name_problem(value: object) -> str | None:
    """Why ``value`` cannot be used as one file name (None: it can).

    The one check every registry value that becomes a path goes through (entry names,
    aliases, each part of ``member`` and ``bundled``, the file name taken from a URL): a name
    is a name, so it holds no separator, is not hidden, '.' or '..', has no control
    characters and is of bounded length.  Then joining it to a folder stays in that folder
    on every platform."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if not value.strip():
        return "is empty"
    if len(value) > MAX_NAME_LENGTH:
        return f"is longer than {MAX_NAME_LENGTH} characters"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        return "holds control characters"
    if any(sep in value for sep in ("/", "\\", ":")):
        return "holds a path separator ('/', '\\' or ':')"
    if value.startswith(".") or ".." in value:
        return "starts with '.' or holds '..'"
    return None


def _inner_path_problem(value: object) -> str | None:
    """Why ``value`` is not a relative path inside its root made of plain names (None: it is)."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if value.startswith(("/", "\\")):
        return "must be a relative path"
    for part in value.split("/"):
        if (problem := name_problem(part)) is not None:
            return f"has a part {part!r} that {problem}"
    return None


def url_file_name(url: str) -> str:
    """The last segment of a URL's path as written ('' when there is none).  Registry URLs are
    checked (see _url_problem) so that it is a plain name, with escapes decoded or not."""
    return urlparse(url).path.rsplit("/", 1)[-1]


def _url_problem(url: object) -> str | None:
    if not isinstance(url, str):
        return f"must be a string, not {type(url).__name__}"
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        return "holds spaces or control characters"
    try:
        parsed = urlparse(url)
    except ValueError as e:
        return f"is not a URL ({e})"
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return "must be an http:// or https:// URL"
    raw_leaf = parsed.path.rsplit("/", 1)[-1]
    leaf = unquote(raw_leaf)
    # Only a leaf with a checkpoint suffix can become the cached file's name (see filename).
    if leaf.lower().endswith(_CHECKPOINT_SUFFIXES) or raw_leaf.lower().endswith(
            _CHECKPOINT_SUFFIXES):
        for candidate in (raw_leaf, leaf):
            if (problem := name_problem(candidate)) is not None:
                return f"ends in a file name {candidate!r} that {problem}"
    return None


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
        """The checkpoint's file name in the cache: the last part of ``bundled`` or ``member``,
        else the file name a URL ends in, else ``<first alias or name>.pt``.  Always a plain
        name (checked here too, for entries built without :meth:`from_table`)."""
        if self.bundled:
            leaf = self.bundled.rsplit("/", 1)[-1]
        elif self.member:
            leaf = self.member.replace("\\", "/").rsplit("/", 1)[-1]
        else:
            leaf = next((name for name in map(url_file_name, self.urls)
                         if name.endswith(_CHECKPOINT_SUFFIXES)), "")
            leaf = leaf or f"{self.aliases[0] if self.aliases else self.name}.pt"
        if (problem := name_problem(leaf)) is not None:
            raise UsageError(f"checkpoint {self.name!r}: its file name {leaf!r} {problem}")
        return leaf

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any], origin: str) -> RegistryEntry:
        """Validate one registry table: every value's type, and every value that becomes a path
        through :func:`name_problem`.  A bad value is a :class:`UsageError` naming the file,
        the entry and the field."""
        check = _TableCheck(name, origin)
        if not _NAME.fullmatch(name) or name_problem(name) is not None:
            raise check.fail("a checkpoint name may hold only letters, digits, '.', '_' and "
                             f"'-', at most {MAX_NAME_LENGTH} of them, and no '..' (it names a "
                             "folder in the cache)")
        bundled, urls = check.origin_fields(table)
        aliases = check.aliases(table)
        sha, size = check.integrity(table)
        archive, member = check.archive(table)
        sample_rate, mel = check.description(table)
        entry = cls(name=name, urls=tuple(urls), aliases=tuple(aliases),
                    sha256=sha.lower() if sha else None, size=size, archive=archive,
                    member=member, description=table.get("description", ""),
                    license=table.get("license", ""), sample_rate=sample_rate, mel=dict(mel),
                    bundled=bundled)
        check.field("file name", (problem := name_problem(entry.filename))
                    and f"{entry.filename!r} {problem}")
        if entry.filename in _RESERVED_NAMES:
            raise check.fail(f"its file name {entry.filename!r} (from 'member', 'bundled', "
                             "'urls' or 'aliases') is reserved for the cache's own records")
        return entry


@dataclass(frozen=True)
class _TableCheck:
    """The checks of one registry table, field group by field group; each raises a
    :class:`UsageError` naming the file, the entry and the field."""

    name: str
    origin: str

    def fail(self, reason: str) -> UsageError:
        return UsageError(f"{self.origin}: entry [{self.name}]: {reason}")

    def field(self, key: str, problem: str | None) -> None:
        if problem is not None:
            raise self.fail(f"'{key}' {problem}")

    def origin_fields(self, table: Mapping[str, Any]) -> tuple[str | None, list[str]]:
        """(bundled, urls): where the checkpoint comes from."""
        bundled = table.get("bundled")
        if bundled is not None:
            self.field("bundled", (problem := _inner_path_problem(bundled))
                       and f"must be a path inside the package: {bundled!r} {problem}")
        urls = table.get("urls", [] if bundled else None)
        if not isinstance(urls, list) or not (urls or bundled):
            raise self.fail("'urls' must be a non-empty list of strings")
        for i, url in enumerate(urls, 1):
            self.field("urls", (problem := _url_problem(url))
                       and f"item {i} ({url!r}) {problem}")
        return bundled, urls

    def aliases(self, table: Mapping[str, Any]) -> list[str]:
        aliases = table.get("aliases", [])
        if not isinstance(aliases, list):
            raise self.fail(f"'aliases' must be a list of names, not {type(aliases).__name__}")
        for alias in aliases:
            self.field("aliases", (problem := name_problem(alias))
                       and f"item {alias!r} {problem}")
        return aliases

    def integrity(self, table: Mapping[str, Any]) -> tuple[str | None, int | None]:
        """(sha256, size).  NVIDIA publishes neither hashes nor byte sizes for most
        checkpoints; an entry without both is verified by structure on download and its
        sha256 recorded then."""
        sha = table.get("sha256")
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                                or any(c not in "0123456789abcdef" for c in sha.lower())):
            raise self.fail("'sha256' must be 64 hex digits")
        size = table.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)
                                 or size <= 0):
            raise self.fail("'size' must be a positive integer (bytes)")
        return sha, size

    def archive(self, table: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """(archive, member)."""
        archive = table.get("archive")
        if archive not in (None, "zip"):
            raise self.fail("'archive' must be \"zip\"")
        member = table.get("member")
        if archive and member is None:
            raise self.fail("an 'archive' needs a 'member'")
        if member is not None:
            self.field("member", (problem := _inner_path_problem(member))
                       and f"must be a relative path inside the archive: {member!r} "
                           f"{problem}")
        return archive, member

    def description(self, table: Mapping[str, Any]) -> tuple[int, Mapping[str, Any]]:
        """(sample_rate, mel); description and license are checked to be strings."""
        for key in ("description", "license"):
            if not isinstance(table.get(key, ""), str):
                raise self.fail(f"'{key}' must be a string")
        sample_rate = table.get("sample_rate", 22050)
        if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) \
                or not 1 <= sample_rate <= 1_000_000:
            raise self.fail(f"'sample_rate' must be a whole number of Hz (1 to 1000000), "
                            f"not {sample_rate!r}")
        mel = table.get("mel", {})
        if not isinstance(mel, Mapping):
            raise self.fail("'mel' must be a table")
        for key, value in mel.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise self.fail(f"'mel.{key}' must be a number, not {value!r}")
        return sample_rate, mel


def _parse(text: str, origin: str) -> dict[str, RegistryEntry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{origin}: invalid TOML ({e})") from None
    except RecursionError:
        raise UsageError(f"{origin}: invalid TOML (nested too deeply)") from None
    entries = {}
    for name, table in data.items():
        if not isinstance(table, Mapping):
            raise UsageError(f"{origin}: top-level key {name!r} must be a table")
        entries[name] = RegistryEntry.from_table(name, table, origin)
    return entries


def _read_registry_file(path: Path) -> str:
    """A WAVEGLOW_REGISTRY file's text: a regular file of bounded size, valid UTF-8 (a FIFO or
    /dev/zero named by mistake is refused, not read forever); the one bounded open every side
    file goes through (:func:`~waveglow_cli.fileio.read_side_file`)."""
    return read_side_text(path, "WAVEGLOW_REGISTRY file", _REGISTRY_FILE_LIMIT)


def builtin_registry_text() -> str:
    return resources.files("waveglow_cli").joinpath("checkpoints.toml").read_text("utf-8")


@dataclass(frozen=True)
class Registry:
    entries: Mapping[str, RegistryEntry]

    @classmethod
    def load(cls, settings: Settings) -> Registry:
        entries = _parse(builtin_registry_text(), "checkpoints.toml")
        if settings.registry_file is not None:
            text = _read_registry_file(settings.registry_file)
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
    return closest_names(spec, [(key, entry.name) for entry in registry.entries.values()
                                for key in (entry.name, *entry.aliases)], n)


def unknown_checkpoint_error(spec: str, registry: Registry) -> UnknownCheckpointError:
    """A clear error for a ``spec`` that is neither a file nor a registry name."""
    if _looks_like_path(spec) and not close_matches(Path(spec).stem, registry):
        return UnknownCheckpointError(f"{spec}: no such checkpoint file")
    matches = close_matches(Path(spec).stem if _looks_like_path(spec) else spec, registry)
    hint = did_you_mean(matches)
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
