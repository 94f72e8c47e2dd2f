"""Writing files as ordinary files: atomically, with the umask's mode, never replacing by accident.

Every file we create (audio, mels, figures, checkpoints, run files) goes through
:func:`atomic_write`:

- the bytes go to a hidden temporary file beside the target,
  ``.<name>.<pid>.<host><random>.part``, so a killed run never leaves a truncated file under
  the final name, and the pid in the name lets a later run tell a dead run's leftover (removed
  by :func:`remove_stale_parts`) from a live run's file in progress (never touched);
- the temporary file gets the mode a plain ``open()`` would give it (``0o666 & ~umask``: 0644
  under umask 022), also when it replaces an existing file;
- the claim on the target is taken when the file is published, not earlier: without
  ``overwrite`` the file is hard-linked to the target name, which fails if that name exists,
  so two runs writing into one folder never replace each other's files (the exists-check a
  command makes before doing the work is only a shortcut);
- any failure names the target file (:class:`OutputWriteError`), "no space left on device"
  included.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import OutputExistsError, OutputWriteError, UsageError, WaveGlowError

PART_SUFFIX = ".part"


# ---------------------------------------------------------------------------------------------
# The umask


def _umask_from_proc() -> int | None:
    """The process umask from /proc (Linux >= 4.7): reading it there changes nothing."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        return None
    return None


def _umask_at_import() -> int:
    """Where /proc is missing, the umask as it was when this module was first imported.

    ``os.umask`` can only read the mask by setting it, which is process-wide and racy with
    threads creating files; doing it once here, at import (before any of our writer threads
    exist), keeps that window out of every write."""
    value = _umask_from_proc()
    if value is None:
        value = os.umask(0o022)
        os.umask(value)
    return value


_IMPORT_UMASK = _umask_at_import()


