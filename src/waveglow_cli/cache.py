"""The checkpoint cache: fetch, verify, convert, describe and remove registry checkpoints.

Layout under ``WAVEGLOW_HOME`` (default: the platform's user cache folder)::

    checkpoints/<name>/<file>                 the file as published (e.g. a .pt pickle), verified
    checkpoints/<name>/<stem>.safetensors     converted copy; what a registry name resolves to
    checkpoints/<name>/metadata.json          sha256, size, source URL, date, format
    checkpoints/<name>/<file>.partial         a download in progress (resumed on the next try)
    locks/<name>.lock                         one process downloads a checkpoint at a time

A checkpoint's final file only ever appears through an atomic rename after its size and sha256
were checked and it was read as a WaveGlow, so what is under the final name is usable.

``metadata.json`` is a record, not the truth: a damaged record (not JSON, wrong types, huge) is
a note, and ``--verify`` repairs it from the bytes when they load as a WaveGlow (or match the
published sha256).  Cached bytes are only deleted on proof that they are bad.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .download import (RetryPolicy, Source, _Reporter, default_progress, download,
                       partial_path, sha256_file)
from .errors import (CheckpointError, CheckpointNotAvailableError, ChecksumMismatchError,
                     UsageError)
from .fileio import remove_stale_parts, write_json
from .registry import RegistryEntry
from .settings import Settings

METADATA_NAME = "metadata.json"
_METADATA_LIMIT = 1 << 20   # a record is a few hundred bytes; a larger one is damaged
# What a record holds, and the type each field must have (anything else is dropped as damage).
_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,), "file": (str,), "size": (int,), "sha256": (str,),
    "sha256_published": (bool,), "url": (str,), "downloaded_at": (str,), "format": (str,),
    "safetensors": (str,), "safetensors_sha256": (str,),
}


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
    """Where ``entry``'s files lie.  The registry checked that its name and file name are plain
    names (see registry.name_problem); checked again here because every write goes there."""
    from .registry import name_problem

    for what, value in (("name", entry.name), ("file name", entry.filename)):
        if (problem := name_problem(value)) is not None or value == METADATA_NAME:
            raise UsageError(f"checkpoint {entry.name!r}: its {what} {value!r} "
                             f"{problem or 'is reserved'}")
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


def read_record(entry: RegistryEntry, settings: Settings) -> tuple[dict[str, Any], str]:
    """(the checkpoint's metadata.json, what is wrong with it or '').

    Only fields of the right type are returned; a record that is not a small JSON object is
    {} with the reason.  A missing record is no problem (a file put into the cache by hand)."""
    path = cache_paths(entry, settings).metadata
    try:
        # O_NONBLOCK: a FIFO under the record's name must not hang `waveglow list`.
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return {}, f"{METADATA_NAME} is not a regular file"
            raw = f.read(_METADATA_LIMIT + 1)
    except FileNotFoundError:
        return {}, ""
    except OSError as e:
        return {}, f"cannot read {METADATA_NAME} ({e.strerror or e})"
    if len(raw) > _METADATA_LIMIT:
        return {}, f"{METADATA_NAME} is larger than {_METADATA_LIMIT >> 20} MiB"
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return {}, f"{METADATA_NAME} is not valid JSON"
    if not isinstance(data, dict):
        return {}, f"{METADATA_NAME} holds a JSON {type(data).__name__}, not an object"
    clean: dict[str, Any] = {}
    bad: list[str] = []
    for key, kinds in _RECORD_FIELDS.items():
        value = data.get(key)
        if value is None:
            continue
        # bool is an int: a size of `true` is damage, not 1 byte.
        if isinstance(value, kinds) and not (bool not in kinds and isinstance(value, bool)):
            clean[key] = value
        else:
            bad.append(key)
    for key in ("sha256", "safetensors_sha256"):
        value = clean.get(key)
        if value is not None and (len(value) != 64 or
                                  any(c not in "0123456789abcdef" for c in value)):
            del clean[key]
            bad.append(key)
    if "size" in clean and clean["size"] < 0:
        del clean["size"]
        bad.append("size")
    problem = (f"{METADATA_NAME} has damaged fields ({', '.join(bad)})" if bad else "")
    return clean, problem


def read_metadata(entry: RegistryEntry, settings: Settings) -> dict[str, Any]:
    """The checkpoint's record, its damaged fields left out ({} when absent or unreadable)."""
    return read_record(entry, settings)[0]


def sources_for(entry: RegistryEntry, settings: Settings) -> list[Source]:
    """``WAVEGLOW_MIRROR/<file>`` first (the plain checkpoint file, never an archive), then the
    registry's URLs in order."""
    sources = []
    if settings.mirror:
        sources.append(Source(f"{settings.mirror.rstrip('/')}/{entry.filename}"))
    sources += [Source(url, entry.archive, entry.member) for url in entry.urls]
    return sources


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True   # exists but belongs to someone else, or not a pid we can judge
    return True


class _Lock:
    """A per-checkpoint file lock; says so when another process holds it.

    filelock takes an flock(2) lock, which the kernel releases when its holder exits, however
    it dies: a dead holder never blocks anyone.  A live holder that hangs would block forever,
    so waiting is bounded: while the holder's files (``watch``: the checkpoint's cache folder)
    keep changing it is working and we wait; after ``stall_timeout`` seconds without a change
    we give up with a message naming its pid (written beside the lock) and the lock file."""

    def __init__(self, lock_path: Path, label: str, reporter: _Reporter, *,
                 stall_timeout: float = 600.0, watch: Path | None = None) -> None:
        from filelock import FileLock

        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.path = lock_path
        self.owner_file = lock_path.with_name(lock_path.name + ".pid")
        self.lock = FileLock(str(lock_path))
        self.label, self.reporter = label, reporter
        self.stall_timeout, self.watch = stall_timeout, watch

    def _owner(self) -> str:
        try:
            with open(self.owner_file, "rb") as f:
                text = f.read(64).decode("ascii", "replace").strip()
        except OSError:
            return ""
        return text if text.isdigit() else ""

    def _activity(self) -> tuple[tuple[str, int, int], ...]:
        """What the holder's progress looks like from outside: its files' sizes and times."""
        if self.watch is None:
            return ()
        try:
            found = []
            for entry in os.scandir(self.watch):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                found.append((entry.name, st.st_size, st.st_mtime_ns))
            return tuple(sorted(found))
        except OSError:
            return ()

    def __enter__(self) -> _Lock:
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=0.2)
        except Timeout:
            owner = self._owner()
            self.reporter.note(f"{self.label}: waiting for another process"
                               f"{f' (pid {owner})' if owner else ''} that is downloading it")
            seen, since = self._activity(), time.monotonic()
            while True:
                try:
                    self.lock.acquire(timeout=1.0)
                    break
                except Timeout:
                    pass
                now = self._activity()
                if now != seen:
                    seen, since = now, time.monotonic()
                elif time.monotonic() - since > self.stall_timeout:
                    owner = self._owner() or owner
                    if owner and not _alive(int(owner)):
                        # Only a lock without flock (filelock's fallback on some network file
                        # systems) outlives its holder.
                        raise CheckpointNotAvailableError(
                            f"{self.label}: the lock {self.path} is still held although the "
                            f"process that took it (pid {owner}) is no longer running; if no "
                            "other waveglow is fetching this checkpoint, delete the lock file")
                    raise CheckpointNotAvailableError(
                        f"{self.label}: another process{f' (pid {owner})' if owner else ''} "
                        f"holds the lock {self.path} and has shown no progress for "
                        f"{self.stall_timeout:g} s; if it is stuck, stop it (the lock is "
                        "released when it exits), or wait longer with WAVEGLOW_LOCK_TIMEOUT")
        try:
            self.owner_file.write_text(f"{os.getpid()}\n", "ascii")
        except OSError:
            pass  # the pid is only for messages
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.owner_file.unlink()
        except OSError:
            pass
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
                        downloaded_at: str | None, *, rebuild: bool = True) -> dict[str, Any]:
    """Write the safetensors copy of ``checkpoint`` (unless ``rebuild`` is False: the copy is
    sound and kept as it is) and the record of both files."""
    from .checkpoint import save_checkpoint

    if checkpoint is not None and paths.converted != paths.original and rebuild:
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
    write_json(paths.metadata, meta)
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
    if settings.problems and not settings.offline:
        raise UsageError("; ".join(settings.problems))
    reporter = _Reporter(progress if progress is not None else default_progress())
    problem = ""
    with _Lock(paths.lock, entry.name, reporter, stall_timeout=settings.limits.lock_timeout,
               watch=paths.folder):
        # Temporary records a killed fetch was writing (dead pids only); the lock-free cached
        # path above only reads, so cleaning up belongs here, where we write.
        remove_stale_parts(paths.folder)
        if verify and paths.usable is not None:
            problem, fixed = _verify(entry, settings, paths)
            if fixed:
                reporter.note(f"{entry.name}: {fixed}")
            if not problem:
                meta = read_metadata(entry, settings)
                return FetchResult(entry, paths.usable or paths.original, "verified",
                                   meta.get("sha256"), entry.sha256 is not None, meta)
            # _verify reports a problem only with proof that the bytes are bad (a published
            # sha256 or size they miss, or they do not load): only then are they deleted.
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
                           validate=validate, label=entry.name, limits=settings.limits)
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


