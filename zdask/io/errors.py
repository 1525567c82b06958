"""Exceptions of the zdask I/O layer."""

from __future__ import annotations

__all__ = ["FrameReadError"]


class FrameReadError(Exception):
    """Reading the pixels of one scanned frame failed.

    ``path`` names the file, ``reason`` says what went wrong.  The exception
    pickles cleanly (``args == (path, reason)``) so it survives a trip through
    a dask worker.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(str(path), str(reason))
        self.path = str(path)
        self.reason = str(reason)

    def __str__(self) -> str:
        return f"cannot read frame {self.path}: {self.reason}"