def current_umask() -> int:
    value = _umask_from_proc()
    return _IMPORT_UMASK if value is None else value


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file now: 0o666 less the umask."""
    return 0o666 & ~current_umask()


# ---------------------------------------------------------------------------------------------
# Temporary files and their cleanup

def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]": one per namespace
    except OSError:
        return ""


# A short tag of this machine and pid namespace: on a folder shared between machines (NFS) or
# containers (separate pid namespaces), another one's pid says nothing about liveness here, so
# only leftovers written from our own host and namespace are ever removed.
_HOST = hashlib.sha256(f"{socket.gethostname()}\0{_pid_namespace()}".encode(
    "utf-8", "replace")).hexdigest()[:6]
_PART = re.compile(r"^\.(?P<name>.*)\.(?P<pid>[0-9]{1,10})\.(?P<host>[0-9a-f]{6})[0-9a-f]{8}"
                   + re.escape(PART_SUFFIX) + r"$", re.DOTALL)
# Keep the temporary name within NAME_MAX (255 bytes) whatever the target's name.
_MAX_NAME_BYTES = 200


def part_name(name: str, pid: int | None = None) -> str:
    """The temporary file name for target file ``name`` written by process ``pid``."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > _MAX_NAME_BYTES:
        name = encoded[:_MAX_NAME_BYTES].decode("utf-8", "ignore")
    return (f".{name}.{os.getpid() if pid is None else pid}.{_HOST}{secrets.token_hex(4)}"
            f"{PART_SUFFIX}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still exist; only a definite "no such process" says no."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # EPERM: it exists, as another user
        return True
    return True


def remove_stale_parts(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that dead runs of ours left in ``folder``; return them.

    Only names of exactly our pattern, written on this host, by a process that no longer
    exists, and only plain files (never a link or a folder).  A pid reused by an unrelated
    process keeps the leftover: the error is always on the side of keeping a file."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _PART.match(entry.name)
        if match is None or match["host"] != _HOST or pid_alive(int(match["pid"])):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


# ---------------------------------------------------------------------------------------------
# Writing


def describe_os_error(error: BaseException) -> str:
    """'no space left on device' from an OSError; other exceptions by type and text."""
    if isinstance(error, OSError):
        if error.errno is not None:
            return os.strerror(error.errno).lower()
        return str(error) or type(error).__name__
    text = str(error).splitlines()[0][:160] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _device_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):
        return False


def _no_space(error: BaseException, folder: Path) -> bool:
    """Whether a library's own error (no errno) is a full disk: its text says so (safetensors:
    "No space left on device (os error 28)"; a write larger than the free space can fail
    before filling it), or the device has no free block left (libsndfile: "System error")."""
    text = str(error).lower()
    return ("no space left on device" in text or "os error 28" in text
            or getattr(error, "errno", None) == errno.ENOSPC or _device_full(folder))


def refuse_non_regular(target: Path) -> None:
    """An existing target that is a folder, device, FIFO or socket is never written over (a
    symlink is: replacing it replaces the link itself, not what it points to)."""
    try:
        st = os.lstat(target)
    except OSError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
        raise OutputWriteError(target, f"exists and is {kind}, not a regular file; "
                                       "outputs are written only as regular files")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], *,
                 overwrite: bool = False, mode: int | None = None) -> Path:
    """Run ``write(tmp)`` on a new temporary file beside ``path``, then publish it as ``path``.

    ``write`` may reopen ``tmp`` by name (soundfile, matplotlib, safetensors do); what it
    returns is ignored (``Path.write_bytes`` returns a count).  Without ``overwrite`` an
    existing ``path`` raises :class:`OutputExistsError`, also when another process created it
    while we were writing; with it the file is replaced atomically.  The
    file's mode is ``mode`` or what the umask gives a new file.  A failure to write (an
    OSError, or a library's error on a full disk) raises :class:`OutputWriteError` naming
    ``path``; other errors of ``write`` propagate as they are.  Nothing is left behind."""
    target = Path(path)
    refuse_non_regular(target)
    if not overwrite and os.path.lexists(target):
        raise OutputExistsError(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(target, f"cannot create its folder: {describe_os_error(e)}",
                               e.errno) from e
    tmp = target.parent / part_name(target.name)
    try:
        # O_EXCL: the random name is ours alone; O_NOFOLLOW: never through a planted link.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o600)
        os.close(fd)
    except OSError as e:
        raise OutputWriteError(target, f"cannot create a file in {target.parent}: "
                                       f"{describe_os_error(e)}", e.errno) from e
    try:
        write(tmp)
        # The writer may have recreated the file; set the mode on what is there now.
        os.chmod(tmp, new_file_mode() if mode is None else mode)
        publish(tmp, target, overwrite=overwrite)
    except WaveGlowError:
        raise
    except OSError as e:
        raise OutputWriteError(target, f"cannot write: {describe_os_error(e)}", e.errno) from e
    except Exception as e:
        # soundfile and torch report a full disk as their own RuntimeError, without an errno:
        # the free space tells.  Anything else is the caller's to name (``write`` may also
        # compute what it writes, so its errors are not necessarily about writing).
        if _no_space(e, target.parent):
            raise OutputWriteError(target, "cannot write: no space left on device",
                                   errno.ENOSPC) from e
        raise
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return target


def write_json(path: str | os.PathLike[str], data: object) -> Path:
    """``data`` as indented, key-sorted JSON, atomically replacing ``path`` (records and run
    files: always rewritten in place)."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)


def replace_file(path: Path, data: bytes) -> None:
    """``data`` as the file ``path``, for our own small bookkeeping files (a lock's owner pid,
    the URL a partial download came from): written to a new file of ours beside it, then
    renamed over the name, so whatever was planted there is replaced, never opened (a plain
    open for writing waits forever on a FIFO and writes through a link).  Raises OSError and
    leaves no temporary file behind."""
    tmp = path.with_name(part_name(path.name))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), new_file_mode())
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# Errors of os.link that mean "this filesystem has no hard links" (FAT, some FUSE and network
# filesystems), not "the name is taken".
_NO_HARD_LINKS = frozenset(e for e in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS,
                                       getattr(errno, "ENOTSUP", None),
                                       getattr(errno, "EOPNOTSUPP", None)) if e is not None)


def publish(tmp: Path, target: Path, *, overwrite: bool, durable: bool = False) -> None:
    """Give the finished file ``tmp`` (in ``target``'s folder) the name ``target``: replacing
    it atomically (``overwrite``) or only if the name is free (else
    :class:`OutputExistsError`).  ``durable``: its bytes reach the disk before the rename (a
    download that took minutes is not lost to a power cut right after).

    The one place a finished file gets its final name: :func:`atomic_write` uses it for its
    temporary file, the downloader for a verified ``.partial`` (kept under that name until
    then, so that a cut download can be resumed)."""
    if durable:
        _fsync(tmp)
    if overwrite:
        os.replace(tmp, target)
        return
    # link(2) creates the new name atomically and fails with EEXIST if it is taken (also by a
    # dangling symlink): the claim and the publication are one step.  The temporary name is
    # then removed by atomic_write's cleanup.
    try:
        os.link(tmp, target)
        return
    except FileExistsError:
        raise OutputExistsError(target, meanwhile=True) from None
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
    if _rename_noreplace(tmp, target):
        return
    # Last resort: an exclusive create of the target, then a copy.  It still never replaces
    # anything, but a reader (or a kill) during the copy can see a partial file, so it is used
    # only where neither hard links nor renameat2(RENAME_NOREPLACE) exist.
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise OutputExistsError(target, meanwhile=True) from None
    try:
        with os.fdopen(fd, "wb") as out, open(tmp, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        shutil.copymode(tmp, target)
    except BaseException:
        try:
            os.unlink(target)
        except OSError:
            pass
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_files(*paths: Path) -> None:
    """Delete each of ``paths`` that exists (a missing one is no error)."""
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _rename_noreplace(tmp: Path, target: Path) -> bool:
    """renameat2(..., RENAME_NOREPLACE) (Linux >= 3.15, glibc >= 2.28): an atomic rename that
    fails if the target exists.  False where the system or filesystem lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_noreplace = -100, 1
    if renameat2(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(target),
                 rename_noreplace) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        raise OutputExistsError(target, meanwhile=True)
    if code in (errno.EINVAL, errno.ENOSYS) or code in _NO_HARD_LINKS:
        return False
    raise OSError(code, os.strerror(code), str(target))


# ---------------------------------------------------------------------------------------------
# Side files: small files read whole (a mel convention, mel statistics, a registry)


def file_kind(mode: int) -> str:
    """What a non-regular file is, for a message: 'a character device', 'a FIFO' ..."""
    for test, what in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return what
    return "not a regular file"


def size_text(n: int) -> str:
    """A byte count for a message: '64 KiB', '1.5 GiB', '12 bytes'."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


#: How every input is opened: read only, never blocking on a FIFO with no writer or a device,
#: never becoming the controlling terminal, closed in children.
READ_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
              | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def open_checked(path: str | os.PathLike[str],
                 refuse: Callable[[str], Exception] | None = None
                 ) -> tuple[int, os.stat_result]:
    """A descriptor of ``path`` opened with :data:`READ_FLAGS`, and ``fstat`` of it: what was
    opened is what the caller checks (a name swapped meanwhile gains nothing).  The caller owns
    (and closes) the descriptor.  A failure to open is raised as ``refuse(reason)`` ("no such
    file", "is a directory", "cannot read: ..."), or as the system's OSError without it."""
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as e:
        if refuse is None:
            raise
        if isinstance(e, FileNotFoundError):
            raise refuse("no such file") from None
        if isinstance(e, IsADirectoryError):
            raise refuse("is a directory") from None
        raise refuse(f"cannot read: {e.strerror or e}") from None
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def read_capped(fd: int, max_bytes: int) -> bytes | None:
    """At most ``max_bytes`` from ``fd``, or None if it holds more (a file may grow while it is
    read: what arrives is counted, not what ``fstat`` said)."""
    chunks, total = [], 0
    while total <= max_bytes:
        chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return None if total > max_bytes else b"".join(chunks)


def _over_cap(what: str, max_bytes: int, too_large: str | None) -> str:
    return f"larger than {size_text(max_bytes)}; {too_large or f'a {what} is far smaller'}"


def open_side_file(path: str | os.PathLike[str], what: str, max_bytes: int, *,
                   error: Callable[[str], Exception] = UsageError,
                   too_large: str | None = None) -> tuple[int, os.stat_result]:
    """A descriptor of the side file ``path``, opened and checked as :func:`read_side_file`
    does (a regular file of at most ``max_bytes`` by ``fstat`` of what was opened), for a
    caller that reads it its own way (line by line, or by a container reader).  The caller
    closes it.  Refusals are ``error(message)``, one line naming the file; ``too_large`` is
    what the message says after the cap (default: "a <what> is far smaller")."""
    name = str(path)

    def refused(reason: str) -> Exception:
        return error(f"{name}: cannot read {what} ({reason})")

    try:
        fd, st = open_checked(os.path.expanduser(path))
    except FileNotFoundError:
        raise error(f"{name}: no such {what}") from None
    except OSError as e:
        raise refused(e.strerror or str(e)) from None
    try:
        if not stat.S_ISREG(st.st_mode):
            raise refused(f"is {file_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise refused(_over_cap(what, max_bytes, too_large))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_side_file(path: str | os.PathLike[str], what: str, max_bytes: int, *,
                   error: Callable[[str], Exception] = UsageError,
                   too_large: str | None = None) -> bytes:
    """The bytes of a side file read whole (``what`` names it in messages: "mel convention
    file", "mel statistics file" ...), or one :class:`UsageError` (``error``: another
    exception type taking the message) naming the file and why.

    Every file read whole goes through here, so a name that leads to ``/dev/zero``, a FIFO or
    a terminal is refused before a byte is read, and a huge file before it is read: the file
    is opened non-blocking (opening a FIFO does not wait for a writer), the descriptor that
    was opened is checked with ``fstat`` (regular file, at most ``max_bytes``) and read, so a
    name swapped for something else meanwhile gains nothing."""
    fd, _ = open_side_file(path, what, max_bytes, error=error, too_large=too_large)
    try:
        data = read_capped(fd, max_bytes)  # a file growing meanwhile is still bounded
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if data is None:
        raise error(f"{path}: cannot read {what} ({_over_cap(what, max_bytes, too_large)})")
    return data


def read_side_text(path: str | os.PathLike[str], what: str, max_bytes: int, *,
                   error: Callable[[str], Exception] = UsageError,
                   too_large: str | None = None) -> str:
    """:func:`read_side_file` decoded as UTF-8 (invalid UTF-8 is the same one-line error)."""
    data = read_side_file(path, what, max_bytes, error=error, too_large=too_large)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: cannot read {what} (not UTF-8: {e.reason} at byte "
                    f"{e.start})") from None


__all__ = [
    "PART_SUFFIX",
    "READ_FLAGS",
    "atomic_write",
    "current_umask",
    "describe_os_error",
    "file_kind",
    "new_file_mode",
    "open_checked",
    "open_side_file",
    "part_name",
    "pid_alive",
    "publish",
    "read_capped",
    "read_side_file",
    "read_side_text",
    "refuse_non_regular",
    "remove_files",
    "remove_stale_parts",
    "replace_file",
    "size_text",
    "write_json",
]
