"""The checkpoint cache: fetch, verify, convert, describe and remove registry checkpoints.

Layout under ``WAVEGLOW_HOME`` (default: the platform's user cache folder)::

    checkpoints/<name>/<file>                 the file as published (e.g. a .pt pickle), verified
    checkpoints/<name>/<stem>.safetensors     converted copy; what a registry name resolves to
    checkpoints/<name>/metadata.json          sha256, size, source URL, date, format
    checkpoints/<name>/<file>.partial         a download in progress (resumed on the next try)
    locks/<name>.lock                         one process downloads a checkpoint at a time

A checkpoint's final file only ever appears through an atomic rename after its size and sha256
were checked and it was read as a WaveGlow, so what is under the final name is usable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .download import (RetryPolicy, Source, _Reporter, default_progress, download,
                       partial_path, sha256_file)
from .errors import (CheckpointError, CheckpointNotAvailableError, ChecksumMismatchError,
                     UsageError)
from .registry import RegistryEntry
from .settings import Settings

METADATA_NAME = "metadata.json"


@dataclass(frozen=True)
class CachePaths:
    folder: Path
    original: Path      # the file as published
    converted: Path     # our safetensors copy (== original when that already is safetensors)
    metadata: Path
    lock: Path

    @property
    def usable(self) -> Path | None:
        """What a name resolves to: the safetensors copy, else the original, else None."""
        if self.converted.is_file():
            return self.converted
        if self.original.is_file():
            return self.original
        return None


def cache_paths(entry: RegistryEntry, settings: Settings) -> CachePaths:
    folder = settings.checkpoint_dir / entry.name
    original = folder / entry.filename
    converted = (original if original.suffix == ".safetensors"
                 else folder / (original.stem + ".safetensors"))
    return CachePaths(folder, original, converted, folder / METADATA_NAME,
                      settings.home / "locks" / f"{entry.name}.lock")


def cached_file(entry: RegistryEntry, settings: Settings) -> Path | None:
    """The cached file a registry name resolves to (None: not downloaded).  No network.
    A checkpoint shipped with the package resolves to its file there."""
    if entry.bundled is not None:
        path = entry.bundled_path
        return path if path is not None and path.is_file() else None
    return cache_paths(entry, settings).usable


def read_metadata(entry: RegistryEntry, settings: Settings) -> dict[str, Any]:
    try:
        data = json.loads(cache_paths(entry, settings).metadata.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sources_for(entry: RegistryEntry, settings: Settings) -> list[Source]:
    """``WAVEGLOW_MIRROR/<file>`` first (the plain checkpoint file, never an archive), then the
    registry's URLs in order."""
    sources = []
    if settings.mirror:
        sources.append(Source(f"{settings.mirror.rstrip('/')}/{entry.filename}"))
    sources += [Source(url, entry.archive, entry.member) for url in entry.urls]
    return sources


class _Lock:
    """A per-checkpoint file lock; says so when another process holds it."""

    def __init__(self, lock_path: Path, label: str, reporter: _Reporter) -> None:
        from filelock import FileLock

        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(lock_path))
        self.label, self.reporter = label, reporter

    def __enter__(self) -> _Lock:
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=0.2)
        except Timeout:
            self.reporter.note(f"{self.label}: waiting for another process that is downloading it")
            self.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


@dataclass
class FetchResult:
    entry: RegistryEntry
    path: Path                              # what the name now resolves to
    action: str                             # "cached", "downloaded", "verified", "repaired"
    sha256: str | None = None               # of the original file
    published_sha256: bool = False          # it matched the registry's sha256
    metadata: dict[str, Any] = field(default_factory=dict)
    problem: str = ""                       # what --verify found (for "repaired")


