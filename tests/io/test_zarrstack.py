"""open_zarr_stack: the same values as zarr's reader, blocks of whole chunk rows, clear errors."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from zdask.graph.stack import stack
from zdask.io.zarrstack import ZarrStackError, _raw_chunk_path, open_zarr_stack


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
