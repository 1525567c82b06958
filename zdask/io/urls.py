"""Locations: a local path or an fsspec URL (``s3://bucket/run1``, ``gs://``, ``memory://`` ...).

The frames a run reads, its output folder and its working store may each be either. Every
question about a location that is not a local path goes through this module (and the store's
own Zarr calls through :mod:`zdask.io.store`), so the rest of zdask asks "does it exist", "list
it", "put this file there" without knowing which kind it has. A ``file://`` URL is a local path
(:func:`normalise`): it keeps the direct local reads and writes, and the OS folder lock.

A URL's credentials and endpoint come from the environment of each process that opens it, as
fsspec and its backends read them (S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``): see :mod:`zdask.io.store`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from typing import IO, Iterator, NamedTuple

__all__ = ["is_url", "normalise", "absolute", "join", "filesystem", "exists", "isfile", "isdir",
           "entries", "file_names", "stat", "open_input", "read_bytes", "remove", "makedirs",
           "inside", "upload", "staged_upload"]


def is_url(location: str) -> bool:
    """Whether ``location`` is an fsspec URL (``s3://...``, ``file://...``) rather than a path."""
    return "://" in str(location)


def normalise(location: str) -> str:
    """A ``file://`` URL becomes its local path; any other URL loses its trailing slashes;
    a local path is returned as it is."""
    location = str(location)
    if location.startswith("file://"):
        return location[len("file://"):] or "/"
    return location.rstrip("/") if is_url(location) else location


def absolute(location: str) -> str:
    """An absolute local path, or the (normalised) URL."""
    location = normalise(location)
    return location if is_url(location) else os.path.abspath(location)


def join(base: str, *names: str) -> str:
    """``base/name/...``: a URL joined with ``/``, a path with the OS's separator."""
    if not is_url(base):
        return os.path.join(base, *names)
    return "/".join([base.rstrip("/"), *(n.strip("/") for n in names)])


def filesystem(url: str):
    """``(fsspec filesystem, path within it)`` of a URL (its package must be installed)."""
    import fsspec

    return fsspec.core.url_to_fs(url)


def exists(location: str) -> bool:
    if not is_url(location):
        return os.path.exists(location)
    fs, path = filesystem(location)
    return fs.exists(path)


def isfile(location: str) -> bool:
    if not is_url(location):
        return os.path.isfile(location)
    fs, path = filesystem(location)
    return fs.isfile(path)


def isdir(location: str) -> bool:
    """A local folder, or a URL under which objects exist (object stores have no empty folders)."""
    if not is_url(location):
        return os.path.isdir(location)
    fs, path = filesystem(location)
    return fs.isdir(path)


def entries(folder_url: str) -> list[tuple[str, str]]:
    """``(name, kind)`` of what a folder URL holds, sorted by name; ``kind`` is fsspec's
    ``type`` ('file', 'directory', or a backend's own word)."""
    fs, path = filesystem(folder_url)
    listed = fs.ls(path, detail=True)
    found = {os.path.basename(e["name"].rstrip("/")): str(e.get("type", "file")) for e in listed}
    return sorted((n, k) for n, k in found.items() if n)


def file_names(folder: str) -> list[str]:
    """Names of the regular files in ``folder`` (symbolic links excluded), sorted; [] when it
    does not exist."""
    if is_url(folder):
        try:
            return [n for n, kind in entries(folder) if kind == "file"]
        except FileNotFoundError:
            return []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    return [n for n in names if os.path.isfile(os.path.join(folder, n)) and not os.path.islink(os.path.join(folder, n))]


class FileStat(NamedTuple):
    """What the scan keeps of a file's identity (``os.stat_result``'s names)."""

    st_size: int
    st_mtime_ns: int


def stat(location: str) -> FileStat | os.stat_result:
    """A file's size and modification time; raises FileNotFoundError when it is not there.

    For a URL, the time is the object's last modification as the backend reports it (S3's
    ``LastModified``, to the second), or 0 when it reports none: an object rewritten in the same
    second with the same size looks unchanged, as a file rewritten within the file system's
    time resolution does.
    """
    if not is_url(location):
        return os.stat(location)
    fs, path = filesystem(location)
    info = fs.info(path)
    if info.get("type") == "directory":
        raise IsADirectoryError(f"{location}: is a folder")
    modified = info.get("LastModified", info.get("mtime", info.get("created")))
    if hasattr(modified, "timestamp"):
        modified = modified.timestamp()
    return FileStat(int(info.get("size") or 0), int(float(modified or 0) * 1e9))


def open_input(location: str, block_size: int | None = None) -> IO[bytes]:
    """A binary file object to read ``location`` (for a URL, fetched ``block_size`` bytes at a
    time where the backend buffers; None: the backend's default)."""
    if not is_url(location):
        return open(location, "rb")
    fs, path = filesystem(location)
    return fs.open(path, "rb", **({"block_size": block_size} if block_size else {}))


def read_bytes(location: str) -> bytes:
    """The whole content (for a URL, in one request where the backend allows)."""
    if not is_url(location):
        with open(location, "rb") as fh:
            return fh.read()
    fs, path = filesystem(location)
    return fs.cat_file(path)


def remove(location: str) -> None:
    if not is_url(location):
        os.unlink(location)
        return
    fs, path = filesystem(location)
    fs.rm_file(path)


def makedirs(location: str) -> None:
    """Create a local folder (and its parents); a URL's folders exist once objects are in them."""
    if not is_url(location):
        os.makedirs(location, exist_ok=True)


def inside(location: str, folder: str) -> bool:
    """Whether ``location`` is ``folder`` or lies under it: local paths compared as real paths,
    URLs as normalised text, a URL never inside a path nor a path inside a URL."""
    location, folder = normalise(location), normalise(folder)
    if is_url(location) != is_url(folder):
        return False
    if not is_url(location):
        location, folder = os.path.realpath(location), os.path.realpath(folder)
        return location == folder or location.startswith(folder.rstrip(os.sep) + os.sep)
    return location == folder or location.startswith(folder + "/")


def upload(local_file: str, url: str) -> None:
    """Put a finished local file at ``url`` so that no reader ever sees part of it: first under a
    temporary name beside it (``.NAME.RANDOM.part``), then moved onto its name. On S3 the move is
    a server-side copy, which replaces the object whole; a failed upload leaves the previous
    object in place (and at worst a ``.part`` object, which the next upload does not reuse)."""
    fs, path = filesystem(url)
    parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
    temporary = f"{parent}/.{name}.{secrets.token_hex(4)}.part" if parent else f".{name}.{secrets.token_hex(4)}.part"
    fs.put_file(local_file, temporary)
    try:
        fs.mv(temporary, path)
    finally:
        if fs.exists(temporary):
            fs.rm_file(temporary)


@contextlib.contextmanager
def staged_upload(url: str) -> Iterator[str]:
    """Yield a path in a fresh local temporary folder; when the block succeeds, :func:`upload`
    the file written there to ``url``. The folder goes in every case. Local disk holds the file
    meanwhile (``TMPDIR`` chooses where), the memory of the process does not."""
    folder = tempfile.mkdtemp(prefix="zdask-upload-")
    try:
        local = os.path.join(folder, url.rstrip("/").rsplit("/", 1)[-1] or "output")
        open(local, "wb").close()  # there, empty, as zdask.io.outputs.atomic_path's temporary is
        yield local
        upload(local, url)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