def _weights_differ(a: Any, b: Any) -> bool | None:
    """Whether two loaded checkpoints' weights differ: True/False, or None when they cannot be
    compared (other tensor names or shapes), which proves nothing either way."""
    import torch

    if a.state_dict.keys() != b.state_dict.keys() or any(
            a.state_dict[k].shape != b.state_dict[k].shape for k in a.state_dict):
        return None
    # float(): a float16 original and its float32 copy hold the same numbers.
    return not all(torch.equal(a.state_dict[k].float(), b.state_dict[k].float())
                   for k in a.state_dict)


def _verify(entry: RegistryEntry, settings: Settings, paths: CachePaths) -> tuple[str, str]:
    """(what is wrong with the cached checkpoint or '', what was fixed locally or '').

    The bytes are hashed and judged on their own; ``metadata.json`` is only a record.  A
    problem is reported (and the caller deletes the files) only with proof that the bytes are
    bad: they miss the published sha256 or size, they do not load as a WaveGlow, or they load
    but differ from the safetensors copy that still matches its record (the original changed
    after it was verified).  Otherwise a record that disagrees with the bytes, or is damaged,
    is repaired from them, and a missing or damaged safetensors copy is rebuilt."""
    from .checkpoint import read_checkpoint

    meta, record_problem = read_record(entry, settings)
    notes = [f"the record was damaged ({record_problem})"] if record_problem else []

    def fixed(what: str) -> str:
        return "; ".join([*notes, what])

    if not paths.original.is_file():
        # Only the converted copy is left: it must load; a record that disagrees is repaired.
        got = sha256_file(paths.converted)
        recorded = meta.get("safetensors_sha256")
        try:
            read_checkpoint(paths.converted)
        except CheckpointError as e:
            return (f"{paths.converted.name} has sha256 {got}"
                    f"{f', recorded {recorded}' if recorded else ''}, and {e.reason}"), ""
        if recorded == got and not record_problem:
            return "", ""
        meta.update(safetensors=paths.converted.name, safetensors_sha256=got,
                    name=entry.name)
        write_json(paths.metadata, meta)
        return "", fixed(f"{paths.converted.name} loads as a WaveGlow; recorded its sha256 {got}"
                         + (f" (the record said {recorded})" if recorded else ""))
    size = paths.original.stat().st_size
    if entry.size is not None and size != entry.size:
        return f"{paths.original.name} is {size} bytes, the published size is {entry.size}", ""
    digest = sha256_file(paths.original)
    if entry.sha256 is not None and digest != entry.sha256:
        return (f"{paths.original.name} has sha256 {digest}, the published sha256 is "
                f"{entry.sha256}"), ""
    record_agrees = (not record_problem and meta.get("sha256") == digest
                     and meta.get("size", size) == size)
    converted_ok = paths.converted == paths.original or bool(
        paths.converted.is_file() and meta.get("safetensors_sha256")
        and sha256_file(paths.converted) == meta["safetensors_sha256"])
    if record_agrees and converted_ok:
        return "", ""
    disagreement = "; ".join(
        f"recorded {key} {meta[key]}, the file has {value}"
        for key, value in (("sha256", digest), ("size", size))
        if key in meta and meta[key] != value)
    try:
        checkpoint = read_checkpoint(paths.original)
    except CheckpointError as e:
        if entry.sha256 is not None:
            # The published bytes: keep them; loading them says what is wrong.
            meta.update(name=entry.name, file=paths.original.name, size=size, sha256=digest,
                        sha256_published=True)
            write_json(paths.metadata, meta)
            return "", fixed(f"{paths.original.name} matches the published sha256 but does not "
                             f"load as a WaveGlow ({e.reason})")
        return (f"{paths.original.name} has sha256 {digest}"
                f"{f' ({disagreement})' if disagreement else ''} and {e.reason}"), ""
    if disagreement and entry.sha256 is None and converted_ok and paths.converted.is_file() \
            and paths.converted != paths.original:
        # The safetensors copy still matches the record it was written with: the record is
        # sound and the original changed since.  Proof, if its weights differ from the copy.
        try:
            differ = _weights_differ(checkpoint, read_checkpoint(paths.converted))
        except CheckpointError:
            differ = None   # the copy cannot testify; the original loads: keep it
        if differ:
            return (f"{paths.original.name} has sha256 {digest} ({disagreement}), and its "
                    f"weights differ from the verified {paths.converted.name}"), ""
    if not converted_ok and paths.converted.is_file() and paths.converted != paths.original:
        # No sound record of the copy: keep it if it holds the original's weights (it is only
        # rewritten when it must be).
        try:
            copy = read_checkpoint(paths.converted)
            converted_ok = (copy.config == checkpoint.config
                            and _weights_differ(checkpoint, copy) is False)
        except CheckpointError:
            converted_ok = False
    _convert_and_record(entry, settings, paths, checkpoint, digest, size, meta.get("url"),
                        meta.get("downloaded_at"), rebuild=not converted_ok)
    if disagreement or record_problem:
        how = ("matches the published sha256" if entry.sha256 is not None
               else "loads as a WaveGlow")
        return "", fixed(f"repaired the record from {paths.original.name}, which {how}"
                         f"{f' ({disagreement})' if disagreement else ''}: recorded sha256 "
                         f"{digest}")
    if not converted_ok:
        return "", fixed("rebuilt the safetensors copy from the verified original")
    return "", fixed(f"recorded sha256 {digest}")


