"""open_zarr_stack: the same values as zarr's reader, blocks of whole chunk rows, clear errors."""

from __future__ import annotations

import gc
import mmap
import os
import sys

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from zdask.graph.stack import stack
from zdask.graph import zarrstack
from zdask.graph.zarrstack import (ZarrStackError, _load_block, _map_block, _mappable, _raw_chunk_path,
                                _read_block, open_zarr_stack)


def _frames(n=6, h=23, w=17, c=3, seed=0):
    x = np.random.default_rng(seed).normal(1000.0, 10.0, (n, h, w, c)).astype(np.float32)
    x[1, :4] = np.nan
    x[4, 7, 3] = 5000.0
    return x


def _write(path, x, chunks, **kw):
    z = zarr.create_array(str(path), shape=x.shape, chunks=chunks, dtype="float32", fill_value=np.nan,
                          overwrite=True, **kw)
    z[...] = x
    return z


@pytest.mark.parametrize("kind", ["raw_v3", "raw_v2", "blosc_v3"])
def test_values_equal_zarrs_reader(tmp_path, kind):
    x = _frames()
    kw = {"compressors": None} if kind.startswith("raw") else {"compressors": BloscCodec(cname="lz4")}
    if kind == "raw_v2":
        kw["zarr_format"] = 2
    z = _write(tmp_path / "s.zarr", x, (1, 5, 17, 3), **kw)  # 23 rows: the last chunk row is partial
    assert (_raw_chunk_path(z) is not None) == kind.startswith("raw")
    a = open_zarr_stack(str(tmp_path / "s.zarr"), budget=4 * 6 * 10 * 17 * 3)
    with dask.config.set(scheduler="sync"):
        got = a.compute()
    np.testing.assert_array_equal(got, np.asarray(z[...]))
    np.testing.assert_array_equal(got, x)


def test_missing_chunk_reads_the_fill_value(tmp_path):
    x = _frames()
    z = zarr.create_array(str(tmp_path / "s.zarr"), shape=x.shape, chunks=(1, 5, 17, 3), dtype="float32",
                          fill_value=np.nan, compressors=None)
    z[:3] = x[:3]  # frames 3.. never written: no chunk files
    with dask.config.set(scheduler="sync"):
        got = open_zarr_stack(str(tmp_path / "s.zarr")).compute()
    np.testing.assert_array_equal(got[:3], x[:3])
    assert np.isnan(got[3:]).all()


def test_blocks_are_whole_chunk_rows_within_budget(tmp_path):
    x = _frames(n=6, h=40, w=17)
    _write(tmp_path / "s.zarr", x, (1, 4, 17, 3), compressors=None)
    row = 6 * 17 * 3 * 4
    a = open_zarr_stack(str(tmp_path / "s.zarr"), budget=row * 10)
    assert a.chunks[0] == (6,)  # the frame axis whole
    assert a.chunks[2:] == ((17,), (3,))
    assert all(r % 4 == 0 and r * row <= row * 10 for r in a.chunks[1])
    assert sum(a.chunks[1]) == 40 and len(a.chunks[1]) > 1


def test_stacking_a_zarr_stack_equals_stacking_it_in_memory(tmp_path):
    x = _frames(n=9, h=31)
    _write(tmp_path / "s.zarr", x, (1, 8, 17, 3), compressors=None)
    a = open_zarr_stack(str(tmp_path / "s.zarr"), budget=9 * 8 * 17 * 3 * 4)
    with dask.config.set(scheduler="threads"):
        lazy = [r.compute() for r in stack(a, "kappa_sigma")]
    from zdask.ops import kappa_sigma

    mem = kappa_sigma(x)
    for got, want in zip(lazy, mem):
        np.testing.assert_array_equal(got, want)
    assert (lazy[2][7, 3] == 0).all() and (lazy[3][7, 3] == 1).all()  # the planted outlier, rejected high


def test_damaged_chunk_names_the_file(tmp_path):
    x = _frames()
    _write(tmp_path / "s.zarr", x, (1, 5, 17, 3), compressors=None)
    chunk = tmp_path / "s.zarr" / "c" / "2" / "1" / "0" / "0"
    with open(chunk, "r+b") as f:
        f.truncate(100)
    a = open_zarr_stack(str(tmp_path / "s.zarr"))
    with pytest.raises(ZarrStackError, match=os.path.join("c", "2", "1", "0", "0")), \
            dask.config.set(scheduler="sync"):
        a.compute()


def test_no_array_there_is_a_clear_error(tmp_path):
    with pytest.raises(ZarrStackError, match="no Zarr array"):
        open_zarr_stack(str(tmp_path / "nothing.zarr"))
    z = zarr.create_array(str(tmp_path / "flat.zarr"), shape=(4, 5), dtype="float32")
    with pytest.raises(ZarrStackError, match=r"\(N, H, W\)"):
        open_zarr_stack(z)


# --- blocks mapped from the chunk files (Linux) ------------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="chunk files are mapped on Linux only")


def _blocks(a):
    return list(da.core.slices_from_chunks(a.chunks))


