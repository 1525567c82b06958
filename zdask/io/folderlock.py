"""One run at a time per output folder: an OS lock on ``DIR/.zdask.lock``.

Two runs writing the same working store and output files interleave their writes (a tile
stacked by one and finished by the other, a tile file of one beside the mosaic of the other),
so a run holds this lock from before its first write until it ends. The lock is ``flock`` on an
open file: the kernel releases it when the holder's process ends in any way, SIGKILL and power
loss included, so a killed run never leaves the folder locked. The file itself stays (it holds
the holder's pid, for the message); deleting it on release would let a process that opened the
old file lock a name no one else sees.
"""

from __future__ import annotations

import fcntl
import os

__all__ = ["LOCK_NAME", "FolderInUse", "FolderLock"]

LOCK_NAME = ".zdask.lock"


class FolderInUse(Exception):
    """Another process holds the folder's lock; ``pid`` is its process id when it said so."""

    def __init__(self, folder: str, pid: int | None) -> None:
        super().__init__(folder, pid)
        self.folder = folder
        self.pid = pid

    def __str__(self) -> str:
        holder = f" (pid {self.pid})" if self.pid else ""
        return f"folder {self.folder} is locked by another process{holder}"


class FolderLock:
    """The exclusive lock of one folder, held from :meth:`acquire` until :meth:`release`.

    Use as a context manager: ``with FolderLock.acquire(folder): ...``. Not re-entrant: a second
    acquire of a held folder fails, from another process or from the same one.
    """

    def __init__(self, folder: str, fd: int) -> None:
        self.folder = folder
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, folder: str) -> "FolderLock":
        """Create ``folder`` if needed and lock it without waiting.

        Raises :class:`FolderInUse` when another holder has it, ``OSError`` when the folder or
        its lock file cannot be created or opened.
        """
        os.makedirs(folder, exist_ok=True)
        # 0o666 and the umask, like any other file the user's programs create there.
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise FolderInUse(folder, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(folder, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock (idempotent). Closing the file is what releases an ``flock``."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no stale pid for the next reader
        finally:
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote, or None (it may not have written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
