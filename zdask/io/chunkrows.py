"""Read a band of rows of a stored frame, decompressing only the part of each chunk it needs;
write a whole frame with each chunk compressed in the calling thread.

A master tile's block task reads a window of a few dozen rows from every frame of its group, and
the number of blocks grows with the group: through zarr, each window read decompressed the whole
chunk strip it touched (256 rows) and paid zarr's per-call overhead, ~1.5 ms per frame and block,
so that a group's tile took time in the square of its frames. Blosc stores a chunk as blocks that
decompress independently (``blosc_getitem``): :func:`read_rows` maps the chunk file and
decompresses only the blocks that hold the rows asked for, so a read costs in proportion to its
rows. The bytes are those zarr would return (the same codec on the same chunk).

Writing a calibrated frame through zarr cost ~35 ms of which two threads got no speed-up: zarr
does its chunk copies and bookkeeping in its one event-loop thread. :func:`write_rows` encodes
each chunk with the array's own Blosc settings in the calling thread (Blosc releases the GIL) and
writes the chunk file: the same bytes zarr writes, in half the time, and in parallel.

Only the layout the calibrate stage writes takes these paths: a local store, chunks of whole rows
(full width and channels), one Blosc codec after the plain bytes serializer, no filter. Anything
else (and a chunk never written, which zarr reads as the fill value) goes through zarr.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec
from zarr.storage import LocalStore

__all__ = ["read_rows", "read_whole", "write_rows"]


@functools.cache
def _blosc_getitem():
    """c-blosc's ``blosc_getitem`` from numcodecs' extension (which exports it), or None."""
    try:
        from numcodecs import blosc
        fn = ctypes.CDLL(blosc.__file__).blosc_getitem
    except (ImportError, OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
    fn.restype = ctypes.c_int
    return fn


# id(array) -> (array, its chunk directory or None): checking the codecs cost ~50 µs, paid per
# frame and block. The entry holds the array, so that its id is not reused while it is cached.
_CHUNK_DIRS: dict[int, tuple[zarr.Array, str | None]] = {}


def _chunk_dir(z: zarr.Array) -> str | None:
    hit = _CHUNK_DIRS.get(id(z))
    if hit is not None and hit[0] is z:
        return hit[1]
    if len(_CHUNK_DIRS) >= 8192:
        _CHUNK_DIRS.clear()
    found = _blosc_chunk_dir(z)
    _CHUNK_DIRS[id(z)] = (z, found)
    return found


def _blosc_chunk_dir(z: zarr.Array) -> str | None:
    """Directory of ``z``'s chunk files when they are single Blosc frames of whole rows."""
    if _blosc_getitem() is None or not isinstance(z.store, LocalStore) or z.metadata.zarr_format != 3:
        return None
    if z.filters or len(z.compressors) != 1 or not isinstance(z.compressors[0], BloscCodec):
        return None
    ser = z.serializer
    if not isinstance(ser, BytesCodec) or not np.dtype(z.dtype).isnative:
        return None
    if ser.endian is not None and ser.endian.value != ("little" if np.little_endian else "big"):
        return None
    if tuple(z.chunks[1:]) != tuple(z.shape[1:]):
        return None
    return os.path.join(str(z.store.root), z.store_path.path)