def _mapped_layouts(tmp_path):
    """(store, budget) pairs: a 2-D stack whose chunks are one page (bands of several chunk rows,
    the last chunk row partial, one chunk never written), and an RGB stack of odd sizes read one
    chunk row per band (frames a padded stride apart)."""
    page = mmap.PAGESIZE
    w = page // 4 // 8  # 8 rows × w columns of float32 = one page
    x2 = np.random.default_rng(1).normal(1000.0, 10.0, (5, 44, w)).astype(np.float32)
    x2[2, 3, 5] = np.nan
    z2 = zarr.create_array(str(tmp_path / "flat.zarr"), shape=x2.shape, chunks=(1, 8, w), dtype="float32",
                           fill_value=np.nan, compressors=None)
    z2[[0, 1, 3, 4]] = x2[[0, 1, 3, 4]]
    z2[2, :16] = x2[2, :16]  # frame 2's chunk rows 2.. never written
    x2[2, 16:] = np.nan
    x3 = _frames(n=6, h=23, w=17)
    _write(tmp_path / "rgb.zarr", x3, (1, 5, 17, 3), compressors=None)
    return [(z2, x2, 5 * 8 * w * 4 * 3), (zarr.open_array(str(tmp_path / "rgb.zarr"), mode="r"), x3, 6 * 5 * 17 * 3 * 4)]


@linux_only
def test_mapped_blocks_equal_the_stored_values(tmp_path):
    for z, x, budget in _mapped_layouts(tmp_path):
        raw = _raw_chunk_path(z)
        a = open_zarr_stack(z, budget=budget)
        assert len(a.chunks[1]) > 1
        for block in _blocks(a):
            assert _mappable(z, raw, block)
            got = _map_block(z, raw, block)
            assert isinstance(got.base, mmap.mmap)  # over the page cache, not a copy
            np.testing.assert_array_equal(got, x[block])
            np.testing.assert_array_equal(got, _read_block(z, raw, block))
        with dask.config.set(scheduler="threads"):
            np.testing.assert_array_equal(a.compute(), x)


@linux_only
def test_a_mapped_block_is_unmapped_when_freed_and_never_writes_the_file(tmp_path):
    z, x, budget = _mapped_layouts(tmp_path)[1]
    raw = _raw_chunk_path(z)
    block = _blocks(open_zarr_stack(z, budget=budget))[0]
    chunk = os.path.join(raw, z.metadata.encode_chunk_key((0, 0, 0, 0)))
    before = open(chunk, "rb").read()
    got = _map_block(z, raw, block)
    with open("/proc/self/maps") as f:
        assert chunk in f.read()
    got[0] = -1.0  # copy-on-write: the array changes, the file does not
    assert (got[0] == -1.0).all() and open(chunk, "rb").read() == before
    del got
    gc.collect()
    with open("/proc/self/maps") as f:
        assert chunk not in f.read()


def test_layouts_that_cannot_be_mapped_are_read(tmp_path):
    x = _frames(n=6, h=23, w=17)
    cases = [((2, 5, 17, 3), 6 * 5 * 17 * 3 * 4, [False] * 5),  # two frames per chunk
             ((1, 5, 9, 3), 6 * 5 * 17 * 3 * 4, [False] * 5),  # chunks narrower than the frame
             # bands of two chunk rows whose chunks are not whole pages; the last band, one
             # partial chunk row, can be mapped
             ((1, 5, 17, 3), 6 * 10 * 17 * 3 * 4, [False, False, sys.platform.startswith("linux")])]
    for i, (chunks, budget, mappable) in enumerate(cases):
        z = _write(tmp_path / f"s{i}.zarr", x, chunks, compressors=None)
        a = open_zarr_stack(z, budget=budget)
        assert [_mappable(z, _raw_chunk_path(z), b) for b in _blocks(a)] == mappable
        with dask.config.set(scheduler="sync"):
            np.testing.assert_array_equal(a.compute(), x)


@linux_only
def test_a_refused_mapping_falls_back_to_reading(tmp_path, monkeypatch):
    z, x, budget = _mapped_layouts(tmp_path)[1]
    monkeypatch.setattr(zarrstack, "_fixed_mmap", lambda: (lambda *args: 2**64 - 1))  # MAP_FAILED
    block = _blocks(open_zarr_stack(z, budget=budget))[1]
    assert _map_block(z, _raw_chunk_path(z), block) is None
    got = _load_block(z, _raw_chunk_path(z), block)
    assert not isinstance(got.base, mmap.mmap)
    np.testing.assert_array_equal(got, x[block])


@linux_only
def test_a_damaged_chunk_is_named_before_it_is_mapped(tmp_path):
    z, x, budget = _mapped_layouts(tmp_path)[1]
    chunk = os.path.join(_raw_chunk_path(z), "c", "3", "2", "0", "0")
    with open(chunk, "r+b") as f:
        f.truncate(100)
    a = open_zarr_stack(z, budget=budget)
    assert all(_mappable(z, _raw_chunk_path(z), b) for b in _blocks(a))
    with pytest.raises(ZarrStackError, match=os.path.join("c", "3", "2", "0", "0")), \
            dask.config.set(scheduler="sync"):
        a.compute()
