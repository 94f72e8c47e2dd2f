"""A per-checkpoint file lock that says who holds it and gives up on a hung holder.

filelock takes an flock(2) lock, which the kernel releases when its holder exits, however it
dies: a dead holder never blocks anyone.  A live holder that hangs would block forever, so
waiting is bounded by the holder's progress (see :class:`CheckpointLock`).
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from ..errors import CheckpointNotAvailableError
from ..fileio import open_checked, pid_alive, read_capped, remove_stale_parts, replace_file
from ..progress import ProgressReporter

_OWNER_BYTES = 64  # "<pid>\n": far more than any pid takes


class CheckpointLock:
    """A per-checkpoint file lock; says so when another process holds it.

    filelock takes an flock(2) lock, which the kernel releases when its holder exits, however
    it dies: a dead holder never blocks anyone.  A live holder that hangs would block forever,
    so waiting is bounded: while the holder's files (``watch``: the checkpoint's cache folder)
    keep changing it is working and we wait; after ``stall_timeout`` seconds without a change
    we give up with a message naming its pid (written beside the lock) and the lock file."""

    def __init__(self, lock_path: Path, label: str, reporter: ProgressReporter, *,
                 stall_timeout: float = 600.0, watch: Path | None = None) -> None:
        from filelock import FileLock

        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.path = lock_path
        self.owner_file = lock_path.with_name(lock_path.name + ".pid")
        self.lock = FileLock(str(lock_path))
        self.label, self.reporter = label, reporter
        self.stall_timeout, self.watch = stall_timeout, watch

    def _owner(self) -> str:
        """The holder's pid as its owner file says ('' when it says nothing usable).  Opened
        non-blocking and read only if it is a small regular file: a FIFO or a device planted
        under its name must not hang or flood a waiter (the pid is only for messages)."""
        try:
            fd, st = open_checked(self.owner_file)
        except OSError:
            return ""
        try:
            data = read_capped(fd, _OWNER_BYTES) if stat.S_ISREG(st.st_mode) else None
        except OSError:
            data = None
        finally:
            os.close(fd)
        text = (data or b"").decode("ascii", "replace").strip()
        return text if text.isdigit() else ""

    def _write_owner(self) -> None:
        """Our pid in the owner file, renamed over its name: whatever was planted there (a
        FIFO, a link) is replaced, never opened (see :func:`~waveglow_cli.fileio.replace_file`)."""
        try:
            replace_file(self.owner_file, f"{os.getpid()}\n".encode("ascii"))
        except OSError:
            pass  # the pid is only for messages

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

    def __enter__(self) -> CheckpointLock:
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=0.2)
        except Timeout:
            self._wait_for_holder()
        remove_stale_parts(self.path.parent)  # owner files a killed holder was writing
        self._write_owner()
        return self

    def _wait_for_holder(self) -> None:
        """Take the lock once its holder lets go; give up once the holder's files have not
        changed for ``stall_timeout`` seconds."""
        from filelock import Timeout

        owner = self._owner()
        self.reporter.note(f"{self.label}: waiting for another process"
                           f"{f' (pid {owner})' if owner else ''} that is downloading it")
        seen, since = self._activity(), time.monotonic()
        while True:
            try:
                self.lock.acquire(timeout=1.0)
                return
            except Timeout:
                pass
            now = self._activity()
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since > self.stall_timeout:
                raise self._stalled(self._owner() or owner)

    def _stalled(self, owner: str) -> CheckpointNotAvailableError:
        if owner and not pid_alive(int(owner)):
            # Only a lock without flock (filelock's fallback on some network file systems)
            # outlives its holder.
            return CheckpointNotAvailableError(
                f"{self.label}: the lock {self.path} is still held although the process that "
                f"took it (pid {owner}) is no longer running; if no other waveglow is fetching "
                "this checkpoint, delete the lock file")
        return CheckpointNotAvailableError(
            f"{self.label}: another process{f' (pid {owner})' if owner else ''} holds the lock "
            f"{self.path} and has shown no progress for {self.stall_timeout:g} s; if it is "
            "stuck, stop it (the lock is released when it exits), or wait longer with "
            "WAVEGLOW_LOCK_TIMEOUT")

    def __exit__(self, *exc: object) -> None:
        try:
            self.owner_file.unlink()
        except OSError:
            pass
        self.lock.release()



__all__ = ["CheckpointLock"]
