"""Which entries of the scan's inputs are tried as FITS files, and why every other one is not.

A file named as an input is always tried, whatever its name. A folder is listed one level
deep (subfolders are not entered): its entries whose names end in a FITS suffix
(:data:`FRAME_SUFFIXES`, any case) are tried; every other entry is returned with the reason it
was skipped, so nothing in a folder disappears without a word — a hidden name, a subfolder
(or a folder named ``x.fits``), a file of another kind (``notes.txt``, ``.json``), a broken
symbolic link, a symbolic link loop, a FIFO or device. The same file reached under a second
name (a symbolic link beside its target) is tried once and the other name listed as a
duplicate.

No file is opened here (only ``stat``/``listdir``): a FIFO is never read, and a header is
read only by :mod:`zdask.io.scan`.

An input may be an fsspec URL (``s3://bucket/frames/``): a folder URL (a prefix objects lie
under) is listed one level deep with the same rules on names; an object store has no links,
FIFOs or devices, and the same URL twice is tried once.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from zdask.io import urls

__all__ = [
    "FITS_EXTENSIONS", "FRAME_SUFFIXES", "REASON_NOT_FITS", "REASON_UNREADABLE", "REASON_DUPLICATE",
    "is_frame_name", "expand_inputs",
]

#: uncompressed FITS file-name extensions (also how assembled tiles are found)
FITS_EXTENSIONS = (".fit", ".fits", ".fts")
#: names a folder scan tries: FITS, gzip-compressed FITS and tile-compressed FITS (``.fz``,
#: e.g. ``x.fits.fz``: a CompImageHDU in an extension)
FRAME_SUFFIXES = FITS_EXTENSIONS + tuple(ext + ".gz" for ext in FITS_EXTENSIONS) + (".fz",)

REASON_NOT_FITS = "not FITS"
REASON_UNREADABLE = "unreadable"
REASON_DUPLICATE = "duplicate"

_NOT_A_FITS_NAME = f"{REASON_NOT_FITS}: not a FITS file name (.fit, .fits, .fts, each also .gz; .fz)"
_HIDDEN = f"{REASON_NOT_FITS}: hidden name (starts with '.')"
_DIRECTORY = f"{REASON_NOT_FITS}: a directory, not a file (subfolders are not scanned)"


def is_frame_name(name: str) -> bool:
    """True when a folder scan tries a file of this name (by its suffix, any case)."""
    return name.lower().endswith(FRAME_SUFFIXES)


def _not_a_regular_file(path: str) -> str | None:
    """Why ``path`` cannot be read as a file ("<reason kind>: detail"), or None when it can be."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{REASON_UNREADABLE}: symbolic link loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"{REASON_UNREADABLE}: {'broken symbolic link' if os.path.islink(path) else 'no such file'}"
        return f"{REASON_UNREADABLE}: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return _DIRECTORY
    if not stat.S_ISREG(mode):  # never open a FIFO, a socket or a device
        return f"{REASON_UNREADABLE}: not a regular file"
    return None


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """``(files to try, skipped)``: absolute paths in input order (a folder's entries sorted by
    name), and ``(path, "<reason kind>: detail")`` for every other input or folder entry.

    Each path appears once in all: naming a file twice (or a file and its folder) tries it once,
    silently; the same file under another name is skipped as a duplicate of the first.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[str] = []
    skipped: list[tuple[str, str]] = []
    seen_paths: set[str] = set()
    seen_files: dict[str, str] = {}  # real path -> the path it was tried under

    def first_time(path: str) -> bool:
        key = os.path.normcase(path)
        if key in seen_paths:
            return False
        seen_paths.add(key)
        return True

    def add(path: str) -> None:
        if not first_time(path):
            return
        real = path if urls.is_url(path) else os.path.normcase(os.path.realpath(path))
        if real in seen_files:
            skipped.append((path, f"{REASON_DUPLICATE}: same file as {seen_files[real]}"))
        else:
            seen_files[real] = path
            files.append(path)

    def skip(path: str, reason: str) -> None:
        if first_time(path):
            skipped.append((path, reason))

    for item in inputs:
        if urls.is_url(os.fspath(item)):
            _expand_url(urls.normalise(os.fspath(item)), add, skip)
            continue
        path = os.path.abspath(os.fspath(item))
        if not os.path.isdir(path):
            problem = _not_a_regular_file(path)
            if problem is None:
                add(path)
            else:
                skip(path, problem)
            continue
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            skip(path, f"{REASON_UNREADABLE}: cannot list folder: {exc.strerror or exc}")
            continue
        for name in names:
            full = os.path.join(path, name)
            if name.startswith("."):  # e.g. macOS "._x.fits" resource forks, ".DS_Store"
                skip(full, _HIDDEN)
            elif (problem := _not_a_regular_file(full)) is not None:
                skip(full, problem)
            elif not is_frame_name(name):
                skip(full, _NOT_A_FITS_NAME)
            else:
                add(full)
    return files, skipped


def _expand_url(url: str, add, skip) -> None:
    """:func:`expand_inputs` for one URL: a file is tried, a folder's entries by the folder rules."""
    try:
        if not urls.isdir(url):
            if urls.isfile(url):
                add(url)
            else:
                skip(url, f"{REASON_UNREADABLE}: no such file")
            return
        found = urls.entries(url)
    except OSError as exc:
        skip(url, f"{REASON_UNREADABLE}: cannot list folder: {exc.strerror or exc}")
        return
    for name, kind in found:
        full = urls.join(url, name)
        if name.startswith("."):
            skip(full, _HIDDEN)
        elif kind == "directory":
            skip(full, _DIRECTORY)
        elif kind != "file":
            skip(full, f"{REASON_UNREADABLE}: not a regular file")
        elif not is_frame_name(name):
            skip(full, _NOT_A_FITS_NAME)
        else:
            add(full)
