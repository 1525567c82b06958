"""Layout of the working Zarr store ``DIR/work.zarr`` and its fingerprints.

The store may live elsewhere (``Config.work``): a folder, or any fsspec URL whose package is
installed (``s3://bucket/run1``, ``gs://``, ``memory://`` ...), so that workers on nodes without a
shared file system read and write the same store. Everything that opens it goes through this
module with the store's *root* (a local path or a URL string: :func:`work_store_root`). A URL's
credentials and endpoint come from the environment of every process that opens it (the client's
and each worker's), as fsspec and its backends read them: for S3 and S3-compatible servers
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` (or fsspec's
``FSSPEC_S3_ENDPOINT_URL``). Environment, not settings: a worker started by SLURM or Kubernetes
gets it the way it gets its credentials, and no secret is written into report.json.

```
work.zarr/
  hotpixels/<sensor>        int64 flat indices of the sensor's hot pixels       attrs: fingerprint
  frames/<frame key>        float32 (H, W, C) calibrated frame                  attrs: fingerprint, stats
  tiles/<tile id>/stacked   float32 (h, w, C) the stack's output                attrs (group): fingerprint,
  tiles/<tile id>/coverage  float32 (h, w) frames whose footprint covers a pixel       summary
  tiles/<tile id>/count     int32 (h, w, C) samples kept by the rejection (and rejected_low, _high)
  tiles/<tile id>/image     float32 (h, w, C) finished master tile (renormalised, colour-equalised)
  tiles/<tile id>/alpha, weight   float32 (h, w) alt-az mask, coadd weight
  mosaic/image, mosaic/coverage                                                 attrs: fingerprint, wcs
```

A stage writes its arrays first and its ``fingerprint`` attribute last: an entry whose stored
fingerprint matches what the stage would compute now is complete and is reused; anything else
(missing, half-written by a crash, made from other inputs or settings) is recomputed.

A complete entry is never written again: :func:`create_array` refuses to write into one
(:class:`CompleteEntryError`). A stage that recomputes an entry under the same name first calls
:func:`begin_entry`, which removes the mark, so that a crash while it rewrites the arrays leaves
an incomplete entry and not a complete-looking mix of old and new.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from zdask.io import urls

# Calibrated values are bilinear means of 16-bit integers: their low mantissa bits are mostly
# zero, so byte shuffling + lz4 halves them. Measured on a 1080×1920×3 frame: lz4 writes in
# 50 ms and reads in 20-40 ms, zstd level 1 in 130-190 / 80-100 ms for 25% more reduction; reads
# sit on the warp's critical path, so lz4.
COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
# Calibrated frames: the same, in Blosc blocks of 64 KiB (a few rows) instead of the 256-512 KiB
# Blosc picks, because a master tile's block task reads a band of a few rows from every frame of
# its group and decompresses only the Blosc blocks that hold them (zdask.io.chunkrows): the
# smaller the block, the less it decompresses to throw away. Blosc 1 raises a forced block size
# below 64 KiB to 64 KiB for this data (and 64 KiB asked gave 256 KiB): hence 16 KiB asked.
# Measured on 256 × 1920 × 3 rows: 20 rows read in 134 µs against 215 µs, files 7 % larger.
# Bit shuffle, not byte shuffle: calibrated frames (sums of integer ADU, halves and quarters) leave
# low mantissa bits zero, which bit shuffling turns into runs; measured on 1920 × 1080 × 3
# frames, the chunks encode in 17 against 23 ms and take 25 % less disk (the writes are the
# calibrate stage's largest cost), for 3 ms more per frame read in 20-row windows.
FRAME_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", blocksize=16 << 10)


#: Part of every fingerprint: bump it when a code change alters what a stage writes, so that
#: stores made by older code are recomputed instead of reused.  History: 2 = winsorized
#: clipping solves Huber's equations exactly (was 10 truncated iterations); 3 = kappa-sigma
#: bounds from the studentized leave-one-out test and the median of three samples (was
#: median ± κ·std), linear-fit clipping in
#: units of the robust σ about a line the outliers cannot pull (was the mean absolute residual);
#: 4 = tile blocks on a regular grid (balanced blocks shared Zarr chunks, and concurrent writes to
#: one chunk could lose rows of a tile: such tiles are recomputed); 5 = a tile's colour medians
#: from a row-strided sample (zdask.ops.colour.MAX_SAMPLES), the mosaic's common sky fitted on
#: every other binned pixel, tile blocks that fill the budget (their warp maps' nodes moved).
RESULTS_REVISION = 5


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (and of :data:`RESULTS_REVISION`)."""
    payload = json.dumps([RESULTS_REVISION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def frame_key(path: str) -> str:
    """Zarr-safe key of a frame: its file stem plus a hash of the full path (stems can repeat)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:64]
    return f"{safe}-{hashlib.sha256(path.encode()).hexdigest()[:10]}"


#: The store's folder in the output folder when ``Config.work`` is not set.
DEFAULT_STORE_NAME = "work.zarr"


def is_url(root: str) -> bool:
    """Whether ``root`` is an fsspec URL (``s3://...``) rather than a local path."""
    return urls.is_url(root)


def work_store_root(out_dir: str, work: str | None) -> str:
    """The working store's root: ``work`` (a path or an fsspec URL), or ``work.zarr`` in the output
    folder (a path or a URL). A ``file://`` URL becomes its path, so that local reads and writes keep their direct
    paths (:mod:`zdask.io.chunkrows`)."""
    if not work:
        return urls.join(urls.normalise(out_dir), DEFAULT_STORE_NAME)  # a URL when the output folder is one
    return urls.normalise(work)


def url_problem(url: str) -> str | None:
    """Why no store can be opened at ``url`` (unknown protocol, its package missing), or None."""
    import fsspec

    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        return f"unknown protocol {protocol!r}"
    except ImportError as exc:
        return f"protocol {protocol!r} needs a package that is not installed ({exc})"
    return None


class StoreUnreachable(OSError):
    """The working store cannot be opened or created (one line naming it and why)."""


def check_store(root: str) -> None:
    """Open the store's root group, creating it: raises :class:`StoreUnreachable` (a missing
    bucket, refused credentials, an unreachable server) before a run starts any work."""
    try:
        open_store(root)
    except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own kinds (botocore, aiohttp)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise StoreUnreachable(f"working store {root}: {reason}") from None


def open_store(root: str, mode: str = "a") -> zarr.Group:
    """The store's root group (``mode`` 'a' creates it)."""
    return zarr.open_group(root, mode=mode, zarr_format=3)


def open_group(root: str, path: str, mode: str = "r") -> zarr.Group:
    """The group ``path`` of the store (``mode`` 'r', 'r+', or 'a' to create it)."""
    return zarr.open_group(root, path=path, mode=mode, zarr_format=3)


def open_array_at(root: str, path: str, mode: str = "r") -> zarr.Array:
    """The array ``path`` of the store, not cached (for writes, or arrays read once)."""
    return zarr.open_array(root, path=path, mode=mode, zarr_format=3)


def open_node(root: str, path: str, mode: str = "r") -> zarr.Array | zarr.Group:
    """The array or group ``path`` of the store."""
    return zarr.open(root, path=path, mode=mode, zarr_format=3)


# A block task of a master tile opens every frame of its group: with fewer entries than a group
# has frames, the cache would be emptied by each block and every block open every frame again
# (~1 ms each, a cost of blocks × frames). An entry is its metadata, no chunk data: ~3 KiB, and
# ~20 KiB for a calibrated frame (its statistics and kept stars), 80 MB if all 4096 are frames.
@functools.lru_cache(maxsize=4096)
def _open_array_cached(root: str, name: str, token: str) -> zarr.Array:
    return open_array_at(root, name)


def open_array(root: str, name: str, token: str = "") -> zarr.Array:
    """Open an array read-only, cached per worker process (``token`` changes when it is rewritten)."""
    return _open_array_cached(root, name, token)


def is_complete(root: str, name: str, expected: str) -> bool:
    """True when ``name`` (array or group) exists with the fingerprint ``expected``."""
    try:
        node = open_node(root, name)
    except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
        return False
    return node.attrs.get("fingerprint") == expected


class CompleteEntryError(RuntimeError):
    """A stage tried to write into an entry already marked complete (a bug: see the module doc)."""


def complete_entry_of(group: zarr.Group, name: str) -> str | None:
    """The path (``name`` or a parent of it, relative to ``group``) that carries a completion
    mark, or None."""
    parts = name.strip("/").split("/")
    for k in range(1, len(parts) + 1):
        prefix = "/".join(parts[:k])
        if prefix not in group:
            return None
        if "fingerprint" in group[prefix].attrs:
            return prefix
    return None


def begin_entry(root: str, name: str) -> None:
    """About to (re)write entry ``name``: remove its completion mark first, if it has one."""
    try:
        node = open_node(root, name, "r+")
    except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
        return
    if "fingerprint" in node.attrs:
        del node.attrs["fingerprint"]


def create_array(
    group: zarr.Group, name: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...],
    fill_value: Any = None, compressor: BloscCodec = COMPRESSOR,
) -> zarr.Array:
    """Create (replacing any previous) an array with zdask's codec, inside an incomplete entry."""
    complete = complete_entry_of(group, name)
    if complete is not None:
        raise CompleteEntryError(f"{name}: {complete} is marked complete and is never rewritten; "
                                 f"call begin_entry({complete!r}) before recomputing it")
    if fill_value is None:
        fill_value = np.nan if np.dtype(dtype).kind == "f" else 0
    return group.create_array(
        name, shape=shape, chunks=chunks, dtype=dtype, compressors=compressor,
        fill_value=fill_value, overwrite=True,
    )


def mark_complete(root: str, name: str, fp: str, **attrs: Any) -> None:
    """Record the fingerprint (and other attributes) of a finished entry, last."""
    node = open_node(root, name, "r+")
    node.attrs.update({**attrs, "fingerprint": fp})