def _remove_files(paths: CachePaths) -> None:
    for path in (paths.original, paths.converted, paths.metadata, partial_path(paths.original)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _convert_and_record(entry: RegistryEntry, settings: Settings, paths: CachePaths,
                        checkpoint: Any, sha256: str, size: int, url: str | None,
                        downloaded_at: str | None) -> dict[str, Any]:
    from .checkpoint import save_checkpoint

    if checkpoint is not None and paths.converted != paths.original:
        save_checkpoint(paths.converted, checkpoint,
                        extra={"source_sha256": sha256, "registry_name": entry.name})
    meta = {
        "name": entry.name,
        "file": paths.original.name,
        "size": size,
        "sha256": sha256,
        "sha256_published": entry.sha256 is not None,
        "url": url,
        "downloaded_at": downloaded_at,
        "format": checkpoint.source_format if checkpoint is not None else None,
        "safetensors": paths.converted.name if checkpoint is not None else None,
        "safetensors_sha256": sha256_file(paths.converted) if checkpoint is not None else None,
    }
    _write_json(paths.metadata, meta)
    return meta


def fetch_checkpoint(entry: RegistryEntry, settings: Settings, *, force: bool = False,
                     verify: bool = False, progress: Any = None,
                     policy: RetryPolicy | None = None) -> FetchResult:
    """Make ``entry`` available in the cache and return where it is.

    Cached and neither ``force`` nor ``verify``: returns at once, without any network access.
    Otherwise, under the checkpoint's file lock: ``verify`` re-hashes the cached file against
    the published (else recorded) sha256 and re-downloads it when it differs; a download is
    verified (size, sha256, loads as a WaveGlow), renamed into place, converted to safetensors
    and its sha256 recorded in ``metadata.json``."""
    if entry.bundled is not None:
        return _bundled_result(entry)
    paths = cache_paths(entry, settings)
    if not force and not verify and paths.usable is not None:
        return FetchResult(entry, paths.usable, "cached",
                           read_metadata(entry, settings).get("sha256"))
    reporter = _Reporter(progress if progress is not None else default_progress())
    problem = ""
    with _Lock(paths.lock, entry.name, reporter):
        if verify and paths.usable is not None:
            problem, fixed = _verify(entry, settings, paths)
            if fixed:
                reporter.note(f"{entry.name}: {fixed}")
            if not problem:
                meta = read_metadata(entry, settings)
                return FetchResult(entry, paths.usable or paths.original, "verified",
                                   meta.get("sha256"), entry.sha256 is not None, meta)
            _remove_files(paths)
            if settings.offline:
                raise ChecksumMismatchError(
                    entry.name, str(paths.folder), "cache", "a verified file", problem,
                    "the corrupt files were removed; offline mode (WAVEGLOW_OFFLINE=1 or "
                    "--offline) forbids downloading it again")
            reporter.note(f"{entry.name}: cached copy is corrupt ({problem}); downloading "
                          "it again")
        elif not force and paths.usable is not None:  # another process finished it meanwhile
            return FetchResult(entry, paths.usable, "cached",
                               read_metadata(entry, settings).get("sha256"))
        if settings.offline:
            raise CheckpointNotAvailableError(
                f"checkpoint {entry.name!r} is not downloaded (looked in {paths.folder}) and "
                "offline mode (WAVEGLOW_OFFLINE=1 or --offline) forbids fetching it")
        if not entry.urls and not settings.mirror:
            raise UsageError(f"checkpoint {entry.name!r} has no URL to download it from")
        held: dict[str, Any] = {}

        def validate(path: Path) -> None:
            from .checkpoint import read_checkpoint

            try:
                held["checkpoint"] = read_checkpoint(path)
            except CheckpointError as e:
                if entry.sha256 is None:
                    raise  # structure is the only check we have: try the next URL
                # The published sha256 matched: these are the published bytes.  Keep them;
                # loading will say what is wrong with them.
                held["unreadable"] = e.reason

        try:
            got = download(sources_for(entry, settings), paths.original, size=entry.size,
                           sha256=entry.sha256, progress=reporter, policy=policy,
                           validate=validate, label=entry.name)
        except BaseException:
            try:
                paths.folder.rmdir()   # leave no empty folder behind (a .partial stays)
            except OSError:
                pass
            raise
        now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        meta = _convert_and_record(entry, settings, paths, held.get("checkpoint"), got.sha256,
                                   got.size, got.url, now)
        if "unreadable" in held:
            reporter.note(f"{entry.name}: the download matches its published sha256 but does "
                          f"not load as a WaveGlow ({held['unreadable']})")
        if entry.sha256:
            reporter.note(f"{entry.name}: downloaded {got.size} bytes from {got.url}; sha256 "
                          f"{got.sha256} matches the published checksum")
        else:
            reporter.note(f"{entry.name}: downloaded {got.size} bytes from {got.url}; sha256 "
                          f"{got.sha256} (no checksum is published for it; to pin it, put "
                          f'sha256 = "{got.sha256}" in its entry in a WAVEGLOW_REGISTRY file)')
    return FetchResult(entry, paths.usable or paths.original,
                       "repaired" if problem else "downloaded", got.sha256,
                       entry.sha256 is not None, meta, problem)


def _bundled_result(entry: RegistryEntry) -> FetchResult:
    """A checkpoint shipped with the package: nothing to download; its bytes are checked
    against the registry's sha256 so that a damaged install is named, not silently used."""
    from .registry import bundled_checkpoint

    path = bundled_checkpoint(entry)
    digest = sha256_file(path)
    if entry.sha256 is not None and digest != entry.sha256:
        raise ChecksumMismatchError(entry.name, str(path), "sha256", entry.sha256, digest,
                                    "the file shipped with the package is damaged; reinstall "
                                    "waveglow")
    return FetchResult(entry, path, "bundled", digest, entry.sha256 is not None)


def _verify(entry: RegistryEntry, settings: Settings, paths: CachePaths) -> tuple[str, str]:
    """(what is wrong with the cached checkpoint or '', what was fixed locally or '').

    A sound original with a missing or damaged safetensors copy (or no recorded sha256) is
    fixed here: the copy is rebuilt and the sha256 recorded."""
    from .checkpoint import read_checkpoint

    meta = read_metadata(entry, settings)
    if not paths.original.is_file():
        # Only the converted copy is left: check it against what was recorded.
        recorded = meta.get("safetensors_sha256")
        got = sha256_file(paths.converted)
        if recorded and got != recorded:
            return f"{paths.converted.name} has sha256 {got}, recorded {recorded}", ""
        try:
            read_checkpoint(paths.converted)
        except CheckpointError as e:
            return e.reason, ""
        return "", ""
    expected_size = entry.size or meta.get("size")
    size = paths.original.stat().st_size
    if expected_size and size != expected_size:
        return f"{paths.original.name} is {size} bytes, expected {expected_size}", ""
    expected = entry.sha256 or meta.get("sha256")
    digest = sha256_file(paths.original)
    if expected and digest != expected:
        return f"{paths.original.name} has sha256 {digest}, expected {expected}", ""
    converted_ok = paths.converted == paths.original or bool(
        paths.converted.is_file() and meta.get("safetensors_sha256")
        and sha256_file(paths.converted) == meta["safetensors_sha256"])
    if expected and converted_ok and meta.get("sha256") == digest:
        return "", ""
    # No recorded hash yet (a file put here by hand), or the converted copy needs rebuilding.
    try:
        checkpoint = read_checkpoint(paths.original)
    except CheckpointError as e:
        return e.reason, ""
    _convert_and_record(entry, settings, paths, checkpoint, digest, size, meta.get("url"),
                        meta.get("downloaded_at"))
    fixed = ("rebuilt the safetensors copy from the verified original" if not converted_ok
             else f"recorded sha256 {digest}")
    return "", fixed


def remove_checkpoint(entry_or_name: RegistryEntry | str, settings: Settings,
                      progress: Any = None) -> Path | None:
    """Delete a checkpoint's cache folder (under its lock); returns it, or None if absent."""
    name = entry_or_name if isinstance(entry_or_name, str) else entry_or_name.name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UsageError(f"{name!r} is not a checkpoint name")
    folder = settings.checkpoint_dir / name
    if not folder.is_dir():
        return None
    with _Lock(settings.home / "locks" / f"{name}.lock", name, _Reporter(progress)):
        shutil.rmtree(folder)
    return folder


def describe_cached(entry: RegistryEntry, settings: Settings) -> dict[str, Any]:
    """What ``waveglow list --json`` shows for one entry (no network, nothing unpickled)."""
    paths = cache_paths(entry, settings)
    usable = cached_file(entry, settings)
    if entry.bundled is not None:  # shipped with the package: no cache metadata to read
        meta = {"size": usable.stat().st_size} if usable is not None else {}
    else:
        meta = read_metadata(entry, settings)
    return {
        "name": entry.name,
        "aliases": list(entry.aliases),
        "description": entry.description,
        "license": entry.license,
        "urls": list(entry.urls),
        "archive": entry.archive,
        "member": entry.member,
        "filename": entry.filename,
        "size": entry.size if entry.size is not None else meta.get("size"),
        "sha256": entry.sha256,
        "recorded_sha256": meta.get("sha256"),
        "sample_rate": entry.sample_rate,
        "mel": dict(entry.mel),
        "bundled": entry.bundled is not None,
        "cached": usable is not None,
        "path": str(usable) if usable is not None else None,
        "cache_dir": str(paths.folder),
    }


__all__ = ["cache_paths", "cached_file", "fetch_checkpoint", "remove_checkpoint",
           "read_metadata", "describe_cached", "FetchResult", "CachePaths", "sources_for"]
