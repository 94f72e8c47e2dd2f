"""Robust downloads into a cache folder.  Knows sources and files, nothing about checkpoints.

:func:`download` fetches one file from a list of sources, first that works:

* the body streams into ``<dest>.partial`` beside the destination (same folder, same file
  system), so the final name only ever holds a complete, verified file; the HTTP side
  (resuming a cut connection with ``Range``, retries, timeouts, the bounds of
  :class:`~waveglow_cli.settings.DownloadLimits`, Google Drive's confirmation page) is
  :mod:`waveglow_cli.checkpoints.transfer`'s;
* 404/410/other 4xx, 5xx, timeouts and connection errors before any byte arrived, a Drive
  quota or error page, a transfer too slow: the next source is tried;
* size and sha256 are verified (and an optional ``validate`` callback run) before the file is
  renamed into place (:func:`waveglow_cli.fileio.publish`); on a mismatch the partial file is
  deleted and :class:`~waveglow_cli.errors.ChecksumMismatchError` says expected vs got;
* ``archive="zip"`` sources are downloaded whole, then only ``member`` is extracted (its name
  is used to find it, never as a path) and verified; a zip member may not expand beyond
  ``max_bytes`` (without a published size) nor beyond what its header says.

Progress goes to the object the caller passes (:mod:`waveglow_cli.progress`; the CLI draws a
rich bar); ``None`` reports nothing.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..errors import (
    ChecksumMismatchError,
    DownloadError,
    InputFileError,
    SourceFailed,
    SourceRefused,
    WaveGlowError,
)
from ..fileio import file_kind, open_checked, publish, remove_files
from ..progress import NullProgress, Progress, ProgressReporter
from ..settings import DownloadLimits
from .gdrive import confirmation_request
from .transfer import RetryPolicy, state_path, transfer

if TYPE_CHECKING:  # requests is imported when a download starts, not with the CLI
    import requests

USER_AGENT = "waveglow-exact (+https://github.com/NVIDIA/waveglow checkpoints)"


@dataclass(frozen=True)
class Source:
    url: str
    archive: str | None = None       # "zip": the URL serves an archive holding ``member``
    member: str | None = None


@dataclass(frozen=True)
class Downloaded:
    path: Path
    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class _Wanted:
    """What one download must deliver, and how to report and bound it."""

    dest: Path
    size: int | None
    sha256: str | None
    label: str
    progress: ProgressReporter
    policy: RetryPolicy
    validate: Callable[[Path], object] | None
    limits: DownloadLimits

    @property
    def partial(self) -> Path:
        return partial_path(self.dest)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """The sha256 of the regular file ``path``.  Opened non-blocking and checked by ``fstat``
    of what was opened: a name swapped for a FIFO or ``/dev/zero`` after it was checked is an
    :class:`InputFileError`, never a wait or an endless read."""
    digest = hashlib.sha256()
    fd, st = open_checked(path)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputFileError(path, f"is {file_kind(st.st_mode)}, not a regular file")
    with os.fdopen(fd, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def _archive_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".zip.partial")


# ---------------------------------------------------------------------------------------------
# Zip archives


def _safe_member_name(member: str) -> str:
    parts = PurePosixPath(member.replace("\\", "/")).parts
    if not parts or member.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise SourceFailed(f"refusing archive member name {member!r}")
    return "/".join(parts)


def _find_member(zf: zipfile.ZipFile, member: str, wanted: str) -> zipfile.ZipInfo:
    """The archive's entry for ``wanted`` (``member``'s safe form): its exact path, or the one
    file of that name one folder level deep."""
    infos = [i for i in zf.infolist() if not i.is_dir()]
    info = next((i for i in infos if i.filename.lstrip("./") == wanted), None)
    if info is None and "/" not in wanted:  # one folder level deep in the archive
        found = [i for i in infos if PurePosixPath(i.filename).name == wanted]
        info = found[0] if len(found) == 1 else None
    if info is None:
        names = ", ".join(i.filename for i in infos[:8])
        raise SourceFailed(f"the archive holds no {member!r} (it holds: {names})")
    return info


def extract_member(archive: Path, member: str, target: Path, expect_size: int | None = None,
                   label: str = "", *, max_bytes: int | None = None) -> None:
    """Copy one member of a zip to ``target``.  The member's name is only used to find it, never
    as a path, so an archive cannot write outside the cache; the size it claims is checked
    (against ``expect_size``, else against ``max_bytes``) and the bytes are counted while they
    are extracted, so a member cannot expand beyond what its header says."""
    wanted = _safe_member_name(member)
    try:
        with zipfile.ZipFile(archive) as zf:
            info = _find_member(zf, member, wanted)
            if expect_size is not None and info.file_size != expect_size:
                raise ChecksumMismatchError(label or member, str(archive.name), "size",
                                            expect_size, info.file_size)
            if expect_size is None and max_bytes is not None and info.file_size > max_bytes:
                raise SourceRefused(f"refused: archive member {info.filename!r} expands to "
                                    f"{info.file_size:,} bytes, more than the {max_bytes:,} "
                                    "accepted for a file whose size is not published "
                                    "(WAVEGLOW_MAX_DOWNLOAD_BYTES)")
            written = 0
            with zf.open(info) as src, open(target, "wb") as out:
                while block := src.read(1 << 20):
                    written += len(block)
                    if written > info.file_size:
                        raise SourceFailed("archive member is longer than its header says")
                    out.write(block)
    except zipfile.BadZipFile as e:
        remove_files(target)
        raise SourceFailed(f"corrupt zip archive ({e})") from None
    except BaseException:
        remove_files(target)
        raise


# ---------------------------------------------------------------------------------------------
# One source


def _receive(session: requests.Session, source: Source, want: _Wanted) -> str:
    """Bring ``want.partial`` to the file ``source`` serves (extracted from its archive);
    returns the URL finally used."""
    if not source.archive:
        return transfer(session, source.url, want.partial, want.size, want.label,
                        want.progress, want.policy, want.limits)
    if source.archive != "zip" or not source.member:
        raise SourceFailed(f"unsupported archive {source.archive!r}")
    archive = _archive_path(want.dest)
    # The zip's own size is never published (``size`` is the member's): the cap bounds it,
    # with room for a published member that is larger than the cap.
    max_bytes = want.limits.max_bytes
    archive_cap = max_bytes if want.size is None else max(max_bytes, 2 * want.size)
    url = transfer(session, source.url, archive, None, want.label, want.progress, want.policy,
                   want.limits, archive_cap)
    try:
        extract_member(archive, source.member, want.partial, want.size, want.label,
                       max_bytes=max_bytes)
    finally:
        remove_files(archive, state_path(archive))
    return url


def _verify(want: _Wanted, url: str) -> tuple[int, str]:
    """(size, sha256) of the received file, checked against what was published and by
    ``validate``; a file that fails is deleted with its bookkeeping."""
    partial = want.partial
    got_size = partial.stat().st_size
    if want.size is not None and got_size != want.size:
        remove_files(partial, state_path(partial))
        raise ChecksumMismatchError(want.label, url, "size", want.size, got_size)
    digest = sha256_file(partial)
    if want.sha256 is not None and digest != want.sha256.lower():
        remove_files(partial, state_path(partial))
        raise ChecksumMismatchError(want.label, url, "sha256", want.sha256.lower(), digest)
    if want.validate is not None:
        try:
            want.validate(partial)
        except BaseException:
            remove_files(partial, state_path(partial))
            raise
    return got_size, digest


def _from_source(session: requests.Session, source: Source, want: _Wanted) -> Downloaded:
    url = _receive(session, source, want)
    want.progress.finish()
    got_size, digest = _verify(want, url)
    publish(want.partial, want.dest, overwrite=True, durable=True)
    remove_files(state_path(want.partial))
    return Downloaded(want.dest, source.url, got_size, digest)


# ---------------------------------------------------------------------------------------------
# Sources in turn


def download(sources: Sequence[Source | str], dest: str | os.PathLike[str], *,
             size: int | None = None, sha256: str | None = None, progress: Any = None,
             policy: RetryPolicy | None = None, session: requests.Session | None = None,
             validate: Callable[[Path], object] | None = None, label: str | None = None,
             limits: DownloadLimits | None = None) -> Downloaded:
    """Download ``dest`` from the first of ``sources`` that delivers it, verified.

    ``progress`` receives the transfer's progress (see :class:`~waveglow_cli.progress.Progress`;
    None: none is reported).  ``limits`` bounds each transfer (size without a published one,
    throughput, deadline); default :class:`~waveglow_cli.settings.DownloadLimits` (4 GiB,
    4 KiB/s over 30 s).

    ``validate(partial_path)`` may raise (any :class:`WaveGlowError`) to reject the bytes; the
    next source is then tried.  Raises :class:`ChecksumMismatchError` when a source delivered
    wrong bytes and no other delivered right ones, :class:`DownloadError` otherwise."""
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    want = _Wanted(dest, size, sha256, label or dest.name, ProgressReporter(progress),
                   policy or RetryPolicy(), validate, limits or DownloadLimits())
    own = session is None
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
    items = [s if isinstance(s, Source) else Source(s) for s in sources]
    failures = _Failures()
    try:
        for i, source in enumerate(items):
            try:
                return _from_source(session, source, want)
            except ChecksumMismatchError as e:
                failures.mismatch = failures.mismatch or e
                failures.reasons.append(f"{source.url}: {e.kind} mismatch")
            except SourceFailed as e:
                failures.reasons.append(f"{source.url}: {e}")
            except WaveGlowError as e:  # rejected by validate()
                failures.rejected = failures.rejected or e
                failures.reasons.append(f"{source.url}: downloaded file rejected ({e})")
            want.progress.finish()
            for leftover in (partial_path(dest), _archive_path(dest)):
                if not leftover.exists():       # nothing to resume: no bookkeeping either
                    remove_files(state_path(leftover))
            if i + 1 < len(items):
                want.progress.note(f"{want.label}: {failures.reasons[-1]}; trying the next URL")
    finally:
        want.progress.finish()
        if own:
            session.close()
    raise failures.error(want.label, len(items))


@dataclass
class _Failures:
    """What each source did wrong, to make the one error :func:`download` raises."""

    reasons: list[str] = field(default_factory=list)   # one line per source tried
    mismatch: ChecksumMismatchError | None = None        # the first source with wrong bytes
    rejected: WaveGlowError | None = None                # the first file validate() refused

    def error(self, label: str, sources: int) -> Exception:
        if self.mismatch is not None:
            if len(self.reasons) > 1:
                self.mismatch.args = (f"{self.mismatch.args[0]} (all URLs: "
                                      f"{'; '.join(self.reasons)})",)
            return self.mismatch
        if not sources:
            return DownloadError(f"{label}: no URL to download it from")
        if self.rejected is not None and sources == 1:
            return self.rejected
        return DownloadError(f"{label}: download failed from every URL: "
                             + "; ".join(self.reasons), self.reasons)


__all__ = [
    "Downloaded",
    "NullProgress",
    "Progress",
    "RetryPolicy",
    "Source",
    "confirmation_request",
    "download",
    "extract_member",
    "partial_path",
    "sha256_file",
]
