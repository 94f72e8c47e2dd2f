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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import (
    CheckpointError,
    CheckpointNotAvailableError,
    ChecksumMismatchError,
    DownloadError,
    UsageError,
)
from ..fileio import open_checked, read_capped, remove_files, remove_stale_parts, write_json
from ..progress import ProgressReporter
from ..settings import Settings
from .download import Downloaded, RetryPolicy, Source, download, partial_path, sha256_file
from .lock import CheckpointLock
from .registry import (
    Registry,
    RegistryEntry,
    bundled_checkpoint,
    name_problem,
    newest_run_checkpoint,
    unknown_checkpoint_error,
)

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
        # The shared bounded open: non-blocking (a FIFO under the record's name must not hang
        # `waveglow list`), checked and read from the one descriptor opened.
        fd, st = open_checked(path)
    except FileNotFoundError:
        return {}, ""
    except OSError as e:
        return {}, f"cannot read {METADATA_NAME} ({e.strerror or e})"
    try:
        if not stat.S_ISREG(st.st_mode):
            return {}, f"{METADATA_NAME} is not a regular file"
        raw = read_capped(fd, _METADATA_LIMIT)
    except OSError as e:
        return {}, f"cannot read {METADATA_NAME} ({e.strerror or e})"
    finally:
        os.close(fd)
    if raw is None:
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


# ---------------------------------------------------------------------------------------------
# The way forward: every failure to get a registry checkpoint ends with what to do instead.
# ``how`` is how the command at hand names a checkpoint: "option" (``-c NAME``: synth, mel,
# score, plot, bench and the API), "argument" (``info NAME``, ``convert NAME``) or "fetch"
# (``fetch NAME``, registry names only), so that a hint only names flags that command has.


def way_forward(entry: RegistryEntry, how: str = "option", offline: bool = False) -> str:
    """One clause (no newline) naming the ways on when ``entry`` cannot be fetched."""
    first = f"`waveglow fetch {entry.name}` once online, " if offline and how != "fetch" else ""
    mirror = f"WAVEGLOW_MIRROR=<base URL serving {entry.filename}> to download from a mirror"
    if how == "argument":
        return (f"to go on: {first}`demo` in its place for a try-out (bundled, works "
                f"offline), {mirror}, or the PATH of a checkpoint file you have")
    if how == "fetch":
        return ("to go on: `waveglow synth MELS -c demo` for a try-out (bundled, works "
                f"offline), {mirror}, or `waveglow synth MELS -c PATH` with a checkpoint "
                "file you have")
    return (f"to go on: {first}`-c demo` for a try-out (bundled, works offline), {mirror}, "
            "or `-c PATH` for a checkpoint file you have")


def with_way_forward(error: BaseException, entry: RegistryEntry, how: str = "option",
                     offline: bool = False) -> BaseException:
    """``error`` with :func:`way_forward` at the end of its one line (returned, for ``raise``);
    :func:`reword_way_forward` can rephrase it for another command."""
    base = getattr(error, "without_way_forward", None) or (error.args[0] if error.args
                                                            else str(error))
    error.without_way_forward = base             # type: ignore[attr-defined]
    error.way_forward_of = (entry, offline)      # type: ignore[attr-defined]
    error.args = (f"{base}; {way_forward(entry, how, offline)}",)
    return error


def reword_way_forward(error: BaseException, how: str) -> BaseException:
    """``error``'s way forward phrased for a command that names checkpoints ``how``."""
    if (found := getattr(error, "way_forward_of", None)) is not None:
        with_way_forward(error, found[0], how, found[1])
    return error


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
    remove_files(paths.original, paths.converted, paths.metadata, partial_path(paths.original))