def remove_checkpoint(entry_or_name: RegistryEntry | str, settings: Settings,
                      progress: Any = None) -> Path | None:
    """Delete a checkpoint's cache folder (under its lock); returns it, or None if absent."""
    name = entry_or_name if isinstance(entry_or_name, str) else entry_or_name.name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UsageError(f"{name!r} is not a checkpoint name")
    folder = settings.checkpoint_dir / name
    if not folder.is_dir():
        return None
    with _Lock(settings.home / "locks" / f"{name}.lock", name, _Reporter(progress),
               stall_timeout=settings.limits.lock_timeout, watch=folder):
        shutil.rmtree(folder)
    return folder


def describe_cached(entry: RegistryEntry, settings: Settings) -> dict[str, Any]:
    """What ``waveglow list --json`` shows for one entry (no network, nothing unpickled)."""
    paths = cache_paths(entry, settings)
    usable = cached_file(entry, settings)
    problem = ""
    if entry.bundled is not None:  # shipped with the package: no cache metadata to read
        meta = {"size": usable.stat().st_size} if usable is not None else {}
    else:
        meta, problem = read_record(entry, settings)
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
        # What is wrong with metadata.json ('' when nothing); `fetch --verify` repairs it.
        "record_problem": problem,
    }


__all__ = ["cache_paths", "cached_file", "fetch_checkpoint", "remove_checkpoint",
           "read_metadata", "read_record", "describe_cached", "FetchResult", "CachePaths",
           "sources_for"]
