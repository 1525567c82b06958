"""Exceptions of the zdask I/O layer: one file, and what went wrong with it.

They are raised where the file is known (often inside a dask worker) and carried back to the
caller intact, so the command line can end a failed run with one line naming the file.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
from typing import Iterator

__all__ = ["FileError", "FrameReadError", "WriteError", "writing"]


class FileError(Exception):
    """Reading or writing one file failed: ``path`` names the file, ``reason`` says why.

    Subclasses pickle cleanly (``args`` are their constructor's arguments), so they survive a
    trip through a dask worker.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(str(path), str(reason))
        self.path = str(path)
        self.reason = str(reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class FrameReadError(FileError):
    """Reading the pixels of one scanned frame failed."""

    def __str__(self) -> str:
        return f"cannot read frame {self.path}: {self.reason}"


class WriteError(FileError):
    """Writing one output (a file, or an entry of the working store) failed; ``errno`` is the
    operating system's error number when there was one (``errno.ENOSPC``: the disk is full)."""

    def __init__(self, path: str, reason: str, errno: int | None = None) -> None:
        super().__init__(path, reason)
        self.args = (self.path, self.reason, errno)
        self.errno = errno

    @property
    def disk_full(self) -> bool:
        return self.errno in (errno_codes.ENOSPC, errno_codes.EDQUOT)

    def __str__(self) -> str:
        text = f"cannot write {self.path}: {self.reason}"
        if self.disk_full:
            # Outputs are written under temporary names and renamed into place, and a stored
            # result counts only once its fingerprint is written last: nothing older was lost.
            text += ("; the disk is full: outputs this run had not yet rewritten keep their "
                     "previous version (free some space and run again to resume)")
        return text


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into a :class:`WriteError` naming ``path``."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise WriteError(path, reason, exc.errno) from exc