def _convert_and_record(entry: RegistryEntry, settings: Settings, paths: CachePaths,
                        checkpoint: Any, sha256: str, size: int, url: str | None,
                        downloaded_at: str | None, *, rebuild: bool = True) -> dict[str, Any]:
    """Write the safetensors copy of ``checkpoint`` (unless ``rebuild`` is False: the copy is
    sound and kept as it is) and the record of both files."""
    from .reader import save_checkpoint

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
    and its sha256 recorded in ``metadata.json``.

    ``progress`` receives the download's progress and notes (see
    :class:`~waveglow_cli.progress.Progress`; None: nothing is reported)."""
    if entry.bundled is not None:
        return _bundled_result(entry)
    paths = cache_paths(entry, settings)
    if not force and not verify and (usable := paths.usable) is not None:
        return _cached_result(entry, settings, usable)
    if settings.problems and not settings.offline:
        raise UsageError("; ".join(settings.problems))
    reporter = ProgressReporter(progress)
    with CheckpointLock(paths.lock, entry.name, reporter,
                        stall_timeout=settings.limits.lock_timeout, watch=paths.folder):
        # Temporary records a killed fetch was writing (dead pids only); the lock-free cached
        # path above only reads, so cleaning up belongs here, where we write.
        remove_stale_parts(paths.folder)
        problem = ""
        if verify and paths.usable is not None:
            verified, problem = _verify_or_discard(entry, settings, paths, reporter)
            if verified is not None:
                return verified
        elif not force and (usable := paths.usable) is not None:
            return _cached_result(entry, settings, usable)  # another process finished it meanwhile
        return _download_and_record(entry, settings, paths, reporter, policy, problem)


def _cached_result(entry: RegistryEntry, settings: Settings, usable: Path) -> FetchResult:
    return FetchResult(entry, usable, "cached", read_metadata(entry, settings).get("sha256"))


def _verify_or_discard(entry: RegistryEntry, settings: Settings, paths: CachePaths,
                       reporter: ProgressReporter) -> tuple[FetchResult | None, str]:
    """(the result, '') when the cached checkpoint is sound (its record repaired if need be);
    else (None, what is wrong) after deleting its files, so that it is downloaded again."""
    problem, fixed = _Verifier(entry, settings, paths).run()
    if fixed:
        reporter.note(f"{entry.name}: {fixed}")
    if not problem:
        meta = read_metadata(entry, settings)
        return FetchResult(entry, paths.usable or paths.original, "verified",
                           meta.get("sha256"), entry.sha256 is not None, meta), ""
    # _Verifier reports a problem only with proof that the bytes are bad (a published sha256
    # or size they miss, or they do not load): only then are they deleted.
    _remove_files(paths)
    if settings.offline:
        raise with_way_forward(ChecksumMismatchError(
            entry.name, str(paths.folder), "cache", "a verified file", problem,
            "the corrupt files were removed; offline mode forbids downloading it again"),
            entry, offline=True)
    reporter.note(f"{entry.name}: cached copy is corrupt ({problem}); downloading it again")
    return None, problem


@dataclass
class _LoadCheck:
    """``download``'s ``validate``: the bytes must load as a WaveGlow (kept, to convert it).
    With a published sha256 that matched, the bytes are the published ones: an unreadable
    file is then kept and what is wrong with it remembered, for the user to be told."""

    entry: RegistryEntry
    checkpoint: Any = None
    unreadable: str | None = None

    def __call__(self, path: Path) -> None:
        from .reader import read_checkpoint

        try:
            self.checkpoint = read_checkpoint(path)
        except CheckpointError as e:
            if self.entry.sha256 is None:
                raise  # structure is the only check we have: try the next URL
            self.unreadable = e.reason


def _download_and_record(entry: RegistryEntry, settings: Settings, paths: CachePaths,
                         reporter: ProgressReporter, policy: RetryPolicy | None,
                         problem: str) -> FetchResult:
    """Download, verify, convert and record ``entry`` (under its lock); ``problem``: what
    was wrong with the cached copy this replaces ('' for a first download)."""
    if settings.offline:
        raise with_way_forward(CheckpointNotAvailableError(
            f"checkpoint {entry.name!r} is not downloaded (looked in {paths.folder}) and "
            "offline mode forbids fetching it"), entry, offline=True)
    if not entry.urls and not settings.mirror:
        raise with_way_forward(
            UsageError(f"checkpoint {entry.name!r} has no URL to download it from"), entry)
    check = _LoadCheck(entry)
    try:
        got = download(sources_for(entry, settings), paths.original, size=entry.size,
                       sha256=entry.sha256, progress=reporter, policy=policy,
                       validate=check, label=entry.name, limits=settings.limits)
    except BaseException as e:
        try:
            paths.folder.rmdir()   # leave no empty folder behind (a .partial stays)
        except OSError:
            pass
        if isinstance(e, (DownloadError, ChecksumMismatchError, CheckpointError)):
            raise with_way_forward(e, entry) from None
        raise
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    meta = _convert_and_record(entry, settings, paths, check.checkpoint, got.sha256, got.size,
                               got.url, now)
    _report_download(entry, got, check.unreadable, reporter)
    return FetchResult(entry, paths.usable or paths.original,
                       "repaired" if problem else "downloaded", got.sha256,
                       entry.sha256 is not None, meta, problem)


def _report_download(entry: RegistryEntry, got: Downloaded, unreadable: str | None,
                     reporter: ProgressReporter) -> None:
    if unreadable is not None:
        reporter.note(f"{entry.name}: the download matches its published sha256 but does "
                      f"not load as a WaveGlow ({unreadable})")
    if entry.sha256:
        reporter.note(f"{entry.name}: downloaded {got.size} bytes from {got.url}; sha256 "
                      f"{got.sha256} matches the published checksum")
    else:
        reporter.note(f"{entry.name}: downloaded {got.size} bytes from {got.url}; sha256 "
                      f"{got.sha256} (no checksum is published for it; to pin it, put "
                      f'sha256 = "{got.sha256}" in its entry in a WAVEGLOW_REGISTRY file)')


def _bundled_result(entry: RegistryEntry) -> FetchResult:
    """A checkpoint shipped with the package: nothing to download; its bytes are checked
    against the registry's sha256 so that a damaged install is named, not silently used."""
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