def read_rows(z: zarr.Array, y0: int, y1: int, buffer: np.ndarray | None = None) -> np.ndarray:
    """``z[y0:y1]`` (whole rows), decompressing only the Blosc blocks that hold them.

    ``buffer``, a C-contiguous 1-D array of at least the rows' bytes (any dtype), receives
    them: the result is then a view of it. A task reading many windows reuses one buffer (a
    fresh array of a few hundred KB costs its page faults, as much as the decompression of
    a small window).
    """
    shape, dtype = (y1 - y0,) + tuple(z.shape[1:]), np.dtype(z.dtype)
    chunk_dir = _chunk_dir(z)
    if buffer is None:
        if chunk_dir is None:
            return z[y0:y1]
        out = np.empty(shape, dtype=dtype)
    else:
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if not buffer.flags.c_contiguous or buffer.nbytes < size:
            raise ValueError(f"buffer of {buffer.nbytes} bytes cannot hold rows {y0}:{y1} ({size} bytes)")
        out = buffer.reshape(-1).view(np.uint8)[:size].view(dtype).reshape(shape)
        if chunk_dir is None:
            out[...] = z[y0:y1]
            return out
    rows_per_chunk = z.chunks[0]
    row_bytes = int(np.prod(z.shape[1:], dtype=np.int64)) * dtype.itemsize
    getitem = _blosc_getitem()
    for k in range(y0 // rows_per_chunk, -(-y1 // rows_per_chunk)):
        a, b = max(y0, k * rows_per_chunk), min(y1, (k + 1) * rows_per_chunk)
        dst = out[a - y0:b - y0]
        path = os.path.join(chunk_dir, z.metadata.encode_chunk_key((k,) + (0,) * (z.ndim - 1)))
        try:
            with open(path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (FileNotFoundError, ValueError):  # never written (or empty): zarr's fill value
            dst[...] = z[a:b]
            continue
        try:
            src = np.frombuffer(mapped, dtype=np.uint8)
            typesize = int(src[3])  # Blosc header: version, versionlz, flags, typesize
            start, nbytes = (a - k * rows_per_chunk) * row_bytes, (b - a) * row_bytes
            got = -1
            if typesize and start % typesize == 0 and nbytes % typesize == 0:
                # (the address without ``src.ctypes``: that object can outlive this line and
                # keep the map exported)
                got = getitem(src.__array_interface__["data"][0], start // typesize, nbytes // typesize,
                              dst.__array_interface__["data"][0])
            del src
        finally:
            try:
                mapped.close()
            except BufferError:  # a view still alive (another thread's traceback): unmapped when freed
                pass
        if got != nbytes:  # a frame Blosc cannot serve in part: let zarr read (or report) it
            dst[...] = z[a:b]
    return out


def read_whole(z: zarr.Array) -> np.ndarray:
    """All of ``z`` (:func:`read_rows` of every row): decompressed in the calling thread."""
    return read_rows(z, 0, z.shape[0])


def write_rows(z: zarr.Array, data: np.ndarray) -> None:
    """``z[:] = data`` for a new array: each chunk encoded here and written to its file, as zarr
    would write it (chunks padded with the fill value; a chunk all fill value not written)."""
    chunk_dir = _chunk_dir(z)
    data = np.asarray(data, dtype=z.dtype)
    if data.shape != z.shape:
        raise ValueError(f"write_rows: data of shape {data.shape} for an array of shape {z.shape}")
    if chunk_dir is None:
        z[...] = data
        return
    codec = _numcodecs_blosc(z.compressors[0])
    rows_per_chunk = z.chunks[0]
    fill = z.fill_value
    for k in range(-(-z.shape[0] // rows_per_chunk)):
        part = data[k * rows_per_chunk:(k + 1) * rows_per_chunk]
        path = os.path.join(chunk_dir, z.metadata.encode_chunk_key((k,) + (0,) * (z.ndim - 1)))
        if _all_fill(part, fill):
            if os.path.exists(path):
                os.remove(path)
            continue
        if part.shape[0] < rows_per_chunk:  # the last chunk is stored whole, padded
            padded = np.full((rows_per_chunk,) + part.shape[1:], fill, dtype=part.dtype)
            padded[:part.shape[0]] = part
            part = padded
        encoded = codec.encode(np.ascontiguousarray(part).view(np.uint8).reshape(-1))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(encoded)


def _numcodecs_blosc(codec: BloscCodec):
    """numcodecs' Blosc with the settings of zarr's BloscCodec (the one zarr itself encodes with)."""
    from numcodecs import Blosc

    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
    return Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=shuffle[codec.shuffle.value],
                 blocksize=codec.blocksize, typesize=codec.typesize)


def _all_fill(part: np.ndarray, fill) -> bool:
    fill = np.asarray(fill, dtype=part.dtype)
    is_fill = np.isnan if fill.dtype.kind == "f" and np.isnan(fill) else (lambda v: v == fill)
    # (a chunk of data rarely starts with the fill value: most chunks are told by one sample)
    return bool(is_fill(part.flat[0])) and bool(is_fill(part).all())
