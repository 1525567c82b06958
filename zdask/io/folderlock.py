"""One run at a time per output folder: an OS lock on ``DIR/.zdask.lock``.

Two runs writing the same working store and output files interleave their writes (a tile
stacked by one and finished by the other, a tile file of one beside the mosaic of the other),
so a run holds this lock from before its first write until it ends. The lock is ``flock`` on an
open file: the kernel releases it when the holder's process ends in any way, SIGKILL and power
loss included, so a killed run never leaves the folder locked. The file itself stays (it holds
the holder's pid, for the message); deleting it on release would let a process that opened the
old file lock a name no one else sees.

An output folder at an fsspec URL (``s3://bucket/run1``) has no ``flock``: :class:`ObjectLock`
is the object ``URL/.zdask.lock`` created exclusively (S3 conditional writes, ``If-None-Match:
*``; ``open(path, "xb")`` in fsspec), removed on release. A run killed without releasing it
leaves it there: a run on the same host whose recorded process is gone takes it over; from
another host, the message names the object to delete.

A working store outside its run's output folder (``--work``) is locked too, by :func:`lock_store`:
two runs into different output folders sharing one store would interleave their writes as two
runs into one folder would.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
from typing import Callable

from zdask.io import urls

__all__ = ["LOCK_NAME", "FolderInUse", "FolderLock", "ObjectLock", "lock_folder", "lock_store"]

LOCK_NAME = ".zdask.lock"


class FolderInUse(Exception):
    """Another process holds the folder's lock; ``pid`` is its process id when it said so."""

    def __init__(self, folder: str, pid: int | None, host: str | None = None) -> None:
        super().__init__(folder, pid, host)
        self.folder = folder
        self.pid = pid
        self.host = host  # (an ObjectLock's holder: it may run on another machine)

    @property
    def holder(self) -> str:
        """" (pid N[ on HOST])", or "" when the holder did not say."""
        if not self.pid:
            return ""
        return f" (pid {self.pid}{f' on {self.host}' if self.host else ''})"

    def __str__(self) -> str:
        return f"folder {self.folder} is locked by another process{self.holder}"


class FolderLock:
    """The exclusive lock of one folder, held from :meth:`acquire` until :meth:`release`.

    Use as a context manager: ``with FolderLock.acquire(folder): ...``. Not re-entrant: a second
    acquire of a held folder fails, from another process or from the same one.
    """

    def __init__(self, folder: str, fd: int) -> None:
        self.folder = folder
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, folder: str, name: str = LOCK_NAME) -> "FolderLock":
        """Create ``folder`` if needed and lock it without waiting (its lock file: ``name``).

        Raises :class:`FolderInUse` when another holder has it, ``OSError`` when the folder or
        its lock file cannot be created or opened.
        """
        os.makedirs(folder, exist_ok=True)
        # 0o666 and the umask, like any other file the user's programs create there.
        fd = os.open(os.path.join(folder, name), os.O_RDWR | os.O_CREAT, 0o666)
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


def lock_folder(folder: str, say: Callable[[str], None] = print) -> "FolderLock | ObjectLock":
    """The lock of an output folder: :class:`FolderLock` for a local one (``file://`` URLs
    included), :class:`ObjectLock` for one at any other URL."""
    folder = urls.normalise(folder)
    return ObjectLock.acquire(folder, say) if urls.is_url(folder) else FolderLock.acquire(folder)


def lock_store(root: str, say: Callable[[str], None] = print) -> "FolderLock | ObjectLock":
    """The lock of a working Zarr store ``root``. A local store's is the file
    ``.NAME.zdask.lock`` beside it, in its parent folder, taken through the store's real path so
    that every spelling of it (a symbolic link, ``file://``) meets the same file: inside, the file
    would stay in the store for good and zarr would warn of a node it does not know whenever it
    lists the root group. At a URL, the object ``ROOT/.zdask.lock``, removed when the run ends
    (the lock of an output folder at a URL, :class:`ObjectLock`)."""
    root = urls.normalise(root)
    if urls.is_url(root):
        return ObjectLock.acquire(root, say)
    real = os.path.realpath(root)
    return FolderLock.acquire(os.path.dirname(real), f".{os.path.basename(real)}{LOCK_NAME}")


class ObjectLock:
    """The lock of an output folder at a URL: the object ``FOLDER/.zdask.lock``, holding
    ``HOST PID TOKEN`` of its holder, created exclusively and removed by :meth:`release`."""

    def __init__(self, folder: str, fs, path: str, token: str) -> None:
        self.folder, self._fs, self._path, self._token = folder, fs, path, token
        self.held = True

    @classmethod
    def acquire(cls, folder: str, say: Callable[[str], None] = print) -> "ObjectLock":
        """Create the lock object, or raise :class:`FolderInUse` naming its holder.

        A lock left by a process of this host that no longer runs (a killed run) is taken over.
        Where the backend cannot create an object exclusively, the lock is best effort (said in
        one line): the token is written, read back, and the run goes on if it is its own; two
        runs starting in the same instant can then both believe they hold it.
        """
        fs, path = urls.filesystem(urls.join(folder, LOCK_NAME))
        token = f"{socket.gethostname()} {os.getpid()} {secrets.token_hex(8)}"
        for attempt in (1, 2):
            try:
                with fs.open(path, "xb") as fh:
                    fh.write(token.encode())
                return cls(folder, fs, path, token)
            except FileExistsError:
                host, pid = _holder(fs, path)
                if attempt == 1 and host == socket.gethostname() and pid and not _alive(pid):
                    # Its holder is gone: take the lock over (two runs doing so in the same
                    # instant could both succeed; a killed run's lock is rare, that rarer).
                    fs.rm_file(path)
                    continue
                raise FolderInUse(folder, pid, host) from None
            except (ValueError, NotImplementedError, TypeError):
                break  # the backend does not know mode "x"
        say(f"warning: {urls.join(folder, LOCK_NAME)}: this storage cannot create an object "
            f"exclusively; the output folder's lock is best effort")
        if not fs.exists(path):
            with fs.open(path, "wb") as fh:
                fh.write(token.encode())
            if fs.cat_file(path).decode("utf-8", "replace") == token:
                return cls(folder, fs, path, token)
        host, pid = _holder(fs, path)
        raise FolderInUse(folder, pid, host)

    def release(self) -> None:
        """Remove the lock object if it is still this holder's (idempotent)."""
        if not self.held:
            return
        self.held = False
        try:
            if self._fs.cat_file(self._path).decode("utf-8", "replace") == self._token:
                self._fs.rm_file(self._path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ObjectLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fs, path: str) -> tuple[str | None, int | None]:
    """``(host, pid)`` an ObjectLock's object names, (None, None) if unreadable."""
    try:
        host, pid, _ = fs.cat_file(path).decode("utf-8", "replace").split()
        return host, int(pid)
    except (OSError, ValueError):
        return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote, or None (it may not have written it yet)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