class _Verifier:
    """Judges a cached checkpoint by its bytes: ``run()`` returns (what is wrong with it or
    '', what was fixed locally or '').

    ``metadata.json`` is only a record.  A problem is reported (and the caller deletes the
    files) only with proof that the bytes are bad: they miss the published sha256 or size,
    they do not load as a WaveGlow, or they load but differ from the safetensors copy that
    still matches its record (the original changed after it was verified).  Otherwise a record
    that disagrees with the bytes, or is damaged, is repaired from them, and a missing or
    damaged safetensors copy is rebuilt."""

    def __init__(self, entry: RegistryEntry, settings: Settings, paths: CachePaths) -> None:
        self.entry, self.settings, self.paths = entry, settings, paths
        self.meta, self.record_problem = read_record(entry, settings)

    def fixed(self, what: str) -> str:
        notes = [f"the record was damaged ({self.record_problem})"] if self.record_problem else []
        return "; ".join([*notes, what])

    def run(self) -> tuple[str, str]:
        if not self.paths.original.is_file():
            return self._converted_only()
        return self._original()

    def _converted_only(self) -> tuple[str, str]:
        """Only the converted copy is left: it must load; a record that disagrees is
        repaired."""
        from .reader import read_checkpoint

        converted, meta = self.paths.converted, self.meta
        got = sha256_file(converted)
        recorded = meta.get("safetensors_sha256")
        try:
            read_checkpoint(converted)
        except CheckpointError as e:
            return (f"{converted.name} has sha256 {got}"
                    f"{f', recorded {recorded}' if recorded else ''}, and {e.reason}"), ""
        if recorded == got and not self.record_problem:
            return "", ""
        meta.update(safetensors=converted.name, safetensors_sha256=got, name=self.entry.name)
        write_json(self.paths.metadata, meta)
        return "", self.fixed(f"{converted.name} loads as a WaveGlow; recorded its sha256 {got}"
                              + (f" (the record said {recorded})" if recorded else ""))

    def _original(self) -> tuple[str, str]:
        from .reader import read_checkpoint

        entry, paths, meta = self.entry, self.paths, self.meta
        size = paths.original.stat().st_size
        if entry.size is not None and size != entry.size:
            return f"{paths.original.name} is {size} bytes, the published size is {entry.size}", ""
        digest = sha256_file(paths.original)
        if entry.sha256 is not None and digest != entry.sha256:
            return (f"{paths.original.name} has sha256 {digest}, the published sha256 is "
                    f"{entry.sha256}"), ""
        record_agrees = (not self.record_problem and meta.get("sha256") == digest
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
            return self._unloadable(e.reason, size, digest, disagreement)
        separate_copy = paths.converted.is_file() and paths.converted != paths.original
        # The safetensors copy still matches the record it was written with: the record is
        # sound and the original changed since.  Proof, if its weights differ from the copy.
        if (disagreement and entry.sha256 is None and converted_ok and separate_copy
                and self._differs_from_copy(checkpoint)):
            return (f"{paths.original.name} has sha256 {digest} ({disagreement}), and its "
                    f"weights differ from the verified {paths.converted.name}"), ""
        if not converted_ok and separate_copy:
            # No sound record of the copy: keep it if it holds the original's weights (it is
            # only rewritten when it must be).
            converted_ok = self._copy_holds(checkpoint)
        return self._repair(checkpoint, digest, size, disagreement, converted_ok)

    def _unloadable(self, reason: str, size: int, digest: str,
                    disagreement: str) -> tuple[str, str]:
        """The original does not load as a WaveGlow: proof that it is bad, unless it has the
        published sha256 (then it is the published file: kept, and loading it says what is
        wrong)."""
        name = self.paths.original.name
        if self.entry.sha256 is None:
            return (f"{name} has sha256 {digest}"
                    f"{f' ({disagreement})' if disagreement else ''} and {reason}"), ""
        self.meta.update(name=self.entry.name, file=name, size=size, sha256=digest,
                         sha256_published=True)
        write_json(self.paths.metadata, self.meta)
        return "", self.fixed(f"{name} matches the published sha256 but does not load as a "
                              f"WaveGlow ({reason})")

    def _differs_from_copy(self, checkpoint: Any) -> bool:
        from .reader import read_checkpoint

        try:
            return bool(_weights_differ(checkpoint, read_checkpoint(self.paths.converted)))
        except CheckpointError:
            return False   # the copy cannot testify; the original loads: keep it

    def _copy_holds(self, checkpoint: Any) -> bool:
        from .reader import read_checkpoint

        try:
            copy = read_checkpoint(self.paths.converted)
            return (copy.config == checkpoint.config
                    and _weights_differ(checkpoint, copy) is False)
        except CheckpointError:
            return False

    def _repair(self, checkpoint: Any, digest: str, size: int, disagreement: str,
                converted_ok: bool) -> tuple[str, str]:
        """Rewrite the record (and the copy, unless ``converted_ok``) from the sound
        original, and say what was fixed."""
        entry, paths, meta = self.entry, self.paths, self.meta
        _convert_and_record(entry, self.settings, paths, checkpoint, digest, size,
                            meta.get("url"), meta.get("downloaded_at"), rebuild=not converted_ok)
        if disagreement or self.record_problem:
            how = ("matches the published sha256" if entry.sha256 is not None
                   else "loads as a WaveGlow")
            return "", self.fixed(f"repaired the record from {paths.original.name}, which {how}"
                                  f"{f' ({disagreement})' if disagreement else ''}: recorded "
                                  f"sha256 {digest}")
        if not converted_ok:
            return "", self.fixed("rebuilt the safetensors copy from the verified original")
        return "", self.fixed(f"recorded sha256 {digest}")


def remove_checkpoint(entry_or_name: RegistryEntry | str, settings: Settings,
                      progress: Any = None) -> Path | None:
    """Delete a checkpoint's cache folder (under its lock); returns it, or None if absent."""
    name = entry_or_name if isinstance(entry_or_name, str) else entry_or_name.name
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UsageError(f"{name!r} is not a checkpoint name")
    folder = settings.checkpoint_dir / name
    if not folder.is_dir():
        return None
    with CheckpointLock(settings.home / "locks" / f"{name}.lock", name,
                        ProgressReporter(progress), stall_timeout=settings.limits.lock_timeout,
                        watch=folder):
        shutil.rmtree(folder)
    return folder


def ensure_checkpoint(spec: str, settings: Settings, progress: object = None,
                      registry: Registry | None = None) -> Path:
    """A local file for ``spec``: an existing path as it is; a registry name or alias from the
    cache (its safetensors copy when there is one), downloaded, verified and cached first if
    it is not there yet, unless ``settings.offline``.

    ``progress`` receives the download's progress (see :class:`~waveglow_cli.progress.Progress`;
    None: nothing is reported)."""
    path = Path(spec).expanduser()
    if path.is_dir() and (newest := newest_run_checkpoint(path)) is not None:
        return newest  # a `waveglow train` run folder: its latest checkpoint
    if path.exists():
        return path
    registry = registry or Registry.load(settings)
    entry = registry.find(spec)
    if entry is None:
        raise unknown_checkpoint_error(spec, registry)
    if entry.bundled is not None:
        return bundled_checkpoint(entry)
    local = cached_file(entry, settings)
    if local is not None:
        return local
    if settings.offline:
        raise with_way_forward(CheckpointNotAvailableError(
            f"checkpoint {entry.name!r} is not downloaded (looked in "
            f"{settings.checkpoint_dir / entry.name}) and offline mode forbids fetching it"),
            entry, offline=True)
    return fetch_checkpoint(entry, settings, progress=progress).path


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


__all__ = [
    "CachePaths",
    "FetchResult",
    "cache_paths",
    "cached_file",
    "describe_cached",
    "ensure_checkpoint",
    "fetch_checkpoint",
    "read_metadata",
    "read_record",
    "remove_checkpoint",
    "reword_way_forward",
    "sources_for",
    "way_forward",
    "with_way_forward",
]
